"""What a device's reply time says about its user, without and with ``simulation.reply_hold``.

Runs the product's SecEmb simulation (its ServerApp and ClientApp) once per hold
value, with one extra Flower client mod that times each handler call on the
device, from the moment the message reaches the ClientApp's handlers to the
moment its reply leaves them: what the SuperLink's arrival times add to the
time it sent an instruction, less Flower's own transport (equal for every
user: a secure protocol's messages have equal sizes). For each message type it
prints the spread of those times over users and rounds and their Pearson
correlation with the user's training-rating count, the value the work would
reveal.

    python -m benchmarks.bench_reply_hold --data-path ../shared/data/ml-100k --model deepfm --holds 0 0.25
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from recdata.dataset import dataset_meta, load_split
from schemas.config import AppConfig
from simulations.config import compose_config, to_app_config


def timing_mod(path: str) -> Callable:
    """A client mod appending "<message type> <user> <seconds>" per handled message to ``path``."""
    def mod(msg, context, call_next):
        start = time.monotonic()
        reply = call_next(msg, context)
        with open(path, "a") as out:
            out.write(f"{msg.metadata.message_type} {context.node_config.get('partition-id')} "
                      f"{time.monotonic() - start:.6f}\n")
        return reply

    return mod


def run(cfg: AppConfig, log: str) -> None:
    """One Flower simulation of ``cfg`` through the product's apps, timing every handler into ``log``."""
    from flwr.simulation import run_simulation

    from simulations.client_app import make_client_app
    from simulations.run import flower_backend_config
    from simulations.server_app import make_server_app
    from strategies.base import simulated_node_count

    outcome: dict = {}
    with tempfile.TemporaryDirectory() as out_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=make_server_app(cfg, out_dir, outcome),
                       client_app=make_client_app(cfg, mods=[timing_mod(log)]),
                       num_supernodes=simulated_node_count(cfg, dataset_meta(cfg).n_users),
                       backend_config=flower_backend_config(cfg))
    if outcome.get("error") or outcome.get("stopped"):
        raise RuntimeError(f"the run did not finish: {outcome}")


def table(log: Path, counts: np.ndarray, hold: float) -> list[str]:
    by_type: dict[str, list[tuple[int, float]]] = {}
    for line in log.read_text().splitlines():
        kind, user, seconds = line.split()
        by_type.setdefault(kind, []).append((int(user), float(seconds)))
    rows = []
    for kind, seen in sorted(by_type.items()):
        users = np.array([u for u, _ in seen])
        secs = np.array([s for _, s in seen])
        corr = float(np.corrcoef(secs, counts[users])[0, 1]) if len(seen) > 2 and secs.std() > 0 else float("nan")
        rows.append(f"{hold:6.2f}  {kind:28s} {len(seen):5d} {secs.min() * 1e3:9.1f} {secs.max() * 1e3:9.1f} "
                    f"{(secs.max() - secs.min()) * 1e3:9.1f} {corr:+8.3f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", default="../shared/data/ml-100k")
    parser.add_argument("--model", default="mf", help="mf, ncf, fm or deepfm (Table 8's ML100K settings)")
    parser.add_argument("--users", type=int, default=40, help="the first users of ml_100k")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--holds", type=float, nargs="+", default=[0.0, 0.25])
    args = parser.parse_args()
    lines = ["  hold  message type                     n    min ms    max ms spread ms  corr(count)"]
    for hold in args.holds:
        cfg = to_app_config(compose_config([
            f"+experiment=secemb_ml100k_{args.model}", f"dataset.path={args.data_path}", f"dataset.max_users={args.users}",
            f"clients_per_round={args.clients}", f"rounds={args.rounds}", "train.eval_every=1",
            f"simulation.reply_hold={hold}"]))
        split = load_split(cfg)
        counts = np.array([len(split.user(u).train_items) for u in range(split.n_users)], dtype=np.float64)
        with tempfile.TemporaryDirectory() as scratch:
            log = Path(scratch) / "handlers.txt"
            start = time.perf_counter()
            run(cfg, str(log))
            print(f"hold {hold} s: the run took {time.perf_counter() - start:.1f} s")
            lines += table(log, counts, hold)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
