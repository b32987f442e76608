"""Messages of ``secfedrec`` (SecEmb's "Secure FedRec" baseline).

One phase per round, ``train.secfedrec_update``: server 0 -> user the full
public model (every item row and the dense parameters) and server 1's public
key; user -> server 0 an additive share (in Z_2^k) of its full gradient
(all m rows, zeros for unrated items, then the dense gradient) and a box
sealed for server 1 with the other share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from crypto.ring import RING_BITS, ring_dtype
from schemas import sizes, two_server
from schemas.two_server import box_field, server_info_record
from schemas.validation import MessageError, array_record, get_array, get_scalar, require_record
from schemas.wire import encode_frame

UPDATE = "train.secfedrec_update"


def update_message(rnd: int, table: np.ndarray, dense: np.ndarray, server1_public: bytes, run: str,
                   ring_bits: int) -> RecordDict:
    return RecordDict({"cfg": server_info_record(server1_public, run, round=rnd, ring_bits=ring_bits),
                       "model": array_record(table=table.astype(np.float32), dense=dense.astype(np.float32))})


@dataclass
class Upload:
    share0: np.ndarray  # share 0 of [full gradient, dense gradient, loss, 1]
    box: np.ndarray
    seconds: float | None  # only with simulation.telemetry


def update_reply(share0: np.ndarray, box: bytes, seconds: float | None) -> RecordDict:
    """Share 0 in the clear, share 1 sealed; no per-user metric travels outside the shares."""
    content = RecordDict({"upload": array_record(share0=share0, box=np.frombuffer(box, dtype=np.uint8))})
    if seconds is not None:
        content["telemetry"] = two_server.telemetry_record(seconds)
    return content


def parse_update_reply(content: RecordDict, size: int, ring_bits: int) -> Upload:
    """``size`` includes the two metric elements."""
    rec = require_record(content, "upload", ArrayRecord)
    share0 = get_array(rec, "share0", ring_dtype(ring_bits), (size,))
    return Upload(share0, box_field(rec), two_server.parse_telemetry(content))


def round_bytes(rnd: int, n_items: int, row_dim: int, dense_size: int, ring_bits: int, telemetry: bool
                ) -> tuple[int, int]:
    """(bytes down, bytes up) of one user's training round as the Flower path's meter measures them:
    the full model down; share 0 of [all rows, dense, 2 metrics] and the sealed share 1 up."""
    ring = ring_dtype(ring_bits)
    size = n_items * row_dim + dense_size + two_server.TRAIN_METRICS
    down = sizes.content_nbytes(update_message(rnd, sizes.filler((n_items, row_dim), np.float32),
                                               sizes.filler(dense_size, np.float32), bytes(two_server.PUBLIC_KEY_BYTES),
                                               "0" * 16, ring_bits))
    share = sizes.filler(size, ring)
    up = sizes.content_nbytes(update_reply(share, sizes.sealed_box(len(sealed_share_bytes(share))),
                                           1.0 if telemetry else None))
    return down, up


def parse_round(content: RecordDict) -> tuple[int, int]:
    rec = require_record(content, "cfg", ConfigRecord)
    bits = int(get_scalar(rec, "ring_bits", int, 32, 64))
    if bits not in RING_BITS:
        raise MessageError(f"ring_bits must be one of {RING_BITS}, got {bits}")
    return int(get_scalar(rec, "round", int, 1)), bits


def sealed_share_bytes(share1: np.ndarray) -> bytes:
    return encode_frame("secfedrec", {}, {"share": share1})
