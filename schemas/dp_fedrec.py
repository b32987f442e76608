"""Messages of ``dp_fedrec`` (strategy=plaintext with dp.mode=local): the DP-FedRec baseline of SecEmb Figure 7.

One phase per round, ``train.dp_fedrec_update``: server -> user the full public
model (table and dense vector) and the noise multiplier; user -> server a
gradient for EVERY item row (its record-clipped gradients on its rated rows,
zero elsewhere, plus its own Gaussian noise on all of them) and its noised
dense gradient. Full rows both ways, so the server cannot tell which items a
user rated from the message shapes or from which rows are non-zero.

Nothing else travels: the plaintext reply's loss and rating count are exact
per-user values (the count moves by one with the neighbouring relation's one
rating), outside the noise, so they would void the local-DP guarantee. Compute
seconds travel only with ``simulation.telemetry``, as in the secure protocols.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from schemas import plaintext as plain
from schemas import sizes, two_server
from schemas.validation import get_scalar, require_record

UPDATE = "train.dp_fedrec_update"


def update_message(rnd: int, table: np.ndarray, dense: np.ndarray, noise_multiplier: float) -> RecordDict:
    content = plain.model_content(table, dense)
    content["cfg"] = ConfigRecord({"round": int(rnd), "noise_multiplier": float(noise_multiplier)})
    return content


def parse_update_message(content: RecordDict, n_items: int, row_dim: int,
                         dense_size: int) -> tuple[int, float, np.ndarray, np.ndarray]:
    """(round, noise multiplier, table [n_items, row_dim], dense [dense_size]), every field checked."""
    rec = require_record(content, "cfg", ConfigRecord)
    rnd = int(get_scalar(rec, "round", int, 0))
    z = float(get_scalar(rec, "noise_multiplier", float, 0.0, 1e6))
    table, dense = plain.parse_model_content(content, n_items, row_dim, dense_size)
    return rnd, z, table, dense


@dataclass(frozen=True)
class NoisedUpload:
    row_grads: np.ndarray   # float32 [n_items, row_dim], the user's own noise on every row
    dense_grad: np.ndarray  # float32 [dense_size], noised
    seconds: float | None   # only with simulation.telemetry


def update_reply(full_rows: np.ndarray, dense_grad: np.ndarray, seconds: float | None) -> RecordDict:
    """The noised gradients of all ``n_items`` rows and of the dense vector, and nothing per-user beside them."""
    content = RecordDict({"grads": plain.grads_record(full_rows, dense_grad)})
    if seconds is not None:
        content["telemetry"] = two_server.telemetry_record(seconds)
    return content


def parse_update_reply(content: RecordDict, n_items: int, row_dim: int, dense_size: int) -> NoisedUpload:
    """A reply must carry exactly one row per item (a sparse reply would reveal the rated items)."""
    rows, dense = plain.parse_grads(content, n_items, row_dim, dense_size)
    return NoisedUpload(rows, dense, two_server.parse_telemetry(content))


def round_bytes(rnd: int, n_items: int, row_dim: int, dense_size: int) -> tuple[int, int]:
    """(bytes down, bytes up) of one user's round, as the Flower path's meter measures them."""
    table, dense = sizes.filler((n_items, row_dim), np.float32), sizes.filler(dense_size, np.float32)
    return (sizes.content_nbytes(update_message(rnd, table, dense, 1.0)),
            sizes.content_nbytes(update_reply(table, dense, None)))
