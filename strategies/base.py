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
import os
import time
from contextlib import nullcontext
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from recdata.dataset import DatasetMeta
from schemas import common
from schemas.config import AppConfig
from strategies.exchange import Exchange, Meter, client_seconds_of, summarize_meter
from twoserver.link import Server1Unavailable

log = logging.getLogger("secrec.strategy")


def weighted_train_loss(uploads) -> float:
    """Mean training loss over the round's ratings: each upload's loss weighted by its n_ratings."""
    ups = list(uploads)
    total = sum(u.n_ratings for u in ups)
    return float(sum(u.loss * u.n_ratings for u in ups) / total) if total else float("nan")


EvalSums = tuple[float, int, int, "list[float] | None"]


@dataclass
class RoundState:
    """Base of every strategy's round state: round, users, the metrics the round reports, a refusal."""

    rnd: int
    users: list[int]
    metrics: dict[str, Any] = field(default_factory=dict)
    refused: str | None = None

    def refuse(self, reason: str) -> None:
        """Stop the round without updating the model (e.g. fewer than ``min_users`` in an aggregate)."""
        self.refused = reason


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

    @property
    def stages(self) -> tuple[Callable[[Any], None], ...]:
        """The round's named stage methods, in the paper's order (as Flower's SecAgg+ workflow)."""
        return ()

    def new_round_state(self, rnd: int, users: list[int]) -> RoundState:
        """The state the stages of one round read and fill (subclasses return their dataclass)."""
        return RoundState(rnd, users)

    def train_round(self, rnd: int, users: list[int]) -> dict[str, Any]:
        """Run one round with the sampled users; return at least ``train_loss``.

        Default: ``for stage in self.stages: stage(state)`` over
        :meth:`new_round_state`; a stage may refuse the round
        (:meth:`RoundState.refuse`), which stops it without a model update.
        Strategies without stages override this method.
        """
        if not self.stages:
            raise NotImplementedError(f"{type(self).__name__} defines neither stages nor train_round")
        state = self.new_round_state(rnd, users)
        for stage in self.stages:
            stage(state)
            if state.refused is not None:
                log.warning("[%s] round %d refused at %s: %s", self.name, rnd, stage.__name__, state.refused)
                return {"train_loss": None, "refused": state.refused}
        return state.metrics

    @abstractmethod
    def evaluation_content(self) -> RecordDict:
        """The public model as sent to users for local test evaluation."""

    def server_state_summary(self) -> dict[str, Any]:
        """Extra final results (e.g. key size); default none."""
        return {}

    # ------------------------------------------------------------- the loop
    def start(self, grid: Grid, on_round: Callable[[dict[str, Any]], None] | None = None,
              first_round: int = 1, prior_records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Register users, run rounds ``first_round..rounds``, evaluate; return all records.

        ``on_round`` is called with each round's record as the round ends: the
        entry points append it to the run folder and checkpoint there, so a run
        that dies keeps every finished round (DESIGN "Nothing lost"). A resumed
        run passes ``first_round`` (checkpoint round + 1) and the records it
        already has; the strategy's model state was restored before this call.
        Nothing else needs restoring for the loop: the sampled users are a
        function of (seed, round) (:meth:`sample_users`).

        If server 1 becomes unreachable mid-run, the loop stops at that round
        (its partial work is not recorded) and returns what is done, with
        ``stopped`` naming server 1, instead of losing the finished rounds.
        """
        timeout = self.cfg.simulation.reply_timeout
        node_of_user = self._register(grid, timeout)
        self.exchange = Exchange(grid, node_of_user, timeout, self.meter)
        self.users = sorted(node_of_user)
        records: list[dict[str, Any]] = list(prior_records or [])
        eval_every = int(self.cfg.train.eval_every)
        rounds = int(self.cfg.rounds)
        stopped: str | None = None
        # A bar people can watch; tqdm's disable=None turns it off when stderr is not a TTY (pipes, CI), and
        # it is off under pytest too (pytest -s keeps the TTY).
        quiet = True if "PYTEST_CURRENT_TEST" in os.environ else None
        bar = tqdm(total=rounds, initial=first_round - 1, desc=self.name, unit="round", disable=quiet,
                   dynamic_ncols=True)
        t_setup = time.perf_counter()
        try:
            self.setup()
        except Server1Unavailable as exc:
            bar.close()
            raise Server1Unavailable(f"server 1 is unavailable before round {first_round}: {exc}") from exc
        setup_seconds = time.perf_counter() - t_setup
        with bar, (logging_redirect_tqdm() if not bar.disable else nullcontext()):
            for rnd in range(first_round, rounds + 1):
                self.round = rnd
                users = self.sample_users(rnd)
                self.meter.reset()
                start = time.perf_counter()
                try:
                    metrics = self.train_round(rnd, users)
                    wall = time.perf_counter() - start
                    evaluated = rnd == rounds or bool(eval_every and rnd % eval_every == 0)
                    evaluation = self.evaluate(rnd) if evaluated else {}
                except Server1Unavailable as exc:
                    stopped = (f"server 1 became unavailable in round {rnd}: {exc}; rounds up to {rnd - 1} "
                               "are kept in the run folder (resume=true continues from the last checkpoint)")
                    log.error("[%s] %s", self.name, stopped)
                    break
                participants = [u for u in users if u not in self.meter.dropped]
                record: dict[str, Any] = {"round": rnd, "clients": len(participants), **metrics}
                record.update(summarize_meter(self.meter, participants))
                record["dropped_users"] = {str(u): reason for u, reason in self.meter.dropped.items()}
                record["server_seconds"] = max(wall - self.meter.wait_seconds, 0.0)
                record["round_seconds"] = wall
                record["test_rmse"] = None
                record.update(evaluation)
                records.append(record)
                self._log_round(record)
                bar.set_postfix(_progress_fields(records), refresh=False)
                bar.update(1)
                if on_round is not None:
                    on_round(record)
        out: dict[str, Any] = {"records": records, "setup_seconds": setup_seconds, **self.server_state_summary()}
        if first_round > 1:
            out["resumed_from_round"] = first_round - 1
        if stopped is not None:
            out["stopped"] = stopped
        return out

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
        """Send the public model to users, who report their local test error sums.

        How the sums reach the server is the protocol's: in the clear per user
        (plaintext twins, the default here) or as a secure sum over users
        (two-server protocols override :meth:`evaluation_message`,
        :meth:`parse_evaluation` and :meth:`evaluation_sums`).
        """
        assert self.exchange is not None
        content = self.evaluation_content()
        users = self.evaluation_users()
        eval_meter = Meter()
        ex = Exchange(self.exchange.grid, self.exchange.node_of_user, self.exchange.timeout, eval_meter)
        replies = ex.phase(self.evaluate_type, {u: self.evaluation_message(rnd, content) for u in users},
                           f"eval-{rnd}", self.parse_evaluation)
        sums = self.evaluation_sums(rnd, replies)
        n = max(len(users), 1)
        out: dict[str, Any] = {"eval_bytes_down_per_client": sum(eval_meter.down.values()) / n}
        if isinstance(sums, str):
            log.warning("[%s] evaluation of round %d refused: %s", self.name, rnd, sums)
            return {**out, "test_rmse": None, "eval_clients": 0, "eval_refused": sums,
                    "eval_client_seconds_max": None}
        sse, count, n_users, seconds = sums
        return {
            **out,
            "test_rmse": math.sqrt(sse / count) if count else float("nan"),
            "eval_clients": n_users,
            "eval_client_seconds_max": max(seconds) if seconds else None,
        }

    def evaluation_message(self, rnd: int, content: RecordDict) -> RecordDict:
        """What one evaluated user receives (default: the public model itself)."""
        return content

    def parse_evaluation(self, user: int, content: RecordDict) -> Any:
        """Validate one evaluation reply (default: a plaintext (sse, count, seconds) triple)."""
        return common.parse_evaluation_reply(content)

    def evaluation_sums(self, rnd: int, replies: dict[int, Any]) -> EvalSums | str:
        """(sum SSE, sum count, users summed, per-user seconds or None), or a refusal reason."""
        return (sum(r[0] for r in replies.values()), sum(r[1] for r in replies.values()), len(replies),
                [r[2] for r in replies.values()])

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
        rmse = "" if r.get("test_rmse") is None else f" test_rmse={r['test_rmse']:.4f}"
        loss = r.get("train_loss")
        loss_s = "refused" if loss is None else f"{loss:.4f}"
        secs = r.get("client_seconds_mean")
        secs_s = "n/a" if secs is None else f"{secs:.3f}s"
        log.info(
            "[%s] round %d/%d clients=%d train_loss=%s%s up=%.1fKiB down=%.1fKiB client=%s server=%.3fs",
            self.name, r["round"], self.cfg.rounds, r["clients"], loss_s, rmse,
            r["bytes_up_per_client"] / 1024, r["bytes_down_per_client"] / 1024, secs_s, r["server_seconds"],
        )


def _progress_fields(records: list[dict[str, Any]]) -> dict[str, str]:
    """The progress bar's postfix: latest train loss and latest test RMSE (and epsilon when reported)."""
    last = records[-1]
    fields: dict[str, str] = {}
    if last.get("train_loss") is not None:
        fields["loss"] = f"{last['train_loss']:.4f}"
    rmse = next((r["test_rmse"] for r in reversed(records) if r.get("test_rmse") is not None), None)
    if rmse is not None:
        fields["rmse"] = f"{rmse:.4f}"
    if last.get("epsilon") is not None:
        fields["eps"] = f"{last['epsilon']:.3g}"
    return fields

