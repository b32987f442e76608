"""Messages of ``secemb`` (and the sealed payloads inside them), defined once.

Set-up, ``query.secemb_count`` (SecEmb Appendix C): server 0 -> user {server
1's public key}; user -> server 0 an additive share of its rated-item count,
and the other share sealed for server 1.

Each round:
1. ``query.secemb_retrieve``: server 0 -> user {round, m', server 1's key};
   user -> server 0 its m' DPF keys for party 0 (``keys0/*`` arrays) and a box
   sealed for server 1 holding party 1's keys and the user's one-round public
   key (so server 1 can seal its shares back).
2. ``train.secemb_upload``: server 0 -> user its embedding shares, server 1's
   sealed shares, and the dense parameters; user -> server 0 the final
   correction words CW^(n+1) (one per key: row-wise encoding with the shared
   path), its share of the dense gradient, and a box sealed for server 1 with
   the other dense share. Ablations (``rowenc``, ``init``) upload fresh full
   keys instead of CWs.

Every sealed box is bound to (run, round, user, purpose) as AEAD associated
data, so a box cannot be replayed in another round or for another user.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from crypto.dpf_gen import gen as dpf_gen
from crypto.dpf_keys import AGGREGATE_DOMAIN, RETRIEVE_DOMAIN, DpfKeyBatch, DpfParams
from crypto.ring import ring_dtype
from schemas import sizes, two_server
from schemas.two_server import (  # noqa: F401  (re-exported: server 1's operations read them from here)
    MAX_BOX, PUBLIC_KEY_BYTES, box_field, check_ring_matrix, context, parse_ring_vector, parse_server_info,
)
from schemas.validation import (
    MessageError, array_record, get_array, get_arrays_with_prefix, get_scalar, require_record, usable_key,
)
from schemas.wire import decode_frame, encode_frame

COUNT = "query.secemb_count"
RETRIEVE = "query.secemb_retrieve"
UPLOAD = "train.secemb_upload"
# Evaluation through the same private retrieval: the rows of a user's test items and ranking case, padded to
# the evaluation m' (the request and reply of RETRIEVE; sealed under their own purposes), then the shares and
# the dense vector (UPLOAD's message under the secure evaluation header), answered by a secure eval reply.
EVAL_RETRIEVE = "query.secemb_eval_retrieve"
EVALUATE_SHARES = "evaluate.secemb_shares"
EVAL_BOX, EVAL_SHARES_BOX = "eval-retrieve", "eval-shares"  # sealing purposes (never a training one)
_box = box_field


def keys_to_record(keys: DpfKeyBatch, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{k}": v for k, v in keys.to_arrays().items()}


def keys_from_arrays(arrays: Mapping[str, np.ndarray], prefix: str, party: int, n_items: int, width: int,
                     ring: type, n_keys: int) -> DpfKeyBatch:
    """Rebuild and validate a party's key batch; the count must be exactly ``n_keys``."""
    fields = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    keys = DpfKeyBatch.from_arrays(fields, party=party, params=DpfParams(n_items, width, ring))
    if keys.n_keys != n_keys:
        raise MessageError(f"expected {n_keys} DPF keys, got {keys.n_keys}")
    return keys


# ------------------------------------------------------------------ set-up
def count_message(server1_public: bytes, run: str) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"server1_public": server1_public, "run": run})})


def count_reply(share0: np.ndarray, box: bytes) -> RecordDict:
    return RecordDict({"count": array_record(share0=share0.astype(np.uint64),
                                             box=np.frombuffer(box, dtype=np.uint8))})


def parse_count_reply(content: RecordDict) -> tuple[np.ndarray, np.ndarray]:
    rec = require_record(content, "count", ArrayRecord)
    return get_array(rec, "share0", np.uint64, (1,)), _box(rec)


def count_share_bytes(share1: np.ndarray) -> bytes:
    return encode_frame("count", {}, {"share": share1.astype(np.uint64)})


def parse_count_share(raw: bytes) -> np.ndarray:
    _, _, arrays = decode_frame(raw)
    return check_ring_matrix(arrays.get("share", np.zeros(0)), (1,), np.uint64, "count share")


# --------------------------------------------------------------- retrieval
def retrieve_message(rnd: int, m_prime: int, server1_public: bytes, run: str, ring_bits: int,
                     variant: str) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"round": rnd, "m_prime": m_prime, "server1_public": server1_public,
                                            "run": run, "ring_bits": ring_bits, "variant": variant})})


def parse_retrieve_message(content: RecordDict, n_items: int) -> tuple[int, int, bytes, str, int, str]:
    pub, run, rec = parse_server_info(content)
    rnd = int(get_scalar(rec, "round", int, 1))
    m_prime = int(get_scalar(rec, "m_prime", int, 1, n_items))
    bits = int(get_scalar(rec, "ring_bits", int, 32, 64))
    if bits not in (32, 64):
        raise MessageError("ring_bits must be 32 or 64")
    variant = str(get_scalar(rec, "variant", str))
    return rnd, m_prime, pub, run, bits, variant


def retrieve_reply(keys0: DpfKeyBatch, box: bytes) -> RecordDict:
    return RecordDict({"keys": array_record(**keys_to_record(keys0, "k0_"), box=np.frombuffer(box, dtype=np.uint8))})


def parse_retrieve_reply(content: RecordDict, n_items: int, m_prime: int, ring: type) -> tuple[DpfKeyBatch, np.ndarray]:
    rec = require_record(content, "keys", ArrayRecord)
    box = _box(rec)
    arrays = get_arrays_with_prefix(rec, "k0_", (np.uint8, ring))
    return keys_from_arrays(arrays, "k0_", 0, n_items, 1, ring, m_prime), box


def sealed_retrieval_bytes(keys1: DpfKeyBatch, user_public: bytes) -> bytes:
    return encode_frame("retrieve", {}, {**keys_to_record(keys1, "k1_"),
                                         "user_public": np.frombuffer(user_public, dtype=np.uint8)})


def parse_sealed_retrieval(raw: bytes, party: int, n_items: int, m_prime: int, ring_dtype: type
                           ) -> tuple[DpfKeyBatch, bytes]:
    _, _, arrays = decode_frame(raw)
    pub = arrays.get("user_public")
    if pub is None or pub.dtype != np.uint8 or pub.shape != (PUBLIC_KEY_BYTES,):
        raise MessageError("sealed retrieval lacks a 32-byte user public key")
    return keys_from_arrays(arrays, "k1_", party, n_items, 1, ring_dtype, m_prime), usable_key(pub.tobytes(),
                                                                                                "user public key")


def share_bytes(shares: np.ndarray) -> bytes:
    return encode_frame("shares", {}, {"shares": shares})


def parse_share_bytes(raw: bytes, shape: tuple[int, int], ring: type) -> np.ndarray:
    _, _, arrays = decode_frame(raw)
    return check_ring_matrix(arrays.get("shares", np.zeros(0)), shape, ring, "server 1 shares")


# ------------------------------------------------------------- aggregation
def upload_message(rnd: int, shares0: np.ndarray, box: np.ndarray, dense: np.ndarray) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"round": rnd}),
                       "data": array_record(shares0=shares0, box=box, dense=dense.astype(np.float32))})


def parse_upload_message(content: RecordDict, m_prime: int, row_dim: int, dense_size: int, ring: type
                         ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    rnd = int(get_scalar(require_record(content, "cfg", ConfigRecord), "round", int, 1))
    rec = require_record(content, "data", ArrayRecord)
    shares0 = get_array(rec, "shares0", ring, (m_prime, row_dim))
    dense = get_array(rec, "dense", np.float32, (dense_size,), finite=True)
    return rnd, shares0, _box(rec), dense


@dataclass
class Upload:
    correction_words: np.ndarray | None  # [m', row_dim] ring (secemb)
    keys0: DpfKeyBatch | None            # fresh keys (ablations)
    dense_share0: np.ndarray             # share 0 of [dense gradient, loss, 1]
    box: np.ndarray
    seconds: float | None                # only with simulation.telemetry


def upload_reply(cw_or_keys: np.ndarray | DpfKeyBatch, dense_share0: np.ndarray, box: bytes,
                 seconds: float | None) -> RecordDict:
    """CWs (or fresh keys) and share 0 of the dense+metrics vector; no per-user metric in the clear."""
    arrays = keys_to_record(cw_or_keys, "k0_") if isinstance(cw_or_keys, DpfKeyBatch) else {"cw": cw_or_keys}
    content = RecordDict({"upload": array_record(**arrays, dense0=dense_share0,
                                                 box=np.frombuffer(box, dtype=np.uint8))})
    if seconds is not None:
        content["telemetry"] = two_server.telemetry_record(seconds)
    return content


def parse_upload_reply(content: RecordDict, key_shape: tuple[int, int] | None, n_items: int, m_prime: int,
                       row_dim: int, dense_size: int, ring: type) -> Upload:
    """An aggregation upload: correction words (``key_shape`` None), or fresh keys of ``key_shape`` (n, width)."""
    rec = require_record(content, "upload", ArrayRecord)
    dense0 = get_array(rec, "dense0", ring, (dense_size,))
    box = _box(rec)
    seconds = two_server.parse_telemetry(content)
    if key_shape is None:
        cw = get_array(rec, "cw", ring, (m_prime, row_dim))
        return Upload(cw, None, dense0, box, seconds)
    n_keys, width = key_shape
    arrays = get_arrays_with_prefix(rec, "k0_", (np.uint8, ring))
    keys = keys_from_arrays(arrays, "k0_", 0, n_items, width, ring, n_keys)
    return Upload(None, keys, dense0, box, seconds)


def round_bytes(rnd: int, m_prime: int, n_items: int, row_dim: int, dense_size: int, ring_bits: int,
                key_shape: tuple[int, int] | None, telemetry: bool) -> tuple[int, int]:
    """(bytes down, bytes up) of one user's training round as the Flower path's meter measures them.

    Down: the retrieval request and the upload request (server 0's embedding shares, server 1's
    sealed shares, the dense parameters). Up: the m' retrieval keys for party 0 with party 1's
    sealed, then the aggregation payload - correction words (``key_shape`` None) or fresh keys
    of ``key_shape`` (n, width), as the variant says - and the dense+metrics shares. Key sizes
    depend only on their count, domain and width, so real keys are generated for placeholder points.
    """
    ring = ring_dtype(ring_bits)
    run, pub = "0" * 16, bytes(PUBLIC_KEY_BYTES)
    points = np.arange(m_prime, dtype=np.int64) % n_items
    keys0, keys1, _ = dpf_gen(points, np.ones((m_prime, 1), dtype=ring), n_items, domain=RETRIEVE_DOMAIN)
    shares = sizes.filler((m_prime, row_dim), ring)
    dense_share = sizes.filler(dense_size + two_server.TRAIN_METRICS, ring)
    down = (sizes.content_nbytes(retrieve_message(rnd, m_prime, pub, run, ring_bits, "secemb"))
            + sizes.content_nbytes(upload_message(rnd, shares, np.frombuffer(sizes.sealed_box(len(share_bytes(shares))),
                                                                             dtype=np.uint8),
                                                  sizes.filler(dense_size, np.float32))))
    retrieval = retrieve_reply(keys0, sizes.sealed_box(len(sealed_retrieval_bytes(keys1, pub))))
    if key_shape is None:
        payload, inner = shares, len(sealed_dense_bytes(dense_share))
    else:
        n_keys, width = key_shape
        payload, fresh1, _ = dpf_gen(np.arange(n_keys, dtype=np.int64) % n_items, sizes.filler((n_keys, width), ring),
                                     n_items, domain=AGGREGATE_DOMAIN)
        inner = len(sealed_fresh_upload_bytes(fresh1, dense_share))
    upload = upload_reply(payload, dense_share, sizes.sealed_box(inner), 1.0 if telemetry else None)
    return down, sizes.content_nbytes(retrieval) + sizes.content_nbytes(upload)


def sealed_dense_bytes(dense_share1: np.ndarray) -> bytes:
    return encode_frame("dense", {}, {"share": dense_share1})


def sealed_fresh_upload_bytes(keys1: DpfKeyBatch, dense_share1: np.ndarray) -> bytes:
    return encode_frame("upload", {}, {**keys_to_record(keys1, "k1_"), "share": dense_share1})


def parse_sealed_fresh_upload(raw: bytes, n_items: int, fresh_shape: tuple[int, int], dense_size: int, ring: type
                              ) -> tuple[DpfKeyBatch, np.ndarray]:
    """Server 1's part of a fresh-keys upload: the keys (``fresh_shape`` = (n, width)) and its dense share."""
    _, _, arrays = decode_frame(raw)
    n_keys, width = fresh_shape
    keys = keys_from_arrays(arrays, "k1_", 1, n_items, width, ring, n_keys)
    share = check_ring_matrix(arrays.get("share", np.zeros(0)), (dense_size,), ring, "dense share")
    return keys, share