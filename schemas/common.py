"""Messages every protocol shares: node registration and test evaluation."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from schemas.validation import MessageError, get_scalar, require_record

REGISTER = "query.register"
EVALUATE = "evaluate"

# Metrics every client reply may carry.
CLIENT_SECONDS = "client_seconds"


def register_reply(partition_id: int) -> RecordDict:
    """A client's answer to registration: which user (partition) it holds."""
    return RecordDict({"node": ConfigRecord({"partition_id": int(partition_id)})})


def parse_register_reply(content: RecordDict, n_users: int) -> int:
    rec = require_record(content, "node", ConfigRecord)
    return int(get_scalar(rec, "partition_id", int, 0, n_users - 1))


def evaluation_reply(sse: float, count: int, seconds: float) -> RecordDict:
    """Sum of squared test errors and test count of one user, computed locally."""
    return RecordDict({"eval": MetricRecord({"sse": float(sse), "count": int(count), CLIENT_SECONDS: float(seconds)})})


def parse_evaluation_reply(content: RecordDict) -> tuple[float, int, float]:
    rec = require_record(content, "eval", MetricRecord)
    sse = float(get_scalar(rec, "sse", float, 0.0))
    count = int(get_scalar(rec, "count", int, 0, 10**9))
    seconds = float(get_scalar(rec, CLIENT_SECONDS, float, 0.0))
    if count == 0 and sse != 0.0:
        raise MessageError("eval reports an error sum with zero test ratings")
    return sse, count, seconds


def train_metrics(loss: float, n_ratings: int, seconds: float) -> MetricRecord:
    """Per-client training metrics that ride along with an upload."""
    return MetricRecord({"loss": float(loss), "n_ratings": int(n_ratings), CLIENT_SECONDS: float(seconds)})


def parse_train_metrics(content: RecordDict) -> tuple[float, int, float]:
    rec = require_record(content, "metrics", MetricRecord)
    loss = float(get_scalar(rec, "loss", float, 0.0))
    n = int(get_scalar(rec, "n_ratings", int, 0, 10**9))
    seconds = float(get_scalar(rec, CLIENT_SECONDS, float, 0.0))
    if not np.isfinite(loss):
        raise MessageError("training loss is not finite")
    return loss, n, seconds
