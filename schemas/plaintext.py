"""Messages of the ``plaintext`` protocol (SecEmb's plaintext twin).

Round = two phases, mirroring SecEmb's retrieval and aggregation:
1. ``query.plain_request``: server -> user {round}; user -> server the ids of
   the items it needs (this is what SecEmb hides).
2. ``train.plain_update``: server -> user the rows of those items and the
   dense parameters; user -> server row gradients and the dense gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from schemas import common
from schemas.validation import MessageError, array_record, get_array, get_scalar, require_record

REQUEST = "query.plain_request"
UPDATE = "train.plain_update"


def request_message(rnd: int, m_prime: int | None) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"round": rnd, "m_prime": int(m_prime or 0)})})


def parse_request_message(content: RecordDict) -> tuple[int, int | None]:
    rec = require_record(content, "cfg", ConfigRecord)
    rnd = int(get_scalar(rec, "round", int, 0))
    m_prime = int(get_scalar(rec, "m_prime", int, 0))
    return rnd, (m_prime or None)


def request_reply(items: np.ndarray) -> RecordDict:
    return RecordDict({"req": array_record(items=items.astype(np.int64))})


def parse_request_reply(content: RecordDict, n_items: int, max_items: int) -> np.ndarray:
    items = get_array(require_record(content, "req", ArrayRecord), "items", np.int64, (None,), low=0, high=n_items)
    if not 1 <= len(items) <= max_items:
        raise MessageError(f"requested {len(items)} items, expected 1..{max_items}")
    if len(np.unique(items)) != len(items):
        raise MessageError("requested item ids are not unique")
    return items


def update_message(rnd: int, rows: np.ndarray, dense: np.ndarray) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"round": rnd}),
                       "model": array_record(rows=rows.astype(np.float32), dense=dense.astype(np.float32))})


def parse_update_message(content: RecordDict, row_dim: int, dense_size: int) -> tuple[int, np.ndarray, np.ndarray]:
    rnd = int(get_scalar(require_record(content, "cfg", ConfigRecord), "round", int, 0))
    rec = require_record(content, "model", ArrayRecord)
    rows = get_array(rec, "rows", np.float32, (None, row_dim), finite=True)
    dense = get_array(rec, "dense", np.float32, (dense_size,), finite=True)
    return rnd, rows, dense


@dataclass
class Update:
    row_grads: np.ndarray
    dense_grad: np.ndarray
    loss: float
    n_ratings: int
    seconds: float


def update_reply(row_grads: np.ndarray, dense_grad: np.ndarray, loss: float, n: int, seconds: float) -> RecordDict:
    return RecordDict({"grads": array_record(rows=row_grads.astype(np.float32), dense=dense_grad.astype(np.float32)),
                       "metrics": common.train_metrics(loss, n, seconds)})


def parse_update_reply(content: RecordDict, k: int, row_dim: int, dense_size: int) -> Update:
    rec = require_record(content, "grads", ArrayRecord)
    rows = get_array(rec, "rows", np.float32, (k, row_dim), finite=True)
    dense = get_array(rec, "dense", np.float32, (dense_size,), finite=True)
    loss, n, seconds = common.parse_train_metrics(content)
    return Update(rows, dense, loss, n, seconds)


def model_content(table: np.ndarray, dense: np.ndarray) -> RecordDict:
    """The full public model, sent for test evaluation (and by Secure FedRec for training)."""
    return RecordDict({"model": array_record(table=table.astype(np.float32), dense=dense.astype(np.float32))})


def parse_model_content(content: RecordDict, n_items: int, row_dim: int, dense_size: int) -> tuple[np.ndarray, np.ndarray]:
    rec = require_record(content, "model", ArrayRecord)
    return (get_array(rec, "table", np.float32, (n_items, row_dim), finite=True),
            get_array(rec, "dense", np.float32, (dense_size,), finite=True))
