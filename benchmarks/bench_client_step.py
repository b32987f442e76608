"""Where a client's local step spends its time, and the batched step with and without length bucketing.

Part 1 calls the Flower client's plaintext handlers directly (a real
``Context`` and the schema's own messages, no Flower transport) for the
first ``--clients`` users, and splits each ``on_update`` call into its parts
with ``time.perf_counter``: environment lookup, message parsing, private
state load, batch construction, ``train_batch``, state save and reply
serialisation. ``--profile`` also prints the cProfile top functions.

Part 2 runs the batched engine's step (``models.training.train_batch``) for
the same users at once: one padded batch, and the users split by
``models.batch.length_buckets`` so short users are not padded to the longest.
With ``--dp-clip C`` it also times the record-level clipped step that
differential privacy runs (``models.dp_training.train_batch_clipped``) on the
same buckets: what clipping costs against the plain step, in the same run.

    python -m benchmarks.bench_client_step --dataset ml_100k --data-path /work/shared/data/ml-100k
    python -m benchmarks.bench_client_step --model deepfm --clients 10 --dp-clip 0.5
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time
from collections import defaultdict
from functools import partial

import numpy as np
import torch
from flwr.app import Context, RecordDict

from clients import plaintext
from clients.environment import client_env
from clients.item_selection import ratings_of
from clients.local_training import train_locally
from clients.private_state import device_state_dir, load_private, save_private
from models import PrivateState, gather_rows, init_dense, init_item_table, make_batch_flat, train_batch
from models.batch import length_buckets
from models.dp_training import train_batch_clipped
from recdata.dataset import load_split
from schemas import plaintext as schema
from schemas.config import AppConfig
from simulations.config import compose_config, to_app_config


def _config(args: argparse.Namespace) -> AppConfig:
    overrides = [f"dataset={args.dataset}", "strategy=plaintext", f"model={args.model}"]
    if args.dataset != "ml_latest_small":
        overrides.append(f"dataset.path={args.data_path}")
    return to_app_config(compose_config(overrides))


def _context(user: int) -> Context:
    """A fresh node context of ``user`` (as Flower gives a virtual node its partition)."""
    return Context(run_id=1, node_id=int(user), node_config={"partition-id": int(user)}, state=RecordDict(),
                   run_config={})


def _public_model(cfg: AppConfig):
    """(split, spec, initial item table, initial dense vector): what the server sends in round 1."""
    split = load_split(cfg)
    spec = client_env(cfg, _context(0)).spec
    return split, spec, init_item_table(spec, split.n_items, cfg.seed), init_dense(spec, cfg.seed)


def handler_parts(cfg: AppConfig, users: np.ndarray, repeats: int) -> dict[str, float]:
    """Mean seconds per ``on_update`` call of each part (the parts of ``plaintext.local_step`` timed one by one)."""
    _, spec, table, dense = _public_model(cfg)
    m = cfg.model
    parts: dict[str, float] = defaultdict(float)
    calls = 0
    for rnd in range(1, repeats + 1):
        for user in users:
            context = _context(user)
            t0 = time.perf_counter()
            env = client_env(cfg, context)
            t1 = time.perf_counter()
            reply = plaintext.on_request(schema.request_message(rnd, None), context, env)
            items = reply["req"]["items"].numpy()
            message = schema.update_message(rnd, table[items], dense)
            t2 = time.perf_counter()
            _, rows, dense_in = schema.parse_update_message(message, spec.row_dim, spec.dense_size)
            t3 = time.perf_counter()
            local, ratings = ratings_of(items, env.user.train_items, env.user.train_ratings)
            device_dir = device_state_dir(env, context)
            private = load_private(context, spec, env.user.user_id, env.seed, device_dir, before=rnd)
            t4 = time.perf_counter()
            result = train_locally(spec, rows, dense_in, private, local, ratings, env.user.user_features,
                                   env.item_features[items[local]], float(m.lr), float(m.reg),
                                   int(cfg.train.local_user_steps))
            t5 = time.perf_counter()
            save_private(context, result.private, rnd, int(cfg.checkpoint_every), env.user.user_id, device_dir)
            t6 = time.perf_counter()
            schema.update_reply(result.row_grads, result.dense_grad, result.loss, result.n_ratings, t6 - t2)
            t7 = time.perf_counter()
            for name, seconds in (("client_env", t1 - t0), ("on_request", t2 - t1), ("parse update", t3 - t2),
                                  ("local data + load private", t4 - t3), ("train_locally", t5 - t4),
                                  ("save private", t6 - t5), ("update reply", t7 - t6)):
                parts[name] += seconds
            calls += 1
    return {name: seconds / calls for name, seconds in parts.items()}


def full_handler(cfg: AppConfig, users: np.ndarray) -> float:
    """Mean seconds of one whole ``on_update`` (request first, so its state is set)."""
    _, _, table, dense = _public_model(cfg)
    total = 0.0
    for user in users:
        context = _context(user)
        env = client_env(cfg, context)
        reply = plaintext.on_request(schema.request_message(1, None), context, env)
        message = schema.update_message(1, table[reply["req"]["items"].numpy()], dense)
        start = time.perf_counter()
        plaintext.on_update(message, context, client_env(cfg, context))
        total += time.perf_counter() - start
    return total / len(users)


def batched_step(cfg: AppConfig, users: np.ndarray, max_pad_ratio: float | None, repeats: int,
                 clip: float | None = None) -> float:
    """Best-of-``repeats`` seconds of ``train_batch`` on all ``users`` (their full train sets), bucketed or not;
    with ``clip``, of the record-level clipped step (``train_batch_clipped``) instead."""
    split, spec, table, dense = _public_model(cfg)
    data = [split.user(int(u)) for u in users]
    lengths = np.array([len(d.train_items) for d in data], dtype=np.int64)
    state = PrivateState.initial(spec, users, cfg.seed)
    groups = [np.arange(len(users))] if max_pad_ratio is None else length_buckets(lengths, max_pad_ratio)
    prepared = []
    for group in groups:  # set-up (the engine's job) is not timed: rows, batch, state of each bucket
        items = [data[b].train_items for b in group]
        rows, _ = gather_rows(table, items)
        flat_items = np.concatenate(items)
        batch = make_batch_flat(lengths[group], np.concatenate([np.arange(len(i)) for i in items]),
                                np.concatenate([data[b].train_ratings for b in group]),
                                split.user_features[users[group]], split.item_features[flat_items])
        prepared.append((rows, batch, state.take(group)))
    train = train_batch if clip is None else partial(train_batch_clipped, clip=clip)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for rows, batch, private in prepared:
            train(spec, rows, dense, private, batch, float(cfg.model.lr), float(cfg.model.reg),
                  int(cfg.train.local_user_steps))
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml_100k")
    parser.add_argument("--data-path", default="../shared/data/ml-100k")
    parser.add_argument("--model", default="mf")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dp-clip", type=float, default=None,
                        help="also time the record-level clipped (DP) step with this clip")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top functions of on_update")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (Ray gives each simulation actor 1, as OMP_NUM_THREADS)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = _config(args)
    users = np.arange(args.clients)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.dataset} {args.model}, {args.clients} users, "
          f"{cfg.train.local_user_steps} private Adam steps, {torch.get_num_threads()} torch thread(s)")
    handler_parts(cfg, users[:5], 1)  # warm-up: dataset load, torch kernels
    parts = handler_parts(cfg, users, args.repeats)
    print("\nsingle-user update handler, ms per call (parts timed separately)")
    for name, seconds in parts.items():
        print(f"  {name:28s} {1e3 * seconds:8.3f}")
    print(f"  {'sum':28s} {1e3 * sum(parts.values()):8.3f}")
    print(f"  {'plaintext.on_update (whole)':28s} {1e3 * full_handler(cfg, users):8.3f}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(full_handler, cfg, users)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
        print(out.getvalue())
    print(f"\nbatched train_batch of {args.clients} users (full train sets), best of {args.repeats}, ms")
    for label, ratio in (("one padded batch", None), ("length buckets, pad <= 1.5x", 1.5),
                         ("length buckets, pad <= 1.2x", 1.2)):
        print(f"  {label:28s} {1e3 * batched_step(cfg, users, ratio, args.repeats):8.2f}")
        if args.dp_clip is not None:
            clipped = batched_step(cfg, users, ratio, args.repeats, args.dp_clip)
            print(f"  {'  record-clipped (DP)':28s} {1e3 * clipped:8.2f}")


if __name__ == "__main__":
    main()
