"""The batched engine against the Flower path, and 200-epoch runs on the batched engine (issue 16).

Every measured run is the product's own entry point, ``python -m simulations.run`` with Hydra
overrides, started as a fresh subprocess of this benchmark, so each run's time and memory are its
own and both engines run exactly what a user runs (``engine=batched``: engine/loop.run_batched;
``engine=flower``: the Flower simulation with Ray and one virtual SuperNode per user). Per-round
times are the runs' own ``round_seconds`` records (training and aggregation of one round; sampling
and evaluation are outside it on both engines). Peak memory is sampled by psutil every 0.5 s as the
sum over the run's process tree (for the Flower path: the driver, Ray's GCS/raylet and its worker
processes) of PSS - shared pages split among the processes that map them, so Ray's shared object
store is counted once; the kernel's high-water mark of the largest single process (``os.wait4``'s
ru_maxrss) is printed beside it and catches peaks shorter than a sample.

Sections (``--tables``, comma separated):

* ``rounds``: plaintext and secemb MF on ml_100k, 100 clients per round, Table 8 hyperparameters
  (+experiment=secemb_ml100k_mf): mean round time of the batched engine and of the Flower path, round
  1 left out as a warm-up on both, and their ratio (target: >= 100x).
* ``epochs``: wall time of a 200-epoch (200 x users / clients-per-round rounds) secemb run of each
  model on ml_100k (+experiment=secemb_ml100k_<model>; target for MF: < 2 minutes).
* ``ml1m``: the same for secemb MF on synthetic data of ML-1M's size, 12,080 rounds
  (+experiment=secemb_synthetic_ml1m_mf; target: < 10 minutes and < 8 GiB).
* ``ml25m``: memory at ML-25M's size: a few secemb MF rounds (100 clients) on synthetic data of ML-25M's
  size (162,541 users, 62,423 items, 25,000,095 ratings): peak memory (generation, split, every user's
  private state) and s/round (target: < 8 GiB).
* ``curve``: test RMSE (all users) against the round of the 200-epoch secemb MF run on ml_100k
  (target: <= 0.950; paper, Table 3: 0.944 +- 0.003); reuses the ``epochs`` MF run when both are chosen.

    python -m benchmarks.bench_batched --tables rounds,epochs,ml1m,ml25m,curve --out outputs/bench_batched
    python -m benchmarks.bench_batched --tables epochs --models mf --epochs 2     # a short check
    python -m benchmarks.bench_batched --tables epochs --models deepfm --time-limit 600  # stop, project

A run stopped by ``--time-limit`` is reported with the rounds it finished and the wall time its
mean round time projects for all rounds. ``--threads N`` sets OMP/MKL/OpenBLAS_NUM_THREADS for every
measured run (both engines; Ray already gives each Flower client one thread): on a machine whose
cores other work keeps busy, torch's default intra-op threads oversubscribe them, and a batched MF
round was measured ~3x (load 1.5) to ~28x (load 5) slower than with one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recdata.dataset import dataset_meta
from simulations.config import compose_config, to_app_config
from simulations.results import read_records

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
MIB = 2**20
PAPER_RMSE, TARGET_RMSE = 0.944, 0.950  # SecEmb Table 3, MF on ML100K; issue 16's real-data check
TARGETS = {"ratio": 100.0, "mf_ml100k_seconds": 120.0, "ml1m_seconds": 600.0, "ml1m_peak_bytes": 8 * GIB,
           "ml25m_peak_bytes": 8 * GIB}
EPOCH_HEAD = ("model  | rounds | wall s (entry point) | process s | s/round | final RMSE | best RMSE | m' "
              "| peak MiB (tree PSS / HWM) | load avg")
SAMPLE_SECONDS = 0.5  # PSS reads each process's smaps: cheap enough at this rate beside 2 busy cores


@dataclass
class RunResult:
    """One entry-point run: its records, the times it reported and the memory this benchmark saw."""

    name: str
    overrides: list[str]
    records: list[dict[str, Any]]
    rounds_planned: int
    process_seconds: float          # subprocess start to exit (interpreter start-up and imports included)
    run_seconds: float | None       # the entry point's own wall time (results.json final.wall_seconds)
    peak_tree_bytes: int            # highest sampled PSS sum over the process tree
    hwm_bytes: int                  # kernel high-water mark of the largest single process of the tree
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    stopped: str | None = None      # why the run did not finish (time limit)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The numbers for bench_batched.json (the records stay in the run folder's records.jsonl)."""
        out = {k: v for k, v in asdict(self).items() if k != "records"}
        rs = self.round_seconds(False)
        return {**out, "rounds_done": len(self.records), "projected_seconds": self.projected_seconds(),
                "mean_round_seconds": float(rs.mean()) if len(rs) else None,
                "median_round_seconds": float(np.median(rs)) if len(rs) else None,
                "eval_seconds": float(sum(r.get("eval_seconds") or 0.0 for r in self.records)),
                "curve": self.curve()}

    def round_seconds(self, skip_first: bool = True) -> np.ndarray:
        """round_seconds of the finished rounds (round 1, the warm-up, left out unless it is the only one)."""
        recs = [r for r in self.records if not (skip_first and r["round"] == 1)] or self.records
        return np.array([r["round_seconds"] for r in recs], dtype=np.float64)

    def curve(self) -> list[tuple[int, float]]:
        return [(int(r["round"]), float(r["test_rmse"])) for r in self.records if r.get("test_rmse") is not None]

    def projected_seconds(self) -> float:
        """Wall time of the whole run: measured if it finished, else the time it ran plus its mean round time
        (warm-up left out) for each round it did not reach (evaluations of those rounds not counted)."""
        if self.stopped is None and self.run_seconds is not None:
            return self.run_seconds
        if not self.records:
            return math.inf
        return self.process_seconds + float(self.round_seconds().mean()) * (self.rounds_planned - len(self.records))


class TreeMemory:
    """Samples the summed PSS (RSS where PSS is unavailable) of a process and all its descendants."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _tree_bytes(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except psutil.Error:  # exited between listing and reading, or not readable
                continue
        return total

    def _run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self._tree_bytes())
            self.done.wait(SAMPLE_SECONDS)

    def kill_tree(self) -> None:
        """Kill the run's processes (children first): only the tree this benchmark started."""
        import psutil

        try:
            procs = self.root.children(recursive=True)
        except psutil.Error:
            procs = []
        for proc in [*procs, self.root]:
            try:
                proc.kill()
            except psutil.Error:
                continue


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
RUN_ENV: dict[str, str] = {}  # set by --threads: the thread-count variables of every measured run


def run_entry(name: str, overrides: list[str], run_dir: Path, rounds: int,
              time_limit: float | None = None) -> RunResult:
    """``python -m simulations.run <overrides>`` in a fresh process writing into ``run_dir``; its log goes
    to ``run_dir/run.log``. A run longer than ``time_limit`` seconds is killed and reported as stopped."""
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [*overrides, f"rounds={rounds}", f"hydra.run.dir={run_dir}"]
    cmd = [sys.executable, "-m", "simulations.run", *args]
    print(f"  [{time.strftime('%H:%M:%S')}] {name}: {' '.join(args)}", flush=True)
    load_before = os.getloadavg()
    with open(run_dir / "run.log", "w", encoding="utf-8") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **RUN_ENV})
        memory = TreeMemory(proc.pid)
        memory.thread.start()
        stopped, deadline = None, start + time_limit if time_limit is not None else math.inf
        while True:  # os.wait4, not Popen.wait: it also gives the child's resource usage (ru_maxrss, KiB)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if stopped is None and time.perf_counter() > deadline:
                stopped = f"stopped by --time-limit {time_limit:.0f} s"
                memory.kill_tree()
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        memory.done.set()
        memory.thread.join()
    if proc.returncode and stopped is None:
        tail = (run_dir / "run.log").read_text(encoding="utf-8").splitlines()[-15:]
        raise RuntimeError(f"{name} failed with status {proc.returncode}:\n" + "\n".join(tail))
    results = run_dir / "results.json"
    final = json.loads(results.read_text())["final"] if stopped is None and results.exists() else {}
    return RunResult(name=name, overrides=args, records=read_records(run_dir), rounds_planned=rounds,
                     process_seconds=seconds, run_seconds=final.get("wall_seconds"),
                     peak_tree_bytes=memory.peak, hwm_bytes=int(usage.ru_maxrss * 1024),
                     load_before=load_before, load_after=os.getloadavg(), stopped=stopped,
                     extra={k: final[k] for k in ("m_prime", "setup_seconds") if k in final})


def epoch_rounds(overrides: list[str], epochs: float) -> int:
    """Rounds of ``epochs`` epochs: epochs x users / clients per round (each user trains ``epochs`` times
    on average), for the dataset the overrides compose."""
    cfg = to_app_config(compose_config(overrides))
    users = dataset_meta(cfg).n_users
    return max(1, round(epochs * users / min(int(cfg.clients_per_round), users)))


def long_run(args: argparse.Namespace, name: str, base: list[str], run_dir: Path) -> RunResult:
    """A run of ``args.epochs`` epochs evaluated on all users about ``args.points`` times (the curve's points)."""
    rounds = epoch_rounds(base, args.epochs)
    over = [*base, f"train.eval_every={max(rounds // args.points, 1)}", "train.eval_clients=null"]
    return run_entry(f"{name} {args.epochs:g} epochs", over, run_dir, rounds, args.time_limit)


def ml100k(args: argparse.Namespace, experiment: str, *extra: str) -> list[str]:
    return [f"+experiment={experiment}", f"dataset.path={args.data_path}", "clients_per_round=100", *extra]


def _verdict(ok: bool, args: argparse.Namespace) -> str:
    """A target's verdict; the issue's targets are for 200-epoch runs, so shorter checks get none."""
    return ("ok" if ok else "MISSED") if args.epochs == 200 else "n/a for a run shorter than 200 epochs"


def _load(r: RunResult) -> str:
    return f"{r.load_before[0]:.1f}->{r.load_after[0]:.1f}"


def _mem(r: RunResult) -> str:
    return f"{r.peak_tree_bytes / MIB:,.0f} / {r.hwm_bytes / MIB:,.0f}"


# --------------------------------------------------------------------------------------------- sections
def table_rounds(args: argparse.Namespace, out: Path, results: dict[str, Any]) -> None:
    """Per-round time of both engines, same protocol, model, data and clients per round, in this invocation."""
    print(f"\nPer-round time, MF on ml_100k, 100 clients/round, Table 8 hyperparameters; mean over rounds 2.. "
          f"(round 1 = warm-up); batched: {args.batched_rounds or f'{args.epochs:g} epochs of'} rounds, Flower: "
          f"{args.flower_rounds} rounds")
    rows = []
    for strategy in args.strategies.split(","):
        quick = ["train.eval_every=0", "train.eval_clients=10"]  # one small evaluation, after the last round
        base = ml100k(args, "secemb_ml100k_mf", f"strategy={strategy}", *quick)
        batched_rounds = args.batched_rounds or epoch_rounds(base, args.epochs)
        batched = run_entry(f"{strategy} batched", [*base, "engine=batched"], out / f"rounds_{strategy}_batched",
                            batched_rounds)
        flower = run_entry(f"{strategy} flower", [*base, "engine=flower"], out / f"rounds_{strategy}_flower",
                           args.flower_rounds, args.time_limit)
        b, f = batched.round_seconds().mean(), flower.round_seconds().mean()
        rows.append((strategy, b, f, f / b, batched, flower))
        results.setdefault("rounds", {})[strategy] = {
            "batched_round_seconds": b, "flower_round_seconds": f, "ratio": f / b,
            "batched_round_seconds_median": float(np.median(batched.round_seconds())),
            "flower_round_seconds_median": float(np.median(flower.round_seconds())),
            "batched": batched.summary(), "flower": flower.summary()}
    print("protocol  | batched s/round | Flower s/round | Flower/batched | peak MiB batched (tree PSS / largest HWM)"
          " | peak MiB Flower incl. Ray workers | load avg (1 min) batched, Flower")
    for strategy, b, f, ratio, batched, flower in rows:
        verdict = "ok" if ratio >= TARGETS["ratio"] else "BELOW target"
        print(f"{strategy:9} | {b:15.4f} | {f:14.3f} | {ratio:9.0f}x ({verdict} >= {TARGETS['ratio']:.0f}x) | "
              f"{_mem(batched):>20} | {_mem(flower):>20} | {_load(batched)}, {_load(flower)}")


def table_epochs(args: argparse.Namespace, out: Path, results: dict[str, Any]) -> dict[str, RunResult]:
    """A whole secemb training of each model on ml_100k on the batched engine."""
    runs: dict[str, RunResult] = {}
    for model in args.models.split(","):
        runs[model] = long_run(args, f"secemb {model}", ml100k(args, f"secemb_ml100k_{model}", "engine=batched"),
                               out / f"epochs_{model}")
    print(f"\n{args.epochs:g}-epoch secemb runs on ml_100k, batched engine, 100 clients/round, Table 8 "
          "hyperparameters, test RMSE over all users")
    print(EPOCH_HEAD)
    for model, r in runs.items():
        target = f" (target < {TARGETS['mf_ml100k_seconds']:.0f} s: " \
                 f"{_verdict(r.projected_seconds() < TARGETS['mf_ml100k_seconds'], args)})" if model == "mf" else ""
        print(_epoch_row(model, r) + target)
        results.setdefault("epochs", {})[model] = r.summary()
    return runs


def table_ml1m(args: argparse.Namespace, out: Path, results: dict[str, Any]) -> None:
    """Secemb MF at ML-1M's size (synthetic, Table 7) for the same number of epochs."""
    r = long_run(args, "secemb mf synthetic ML-1M", ["+experiment=secemb_synthetic_ml1m_mf", "engine=batched"],
                 out / "ml1m_mf")
    ok_time = r.projected_seconds() < TARGETS["ml1m_seconds"]
    peak = max(r.peak_tree_bytes, r.hwm_bytes)
    print(f"\n{args.epochs:g}-epoch secemb MF on synthetic ML-1M (6,040 users, 3,883 items, 1,000,209 ratings), "
          "batched engine, lr 0.025, reg 0.001")
    print(EPOCH_HEAD)
    print(_epoch_row("mf", r) + f" (targets < {TARGETS['ml1m_seconds']:.0f} s: {_verdict(ok_time, args)}; "
          f"< 8 GiB: {_verdict(peak < TARGETS['ml1m_peak_bytes'], args)})")
    results["ml1m"] = r.summary()


def table_ml25m(args: argparse.Namespace, out: Path, results: dict[str, Any]) -> None:
    """Peak memory and round time of secemb MF at ML-25M's size (synthetic, Table 7), a few rounds."""
    over = ["dataset=synthetic_ml_25m", "model=mf", "strategy=secemb", "engine=batched", "clients_per_round=100",
            "train.eval_every=0", "train.eval_clients=10"]
    r = run_entry("secemb mf synthetic ML-25M", over, out / "ml25m_mf", args.ml25m_rounds, args.time_limit)
    peak = max(r.peak_tree_bytes, r.hwm_bytes)
    setup = r.extra.get("setup_seconds")
    print(f"\nsecemb MF on synthetic ML-25M (162,541 users, 62,423 items, 25,000,095 ratings), batched engine, "
          f"100 clients/round, {args.ml25m_rounds} rounds (process time includes generating and splitting the data)")
    print("rounds | process s | engine setup s | s/round | m' | peak MiB (tree PSS / HWM) | load avg")
    print(f"{len(r.records):6} | {r.process_seconds:9.1f} | {setup if setup is None else f'{setup:14.1f}'} | "
          f"{r.round_seconds().mean():7.3f} | {r.extra.get('m_prime')} | {_mem(r):>25} | {_load(r)} "
          f"(target < 8 GiB: {'ok' if peak < TARGETS['ml25m_peak_bytes'] else 'MISSED'})")
    results["ml25m"] = r.summary()


def table_curve(args: argparse.Namespace, out: Path, results: dict[str, Any], run: RunResult | None) -> None:
    """Test RMSE against the round of the 200-epoch secemb MF run on ml_100k, printed and plotted."""
    if run is None:
        run = long_run(args, "secemb mf", ml100k(args, "secemb_ml100k_mf", "engine=batched"), out / "epochs_mf")
    curve = run.curve()
    rnds, rmse = [c[0] for c in curve], [c[1] for c in curve]
    final = rmse[-1] if rmse else math.nan
    verdict = _verdict(final <= TARGET_RMSE, args)
    print(f"\nTest RMSE (all users) of secemb MF on ml_100k, {len(run.records)} rounds, batched engine: "
          f"final {final:.4f} (target <= {TARGET_RMSE}: {verdict}; paper {PAPER_RMSE} +- 0.003), "
          f"best {min(rmse, default=math.nan):.4f}")
    print("  " + ", ".join(f"{n}: {v:.4f}" for n, v in curve))
    results["curve"] = {"rounds": rnds, "test_rmse": rmse, "final": final, "target": TARGET_RMSE,
                        "paper": PAPER_RMSE, "run_dir": str(out / "epochs_mf"), "wall_seconds": run.run_seconds}
    if args.out and curve:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        ax.plot(rnds, rmse, marker=".", label="secemb MF, batched engine")
        ax.axhline(PAPER_RMSE, color="grey", linestyle="--", label=f"paper {PAPER_RMSE}")
        ax.axhline(TARGET_RMSE, color="red", linestyle=":", label=f"target {TARGET_RMSE}")
        ax.set(xlabel="round (100 clients each)", ylabel="test RMSE (all users)", ylim=(0.9, min(1.3, max(rmse) + 0.02)),
               title=f"secemb MF, ml_100k, {args.epochs:g} epochs")
        ax.legend()
        fig.tight_layout()
        path = Path(args.out) / "secemb_mf_ml100k_curve.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(f"  curve: {path}")


def _epoch_row(model: str, r: RunResult) -> str:
    curve = r.curve()
    wall = f"{r.run_seconds:.1f}" if r.stopped is None and r.run_seconds is not None else \
        f"{r.process_seconds:.0f} ({r.stopped} after {len(r.records)} rounds; projected {r.projected_seconds():.0f})"
    final = f"{curve[-1][1]:.4f}" if curve else "n/a"
    best = f"{min(c[1] for c in curve):.4f}" if curve else "n/a"
    return (f"{model:6} | {r.rounds_planned:6} | {wall:>20} | {r.process_seconds:9.1f} | "
            f"{r.round_seconds(False).mean():7.4f} | {final:>10} | {best:>9} | {r.extra.get('m_prime', '-')} | "
            f"{_mem(r):>24} | {_load(r)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", default="rounds,epochs,ml1m,ml25m,curve")
    parser.add_argument("--data-path", default=str(ROOT.parent / "shared" / "data" / "ml-100k"),
                        help="ml-100k folder (default ../shared/data/ml-100k relative to the repository)")
    parser.add_argument("--out", help="folder for the runs, the curve PNG and bench_batched.json (default: a "
                                      "temporary folder, nothing kept)")
    parser.add_argument("--strategies", default="plaintext,secemb", help="protocols of --tables rounds")
    parser.add_argument("--batched-rounds", type=int, help="batched rounds timed by --tables rounds (default: "
                        "--epochs epochs, so the mean is a whole run's: the computed-bytes cache fills as it goes)")
    parser.add_argument("--flower-rounds", type=int, default=4, help="Flower rounds (round 1 is a warm-up)")
    parser.add_argument("--models", default="mf,ncf,fm,deepfm", help="models of --tables epochs")
    parser.add_argument("--epochs", type=float, default=200.0, help="epochs of the long runs (short checks: 2)")
    parser.add_argument("--points", type=int, default=40, help="evaluations per long run (the curve's points)")
    parser.add_argument("--ml25m-rounds", type=int, default=10, help="rounds of --tables ml25m")
    parser.add_argument("--time-limit", type=float, help="seconds after which a long or Flower run is stopped "
                                                          "and reported with its projected wall time")
    parser.add_argument("--threads", type=int, help="run every measured run with OMP/MKL/OpenBLAS_NUM_THREADS set "
                        "to this (torch's intra-op threads; default: unset, the product's own default)")
    args = parser.parse_args()
    if args.threads:
        RUN_ENV.update({name: str(args.threads) for name in THREAD_VARIABLES})
    args.data_path = str(Path(args.data_path).resolve())
    tables = args.tables.split(",")
    unknown = set(tables) - {"rounds", "epochs", "ml1m", "ml25m", "curve"}
    if unknown:
        parser.error(f"unknown --tables {sorted(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out).resolve() if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(),
                                   "args": vars(args), "targets": TARGETS}
        print(f"bench_batched: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min); threads per run "
              f"{args.threads or 'default'}; runs in {out}")
        if "rounds" in tables:
            table_rounds(args, out, results)
        runs = table_epochs(args, out, results) if "epochs" in tables else {}
        if "ml1m" in tables:
            table_ml1m(args, out, results)
        if "ml25m" in tables:
            table_ml25m(args, out, results)
        if "curve" in tables:
            table_curve(args, out, results, runs.get("mf"))
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        if args.out:
            path = out / "bench_batched.json"
            path.write_text(json.dumps(results, indent=2, default=str))
            print(f"\nall numbers: {path}")


if __name__ == "__main__":
    main()
