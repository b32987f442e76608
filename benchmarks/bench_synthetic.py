"""Synthetic data at the SecEmb paper's sizes (Table 7): time and peak memory of each preset.

Each preset is generated in a fresh subprocess, so its peak resident set size
(getrusage ru_maxrss of that process; psutil is not a dependency) is its own.
"after import" is the same process's peak before generating (interpreter and
numpy); "data" is the size of the Ratings arrays returned; "seconds" is wall
time and "cpu s" the process's user + system CPU time (the honest number on a
shared machine: numpy here is single-threaded). With --split the
per-user 80/20 split (recdata.split_users) is timed too and the peak then
includes it.

    python -m benchmarks.bench_synthetic                    # ml_1m, ml_10m, ml_25m, yelp
    python -m benchmarks.bench_synthetic --presets ml_1m --split
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from recdata.synthetic import PRESETS


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_seconds() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def child(preset: str, seed: int, split: bool) -> dict:
    import numpy as np

    from recdata import split_users
    from recdata.synthetic import load_synthetic

    base = _peak_mib()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    r = load_synthetic(preset=preset, seed=seed)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    row = {"preset": preset, "users": r.n_users, "items": r.n_items, "ratings": int(len(r.rating)),
           "seconds": seconds, "cpu_seconds": cpu, "peak_mib": _peak_mib(), "base_mib": base,
           "data_mib": sum(a.nbytes for a in (r.user, r.item, r.rating, r.timestamp)) / 2**20,
           "users_min_max": [int(c) for c in (lambda c: (c.min(), c.max()))(np.bincount(r.user))]}
    if split:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        split_users(r, "random", seed=seed)
        row["split_seconds"], row["split_cpu_seconds"] = time.perf_counter() - t0, _cpu_seconds() - c0
        row["peak_with_split_mib"] = _peak_mib()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="ml_1m,ml_10m,ml_25m,yelp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", action="store_true", help="also time split_users on the generated data")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.seed, args.split)))
        return
    head = f"{'preset':8} {'users':>8} {'items':>7} {'ratings':>11} {'Table 7':>11} {'seconds':>8} {'cpu s':>6} " \
           f"{'peak RSS':>9} {'after import':>12} {'data':>8}"
    if args.split:
        head += f" {'split s':>8} {'cpu s':>6} {'peak w/ split':>13}"
    print(head)
    for name in args.presets.split(","):
        cmd = [sys.executable, "-m", "benchmarks.bench_synthetic", "--child", name, "--seed", str(args.seed)]
        out = subprocess.run(cmd + (["--split"] if args.split else []), capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        line = (f"{name:8} {row['users']:>8,} {row['items']:>7,} {row['ratings']:>11,} "
                f"{PRESETS[name].n_ratings:>11,} {row['seconds']:>8.2f} {row['cpu_seconds']:>6.2f} {row['peak_mib']:>5.0f} MiB "
                f"{row['base_mib']:>8.0f} MiB {row['data_mib']:>4.0f} MiB")
        if args.split:
            line += (f" {row['split_seconds']:>8.2f} {row['split_cpu_seconds']:>6.2f}"
                     f" {row['peak_with_split_mib']:>9.0f} MiB")
        print(line, flush=True)


if __name__ == "__main__":
    main()
