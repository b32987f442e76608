"""The batched engine's round loop: sampling, the evaluation schedule and the records.

The Flower path's loop is :meth:`strategies.base.RecStrategy.start`; this one
keeps what decides a run's numbers identical to it - the users of each round
and the evaluated users come from the protocol's own strategy object
(``sample_users`` / ``evaluation_users``), evaluation happens on the same
rounds (every ``train.eval_every`` and the last) - and writes records with the
same keys, plus ``engine: "batched"`` and ``bytes_source: "computed"`` (bytes
per client come from the protocol's size function, not a meter).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.driver import Driver
from engine.registry import get_driver
from recdata import FederatedSplit
from recdata.dataset import DatasetMeta
from schemas.config import AppConfig
from strategies.base import ranking_fields

log = logging.getLogger("secrec.engine")
ENGINE = "batched"


def is_evaluation_round(rnd: int, rounds: int, eval_every: int) -> bool:
    """Evaluate every ``eval_every`` rounds (0: never) and after the last round, as the Flower loop does."""
    return rnd == rounds or bool(eval_every and rnd % eval_every == 0)


def evaluation_record(driver: Driver, users: np.ndarray) -> dict[str, Any]:
    """Test RMSE from the summed SSE and count over ``users`` (as the Flower path's evaluation)."""
    start = time.perf_counter()
    sse, count = driver.evaluate(users)
    ranking = ranking_fields(driver.ranking(users), driver.cfg.train)
    return {"test_rmse": math.sqrt(sse / count) if count else float("nan"), **ranking,
            "eval_clients": int(len(users)), "eval_seconds": time.perf_counter() - start}


def run_batched(cfg: AppConfig, split: FederatedSplit, meta: DatasetMeta,
                on_round: Callable[[dict[str, Any]], None] | None = None,
                resume: tuple[int, dict[str, np.ndarray], list[dict[str, Any]], list[dict[str, Any]]] | None = None,
                on_checkpoint: Callable[[int, dict[str, np.ndarray]], None] | None = None) -> dict[str, Any]:
    """Run rounds 1..cfg.rounds on the batched engine; return {"records", ...} like the Flower strategy's start().

    ``on_round`` is called with each round's record as the round ends (the entry point appends it to
    records.jsonl). ``on_checkpoint(round, arrays)`` is called every ``cfg.checkpoint_every`` rounds with
    the driver's :meth:`~engine.driver.Driver.checkpoint_state`. ``resume`` = (checkpoint round, its
    arrays, the records of rounds 1..that round) continues from there: the driver's state is restored,
    the released rounds are accounted again (DP), and the run ends as the uninterrupted one would, since
    the sampled users, the evaluated users and the users' initial states are functions of (seed, round, user).
    """
    t_setup = time.perf_counter()
    driver = get_driver(cfg.protocol)(cfg, split, meta)
    sampler = driver.sampler()
    first_round, records = 1, []
    if resume is not None:
        checkpoint_round, arrays, prior, released = resume
        driver.restore_state(arrays)
        first_round, records = checkpoint_round + 1, list(prior)
        for record in released:  # as the Flower loop does: a resumed run re-accounts what it already released
            sampler.dp_fields(record, int(record["clients"]))
    setup_seconds = time.perf_counter() - t_setup
    rounds, eval_every, every = int(cfg.rounds), int(cfg.train.eval_every), int(cfg.checkpoint_every)
    eval_users: np.ndarray | None = None
    for rnd in range(first_round, rounds + 1):
        sampler.round = rnd
        users = np.asarray(sampler.sample_users(rnd), dtype=np.int64)
        start = time.perf_counter()
        metrics = dict(driver.train_round(rnd, users))
        wall = time.perf_counter() - start
        record: dict[str, Any] = {
            "round": rnd, "clients": int(len(users)), "engine": ENGINE, "bytes_source": "computed",
            "bytes_down_per_client": metrics.pop("bytes_down"), "bytes_up_per_client": metrics.pop("bytes_up"),
            **metrics, **sampler.dp_fields(metrics, len(users)),
            "client_seconds_mean": None, "client_seconds_max": None, "dropped": 0, "dropped_users": {},
            "server_seconds": wall, "round_seconds": wall, "test_rmse": None,
        }
        if is_evaluation_round(rnd, rounds, eval_every):
            if eval_users is None:
                eval_users = np.asarray(sampler.evaluation_users(), dtype=np.int64)
            record.update(evaluation_record(driver, eval_users))
        records.append(record)
        sampler._log_round(record)  # the Flower loop's log line, so both engines print alike
        if on_round is not None:
            on_round(record)
        if every and on_checkpoint is not None and rnd % every == 0:
            on_checkpoint(rnd, driver.checkpoint_state())
    resumed = {"resumed_from_round": first_round - 1} if resume is not None else {}  # as the Flower loop's
    return {"records": records, "setup_seconds": setup_seconds, "engine": ENGINE, **resumed, **driver.summary(),
            **sampler.dp_summary(),
            "evaluated_users": [int(u) for u in sampler.evaluation_users()]}
