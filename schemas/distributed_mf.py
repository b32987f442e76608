"""Messages of ``distributed_mf`` (FedMF Algorithm 1 with plaintext gradients).

One phase per round, ``train.dmf_update``: server -> user the item matrix V
(float64 [m, d]) and the round; user -> server the item ids it uploads and
their Gradient rows. PartText uploads the rated items, FullText all m items
(zero rows for unrated ones), padded the rated items plus random unrated ones.
Evaluation (``evaluate.mf``) sends V and the round; the user reports its test error sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from schemas import common
from schemas.sizes import content_nbytes, filler
from schemas.validation import MessageError, array_record, get_array, get_gradient, get_scalar, require_record

UPDATE = "train.dmf_update"
EVALUATE = "evaluate.mf"


def model_record(item_matrix: np.ndarray) -> ArrayRecord:
    """V as sent (float64), built once per phase and shared by every user's message."""
    return array_record(V=item_matrix.astype(np.float64))


def round_message(rnd: int, model: ArrayRecord) -> RecordDict:
    """V (:func:`model_record`) and the round: the update and the evaluation message alike (a user's private
    state is kept per round, clients.private_state)."""
    return RecordDict({"cfg": ConfigRecord({"round": rnd}), "model": model})


def update_message(rnd: int, item_matrix: np.ndarray) -> RecordDict:
    return round_message(rnd, model_record(item_matrix))


def parse_update_message(content: RecordDict, n_items: int, dim: int) -> tuple[int, np.ndarray]:
    rnd = int(get_scalar(require_record(content, "cfg", ConfigRecord), "round", int, 0))
    return rnd, get_array(require_record(content, "model", ArrayRecord), "V", np.float64, (n_items, dim), finite=True)


@dataclass
class Upload:
    items: np.ndarray
    grads: np.ndarray
    loss: float
    n_ratings: int
    seconds: float


def update_reply(items: np.ndarray, grads: np.ndarray, loss: float, n: int, seconds: float) -> RecordDict:
    return RecordDict({"grad": array_record(items=items.astype(np.int64), rows=grads.astype(np.float64)),
                       "metrics": common.train_metrics(loss, n, seconds)})


def parse_update_reply(content: RecordDict, n_items: int, dim: int, expected_count: int | None) -> Upload:
    """``expected_count``: m for FullText, pad_to for padded, None (any 0..m) for PartText."""
    rec = require_record(content, "grad", ArrayRecord)
    items = get_array(rec, "items", np.int64, (None,), low=0, high=n_items)
    grads = get_gradient(rec, "rows", np.float64, (len(items), dim))
    if expected_count is not None and len(items) != expected_count:
        raise MessageError(f"upload has {len(items)} rows, this mode requires {expected_count}")
    if len(np.unique(items)) != len(items):
        raise MessageError("uploaded item ids are not unique")
    loss, n, seconds = common.parse_train_metrics(content)
    return Upload(items, grads, loss, n, seconds)


def parse_evaluate_message(content: RecordDict, n_items: int, dim: int) -> tuple[int, np.ndarray]:
    """(round, V): the evaluation follows that round's training."""
    return parse_update_message(content, n_items, dim)


def upload_rows(mode: str, n_rated: np.ndarray, n_items: int, pad_to: int) -> np.ndarray:
    """Rows each user uploads (int64, per user): PartText its rated items, FullText all m, padded its rated
    items plus unrated ones up to ``pad_to`` (all of its rated items if it has more; at most m)."""
    n_rated = np.asarray(n_rated, dtype=np.int64)
    if mode == "parttext":
        return n_rated
    if mode == "fulltext":
        return np.full_like(n_rated, n_items)
    return np.minimum(np.maximum(int(pad_to), n_rated), n_items)


@lru_cache(maxsize=4096)
def _update_reply_nbytes(rows: int, dim: int, n_ratings: int) -> int:
    return content_nbytes(update_reply(filler(rows, np.int64), filler((rows, dim), np.float64), 1.0, n_ratings, 1.0))


def message_sizes(rnd: int, n_items: int, dim: int, rows: np.ndarray, n_ratings: np.ndarray) -> dict[str, float]:
    """Bytes per client the Flower path measures in training round ``rnd``: V down, each user's reply up (mean).

    ``rows`` [B]: each user's upload rows (:func:`upload_rows`); ``n_ratings``
    [B]: its training ratings. The messages are this module's own builders
    around placeholder arrays of the same shapes (:mod:`schemas.sizes`).
    """
    down = content_nbytes(update_message(rnd, filler((n_items, dim), np.float64)))
    up = [_update_reply_nbytes(int(k), dim, int(n)) for k, n in zip(rows, n_ratings)]
    return {"bytes_down": float(down), "bytes_up": float(np.mean(up)) if up else 0.0}
