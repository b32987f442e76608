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

Start cost. On a deployment every SuperNode is asked once which user it holds
(its own ``partition-id``). In the simulation engine that would be one
message per user before round 1 (~30 min at 162,541 users), and Flower gives
virtual nodes random ids with no public link to their ``partition-id``; so
there the users are 0..n_users-1 from the dataset meta and a user's node is
told which user it simulates the first time the user is sampled or
evaluated (:class:`UserExchange`), never before: start and round cost do
not grow with the population. Flower's simulation engine itself still
polls every virtual node for every stored message (O(nodes x messages) in
Flower 1.41), so ``simulation.node_pool`` puts the users on fewer nodes,
each user with its own part of its node's state.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from abc import ABC
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp import Grid
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from recdata.dataset import DatasetMeta
from schemas import common
from schemas import plaintext as plain_schema
from schemas.config import AppConfig
from strategies.exchange import Exchange, Meter, client_seconds_of, summarize_meter
from strategies.privacy import dp_run_of
from twoserver.link import Server1Unavailable

log = logging.getLogger("secrec.strategy")
NODE_WAIT_PROGRESS_S = 10.0  # while a run waits for its nodes, a progress line this often
T = TypeVar("T")


def simulated_node_count(cfg: AppConfig, n_users: int) -> int:
    """Virtual nodes of ``python -m simulations.run``: one per user, or ``simulation.node_pool`` if fewer."""
    pool = cfg.simulation.node_pool
    return n_users if pool is None else min(int(pool), n_users)


def mean_train_loss(losses: Iterable[float]) -> float:
    """A round's train_loss: the mean over its users of each user's own training loss (unweighted).

    Why not weighted by rating counts: a secure server learns this mean as a sum over the round's
    users, and a sum of counts over a round's users, taken over many rounds of different users, is
    a linear system whose solution is every user's count. Every protocol reports this one mean.
    """
    values = [float(v) for v in losses]
    return float(sum(values) / len(values)) if values else float("nan")


# (SSE, count, users summed, per-user seconds[, summed ranking [hits, ndcg, ranked]]); no 5th: no ranking
EvalSums = tuple  # tuple[float, int, int, list[float] | None] or that plus an np.ndarray [3]


def ranking_fields(sums: np.ndarray | None, train: Any) -> dict[str, float | None]:
    """``hr@k`` and ``ndcg@k`` from summed [hits, ndcg, ranked] (both engines' records; {} with ranking off).

    Averages over the evaluated users that have a ranking case (models.ranking, recdata.ranking).
    """
    if not train.ranking or sums is None:
        return {}
    k, ranked = int(train.ranking_k), float(sums[2])
    return {f"hr@{k}": float(sums[0]) / ranked if ranked else None,
            f"ndcg@{k}": float(sums[1]) / ranked if ranked else None, "ranked_users": int(round(ranked))}


class SetupError(RuntimeError):
    """The run could not start: too few nodes connected, or too few users took part in the protocol's set-up.
    The message says why and what to change; entry points report it as one line."""


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


@dataclass
class NodeDirectory:
    """Which Flower node holds (deployment) or simulates (simulation) each user.

    ``known`` is user -> node id. In simulation ``pool`` is the sorted node ids
    and user u is simulated by ``pool[u % len(pool)]`` once that node accepted
    it (one :data:`schemas.common.REGISTER` assignment message, sent on the
    user's first phase); a pool smaller than the population
    (``simulation.node_pool``) puts several users on one node, each with its
    own state there. Without ``pool`` only registered users have a node.
    """

    users: list[int]
    known: dict[int, int]
    pool: list[int] | None = None

    def simulating_node(self, user: int) -> int:
        assert self.pool is not None
        return self.pool[user % len(self.pool)]


class UserExchange(Exchange):
    """An :class:`Exchange` that finds a user's node through a :class:`NodeDirectory` on first use.

    A phase to users without a node first assigns them their simulated node
    (one message to each of those users only; the reply must name the user,
    which a deployment node holding another user never does) and then runs
    without the users whose node did not accept. In simulation every message
    names its user (:func:`schemas.common.addressed`), as a pooled node needs.
    """

    def __init__(self, grid: Grid, directory: NodeDirectory, timeout: float | None, meter: Meter) -> None:
        super().__init__(grid, directory.known, timeout, meter)
        self.directory = directory

    def addressed(self, user: int, content: RecordDict) -> RecordDict:
        return content if self.directory.pool is None else common.addressed(content, user)

    def phase(self, message_type: str, contents: Mapping[int, RecordDict], group_id: str,
              parse: Callable[[int, RecordDict], T], *, count_bytes: bool = True) -> dict[int, T]:
        new = [u for u in contents if u not in self.node_of_user]
        if new:
            self._assign(new, group_id)
            contents = {u: c for u, c in contents.items() if u in self.node_of_user}
        return super().phase(message_type, contents, group_id, parse, count_bytes=count_bytes)

    def _assign(self, users: list[int], group_id: str) -> None:
        """Give ``users`` their nodes: one already assigned (e.g. by another Exchange) costs no message."""
        for u in users:
            if u in self.directory.known:
                self.node_of_user[u] = self.directory.known[u]
        users = [u for u in users if u not in self.directory.known]
        if not users:
            return
        if self.directory.pool is None:
            for u in users:
                self.drop(u, "no node registered this user")
            return
        n = len(self.directory.users)
        for u in users:
            self.node_of_user[u] = self.directory.simulating_node(u)
        named = super().phase(common.REGISTER, {u: common.assign_message(u, n) for u in users},
                              f"register-{group_id}", lambda _u, c: common.parse_register_reply(c, n),
                              count_bytes=False)
        for u in users:
            if named.get(u) == u:
                self.directory.known[u] = self.node_of_user[u]
                continue
            if u in named:
                self.drop(u, f"node {self.node_of_user[u]} holds user {named[u]} and refused to simulate user {u}")
            del self.node_of_user[u]


class RecStrategy(ABC):
    """Base of all server-side protocols: registration, sampling, rounds, evaluation."""

    name = "base"
    evaluate_type = common.EVALUATE  # message type of the evaluation phase

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        self.cfg = cfg
        self.meta = meta
        self.meter = Meter()
        self.exchange: Exchange | None = None
        self.directory = NodeDirectory([], {})
        self.users: list[int] = []
        self.round = 0
        self.dp = dp_run_of(cfg, meta.n_users)  # None unless dp.enabled (strategies/privacy.py)

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

    def evaluation_content(self) -> RecordDict:
        """The public model as sent to users for local test evaluation (by :meth:`evaluation_replies`)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither evaluation_content nor "
                                  "evaluation_replies")

    def server_state_summary(self) -> dict[str, Any]:
        """Extra final results (e.g. key size); default none."""
        return {}

    # ------------------------------------------------------------- the loop
    def start(self, grid: Grid, on_round: Callable[[dict[str, Any]], None] | None = None,
              first_round: int = 1, prior_records: list[dict[str, Any]] | None = None,
              assign_users: bool = False, released_records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Register users, run rounds ``first_round..rounds``, evaluate; return all records.

        ``on_round`` is called with each round's record as the round ends: the
        entry points append it to the run folder and checkpoint there, so a run
        that dies keeps every finished round (DESIGN "Nothing lost"). A resumed
        run passes ``first_round`` (checkpoint round + 1) and the records it
        already has, and ``released_records``: those and the redone rounds' records,
        which DP accounts again; the strategy's model state was restored before this call.
        Nothing else needs restoring for the loop: the sampled users are a
        function of (seed, round) (:meth:`sample_users`).

        If server 1 becomes unreachable mid-run, the loop stops at that round
        (its partial work is not recorded) and returns what is done, with
        ``stopped`` naming server 1, instead of losing the finished rounds.

        ``assign_users`` (simulation): no registration round; a user's node
        is told which user it simulates when the user is first sampled or
        evaluated (:class:`UserExchange`). Without it (deployment) every node
        is asked which user it holds before round 1.
        """
        timeout = self.cfg.simulation.reply_timeout
        if assign_users:
            nodes = sorted(self._wait_for_nodes(grid, simulated_node_count(self.cfg, self.meta.n_users)))
            self.directory = NodeDirectory(list(range(self.meta.n_users)), {}, nodes)
            log.info("[%s] %d users on %d simulated nodes; a user's node is contacted when the user is first "
                     "sampled", self.name, len(self.directory.users), len(nodes))
        else:
            node_of_user = self._register(grid, timeout)
            self.directory = NodeDirectory(sorted(node_of_user), node_of_user)
        self.exchange = UserExchange(grid, self.directory, timeout, self.meter)
        self.users = self.directory.users
        self._log_evaluation_plan()
        records: list[dict[str, Any]] = list(prior_records or [])
        # a resumed run re-accounts the rounds it already released, redone ones included
        for prior in (records if released_records is None else released_records):
            self.dp_fields(prior, min(int(self.cfg.clients_per_round), len(self.users)))
        eval_every = int(self.cfg.train.eval_every)
        rounds = int(self.cfg.rounds)
        stopped: str | None = None
        # A bar people can watch; tqdm's disable=None turns it off when stderr is not a TTY (pipes, CI), and
        # it is off under pytest too (pytest -s keeps the TTY).
        quiet = True if "PYTEST_CURRENT_TEST" in os.environ else None
        bar = tqdm(total=rounds, initial=first_round - 1, desc=self.name, unit="round", disable=quiet,
                   dynamic_ncols=True)
        self.meter.reset()
        t_setup = time.perf_counter()
        try:
            self.setup()
        except Server1Unavailable as exc:
            bar.close()
            raise Server1Unavailable(f"server 1 is unavailable before round {first_round}: {exc}") from exc
        setup_seconds = time.perf_counter() - t_setup
        setup_wait = min(self.meter.wait_seconds, setup_seconds)  # waiting for users' replies (SecEmb's count)
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
                    t_eval = time.perf_counter()
                    evaluation = self.evaluate(rnd) if evaluated else {}
                    if evaluated:  # the batched engine's records carry the same key
                        evaluation["eval_seconds"] = time.perf_counter() - t_eval
                except Server1Unavailable as exc:
                    stopped = (f"server 1 became unavailable in round {rnd}: {exc}; rounds up to {rnd - 1} "
                               "are kept in the run folder (resume=true continues from the last checkpoint)")
                    log.error("[%s] %s", self.name, stopped)
                    break
                participants = [u for u in users if u not in self.meter.dropped]
                record: dict[str, Any] = {"round": rnd, "clients": len(participants), **metrics,
                                          **self.dp_fields(metrics, len(users))}
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
        out: dict[str, Any] = {"records": records, "setup_seconds": setup_seconds,
                               "setup_wait_seconds": setup_wait, **self.server_state_summary(),
                               **self.dp_summary()}
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
        """Users evaluated now: the sample, less any the protocol cannot evaluate (FedMF: not yet keyed)."""
        return self.evaluation_sample()

    def evaluation_sample(self) -> list[int]:
        """Users whose local test sets are evaluated: all, or a fixed seeded sample."""
        n = self.cfg.train.eval_clients
        if n is None or n >= len(self.users):
            return list(self.users)
        rng = np.random.default_rng([int(self.cfg.seed), 0xE7A1])
        return sorted(self.users[i] for i in rng.choice(len(self.users), size=int(n), replace=False))

    def _log_evaluation_plan(self) -> None:
        """Say once, at start, which users the test RMSE is computed on and how often."""
        every = int(self.cfg.train.eval_every)
        when = f"every {every} rounds and after the last" if every else "after the last round"
        n = len(self.evaluation_sample())
        who = (f"all {n} users" if n >= len(self.users) else
               f"a fixed seeded sample of {n} of {len(self.users)} users (train.eval_clients={n}; null = all)")
        log.info("[%s] test RMSE %s, on %s", self.name, when, who)

    def evaluate(self, rnd: int) -> dict[str, Any]:
        """Users compute their local test error sums with the public model; the server sums them.

        What users receive is the protocol's (:meth:`evaluation_replies`: the
        full model by default, only the rows of their test items with
        :class:`ItemRequestEvaluation`). How the sums reach the server is the
        protocol's too: in the clear per user (plaintext twins, the default
        here) or as a secure sum over users (two-server protocols override
        :meth:`evaluation_message`, :meth:`parse_evaluation` and
        :meth:`evaluation_sums`).
        """
        assert self.exchange is not None
        users = self.evaluation_users()
        eval_meter = Meter()
        ex = UserExchange(self.exchange.grid, self.directory, self.exchange.timeout, eval_meter)
        replies = self.evaluation_replies(rnd, users, ex)
        sums = self.evaluation_sums(rnd, replies)
        n = max(len(users), 1)
        out: dict[str, Any] = {"eval_bytes_down_per_client": sum(eval_meter.down.values()) / n}
        if isinstance(sums, str):
            log.warning("[%s] evaluation of round %d refused: %s", self.name, rnd, sums)
            return {**out, "test_rmse": None, "eval_clients": 0, "eval_refused": sums,
                    "eval_client_seconds_max": None}
        sse, count, n_users, seconds = sums[:4]
        return {
            **out,
            "test_rmse": math.sqrt(sse / count) if count else float("nan"),
            **ranking_fields(sums[4] if len(sums) > 4 else None, self.cfg.train),
            "eval_clients": n_users,
            "eval_client_seconds_max": max(seconds) if seconds else None,
        }

    def evaluation_replies(self, rnd: int, users: list[int], ex: Exchange) -> dict[int, Any]:
        """The parsed evaluation replies of ``users``; default: one phase sending everyone the public model."""
        content = self.evaluation_content()
        return ex.phase(self.evaluate_type, {u: self.evaluation_message(rnd, content) for u in users},
                        f"eval-{rnd}", self.parse_evaluation)

    def evaluation_message(self, rnd: int, content: RecordDict) -> RecordDict:
        """What one evaluated user receives (default: the evaluation content itself)."""
        return content

    def parse_evaluation(self, user: int, content: RecordDict) -> Any:
        """Validate one evaluation reply (default: a plaintext (sse, count, seconds) triple)."""
        return common.parse_evaluation_reply(content)

    def evaluation_sums(self, rnd: int, replies: dict[int, Any]) -> EvalSums | str:
        """(sum SSE, sum count, users summed, per-user seconds or None), or a refusal reason."""
        ranking = sum((r[3] for r in replies.values()), np.zeros(3))
        return (sum(r[0] for r in replies.values()), sum(r[1] for r in replies.values()), len(replies),
                [r[2] for r in replies.values()], ranking)

    def record_client_seconds(self, user: int, seconds: float) -> None:
        client_seconds_of(self.meter, user, seconds)

    def _reject(self, user: int, reason: str) -> None:
        """Leave ``user`` out of this round (used for rejections outside a Flower phase)."""
        assert self.exchange is not None
        self.exchange.drop(user, reason)

    def _wait_for_nodes(self, grid: Grid, expected: int) -> list[int]:
        """The node ids, once ``expected`` nodes have connected (``simulation.register_timeout``)."""
        timeout = float(self.cfg.simulation.register_timeout)
        deadline = time.monotonic() + timeout
        node_ids = list(grid.get_node_ids())
        said = 0
        while len(node_ids) < expected and time.monotonic() < deadline:
            time.sleep(1.0)
            node_ids = list(grid.get_node_ids())
            waited = timeout - (deadline - time.monotonic())
            if len(node_ids) < expected and waited >= NODE_WAIT_PROGRESS_S * (said + 1):
                said = int(waited // NODE_WAIT_PROGRESS_S)  # so an operator sees what the run waits for
                log.info("waiting for nodes: %d of %d connected (%.0f of %.0f s)", len(node_ids), expected,
                         waited, timeout)
        if len(node_ids) < expected:
            raise SetupError(f"only {len(node_ids)} of the {expected} nodes this run needs connected within "
                             f"simulation.register_timeout={timeout:g} s: a deployment needs one SuperNode per "
                             "user of the dataset (dataset.max_users sets how many users; flwr's "
                             "options.num-supernodes for a simulation SuperLink)")
        return node_ids

    def _register(self, grid: Grid, timeout: float | None) -> dict[int, int]:
        """Ask every node which user it holds (deployment); wait until all users are present."""
        expected = self.meta.n_users
        node_ids = self._wait_for_nodes(grid, expected)
        meter = Meter()
        ex = Exchange(grid, {i: nid for i, nid in enumerate(node_ids)}, timeout, meter)
        replies = ex.phase(common.REGISTER, {i: common.register_message(expected) for i in range(len(node_ids))},
                           "register", lambda _i, c: common.parse_register_reply(c, expected), count_bytes=False)
        node_of_user: dict[int, int] = {}
        for index, user in replies.items():
            if user in node_of_user:
                raise RuntimeError(f"two nodes claim user {user}; check each node's partition-id")
            node_of_user[user] = node_ids[index]
        if len(node_of_user) < expected:
            log.warning("%d of %d users registered; training with those", len(node_of_user), expected)
        return node_of_user

    def dp_fields(self, metrics: dict[str, Any], sampled: int) -> dict[str, float]:
        """A round's DP record fields (epsilon so far, noise multiplier) after accounting it; {} without DP.

        The round is accounted with its sample size (the sampling rate), unless it was refused
        (no aggregate released). Both engines call this, so their epsilons agree.
        """
        if self.dp is None:
            return {}
        return self.dp.account(sampled, released=metrics.get("refused") is None)

    def dp_summary(self) -> dict[str, Any]:
        """The final DP numbers for results.json ({} without DP)."""
        return {} if self.dp is None else self.dp.summary()

    def _log_round(self, r: dict[str, Any]) -> None:
        rmse = "" if r.get("test_rmse") is None else f" test_rmse={r['test_rmse']:.4f}"
        for key in (k for k in r if k.startswith(("hr@", "ndcg@")) and r[k] is not None):
            rmse += f" {key}={r[key]:.4f}"
        if r.get("epsilon") is not None:
            rmse += f" epsilon={r['epsilon']:.4g}"
        loss = r.get("train_loss")
        loss_s = "refused" if loss is None else f"{loss:.4f}"
        secs = r.get("client_seconds_mean")
        secs_s = "n/a" if secs is None else f"{secs:.3f}s"
        log.info(
            "[%s] round %d/%d clients=%d train_loss=%s%s up=%.1fKiB down=%.1fKiB client=%s server=%.3fs",
            self.name, r["round"], self.cfg.rounds, r["clients"], loss_s, rmse,
            r["bytes_up_per_client"] / 1024, r["bytes_down_per_client"] / 1024, secs_s, r["server_seconds"],
        )


class ItemRequestEvaluation(RecStrategy):
    """Evaluation in two phases for strategies whose public model is an item table (``self.model``).

    The server does not know a user's test items, so it asks for them
    (:data:`schemas.common.EVAL_REQUEST`) and sends only their rows and the
    dense parameters (:data:`schemas.common.EVALUATE_ROWS`): an evaluated
    user's download is O(its test items) instead of the whole table. The
    server learns each evaluated user's test item ids, as ``plaintext``
    learns its training items (with ``train.ranking`` also its ranking candidates, among them
    its held-out positive: acceptable for a twin that promises nothing); so a protocol that hides which items a user
    rated (SecEmb, Secure FedRec) must not use it (its users refuse anyway).
    Listed before the strategy's model base class (``class S(ItemRequestEvaluation, ModelStrategy)``).
    """

    model: Any  # the strategy's strategies.public_model.PublicModel

    def evaluation_replies(self, rnd: int, users: list[int], ex: Exchange) -> dict[int, Any]:
        n_items = self.meta.n_items
        asked = ex.phase(common.EVAL_REQUEST, {u: common.eval_request_message(rnd) for u in users}, f"eval-{rnd}",
                         lambda _u, c: plain_schema.parse_request_reply(c, n_items, n_items, min_items=0))
        dense = self.model.dense_numpy()
        contents = {u: self.evaluation_message(rnd, plain_schema.update_message(rnd, self.model.rows(items), dense))
                    for u, items in asked.items()}
        return ex.phase(common.EVALUATE_ROWS, contents, f"eval-{rnd}", self.parse_evaluation)


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

