"""What SecEmb and Secure FedRec share on the wire: server 1's identity, sealed boxes, and private metrics.

Both protocols are two-server additive secret sharing in Z_2^k, so they share
(i) how server 1's public key and the run id reach users, and how a user pins
that key to a trust anchor of its own (``fingerprint``); (ii) how a sealed box
is bound to (run, round, user, purpose); and (iii) how per-user metrics
(training loss, test SSE, test count, ranking case) reach the
servers: only as extra ring elements of the secret-shared vector, so each
server sums its shares and server 0 reconstructs the *sum* over the round's
users, never one user's value (DESIGN, threat model).

The metric elements have their own fixed-point scale (``MetricCodec``): a
count is an exact integer and a float sum uses as many fraction bits as the
ring leaves after reserving room for ``n_users`` summands of at most the
codec's ``value_bound`` each, so the sum can never wrap. Out-of-range values
are clipped client-side (and logged), exactly as R_u clips gradients.
Training metrics ride in the protocol's ring (they are slots of the shared
dense vector); evaluation sums are a message and a sum of their own, so they
always use a 64-bit ring (``EVAL_RING_BITS``) whatever the training ring.

Neither protocol's module imports the other: both import this one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from crypto.sealed import OVERHEAD as SEAL_OVERHEAD, fingerprint
from crypto.ring import ring_dtype
from schemas.validation import (MAX_METRIC, MessageError, array_record, get_array, get_scalar, pinned_anchor,
                                require_record, usable_key)
from schemas.wire import decode_frame, encode_frame

log = logging.getLogger("secrec.metrics")

PUBLIC_KEY_BYTES = 32
MAX_BOX = 1 << 31
SECURE_EVALUATE = "evaluate"  # same Flower message type; its content differs (server info + round)
# Per-user bound of the training loss (it was loss x n_ratings, of which a quarter of DeepFM's first uploads on
# ml_100k exceeded 4096); 2^16 in a 32-bit ring leaves 8 fraction bits at 100 users per round and 5 at 1,000.
TRAIN_METRIC_BOUND = 2.0 ** 16
EVAL_METRIC_BOUND = 2.0 ** 20  # per-user bound of the test SSE (64-bit ring: 24 fraction bits up to 2^19 users)
EVAL_RING_BITS = 64  # evaluation sums: 32 bits left 1 fraction bit over ML-25M's 162,541 users
MAX_METRIC_FRAC_BITS = 24
TRAIN_METRICS = 2  # [loss, 1] appended to the shared dense vector (clients.two_server.encode_upload)
EVAL_METRICS = 5   # [test SSE, test count, ranking hit, ranking NDCG, ranked] (the last 3: encode_ranking)


def context(run: str, rnd: int, user: int, purpose: str) -> bytes:
    """Associated data of a sealed box: what it is for, so it cannot be replayed elsewhere."""
    return f"secemb|{run}|{rnd}|{user}|{purpose}".encode()


def check_pinned(public_key: bytes, anchor: str | None) -> None:
    """Refuse a server-1 key that does not match the user's own trust anchor (if it has one).

    Server 0 relays server 1's key; without a pin a malicious server 0 could
    substitute its own key and open every box. Without an anchor the protocol
    is secure against an honest-but-curious server 0 only.
    """
    if anchor is None or anchor == "":
        return
    pinned = pinned_anchor(anchor, "server 1")
    got = fingerprint(public_key)
    if got != pinned:
        raise MessageError(f"server 1 public key fingerprint {got} does not match this user's trust anchor "
                           f"{anchor}; refusing to seal anything to it")


def is_box(arr: Any) -> bool:
    """Whether ``arr`` has a sealed box's form: uint8, 1-D, between the seal's overhead and MAX_BOX bytes."""
    return (isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 1
            and SEAL_OVERHEAD <= arr.size <= MAX_BOX)


def box_field(rec: ArrayRecord, key: str = "box") -> np.ndarray:
    """A sealed box (uint8) of plausible size."""
    box = get_array(rec, key, np.uint8, (None,))
    if not is_box(box):
        raise MessageError(f"sealed box of {len(box)} bytes is outside the allowed size")
    return box


def check_ring_matrix(arr: np.ndarray, shape: tuple[int, ...], ring: type, what: str) -> np.ndarray:
    if arr.dtype != np.dtype(ring) or arr.shape != tuple(shape):
        raise MessageError(f"{what}: got {arr.dtype} {arr.shape}, expected {np.dtype(ring)} {tuple(shape)}")
    return arr


def server_info_record(server1_public: bytes, run: str, **extra: Any) -> ConfigRecord:
    return ConfigRecord({"server1_public": server1_public, "run": run, **extra})


def parse_server_info(content: RecordDict) -> tuple[bytes, str, dict[str, Any]]:
    rec = require_record(content, "cfg", ConfigRecord)
    pub = usable_key(get_scalar(rec, "server1_public", bytes), "server 1 public key")
    return pub, str(get_scalar(rec, "run", str)), dict(rec)


def ring_vector_bytes(share: np.ndarray, label: str = "dense") -> bytes:
    return encode_frame(label, {}, {"share": share})


def parse_ring_vector(raw: bytes, size: int, ring: type) -> np.ndarray:
    _, _, arrays = decode_frame(raw)
    return check_ring_matrix(arrays.get("share", np.zeros(0)), (size,), ring, "dense share")


# ------------------------------------------------------------ private metrics
@dataclass(frozen=True)
class MetricCodec:
    """Fixed-point encoding of [float sum, integer count] pairs whose sum over ``n_users`` cannot wrap Z_2^k."""

    ring_bits: int
    n_users: int
    value_bound: float  # a user's float sum is clipped to +- this (TRAIN_ or EVAL_METRIC_BOUND)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.value_bound) and self.value_bound >= 1.0):
            raise ValueError(f"metric bound must be a finite number >= 1, got {self.value_bound!r}")
        if self.frac_bits < 0:
            raise ValueError(f"{self.n_users} users x metric bound {self.value_bound:g} do not fit a "
                             f"{self.ring_bits}-bit ring")

    @classmethod
    def for_training(cls, ring_bits: int, clients_per_round: int) -> MetricCodec:
        """[loss, 1] slots of the training upload, in the protocol's ring."""
        return cls(int(ring_bits), int(clients_per_round), TRAIN_METRIC_BOUND)

    @classmethod
    def for_evaluation(cls, n_summands: int) -> MetricCodec:
        """[test SSE, count, hit, ndcg, ranked] of an evaluation reply, in the evaluation ring."""
        return cls(EVAL_RING_BITS, int(n_summands), EVAL_METRIC_BOUND)

    @property
    def ring(self) -> np.dtype:
        return ring_dtype(self.ring_bits)

    @property
    def frac_bits(self) -> int:
        room = self.ring_bits - 1 - math.ceil(math.log2(max(self.n_users, 1) * self.value_bound))
        return min(room, MAX_METRIC_FRAC_BITS)

    @property
    def count_bound(self) -> int:
        return (2 ** (self.ring_bits - 1) - 1) // max(self.n_users, 1)

    def encode(self, value_sum: float, count: int, what: str) -> np.ndarray:
        """Client side: clip (and log) to the per-user bounds, then encode in the ring."""
        bound = self.value_bound
        v = float(value_sum) if math.isfinite(value_sum) else bound
        if abs(v) > bound:
            log.warning("%s: metric sum %.4g clipped to the per-user bound %.4g", what, v, bound)
            v = math.copysign(bound, v)
        c = int(count)
        if c > self.count_bound:
            log.warning("%s: count %d clipped to the per-user bound %d", what, c, self.count_bound)
            c = self.count_bound
        ints = np.array([round(v * 2.0 ** self.frac_bits), c], dtype=np.int64)
        return ints.astype(self.ring)

    def decode(self, total: np.ndarray) -> tuple[float, int]:
        """Server 0: the reconstructed sums (signed interpretation of the ring elements)."""
        signed = total.view(np.int64 if np.dtype(total.dtype).itemsize == 8 else np.int32)
        return float(signed[0]) / 2.0 ** self.frac_bits, int(signed[1])

    def encode_ranking(self, ranking: np.ndarray | None) -> np.ndarray:
        """Client side: one user's [hit, ndcg, ranked] (models.ranking.ranking_sums; None: no case) in the ring.

        Clipped to what one user can contribute - hit and ranked 0 or 1, hit <= ranked,
        0 <= ndcg <= hit - so a user can move the sums by at most one case; ndcg in fixed point.
        """
        hit, ndcg, ranked = (0.0, 0.0, 0.0) if ranking is None else (float(v) for v in ranking[:3])
        ranked_i = int(ranked >= 0.5)
        hit_i = min(int(hit >= 0.5), ranked_i)
        ndcg = min(max(ndcg, 0.0), float(hit_i)) if math.isfinite(ndcg) else 0.0
        return np.array([hit_i, round(ndcg * 2.0 ** self.frac_bits), ranked_i], dtype=np.int64).astype(self.ring)

    def decode_ranking(self, total: np.ndarray) -> np.ndarray:
        """Server 0: summed [hits, ndcg, ranked] from the reconstructed ring elements of :meth:`encode_ranking`."""
        signed = total.view(np.int64 if np.dtype(total.dtype).itemsize == 8 else np.int32)
        return np.array([float(signed[0]), float(signed[1]) / 2.0 ** self.frac_bits, float(signed[2])])

    def encode_eval(self, sse: float, count: int, ranking: np.ndarray | None) -> np.ndarray:
        """One user's whole evaluation vector [SSE, count, hit, ndcg, ranked] (EVAL_METRICS elements)."""
        return np.concatenate([self.encode(sse, count, "test error"), self.encode_ranking(ranking)])

    def decode_eval(self, total: np.ndarray) -> tuple[float, int, np.ndarray]:
        """(SSE, count, [hits, ndcg, ranked]) from a reconstructed sum of :meth:`encode_eval` vectors."""
        sse, count = self.decode(total[:2])
        return sse, count, self.decode_ranking(total[2:EVAL_METRICS])


def eval_summands(clients: int | None, n_users: int) -> int:
    """Upper bound of the users in one evaluation sum (both sides compute it from the config)."""
    return n_users if clients is None else max(1, min(int(clients), n_users))


def mean_of(value_sum: float, count: int) -> float:
    return value_sum / count if count else float("nan")


# --------------------------------------------------------- secure evaluation
def eval_message(model_content: RecordDict, rnd: int, server1_public: bytes, run: str) -> RecordDict:
    """The public model plus what a user needs to secret-share its test error (round, server 1's key, the ring)."""
    content = RecordDict(dict(model_content.items()))
    content["cfg"] = server_info_record(server1_public, run, round=int(rnd), ring_bits=EVAL_RING_BITS)
    return content


def parse_eval_message(content: RecordDict) -> tuple[int, bytes, str, int]:
    pub, run, rec = parse_server_info(content)
    rnd = int(get_scalar(rec, "round", int, 1))
    bits = int(get_scalar(rec, "ring_bits", int, 32, 64))
    if bits != EVAL_RING_BITS:
        raise MessageError(f"evaluation ring_bits must be {EVAL_RING_BITS}, got {bits}")
    return rnd, pub, run, bits


def secure_eval_reply(share0: np.ndarray, box: bytes, seconds: float | None) -> RecordDict:
    content = RecordDict({"eval_share": array_record(share0=share0, box=np.frombuffer(box, dtype=np.uint8))})
    if seconds is not None:
        content["telemetry"] = telemetry_record(seconds)
    return content


def parse_secure_eval_reply(content: RecordDict, ring: type) -> tuple[np.ndarray, np.ndarray, float | None]:
    rec = require_record(content, "eval_share", ArrayRecord)
    return get_array(rec, "share0", ring, (EVAL_METRICS,)), box_field(rec), parse_telemetry(content)


# ------------------------------------------------------------------ telemetry
def telemetry_record(seconds: float) -> MetricRecord:
    """A user's compute seconds: sent only when ``simulation.telemetry`` is on (it is a per-user value)."""
    return MetricRecord({"client_seconds": float(seconds)})


def parse_telemetry(content: RecordDict) -> float | None:
    if "telemetry" not in content:
        return None
    rec = require_record(content, "telemetry", MetricRecord)
    return float(get_scalar(rec, "client_seconds", float, 0.0, MAX_METRIC))
