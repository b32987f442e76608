"""Messages of the compressed plaintext protocol (SecEmb Section 5.3 / Appendix J baselines).

One phase per round, ``train.compressed_update``: server -> user the FULL public
model (item table + dense vector; the paper compares the codecs under a full
download); user -> server the codec's payload of its ``[n_items, row_dim]``
item-embedding update, the uncompressed dense gradient and the train metrics.
Every payload array is validated against the shape the codec implies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from models.compression import UpdateCodec, make_codec
from schemas import common, sizes
from schemas.config import AppConfig
from schemas.plaintext import model_content, parse_model_content
from schemas.validation import (MessageError, array_record, check_gradient, get_array, get_gradient, get_scalar,
                                require_record)

UPDATE = "train.compressed_update"


def payload_spec(codec: str, rank: int | None, n_items: int, row_dim: int) -> dict[str, tuple[type, tuple[int, ...]]]:
    """name -> (dtype, shape) of each payload array the codec produces (models.compression)."""
    if codec == "bit8":
        return {"codes": (np.uint8, (n_items, row_dim)), "scale": (np.float32, (1,))}
    if codec == "tern":
        return {"packed": (np.uint8, (math.ceil(n_items * row_dim / 4),)), "scale": (np.float32, (1,))}
    if codec == "svd":
        r = min(int(rank or 0), n_items, row_dim)
        return {"us": (np.float32, (n_items, r)), "vt": (np.float32, (r, row_dim))}
    if codec == "colr":
        return {"coef": (np.float32, (n_items, int(rank or 0)))}
    raise ValueError(f"unknown codec {codec!r}")


def codec_for(cfg: AppConfig) -> tuple[UpdateCodec, int | None]:
    """The run's codec and its rank (None for bit8 / tern); users, server and batched engine all build it here."""
    st = cfg.strategy
    rank = st.rank(cfg)
    return make_codec(st.compression, rank, int(st.compression_seed), st.tern_clip_factor), rank


def encode_update(codec: UpdateCodec, n_items: int, items: np.ndarray, row_grads: np.ndarray,
                  rng: np.random.Generator, rnd: int) -> dict[str, np.ndarray]:
    """A user's item-embedding update: its row gradients scattered into a zero [n_items, row_dim]
    matrix (``items`` are unique), compressed. Flower client and batched engine both call this."""
    update = np.zeros((n_items, row_grads.shape[1]), dtype=np.float32)
    update[np.asarray(items, dtype=np.int64)] = row_grads
    return codec.compress(update, rng, rnd)


def update_message(rnd: int, table: np.ndarray, dense: np.ndarray) -> RecordDict:
    """The full model download plus the round (CoLR's basis and the state check need it)."""
    content = model_content(table, dense)
    content["cfg"] = ConfigRecord({"round": rnd})
    return content


def parse_update_message(content: RecordDict, n_items: int, row_dim: int, dense_size: int
                         ) -> tuple[int, np.ndarray, np.ndarray]:
    rnd = int(get_scalar(require_record(content, "cfg", ConfigRecord), "round", int, 0))
    table, dense = parse_model_content(content, n_items, row_dim, dense_size)
    return rnd, table, dense


@dataclass
class Update:
    payload: dict[str, np.ndarray]
    dense_grad: np.ndarray
    loss: float
    n_ratings: int
    seconds: float
    decoded: np.ndarray | None = None  # the payload decoded and bounded (:func:`decoded_update`), set by the server


def update_reply(payload: dict[str, np.ndarray], dense_grad: np.ndarray, loss: float, n: int,
                 seconds: float) -> RecordDict:
    return RecordDict({"payload": array_record(**payload),
                       "grads": array_record(dense=dense_grad.astype(np.float32)),
                       "metrics": common.train_metrics(loss, n, seconds)})


def parse_update_reply(content: RecordDict, codec: str, rank: int | None, n_items: int, row_dim: int,
                       dense_size: int) -> Update:
    """Validate every payload field (dtype, codec-implied shape, finite floats, no extra keys)."""
    rec = require_record(content, "payload", ArrayRecord)
    spec = payload_spec(codec, rank, n_items, row_dim)
    if set(rec.keys()) != set(spec):
        raise MessageError(f"{codec} payload has arrays {sorted(rec.keys())}, expected {sorted(spec)}")
    payload = {k: get_array(rec, k, dt, shape, finite=np.dtype(dt).kind == "f") for k, (dt, shape) in spec.items()}
    if "scale" in payload and payload["scale"][0] < 0:
        raise MessageError("payload scale is negative")
    if codec == "tern" and np.any((payload["packed"][:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3 == 3):
        raise MessageError("TernGrad payload has the invalid 2-bit code 3")
    dense = get_gradient(require_record(content, "grads", ArrayRecord), "dense", np.float32, (dense_size,))
    loss, n, seconds = common.parse_train_metrics(content)
    return Update(payload, dense, loss, n, seconds)


def decoded_update(codec: UpdateCodec, payload: dict[str, np.ndarray], shape: tuple[int, int], rnd: int
                   ) -> np.ndarray:
    """A received payload decoded (float32 ``shape``), refused as the user's :class:`MessageError` when a value is
    beyond :data:`schemas.validation.MAX_GRADIENT`: each field may be finite and the decoded product still
    overflow (SVD's ``us @ vt`` of two factors near 1e20), and the server sums and squares what it decodes."""
    try:
        update = codec.decompress(payload, shape, rnd)
    except ValueError as exc:
        raise MessageError(f"{codec.name} payload does not decode: {exc}") from None
    return check_gradient(update, f"{codec.name} update")


def round_bytes(rnd: int, codec: str, rank: int | None, n_items: int, row_dim: int, dense_size: int,
                n_ratings: int) -> tuple[int, int]:
    """(bytes down, bytes up) of one user's round as the Flower meter measures them."""
    down = sizes.content_nbytes(update_message(rnd, sizes.filler((n_items, row_dim), np.float32),
                                               sizes.filler(dense_size, np.float32)))
    payload = {k: sizes.filler(shape, dt) for k, (dt, shape) in payload_spec(codec, rank, n_items, row_dim).items()}
    up = sizes.content_nbytes(update_reply(payload, sizes.filler(dense_size, np.float32), 1.0, n_ratings, 1.0))
    return down, up
