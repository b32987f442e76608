"""SecEmb Figures 6 and 7: test RMSE against the privacy budget epsilon, on the batched engine.

Figure 6: SecEmb with central DP (each server noises its share, record-level
clipping) for each model (mf, ncf, fm, deepfm) at 100 and 500 clients per
round on ML-100K; one curve per (model, clients per round), with the same run
without DP as a dashed line (the utility loss is the gap; the table prints it
in percent). Figure 7: SecEmb+DP against the DP-FedRec baseline
(strategy=plaintext, dp.mode=local) for MF. Every run is evaluated on every
user's test ratings.

Each point is one run with ``dp.target_epsilon`` = that epsilon (the noise
multiplier is calibrated by strategies/privacy.py to spend it over the run) and
``rounds = epochs x n_users / clients_per_round``; ``--seeds`` runs average. A curve is one
(model, protocol, clients per round, rounds): runs of different lengths pooled by ``--merge`` stay
apart, and each legend entry says its rounds.
Writes fig6_dp_secemb.png, fig7_dp_vs_dpfedrec.png and dp_figures.json into
``--out`` and prints the numbers as a table. Everything else is the experiment
config (``+experiment=secemb_ml100k_<model>``) plus ``--override`` entries, so it
can run tiny, e.g.::

    python -m benchmarks.dp_figures --models mf --clients 20 --epsilons 1 8 --epochs 1 \
        --override dataset.max_users=100 dataset.max_items=200 model.dim=8
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

from engine.loop import run_batched
from recdata.dataset import dataset_meta, load_split
from simulations.config import compose_config, to_app_config

log = logging.getLogger("secrec.dp_figures")
CURVE_KEYS = ("protocol", "model", "clients", "rounds")  # one curve, and its no-DP reference run
POINT_KEYS = (*CURVE_KEYS, "target_epsilon")  # one point of a curve: its seeds' mean
SHARED_ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


def one_run(model: str, protocol: str, clients: int, epsilon: float | None, epochs: float, seed: int,
            overrides: list[str]) -> dict[str, Any]:
    """Final test RMSE and epsilon of one DP run (protocol ``secemb`` or ``dp_fedrec``); ``epsilon``
    None is the same protocol without DP (secemb, or plaintext for DP-FedRec): the utility-loss reference."""
    strategy = ["strategy=secemb", "dp.mode=central"] if protocol == "secemb" else \
        ["strategy=plaintext", "dp.mode=local"]
    dp = ["dp.enabled=false"] if epsilon is None else ["dp.enabled=true", f"dp.target_epsilon={epsilon}"]
    base = [f"+experiment=secemb_ml100k_{model}", *strategy, f"clients_per_round={clients}", f"seed={seed}",
            "engine=batched", *dp, "train.eval_every=0", "train.eval_clients=null", *overrides]
    probe = to_app_config(compose_config([*base, "rounds=1"]))
    n_users = dataset_meta(probe).n_users
    rounds = max(1, math.ceil(epochs * n_users / min(clients, n_users)))
    cfg = to_app_config(compose_config([*base, f"rounds={rounds}"]))
    split, meta = load_split(cfg), dataset_meta(cfg)
    start = time.perf_counter()
    run = run_batched(cfg, split, meta)
    last = run["records"][-1]
    spent = (math.inf, 0.0) if epsilon is None else (run["dp"]["epsilon"], run["dp"]["noise_multiplier"])
    return {"model": model, "protocol": protocol, "clients": clients,
            "target_epsilon": math.inf if epsilon is None else epsilon, "seed": seed, "rounds": rounds,
            "epsilon": spent[0], "noise_multiplier": spent[1], "test_rmse": last["test_rmse"],
            "seconds": time.perf_counter() - start}


def _key(row: dict[str, Any], keys: tuple[str, ...]) -> tuple:
    """The row's values of ``keys``: the one spelling of a curve's or a point's identity."""
    return tuple(row[k] for k in keys)


def _mean_by(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per ``keys`` value: the mean and std of its runs' test RMSE. A seed counted twice in one
    group (the same run pooled from two folders) would shrink the std and inflate ``seeds``: refused."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        group = groups.setdefault(_key(r, keys), [])
        if any(g["seed"] == r["seed"] for g in group):
            raise ValueError(f"seed {r['seed']} appears twice for {dict(zip(keys, _key(r, keys)))}")
        group.append(r)
    return [{**dict(zip(keys, k)), "test_rmse": statistics.fmean(g["test_rmse"] for g in v),
             "test_rmse_std": statistics.stdev(g["test_rmse"] for g in v) if len(v) > 1 else 0.0,
             "epsilon": statistics.fmean(g["epsilon"] for g in v), "seeds": len(v)} for k, v in groups.items()]


def _curve_label(curve: dict[str, Any]) -> str:
    """Legend text of one curve: what varies within the panel and the run length, since the curves of
    one figure may train for different numbers of rounds (e.g. "500 clients/round, 943 rounds")."""
    parts = [f"{curve['clients']} clients/round" if k == "clients" else str(v)
             for k, v in curve.items() if k not in ("model", "rounds")]
    return ", ".join([*parts, f"{curve['rounds']} rounds"])


def plot(points: list[dict[str, Any]], curve_keys: tuple[str, ...], title: str, path: Path) -> None:
    """One panel per model (curves of different models differ in scale), one curve per ``curve_keys``
    value within it (error bars: std over seeds), and each curve's run without DP as a dashed line of its
    colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({p["model"] for p in points})
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        curves: dict[tuple, list[dict[str, Any]]] = {}
        for p in points:
            if p["model"] == model:
                curves.setdefault(_key(p, curve_keys), []).append(p)
        epsilons: set[float] = set()
        for key, pts in sorted(curves.items()):
            pts.sort(key=lambda p: p["target_epsilon"])
            noised = [p for p in pts if math.isfinite(p["target_epsilon"])]
            epsilons.update(p["target_epsilon"] for p in noised)
            bars = ax.errorbar([p["target_epsilon"] for p in noised], [p["test_rmse"] for p in noised],
                               yerr=[p.get("test_rmse_std", 0.0) for p in noised], marker="o", capsize=2,
                               label=_curve_label(dict(zip(curve_keys, key))))  # bars: std over seeds
            line = bars.lines[0]
            for p in pts:
                if not math.isfinite(p["target_epsilon"]):  # the run without DP: a dashed reference line
                    ax.axhline(p["test_rmse"], color=line.get_color(), linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(sorted(epsilons), [f"{e:g}" for e in sorted(epsilons)])
        ax.minorticks_off()
        ax.set_xlabel("privacy budget epsilon")
        ax.set_ylabel("test RMSE")
        ax.set_title(model)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw(points: list[dict[str, Any]], clients0: int, figure: str, out: Path) -> None:
    """Figures 6 and 7 from the averaged points."""
    fig6 = [p for p in points if p["protocol"] == "secemb"]
    fig7 = [p for p in points if p["model"] == "mf" and p["clients"] == clients0]
    if fig6 and figure in ("6", "both"):
        plot(fig6, ("model", "clients", "rounds"), "Figure 6: SecEmb + central DP (dashed: no DP)", out / "fig6_dp_secemb.png")
    if fig7 and figure in ("7", "both"):
        plot(fig7, ("protocol", "rounds"), "Figure 7: SecEmb+DP vs DP-FedRec (MF)", out / "fig7_dp_vs_dpfedrec.png")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mf", "ncf", "fm", "deepfm"])
    ap.add_argument("--clients", nargs="+", type=int, default=[100, 500])
    ap.add_argument("--epsilons", nargs="+", type=float, default=[0.5, 1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--epochs", type=float, default=5.0, help="passes over the users (rounds = epochs x n / clients)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--figure", choices=["6", "7", "both"], default="both")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    ap.add_argument("--out", default="outputs/dp_figures")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the runs without DP (when adding epsilons to curves whose reference ran already)")
    ap.add_argument("--replot", action="store_true", help="redraw the PNGs from --out's dp_figures.json")
    ap.add_argument("--merge", nargs="+", default=None, metavar="FOLDER",
                    help="pool the runs of these folders' dp_figures.json (e.g. seeds run side by side) into "
                         "--out: table, PNGs and dp_figures.json, without training")
    ap.add_argument("--data", default=str(SHARED_ML100K) if SHARED_ML100K.exists() else None,
                    help="folder with ML-100K's u.data etc. (default: ../shared/data/ml-100k when present)")
    args = ap.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):  # else the pooled report refuses them after all the training
        ap.error(f"--seeds must be distinct, got {args.seeds}")
    if args.data:
        args.override = [f"dataset.path={args.data}", *args.override]
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's per-order convergence chatter
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:  # redraw the figures from an earlier run's numbers, without training
        runs = json.loads((out / "dp_figures.json").read_text())["runs"]
        draw(_mean_by(runs, POINT_KEYS), args.clients[0], args.figure, out)
        print(f"figures redrawn in {out}")
        return
    if args.merge:
        runs = [r for folder in args.merge for r in json.loads((Path(folder) / "dp_figures.json").read_text())["runs"]]
        report(runs, args.clients[0], args.figure, out)
        return
    runs: list[dict[str, Any]] = []
    jobs = []
    if args.figure in ("6", "both"):
        jobs += [(m, "secemb", c) for m in args.models for c in args.clients]
    if args.figure in ("7", "both"):
        jobs += [("mf", p, c) for p in ("secemb", "dp_fedrec") for c in args.clients[:1]
                 if not (p == "secemb" and args.figure == "both" and "mf" in args.models)]
    for model, protocol, clients in jobs:
        for eps in [*([] if args.no_reference else [None]), *args.epsilons]:
            for seed in args.seeds:
                r = one_run(model, protocol, clients, eps, args.epochs, seed, list(args.override))
                print(f"{protocol:9s} {model:6s} clients={clients:4d} target_eps={eps or math.inf:<6g} "
                      f"eps={r['epsilon']:.3f} "
                      f"sigma={r['noise_multiplier']:.3f} rounds={r['rounds']} rmse={r['test_rmse']:.4f} "
                      f"({r['seconds']:.1f}s)", flush=True)
                runs.append(r)
    report(runs, args.clients[0], args.figure, out)


def report(runs: list[dict[str, Any]], clients0: int, figure: str, out: Path) -> None:
    """Average the runs over seeds, draw the figures, write dp_figures.json and print the table."""
    points = _mean_by(runs, POINT_KEYS)
    draw(points, clients0, figure, out)
    (out / "dp_figures.json").write_text(json.dumps({"runs": runs, "points": points}, indent=2))
    reference = {_key(p, CURVE_KEYS): p["test_rmse"] for p in points if not math.isfinite(p["target_epsilon"])}
    print(f"\n{'protocol':9s} {'model':6s} {'clients':>7s} {'rounds':>6s} {'epsilon':>8s} {'rmse':>7s} {'std':>7s} {'loss vs no DP':>13s}"
          " seeds")
    for p in sorted(points, key=lambda p: _key(p, POINT_KEYS)):
        ref = reference.get(_key(p, CURVE_KEYS))
        loss = f"{100 * (p['test_rmse'] / ref - 1):+12.2f}%" if ref else f"{'':13s}"
        print(f"{p['protocol']:9s} {p['model']:6s} {p['clients']:7d} {p['rounds']:6d} {p['epsilon']:8.3f} {p['test_rmse']:7.4f} "
              f"{p.get('test_rmse_std', 0.0):7.4f} {loss} {p['seeds']}")
    print(f"figures and numbers in {out}")


if __name__ == "__main__":
    main()
