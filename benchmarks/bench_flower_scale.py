"""The Flower path at the SecEmb paper's dataset sizes: round time, whole-run memory, start-up, evaluation.

Each row is one ``python -m simulations.run`` (the product's entry point, engine=flower, a local Ray) in
a fresh subprocess on a synthetic preset of SecEmb Table 7's sizes (ML-1M, ML-10M, ML-25M; the real
files are not on this machine). Columns:

* ``round s``: mean wall time of the rounds after the first (round 1 also pays each Ray worker's first
  data load and torch warm-up);
* ``peak GiB``: peak summed PSS of the run's whole process tree (the ServerApp process, Ray's GCS and
  raylet, and every Ray worker running ClientApps), sampled with psutil every 0.5 s;
* ``start s``: the run's wall time outside its rounds and evaluation (launch to round 1, and shutdown),
  minus the time one process takes to load and split the data (measured on its own in this run): what
  start-up (and tear-down) cost beyond the data;
* ``setup s`` / ``setup wait``: the part of ``start s`` spent in the protocol's set-up before round 1
  (for secemb: server 1's hello and the secure count of Appendix C that fixes m', over
  ``strategy.count_users`` users), and of that the time spent waiting for the users' replies (their
  first contact: a Ray worker's first data load, then the count messages);
* ``round 1 s``: the first round, which also pays each Ray worker's first data load when set-up did not;
* ``eval s``: the evaluation after the last round, over ``--eval-users`` users (recorded by the run);
* ``server s`` / ``wait s``: the rounds' own split (after the first) of ``round s`` into the ServerApp's
  work (for secemb both servers' crypto: server 1 runs in the same process) and the time it waited for
  replies (the clients' work and Flower's message passing);
* ``AES bound s`` (secemb rows): the AES-128 blocks both servers must compute in one round (tree
  expansions and one Convert per leaf for retrieval and aggregation, :func:`benchmarks.bench_secemb.
  server_blocks`, at the run's m' and item count, plus the second tree expansion of the keys whose paths
  do not fit the run's ``strategy.path_cache_mib``, the ``recomputed`` share) over this machine's AES
  rate measured right after the row; ``x bound`` is ``server s`` over it. Full-domain evaluation makes
  that bound grow with the items; the path-cache cap makes it grow faster than the clients once a
  round's paths (17 bytes per key and item) exceed the cap.

``--node-pools`` runs each row with those ``simulation.node_pool`` values (``none``: one virtual node
per user, Flower's engine then polls every user's node for every message it holds).

    python -m benchmarks.bench_flower_scale                               # the full table (tens of minutes)
    python -m benchmarks.bench_flower_scale --presets ml_1m --rows plaintext:100
    python -m benchmarks.bench_flower_scale --presets ml_1m,ml_25m --rows plaintext:100 --node-pools none,200
    python -m benchmarks.bench_flower_scale --presets ml_1m --rows secemb:100,secemb:1000 --path-cache-mib 8400

``--path-cache-mib`` sets the secemb rows' cap: 8400 holds a whole 1,000-user round of ML-1M paths
(8.6 GB per server), which separates the cap's recomputation from the servers' growth with the clients.

Machine load matters: the run prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from benchmarks.bench_batched import TreeMemory
from benchmarks.bench_secemb import aes_rate, recomputed_keys, server_blocks
from crypto.ring import ring_dtype
from schemas.config import model_spec
from simulations.config import to_app_config

ROWS = ("plaintext:100", "plaintext:1000", "secemb:100", "secemb:1000")
ROOT = Path(__file__).resolve().parents[1]


def data_load_seconds(preset: str, seed: int) -> float:
    """Wall time of one process loading and splitting the preset (what every run pays before start-up)."""
    code = ("import time; from simulations.config import compose_config, to_app_config; "
            "from recdata.dataset import load_split; "
            f"cfg = to_app_config(compose_config(['dataset=synthetic_{preset}', 'seed={seed}'])); "
            "t = time.perf_counter(); load_split(cfg); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_row(preset: str, strategy: str, clients: int, rounds: int, eval_users: int, seed: int,
            node_pool: int | None = None, path_cache_mib: int | None = None) -> dict:
    """One Flower simulation; its records, wall time and the process tree's peak memory.

    ``path_cache_mib``: the secemb row's ``strategy.path_cache_mib`` (None: the config's default).
    """
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "simulations.run", f"dataset=synthetic_{preset}",
               f"strategy={strategy}", f"clients_per_round={clients}", f"rounds={rounds}", f"seed={seed}",
               "train.eval_every=0", f"train.eval_clients={eval_users}", f"output_dir={out}",
               f"simulation.node_pool={'null' if node_pool is None else node_pool}", "hydra/job_logging=disabled"]
        if path_cache_mib is not None and strategy == "secemb":
            cmd.append(f"strategy.path_cache_mib={path_cache_mib}")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        memory = TreeMemory(proc.pid)
        memory.thread.start()
        _, err = proc.communicate()
        wall = time.perf_counter() - start
        memory.done.set()
        memory.thread.join()
        if proc.returncode != 0:
            return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
        results = json.loads((Path(out) / "results.json").read_text())
    records = results["records"]
    later_records = records[1:] or records[:1]
    later = [r["round_seconds"] for r in later_records]
    server = [r["server_seconds"] for r in later_records]
    eval_seconds = sum(float(r.get("eval_seconds") or 0.0) for r in records)
    run_seconds = sum(float(r["round_seconds"]) for r in records) + eval_seconds
    return {"round_seconds": sum(later) / len(later), "server_seconds": sum(server) / len(server),
            "peak_gib": memory.peak / 2**30,
            "before_first_round": wall - run_seconds, "eval_seconds": eval_seconds,
            "setup_seconds": float(results["final"].get("setup_seconds") or 0.0),
            "setup_wait_seconds": float(results["final"].get("setup_wait_seconds") or 0.0),
            "first_round_seconds": float(records[0]["round_seconds"]),
            "m_prime": records[-1].get("m_prime"), "config": results["config"]}


def aes_bound_seconds(res: dict) -> tuple[float, float]:
    """(seconds, recomputed share): both servers' AES blocks of one SecEmb round at the run's clients, m',
    items, row width and path-cache cap (its own results.json config, read back as the product reads
    one), over the AES rate measured now (all cores, as the servers' workers use them); and the share of
    the round's keys whose paths the cap leaves to be expanded again in aggregation."""
    cfg = to_app_config(OmegaConf.create(res["config"]))
    ds, ring = cfg.dataset, ring_dtype(cfg.strategy.ring_bits)
    spec = model_spec(cfg, ds.n_user_features, ds.n_item_features)
    users, m_prime = int(cfg.clients_per_round), int(res["m_prime"])
    again = recomputed_keys(users, ds.n_items, m_prime, ring, int(cfg.strategy.path_cache_mib) << 20)
    blocks = 2 * server_blocks(users, "secemb", ds.n_items, m_prime, spec.row_dim, ring, again)
    return blocks / aes_rate(), again / (users * m_prime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="ml_1m,ml_10m,ml_25m")
    parser.add_argument("--rows", default=",".join(ROWS), help="strategy:clients_per_round, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (round 1 is left out of round s)")
    parser.add_argument("--eval-users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--node-pools", default="none",
                        help="simulation.node_pool values, comma-separated (none = one node per user)")
    parser.add_argument("--path-cache-mib", type=int, default=None,
                        help="secemb rows' strategy.path_cache_mib (default: the config's cap)")
    args = parser.parse_args()
    pools = [None if p == "none" else int(p) for p in args.node_pools.split(",")]
    print(f"load average before: {os.getloadavg()}", flush=True)
    header = (f"{'preset':8} {'strategy':10} {'clients':>7} {'nodes':>7} {'round s':>8} {'server s':>8} {'wait s':>7}"
              f" {'peak GiB':>8} {'start s':>8} {'setup s':>7} {'setup wait':>10} {'round 1 s':>9}"
              f" {'eval s':>7} {'data s':>7} {'AES bound s':>11} {'x bound':>7}"
              f" {'recomputed':>10}")
    print(header)
    print("-" * len(header), flush=True)
    for preset in args.presets.split(","):
        data_s = data_load_seconds(preset, args.seed)
        for row in args.rows.split(","):
            strategy, clients = row.split(":")
            for pool in pools:
                res = run_row(preset, strategy, int(clients), args.rounds, args.eval_users, args.seed, pool,
                              args.path_cache_mib)
                nodes = "users" if pool is None else str(pool)
                if "error" in res:
                    print(f"{preset:8} {strategy:10} {clients:>7} {nodes:>7} failed: {res['error']}", flush=True)
                    continue
                bound, again = aes_bound_seconds(res) if strategy == "secemb" and res["m_prime"] else (None, None)
                versus = (f"{bound:11.2f} {res['server_seconds'] / bound:7.2f} {again:10.0%}" if bound
                          else f"{'-':>11} {'-':>7} {'-':>10}")
                wait = res["round_seconds"] - res["server_seconds"]
                print(f"{preset:8} {strategy:10} {clients:>7} {nodes:>7} {res['round_seconds']:8.2f} "
                      f"{res['server_seconds']:8.2f} {wait:7.2f} {res['peak_gib']:8.2f} "
                      f"{res['before_first_round'] - data_s:8.1f} {res['setup_seconds']:7.1f} "
                      f"{res['setup_wait_seconds']:10.1f} {res['first_round_seconds']:9.2f} "
                      f"{res['eval_seconds']:7.1f} {data_s:7.1f} {versus}",
                      flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
