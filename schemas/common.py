"""Messages every protocol shares: node registration and test evaluation.

Registration is two-way. On a real deployment each SuperNode holds its own
user (its node config's ``partition-id``) and tells the server which
(:func:`register_reply`). In the simulation engine Flower hands out
``partition-id`` values to virtual nodes with random ids the ServerApp cannot
see, so the server instead tells a node which user it simulates
(:func:`assign_message`, the same record as the reply) when that user is
first sampled; no message goes to a node whose user is never sampled.
A virtual node may simulate several users (``simulation.node_pool``), so in
simulation every message also names the user it is for
(:func:`addressed`); the node's mod reads and removes that record before any
handler runs. It never travels on a deployment, and never upward.

Evaluation by item request (``plaintext``; the two-server protocols hide a
user's items and keep sending the full model): the server asks
for the user's test items (:func:`eval_request_message`, answered with
:func:`schemas.plaintext.request_reply`), then sends only those rows and the
dense parameters (:data:`EVALUATE_ROWS`), so a user's evaluation download is
O(its test items), not O(all items).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from schemas.validation import MAX_METRIC, MessageError, get_scalar, require_record

REGISTER = "query.register"
EVALUATE = "evaluate"  # the full public model (secemb) or the protocol's own evaluation content
EVAL_REQUEST = "query.eval_items"  # server -> user: name your test items
EVALUATE_ROWS = "evaluate.rows"  # server -> user: the rows of those items and the dense parameters

SIMULATED_USER = "simulated_user"  # server -> virtual node: which of its simulated users a message is for

# Metrics every client reply may carry.
CLIENT_SECONDS = "client_seconds"


def register_reply(partition_id: int) -> RecordDict:
    """A client's answer to registration: which user (partition) it holds."""
    return RecordDict({"node": ConfigRecord({"partition_id": int(partition_id)})})


def parse_register_reply(content: RecordDict, n_users: int) -> int:
    """The user named by a registration reply, or by an assignment (:func:`assign_message`)."""
    rec = require_record(content, "node", ConfigRecord)
    return int(get_scalar(rec, "partition_id", int, 0, n_users - 1))


def register_message(n_users: int) -> RecordDict:
    """Ask a node which user it holds (deployment)."""
    return RecordDict({"run": ConfigRecord({"users": int(n_users)})})


def assign_message(user: int, n_users: int) -> RecordDict:
    """Tell a simulated node which user it simulates: the registration reply's record, sent the other way."""
    content = register_message(n_users)
    content["node"] = register_reply(user)["node"]
    return content


def is_assignment(content: RecordDict) -> bool:
    """Whether a registration message assigns a user (simulation) rather than asking for one (deployment)."""
    return "node" in content


def addressed(content: RecordDict, user: int) -> RecordDict:
    """``content`` plus the record naming the simulated user it is for (a new RecordDict; records are shared)."""
    out = RecordDict(dict(content.items()))
    out[SIMULATED_USER] = ConfigRecord({"user": int(user)})
    return out


def parse_addressee(content: RecordDict, n_users: int) -> int | None:
    """The simulated user a message names (:func:`addressed`), or None when it names none."""
    if SIMULATED_USER not in content:
        return None
    rec = require_record(content, SIMULATED_USER, ConfigRecord)
    if set(rec.keys()) != {"user"}:
        raise MessageError(f"record {SIMULATED_USER!r} must hold exactly 'user', got {sorted(rec.keys())}")
    return int(get_scalar(rec, "user", int, 0, n_users - 1))


def eval_request_message(rnd: int) -> RecordDict:
    """Ask a user for the ids of its test items (the reply is :func:`schemas.plaintext.request_reply`)."""
    return RecordDict({"cfg": ConfigRecord({"round": int(rnd)})})


def evaluation_reply(sse: float, count: int, seconds: float, ranking: np.ndarray | None = None) -> RecordDict:
    """Sum of squared test errors and test count of one user, computed locally, and its ranking case's
    [hit, ndcg, ranked] (models.ranking.ranking_sums; zeros when it has no case or ranking is off)."""
    hit, ndcg, ranked = (0.0, 0.0, 0) if ranking is None else (float(ranking[0]), float(ranking[1]), int(ranking[2]))
    return RecordDict({"eval": MetricRecord({"sse": float(sse), "count": int(count), CLIENT_SECONDS: float(seconds),
                                             "hit": hit, "ndcg": ndcg, "ranked": ranked})})


def parse_evaluation_reply(content: RecordDict) -> tuple[float, int, float, np.ndarray]:
    """(sse, count, seconds, [hit, ndcg, ranked]): one user has at most one ranking case, so hit and
    ranked are 0/1, hit <= ranked and 0 <= ndcg <= hit (NDCG is 0 without a hit, at most 1)."""
    rec = require_record(content, "eval", MetricRecord)
    sse = float(get_scalar(rec, "sse", float, 0.0, MAX_METRIC))
    count = int(get_scalar(rec, "count", int, 0, 10**9))
    seconds = float(get_scalar(rec, CLIENT_SECONDS, float, 0.0, MAX_METRIC))
    if count == 0 and sse != 0.0:
        raise MessageError("eval reports an error sum with zero test ratings")
    ranked = int(get_scalar(rec, "ranked", int, 0, 1))
    hit = float(get_scalar(rec, "hit", float, 0.0, float(ranked)))
    if hit not in (0.0, 1.0):
        raise MessageError(f"eval reports a hit of {hit}, not 0 or 1")
    ndcg = float(get_scalar(rec, "ndcg", float, 0.0, hit))
    return sse, count, seconds, np.array([hit, ndcg, float(ranked)])


def train_metrics(loss: float, n_ratings: int, seconds: float) -> MetricRecord:
    """Per-client training metrics that ride along with an upload."""
    return MetricRecord({"loss": float(loss), "n_ratings": int(n_ratings), CLIENT_SECONDS: float(seconds)})


def parse_train_metrics(content: RecordDict) -> tuple[float, int, float]:
    rec = require_record(content, "metrics", MetricRecord)
    loss = float(get_scalar(rec, "loss", float, 0.0, MAX_METRIC))
    n = int(get_scalar(rec, "n_ratings", int, 0, 10**9))
    seconds = float(get_scalar(rec, CLIENT_SECONDS, float, 0.0, MAX_METRIC))
    if not np.isfinite(loss):
        raise MessageError("training loss is not finite")
    return loss, n, seconds
