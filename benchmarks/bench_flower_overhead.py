"""Flower's per-round overhead against its floor, 100 clients per round (plaintext MF on ml_100k).

One Flower simulation (Ray backend, one virtual SuperNode per user: 943 on
ml_100k) runs, in the same ServerApp and on the same warm actors:

1. the real ``plaintext`` rounds, recording the size of every message of
   every phase of a round (2 phases x 100 clients, and the registration of
   the round's users not sampled before: nodes are assigned lazily) as
   Flower serialises it;
2. the floor: a trivial ClientApp handler exchanging messages of the same
   count and sizes with the same nodes, replaying each real round (a payload
   of zeros sized to the real message down, and the real reply's size up).

The real round splits into client compute (the clients' self-reported
handler seconds summed, divided by the parallel workers), server compute,
and the rest — message passing, (de)serialisation, Ray scheduling — which is
Flower's overhead. The floor round is all overhead. Round 1 of each is a
warm-up and left out of the means.

What the floor pays too: per message, Flower's Ray backend
(flwr/server/superlink/fleet/vce/backend/raybackend.py, ``process_message``:
``a.run.remote(a_fn, mssg, cid, state)``) pickles the Message, the node's
Context and the ClientApp loader closure, which captures the whole ClientApp
(its mods, handlers and our bound AppConfig), and ships the Context back.
The floor uses the same ClientApp object, so it pays all of this; it does
not pay our mod's and handlers' work (client_env, Context.state records, the
reply's Arrays). ``--profile-dir`` profiles every message inside the actors.

    python -m benchmarks.bench_flower_overhead --dataset ml_100k --data-path ../shared/data/ml-100k --rounds 4
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from recdata.dataset import dataset_meta
from schemas.config import AppConfig
from schemas.validation import array_record
from simulations.client_app import make_client_app
from simulations.config import compose_config, to_app_config
from simulations.run import flower_backend_config
from simulations.server_app import run_server
from strategies.exchange import content_nbytes

FLOOR = "floor"  # action of the trivial handler: message type "query.floor"


def floor_message(payload: int, reply: int) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"reply": int(reply)}),
                       "p": array_record(x=np.zeros(max(int(payload), 0), np.uint8))})


def floor_reply(size: int) -> RecordDict:
    return RecordDict({"p": array_record(x=np.zeros(max(int(size), 0), np.uint8))})


BASE_DOWN = content_nbytes(floor_message(0, 0))  # framing bytes of an empty floor message
BASE_UP = content_nbytes(floor_reply(0))


def add_floor_handler(app) -> None:
    """The floor's ClientApp side: reply with zeros of the requested size, nothing else."""

    @app.query(FLOOR)
    def floor(msg: Message, context: Context) -> Message:
        n = int(msg.content["cfg"]["reply"]) - BASE_UP
        return Message(floor_reply(n), reply_to=msg)


_PROFILE: dict[str, Any] = {}  # per actor process: the profiler and per-message-type timings


def profile_mod(directory: str):
    """A client mod profiling every message inside the Ray actor (``--profile-dir``): evidence, not a fix.

    Ray pickles the ClientApp (and this closure, by value) with every message, so the state that must
    persist in the actor between messages is reached by importing the module there. Per message type it records the
    wall seconds inside the ClientApp and the pickled size of the Context Flower ships to and from the actor.
    """
    import cProfile
    import pickle

    def mod(msg: Message, context: Context, call_next):
        # cloudpickle ships this closure by value, with copies of its globals: reach the actor's own module
        from benchmarks.bench_flower_overhead import _PROFILE

        if "prof" not in _PROFILE:
            import torch

            _PROFILE.update(prof=cProfile.Profile(), n=0, t=defaultdict(float), c=defaultdict(int),
                            ctx=defaultdict(int), threads=torch.get_num_threads())
        kind = msg.metadata.message_type
        start = time.perf_counter()
        _PROFILE["prof"].enable()
        try:
            return call_next(msg, context)
        finally:
            _PROFILE["prof"].disable()
            _PROFILE["t"][kind] += time.perf_counter() - start
            _PROFILE["c"][kind] += 1
            _PROFILE["ctx"][kind] += len(pickle.dumps(context))
            _PROFILE["n"] += 1
            if _PROFILE["n"] % 100 == 0:
                pid = os.getpid()
                _PROFILE["prof"].dump_stats(os.path.join(directory, f"actor-{pid}.prof"))
                with open(os.path.join(directory, f"actor-{pid}.txt"), "w") as fh:
                    fh.write(f"torch threads {_PROFILE['threads']}\n")
                    for k in sorted(_PROFILE["c"]):
                        c = _PROFILE["c"][k]
                        fh.write(f"{k}: {c} msgs, {_PROFILE['t'][k] / c * 1e3:.3f} ms/msg in app, "
                                 f"context {_PROFILE['ctx'][k] / c:.0f} B pickled\n")

    return mod


class Recorder:
    """Wraps ``grid.send_and_receive``: the byte sizes of every training-phase message, per round."""

    def __init__(self, grid: Grid) -> None:
        self.inner = grid.send_and_receive
        # round -> list of phases; a phase is [(node_id, bytes down, bytes up)]
        self.phases: dict[int, list[list[tuple[int, int, int]]]] = defaultdict(list)

    def __call__(self, messages, *, timeout: float | None = None):
        messages = list(messages)
        replies = list(self.inner(messages, timeout=timeout))
        rnd = round_of_group(messages[0].metadata.group_id if messages else "")
        if rnd is not None:
            up = {r.metadata.src_node_id: content_nbytes(r.content) for r in replies if not r.has_error()}
            self.phases[rnd].append([(m.metadata.dst_node_id, content_nbytes(m.content),
                                      up.get(m.metadata.dst_node_id, 0)) for m in messages])
        return replies


def round_of_group(group: str) -> int | None:
    """The training round a phase belongs to: training phases use the round number as group id, and a
    round's lazy registration of its newly sampled users "register-<round>" (strategies.base.UserExchange),
    which the floor must replay too: in the first rounds most sampled users are new, so it is a phase of
    about as many messages as the round's others. Evaluation ("eval-N") and start-up phases are not rounds."""
    if group.isdigit():
        return int(group)
    tail = group.removeprefix("register-")
    return int(tail) if tail != group and tail.isdigit() else None


def replay_floor(grid: Grid, phases: list[list[tuple[int, int, int]]], timeout: float) -> tuple[float, int, int]:
    """One floor round: the same phases, nodes and byte sizes; return (wall seconds, bytes down, bytes up)."""
    seconds, down_bytes, up_bytes = 0.0, 0, 0
    for phase in phases:
        msgs = [Message(content=floor_message(down - BASE_DOWN, up), dst_node_id=node, message_type=f"query.{FLOOR}")
                for node, down, up in phase]
        down_bytes += sum(content_nbytes(m.content) for m in msgs)  # checked outside the timed part
        start = time.perf_counter()
        replies = list(grid.send_and_receive(msgs, timeout=timeout))
        seconds += time.perf_counter() - start
        bad = [r for r in replies if r.has_error()]
        if bad or len(replies) != len(msgs):
            raise RuntimeError(f"floor phase: {len(bad)} errors, {len(replies)}/{len(msgs)} replies")
        up_bytes += sum(content_nbytes(r.content) for r in replies)
    return seconds, down_bytes, up_bytes


def run_bench(cfg: AppConfig, profile_dir: str | None = None) -> dict[str, Any]:
    from flwr.simulation import run_simulation

    meta = dataset_meta(cfg)
    out: dict[str, Any] = {"n_nodes": meta.n_users}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        recorder = Recorder(grid)
        grid.send_and_receive = recorder  # type: ignore[method-assign]  # instance attribute: Exchange calls it
        with tempfile.TemporaryDirectory() as run_dir:
            out["real"] = run_server(grid, cfg, run_dir)
        grid.send_and_receive = recorder.inner  # type: ignore[method-assign]
        out["phases"] = dict(recorder.phases)
        out["floor"] = {rnd: replay_floor(grid, recorder.phases[rnd], cfg.simulation.reply_timeout)
                        for rnd in sorted(recorder.phases)}

    mods = []
    if profile_dir:
        os.makedirs(profile_dir, exist_ok=True)
        mods.append(profile_mod(os.path.abspath(profile_dir)))
    client = make_client_app(cfg, mods=mods)
    add_floor_handler(client)
    backend_config = flower_backend_config(cfg)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=server, client_app=client, num_supernodes=meta.n_users,
                       backend_config=backend_config)
    out["total_seconds"] = time.perf_counter() - start
    if "floor" not in out:
        raise RuntimeError("the ServerApp did not finish (see the log above)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml_100k")
    parser.add_argument("--data-path", default="../shared/data/ml-100k")
    parser.add_argument("--model", default="mf")
    parser.add_argument("--rounds", type=int, default=4, help="real rounds (round 1 is a warm-up, left out)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--profile-dir", default=None,
                        help="profile each message inside the Ray actors (cProfile + per-type timings) into this folder")
    args = parser.parse_args()
    logging.getLogger("secrec").setLevel(logging.INFO)
    overrides = [f"dataset={args.dataset}", "strategy=plaintext", f"model={args.model}", f"rounds={args.rounds}",
                 f"clients_per_round={args.clients}", "train.eval_every=0", "train.eval_clients=10"]
    if args.dataset != "ml_latest_small":
        overrides.append(f"dataset.path={args.data_path}")
    cfg = to_app_config(compose_config(overrides))
    res = run_bench(cfg, args.profile_dir)
    workers = int(os.cpu_count() or 2)
    records = {r["round"]: r for r in res["real"]["records"]}
    rounds = [r for r in sorted(records) if r > 1] or sorted(records)
    n = len(rounds)
    msgs = sum(len(p) for r in rounds for p in res["phases"][r]) / n
    down = sum(d for r in rounds for p in res["phases"][r] for _, d, _ in p) / n
    up = sum(u for r in rounds for p in res["phases"][r] for _, _, u in p) / n
    wall = sum(records[r]["round_seconds"] for r in rounds) / n
    server = sum(records[r]["server_seconds"] for r in rounds) / n
    client_sum = sum((records[r]["client_seconds_mean"] or 0.0) * records[r]["clients"] for r in rounds) / n
    overhead = max(wall - server - client_sum / workers, 0.0)
    floor = sum(res["floor"][r][0] for r in rounds) / n
    floor_down = sum(res["floor"][r][1] for r in rounds) / n
    floor_up = sum(res["floor"][r][2] for r in rounds) / n
    print(f"\nFlower simulation, {args.dataset}, {res['n_nodes']} nodes, {args.clients} clients/round, {workers} "
          f"workers, plaintext {args.model}; means over rounds {rounds[0]}..{rounds[-1]} (round 1 = warm-up); "
          f"{msgs:.0f} messages/round, {down / 2**20:.3f} MiB down + {up / 2**20:.3f} MiB up per round "
          f"(floor: {floor_down / 2**20:.3f} + {floor_up / 2**20:.3f} MiB)")
    head = ("run", "round s", "client cpu s", "client s/workers", "server s", "flower overhead s", "overhead ms/msg")
    rows = [("real", wall, client_sum, client_sum / workers, server, overhead, overhead / msgs * 1e3),
            ("floor (trivial ClientApp, same messages)", floor, 0.0, 0.0, 0.0, floor, floor / msgs * 1e3)]
    print(" | ".join(head))
    for name, *vals in rows:
        print(" | ".join([name] + [f"{v:.3f}" for v in vals]))
    print(f"ratio real/floor: round {wall / floor:.2f}x, Flower overhead {overhead / floor:.2f}x; "
          f"simulation total {res['total_seconds']:.1f} s (incl. Ray start and the floor's replay)")


if __name__ == "__main__":
    main()
