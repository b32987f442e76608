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

from schemas import common
from schemas.secemb import _box, ring_of
from schemas.validation import array_record, get_array, get_scalar, require_record
from schemas.wire import encode_frame

UPDATE = "train.secfedrec_update"


def update_message(rnd: int, table: np.ndarray, dense: np.ndarray, server1_public: bytes, run: str,
                   ring_bits: int) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"round": rnd, "server1_public": server1_public, "run": run,
                                            "ring_bits": ring_bits}),
                       "model": array_record(table=table.astype(np.float32), dense=dense.astype(np.float32))})


@dataclass
class Upload:
    share0: np.ndarray
    box: np.ndarray
    loss: float
    n_ratings: int
    seconds: float


def update_reply(share0: np.ndarray, box: bytes, loss: float, n: int, seconds: float) -> RecordDict:
    return RecordDict({"upload": array_record(share0=share0, box=np.frombuffer(box, dtype=np.uint8)),
                       "metrics": common.train_metrics(loss, n, seconds)})


def parse_update_reply(content: RecordDict, size: int, ring_bits: int) -> Upload:
    rec = require_record(content, "upload", ArrayRecord)
    share0 = get_array(rec, "share0", ring_of(ring_bits), (size,))
    loss, n, seconds = common.parse_train_metrics(content)
    return Upload(share0, _box(rec), loss, n, seconds)


def parse_round(content: RecordDict) -> tuple[int, int]:
    rec = require_record(content, "cfg", ConfigRecord)
    return int(get_scalar(rec, "round", int, 1)), int(get_scalar(rec, "ring_bits", int, 32, 64))


def sealed_share_bytes(share1: np.ndarray) -> bytes:
    return encode_frame("secfedrec", {}, {"share": share1})
