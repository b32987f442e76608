"""Messages of ``distributed_mf`` (FedMF Algorithm 1 with plaintext gradients).

One phase per round, ``train.dmf_update``: server -> user the item matrix V
(float64 [m, d]) and the round; user -> server the item ids it uploads and
their Gradient rows. PartText uploads the rated items, FullText all m items
(zero rows for unrated ones), padded the rated items plus random unrated ones.
Evaluation (``evaluate.mf``) sends V; the user reports its test error sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from schemas import common
from schemas.validation import MessageError, array_record, get_array, get_scalar, require_record

UPDATE = "train.dmf_update"
EVALUATE = "evaluate.mf"


def update_message(rnd: int, item_matrix: np.ndarray) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"round": rnd}), "model": array_record(V=item_matrix.astype(np.float64))})


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
    grads = get_array(rec, "rows", np.float64, (len(items), dim), finite=True)
    if expected_count is not None and len(items) != expected_count:
        raise MessageError(f"upload has {len(items)} rows, this mode requires {expected_count}")
    if len(np.unique(items)) != len(items):
        raise MessageError("uploaded item ids are not unique")
    loss, n, seconds = common.parse_train_metrics(content)
    return Upload(items, grads, loss, n, seconds)


def evaluate_message(item_matrix: np.ndarray) -> RecordDict:
    return RecordDict({"model": array_record(V=item_matrix.astype(np.float64))})


def parse_evaluate_message(content: RecordDict, n_items: int, dim: int) -> np.ndarray:
    return get_array(require_record(content, "model", ArrayRecord), "V", np.float64, (n_items, dim), finite=True)
