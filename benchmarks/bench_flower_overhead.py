"""Flower's per-round overhead versus the clients' own compute, 100 clients per round.

Runs ``plaintext`` through Flower's simulation engine and splits each round's
wall time into: client compute (each client's self-reported handler time,
summed, divided by the number of parallel workers), server compute, and the
rest — message passing, (de)serialisation, Ray scheduling — which is Flower's
overhead. Prints one row per configuration.

    python -m benchmarks.bench_flower_overhead --dataset ml_100k --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from simulations.config import compose_config, to_container


def run_one(overrides: list[str]) -> dict:
    from simulations.run import simulate

    cfg = to_container(compose_config(overrides))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        simulate(cfg, out)
        total = time.perf_counter() - start
        with open(os.path.join(out, "results.json")) as fh:
            res = json.load(fh)
    res["total_seconds"] = total
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml_100k")
    parser.add_argument("--data-path", default="../shared/data/ml-100k")
    parser.add_argument("--models", default="mf,deepfm")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=100)
    args = parser.parse_args()
    workers = os.cpu_count() or 2
    rows = []
    for model in args.models.split(","):
        overrides = [f"dataset={args.dataset}", f"model={model}", f"rounds={args.rounds}",
                     f"clients_per_round={args.clients}", "train.eval_every=0", "train.eval_clients=10"]
        if args.dataset != "ml_latest_small":
            overrides.append(f"dataset.path={args.data_path}")
        res = run_one(overrides)
        recs = res["records"][:-1] or res["records"]  # the last round also evaluates
        n = len(recs)
        wall = sum(r["round_seconds"] for r in recs) / n
        server = sum(r["server_seconds"] for r in recs) / n
        client_sum = sum(r["client_seconds_mean"] * r["clients"] for r in recs) / n
        client_par = client_sum / workers
        overhead = max(wall - server - client_par, 0.0)
        msgs = 2 * args.clients
        rows.append((model, wall, client_sum, client_par, server, overhead, overhead / msgs * 1e3,
                     res["final"]["wall_seconds"], res["total_seconds"]))
    print(f"\nFlower simulation, {args.dataset}, {args.clients} clients/round, {workers} workers, "
          f"2 messages per client per round (plaintext)")
    head = ("model", "round s", "client cpu s", "client s /workers", "server s", "flower overhead s",
            "overhead ms/msg", "run s (server)", "total s (incl. start)")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join([r[0]] + [f"{v:.3f}" for v in r[1:]]))


if __name__ == "__main__":
    main()
