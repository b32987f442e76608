"""What server 1 checks before it computes: every meta field, and its per-(run, round) state.

Server 1 is a separate party; it must not be a sum oracle for server 0. Two
aggregations over user sets that differ in one user reveal that user's
gradient, so server 1 keeps, per run:

* one retrieval per round, with rounds strictly increasing (and, apart, one
  evaluation retrieval per round: its paths are not kept, so nothing can be
  aggregated from it);
* one aggregation per round, for the round of the latest retrieval, over a
  subset of that retrieval's users (the users that dropped out are left out);
* never a sum (aggregation, ``count``, ``sum_shares``) over fewer than
  ``max(own floor, server 0's request)`` users: server 0's ``min_users`` can
  raise server 1's floor, never lower it.

The round state is recorded only when an operation succeeded, so a refused
request consumes nothing. One exception: a retrieval that was admitted but
failed has already begun to overwrite the cached paths, so after it no
round can be aggregated until a retrieval succeeds. Meta fields are
range-checked against the model server 1 holds and the bytes the frame
actually carries, so a request cannot make server 1 allocate more than a
frame's worth of memory.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.wire import MAX_FRAME, WireError

MAX_USERS = 1 << 20          # users named in one request
MAX_ROUND = 1 << 31
MAX_RUNS = 256               # runs whose state is kept (oldest dropped first)
MAX_TABLE_ROWS = 1 << 31
MAX_WIDTH = 1 << 16          # columns of an item row (d + bias); models here use d <= 256
MAX_SHAPE_DIMS = 4
MAX_METRIC_SIZE = 16         # sum_metrics: elements of a user's evaluation metric vector
RUN_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
VARIANTS = {"secemb", "rowenc", "init"}
RING_BITS = {32, 64}


def _int(meta: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"meta {key!r} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise WireError(f"meta {key!r}={value} is outside [{lo}, {hi}]")
    return value


def _users(meta: dict[str, Any]) -> list[int]:
    users = meta.get("users")
    if not isinstance(users, list) or len(users) > MAX_USERS:
        raise WireError(f"meta 'users' must be a list of at most {MAX_USERS} user ids")
    for u in users:
        if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < 1 << 64:
            raise WireError(f"meta 'users' holds {u!r}, not a user id")
    if len(set(users)) != len(users):
        raise WireError("meta 'users' names a user twice")
    return users


def _payload(arrays: dict[str, np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in arrays.values())


def validate_request(op: str, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                     table: np.ndarray | None) -> dict[str, Any]:
    """Range-check every meta field of a request; return the checked meta.

    Bounds come from the model server 1 holds (``n_items``, row width) and from
    the bytes the frame carries: a vector of ``dense_size`` or ``shape``
    elements is summed from users' boxes, so it cannot be larger than them.
    Unknown keys may only hold small scalars (ops added later keep working,
    but nothing unbounded slips through).
    """
    out = dict(meta)
    ring_bits = 32
    if "ring_bits" in meta:
        ring_bits = _int(meta, "ring_bits", 32, 64)
        if ring_bits not in RING_BITS:
            raise WireError(f"meta 'ring_bits'={ring_bits} is not 32 or 64")
    itemsize = ring_bits // 8
    payload = _payload(arrays)
    n_items = table.shape[0] if table is not None else None
    for key, value in meta.items():
        if key == "run":
            if not isinstance(value, str) or not RUN_ID.fullmatch(value):
                raise WireError("meta 'run' must be 1-64 characters of [A-Za-z0-9_.-]")
        elif key == "round":
            _int(meta, key, 1, MAX_ROUND)
        elif key == "users":
            _users(meta)
        elif key == "ring_bits":  # checked above
            pass
        elif key == "size":  # sum_metrics: the evaluation metric vector's length
            _int(meta, key, 1, MAX_METRIC_SIZE)
        elif key == "min_users":
            _int(meta, key, 1, MAX_USERS)
        elif key == "m_prime":
            if n_items is None:
                raise WireError("m_prime before set_model")
            _int(meta, key, 1, n_items)
        elif key == "n_items":
            if n_items is None:
                raise WireError("n_items before set_model")
            _int(meta, key, n_items, n_items)
        elif key == "width":
            _int(meta, key, 1, table.shape[1] if table is not None else MAX_WIDTH)
        elif key == "dense_size":
            _int(meta, key, 0, min(payload // itemsize, MAX_FRAME // itemsize))
        elif key == "noise_std":  # central DP: the std of server 1's own noise (SecEmb Appendix G)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1e6:
                raise WireError("meta 'noise_std' must be a number in [0, 1e6]")
        elif key == "frac_bits":
            _int(meta, key, 0, 62)
        elif key == "variant":
            if not isinstance(value, str) or value not in VARIANTS:
                raise WireError(f"meta 'variant'={value!r} is not one of {sorted(VARIANTS)}")
        elif key == "shape":
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_SHAPE_DIMS:
                raise WireError(f"meta 'shape' must be a list of 1-{MAX_SHAPE_DIMS} sizes")
            dims = [_int({"dim": d}, "dim", 1, MAX_FRAME) for d in value]
            if math.prod(dims) * itemsize > payload:
                raise WireError(f"meta 'shape'={dims} is larger than the boxes the frame carries")
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if abs(value) > 1 << 53:
                raise WireError(f"meta {key!r}={value} is out of range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise WireError(f"meta {key!r} is not finite")
        elif isinstance(value, str):
            if len(value) > 64:
                raise WireError(f"meta {key!r} is longer than 64 characters")
        else:
            raise WireError(f"meta {key!r} has an unexpected type {type(value).__name__}")
    for key in REQUIRED.get(op, ()):
        if key not in meta:
            raise WireError(f"{op} needs meta {key!r}")
    if op == "set_model":
        tab = arrays.get("table")
        if tab is None or tab.ndim != 2 or not 1 <= tab.shape[0] <= MAX_TABLE_ROWS \
                or not 1 <= tab.shape[1] <= MAX_WIDTH:
            raise WireError("set_model needs a 2-D table with 1.. rows and 1..65536 columns")
    return out


REQUIRED: dict[str, tuple[str, ...]] = {
    "set_model": ("ring_bits",),
    "count": ("run", "users"),
    "retrieve": ("run", "round", "m_prime", "users"),
    "retrieve_eval": ("run", "round", "m_prime", "users"),
    "aggregate": ("run", "round", "width", "dense_size", "users"),
    "aggregate_fresh": ("run", "round", "width", "dense_size", "users", "variant", "m_prime", "n_items"),
    "sum_shares": ("run", "round", "users", "shape", "ring_bits"),
    "sum_metrics": ("run", "round", "users", "size", "ring_bits"),
}


@dataclass
class RunState:
    """What server 1 remembers of one run."""

    min_users: int
    counted: bool = False
    last_retrieval: int = 0                       # round of the latest retrieval
    retrieval_users: frozenset[int] = frozenset()  # its users (less those server 1 rejected)
    aggregated: set[int] = field(default_factory=set)
    last_sum: int = 0                             # Secure FedRec's latest sum_shares round
    last_eval_retrieval: int = 0                  # SecEmb's latest evaluation retrieval round


AGGREGATIONS = {"aggregate", "aggregate_fresh"}


class RoundGuard:
    """Per-(run, round) state of server 1. Not thread-safe: :class:`Server1` holds a lock around it."""

    def __init__(self, min_users: int = 2) -> None:
        if min_users < 1:
            raise ValueError(f"server 1's min_users must be >= 1, got {min_users}")
        self.floor = min_users
        self.runs: OrderedDict[str, RunState] = OrderedDict()
        self._last_retrieval: tuple[str, int] | None = None  # server 1 caches one retrieval's paths

    def _run(self, meta: dict[str, Any]) -> RunState:
        run = meta["run"]
        state = self.runs.get(run)
        if state is None:
            state = self.runs[run] = RunState(self.floor)
            while len(self.runs) > MAX_RUNS:
                self.runs.popitem(last=False)
        self.runs.move_to_end(run)
        if "min_users" in meta:  # server 0 may raise the floor of its run, never lower it
            state.min_users = max(state.min_users, self.floor, int(meta["min_users"]))
        return state

    def _enough(self, state: RunState, n: int, what: str) -> None:
        if n < state.min_users:
            raise WireError(f"{what} over {n} users refused: server 1 needs at least {state.min_users}")

    def admit(self, op: str, meta: dict[str, Any]) -> None:
        """Refuse a request the round state does not allow (before any work is done)."""
        if "run" not in meta:
            return
        state = self._run(meta)
        users = meta.get("users")
        if op == "count":
            if state.counted:
                raise WireError(f"count already done for run {meta['run']}")
            self._enough(state, len(users), "count")
        elif op == "retrieve":
            _one_per_round("retrieval", "retrieved", meta, state.last_retrieval)
            # from here on the cached paths are being replaced: if this retrieval fails, no round's remain
            self._last_retrieval = None
        elif op == "retrieve_eval":
            _one_per_round("evaluation retrieval", "retrieved for evaluation", meta, state.last_eval_retrieval)
            self._enough(state, len(users), "evaluation retrieval")
        elif op in AGGREGATIONS:
            rnd = meta["round"]
            if rnd != state.last_retrieval or self._last_retrieval != (meta["run"], rnd):
                raise WireError(f"aggregation for round {rnd} refused: it is not the round of the latest retrieval")
            if rnd in state.aggregated:
                raise WireError(f"aggregation for round {rnd} refused: this round was already aggregated")
            extra = set(users) - state.retrieval_users
            if extra:
                raise WireError(f"aggregation names users {sorted(extra)} that were not in round {rnd}'s retrieval")
            self._enough(state, len(users), "aggregation")
        elif op == "sum_shares":
            _one_per_round("sum_shares", "summed", meta, state.last_sum)
            self._enough(state, len(users), "sum_shares")
        elif users is not None:  # any other sum over users (e.g. secure metric sums)
            self._enough(state, len(users), op)

    def commit(self, op: str, meta: dict[str, Any], out_meta: dict[str, Any]) -> None:
        """Record a successful operation; refuse its reply if too few users survived server 1's own checks."""
        if "run" not in meta:
            return
        state = self._run(meta)
        users = meta.get("users") or []
        rejected = {int(u) for u in out_meta.get("rejected", {})}
        kept = [int(u) for u in out_meta["users"]] if "users" in out_meta else [u for u in users if u not in rejected]
        if op == "count":
            self._enough(state, len(kept), "count")
            state.counted = True
        elif op == "retrieve":
            state.last_retrieval = meta["round"]
            state.retrieval_users = frozenset(kept)
            self._last_retrieval = (meta["run"], meta["round"])
        elif op == "retrieve_eval":
            state.last_eval_retrieval = meta["round"]
        elif op in AGGREGATIONS:
            self._enough(state, len(kept), "aggregation")
            state.aggregated = {meta["round"]}
        elif op == "sum_shares":
            self._enough(state, len(kept), "sum_shares")
            state.last_sum = meta["round"]
        elif "users" in meta:
            self._enough(state, len(kept), op)


def _one_per_round(what: str, done: str, meta: dict[str, Any], last: int) -> None:
    """Refuse a second ``what`` for a round, or one for an earlier round (rounds only increase)."""
    if meta["round"] <= last:
        raise WireError(f"{what} for round {meta['round']} refused: run {meta['run']} already {done} "
                        f"round {last} (one per round, rounds increase)")
