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

from schemas import common, sizes
from schemas.validation import MessageError, array_record, get_array, get_gradient, get_scalar, require_record

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


def parse_request_reply(content: RecordDict, n_items: int, max_items: int, min_items: int = 1) -> np.ndarray:
    """Unique item ids in [0, n_items), min_items..max_items of them (evaluation: a user may have no test item)."""
    items = get_array(require_record(content, "req", ArrayRecord), "items", np.int64, (None,), low=0, high=n_items)
    if not min_items <= len(items) <= max_items:
        raise MessageError(f"requested {len(items)} items, expected {min_items}..{max_items}")
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


def grads_record(row_grads: np.ndarray, dense_grad: np.ndarray) -> ArrayRecord:
    """A user's row gradients and dense gradient as float32 (this reply's and DP-FedRec's)."""
    return array_record(rows=row_grads.astype(np.float32), dense=dense_grad.astype(np.float32))


def parse_grads(content: RecordDict, k: int, row_dim: int, dense_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows [k, row_dim], dense [dense_size]) of a ``grads`` record: shapes checked, values finite and within
    :data:`schemas.validation.MAX_GRADIENT`."""
    rec = require_record(content, "grads", ArrayRecord)
    return (get_gradient(rec, "rows", np.float32, (k, row_dim)), get_gradient(rec, "dense", np.float32, (dense_size,)))


def update_reply(row_grads: np.ndarray, dense_grad: np.ndarray, loss: float, n: int, seconds: float) -> RecordDict:
    return RecordDict({"grads": grads_record(row_grads, dense_grad), "metrics": common.train_metrics(loss, n, seconds)})


def parse_update_reply(content: RecordDict, k: int, row_dim: int, dense_size: int) -> Update:
    rows, dense = parse_grads(content, k, row_dim, dense_size)
    loss, n, seconds = common.parse_train_metrics(content)
    return Update(rows, dense, loss, n, seconds)


def round_bytes(rnd: int, k: int, m_prime: int | None, row_dim: int, dense_size: int) -> tuple[int, int]:
    """(bytes down, bytes up) of one user's training round with ``k`` requested items, as the
    Flower path's meter measures them: request + update message down, their replies up.
    (The reply's rating count is taken as ``k``; its varint may differ by a byte.)"""
    down = (sizes.content_nbytes(request_message(rnd, m_prime))
            + sizes.content_nbytes(update_message(rnd, sizes.filler((k, row_dim), np.float32),
                                                  sizes.filler(dense_size, np.float32))))
    up = (sizes.content_nbytes(request_reply(sizes.filler(k, np.int64)))
          + sizes.content_nbytes(update_reply(sizes.filler((k, row_dim), np.float32),
                                              sizes.filler(dense_size, np.float32), 1.0, k, 1.0)))
    return down, up


def model_content(table: np.ndarray, dense: np.ndarray) -> RecordDict:
    """The full public model (Secure FedRec's training download; SecEmb's and Secure FedRec's test evaluation).

    ``plaintext`` evaluates by item request instead: the user names its test
    items (:func:`request_reply`) and receives only their rows and the dense
    parameters, as :func:`update_message` (see :mod:`schemas.common`)."""
    return RecordDict({"model": array_record(table=table.astype(np.float32), dense=dense.astype(np.float32))})


def parse_model_content(content: RecordDict, n_items: int, row_dim: int, dense_size: int) -> tuple[np.ndarray, np.ndarray]:
    rec = require_record(content, "model", ArrayRecord)
    return (get_array(rec, "table", np.float32, (n_items, row_dim), finite=True),
            get_array(rec, "dense", np.float32, (dense_size,), finite=True))
