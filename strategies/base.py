"""The round loop every protocol shares, written once.

Flower's built-in ``Strategy.start()`` runs one train and one evaluate message
per round. Our protocols need several phases per round (SecEmb: retrieval,
then aggregation; FedMF: key distribution before the first round), so each
strategy owns its round loop here, as the design notes allow, and only fills
in :meth:`RecStrategy.train_round` (and optionally :meth:`RecStrategy.setup`).

Everything a twin comparison needs to be identical is decided here, from the
seed alone: which users register, which users are sampled each round, when
the test set is evaluated. A secure strategy and its plaintext twin therefore
see the same users in the same rounds.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from recdata.dataset import DatasetMeta
from schemas import common
from strategies.exchange import Exchange, Meter, client_seconds_of, summarize_meter
from schemas.config import AppConfig

log = logging.getLogger("secrec.strategy")



def weighted_train_loss(uploads) -> float:
    """Mean training loss over the round's ratings: each upload's loss weighted by its n_ratings."""
    ups = list(uploads)
    total = sum(u.n_ratings for u in ups)
    return float(sum(u.loss * u.n_ratings for u in ups) / total) if total else float("nan")

class RecStrategy(ABC):
    """Base of all server-side protocols: registration, sampling, rounds, evaluation."""

    name = "base"
    evaluate_type = common.EVALUATE  # message type of the evaluation phase

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        self.cfg = cfg
        self.meta = meta
        self.meter = Meter()
        self.exchange: Exchange | None = None
        self.users: list[int] = []
        self.round = 0

    # ----------------------------------------------------------------- hooks
    def setup(self) -> None:
        """Protocol set-up before round 1 (e.g. key distribution). Default: nothing."""

    @abstractmethod
    def train_round(self, rnd: int, users: list[int]) -> dict[str, float]:
        """Run one round with the sampled users; return at least ``train_loss``."""

    @abstractmethod
    def evaluation_content(self) -> RecordDict:
        """The public model as sent to users for local test evaluation."""

    def server_state_summary(self) -> dict[str, Any]:
        """Extra final results (e.g. key size); default none."""
        return {}

    # ------------------------------------------------------------- the loop
    def start(self, grid: Grid, on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Register users, run ``rounds`` rounds, evaluate; return all records."""
        timeout = self.cfg.simulation.reply_timeout
        node_of_user = self._register(grid, timeout)
        self.exchange = Exchange(grid, node_of_user, timeout, self.meter)
        self.users = sorted(node_of_user)
        t_setup = time.perf_counter()
        self.setup()
        setup_seconds = time.perf_counter() - t_setup
        records: list[dict[str, Any]] = []
        eval_every = int(self.cfg.train.eval_every)
        rounds = int(self.cfg.rounds)
        for rnd in range(1, rounds + 1):
            self.round = rnd
            users = self.sample_users(rnd)
            self.meter.reset()
            start = time.perf_counter()
            metrics = self.train_round(rnd, users)
            wall = time.perf_counter() - start
            participants = [u for u in users if u not in self.meter.dropped]
            record: dict[str, Any] = {"round": rnd, "clients": len(participants), **metrics}
            record.update(summarize_meter(self.meter, participants))
            record["dropped_users"] = {str(u): reason for u, reason in self.meter.dropped.items()}
            record["server_seconds"] = max(wall - self.meter.wait_seconds, 0.0)
            record["round_seconds"] = wall
            record["test_rmse"] = None
            if rnd == rounds or (eval_every and rnd % eval_every == 0):
                record.update(self.evaluate(rnd))
            records.append(record)
            self._log_round(record)
            if on_round is not None:
                on_round(record)
        return {"records": records, "setup_seconds": setup_seconds, **self.server_state_summary()}

    # ------------------------------------------------------------ pieces
    def sample_users(self, rnd: int) -> list[int]:
        """The users of round ``rnd``: a function of (seed, round) only."""
        k = min(int(self.cfg.clients_per_round), len(self.users))
        rng = np.random.default_rng([int(self.cfg.seed), rnd])
        chosen = rng.choice(len(self.users), size=k, replace=False)
        return sorted(self.users[i] for i in chosen)

    def evaluation_users(self) -> list[int]:
        """Users whose local test sets are evaluated: all, or a fixed seeded sample."""
        n = self.cfg.train.eval_clients
        if n is None or n >= len(self.users):
            return list(self.users)
        rng = np.random.default_rng([int(self.cfg.seed), 0xE7A1])
        return sorted(self.users[i] for i in rng.choice(len(self.users), size=int(n), replace=False))

    def evaluate(self, rnd: int) -> dict[str, Any]:
        """Send the public model to users, who report their local test error sums."""
        assert self.exchange is not None
        content = self.evaluation_content()
        users = self.evaluation_users()
        eval_meter = Meter()
        ex = Exchange(self.exchange.grid, self.exchange.node_of_user, self.exchange.timeout, eval_meter)
        replies = ex.phase(self.evaluate_type, {u: content for u in users}, f"eval-{rnd}",
                           lambda _u, c: common.parse_evaluation_reply(c))
        sse = sum(r[0] for r in replies.values())
        count = sum(r[1] for r in replies.values())
        rmse = math.sqrt(sse / count) if count else float("nan")
        n = max(len(users), 1)
        return {
            "test_rmse": rmse,
            "eval_clients": len(replies),
            "eval_bytes_down_per_client": sum(eval_meter.down.values()) / n,
            "eval_client_seconds_max": max((r[2] for r in replies.values()), default=0.0),
        }

    def record_client_seconds(self, user: int, seconds: float) -> None:
        client_seconds_of(self.meter, user, seconds)

    def _reject(self, user: int, reason: str) -> None:
        """Leave ``user`` out of this round (used for rejections outside a Flower phase)."""
        assert self.exchange is not None
        self.exchange.drop(user, reason)

    def _register(self, grid: Grid, timeout: float | None) -> dict[int, int]:
        """Ask every node which user it holds; wait until all users are present."""
        expected = self.meta.n_users
        deadline = time.monotonic() + float(self.cfg.simulation.register_timeout)
        node_ids = list(grid.get_node_ids())
        while len(node_ids) < expected and time.monotonic() < deadline:
            time.sleep(1.0)
            node_ids = list(grid.get_node_ids())
        if len(node_ids) < expected:
            raise RuntimeError(f"only {len(node_ids)} of {expected} nodes connected before the registration timeout")
        meter = Meter()
        ex = Exchange(grid, {i: nid for i, nid in enumerate(node_ids)}, timeout, meter)
        replies = ex.phase(common.REGISTER, {i: RecordDict({"run": ConfigRecord({"users": expected})})
                                             for i in range(len(node_ids))},
                           "register", lambda _i, c: common.parse_register_reply(c, expected), count_bytes=False)
        node_of_user: dict[int, int] = {}
        for index, user in replies.items():
            if user in node_of_user:
                raise RuntimeError(f"two nodes claim user {user}; check each node's partition-id")
            node_of_user[user] = node_ids[index]
        if len(node_of_user) < expected:
            log.warning("%d of %d users registered; training with those", len(node_of_user), expected)
        return node_of_user

    def _log_round(self, r: dict[str, Any]) -> None:
        rmse = "" if r["test_rmse"] is None else f" test_rmse={r['test_rmse']:.4f}"
        log.info(
            "[%s] round %d/%d clients=%d train_loss=%.4f%s up=%.1fKiB down=%.1fKiB client=%.3fs server=%.3fs",
            self.name, r["round"], self.cfg.rounds, r["clients"], r.get("train_loss", float("nan")), rmse,
            r["bytes_up_per_client"] / 1024, r["bytes_down_per_client"] / 1024, r["client_seconds_mean"],
            r["server_seconds"],
        )
