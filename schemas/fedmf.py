"""Messages of ``fedmf`` (FedMF Section 5 with packed Paillier), defined once.

Key distribution (set-up, and later for any user that has no key yet):
1. ``query.paillier_setup`` to the key holder chosen by the server: it
   generates the Paillier key pair and answers with the public modulus n.
2. ``query.paillier_key`` stage ``announce`` to every other user: it makes an
   X25519 key pair and answers with its public key.
3. ``query.paillier_key`` stage ``seal`` to the key holder with those public
   keys: it answers one sealed box (X25519 + HKDF + AES-GCM) per user holding
   the secret primes. The server relays boxes it cannot open.
4. ``query.paillier_key`` stage ``deliver`` to each user with its box: the
   user opens it, checks p q = n, keeps the key, answers ``ok``.

Each round, ``train.fedmf_update``: server -> user the encrypted item matrix
C_V (fixed-width big-endian ciphertexts, uint8 [m, c, width]); user -> server
the item ids and encrypted (negated, offset) gradient rows it uploads, plus
one packed ciphertext of its metrics [loss sum, rating count, 1].
``evaluate.fedmf`` sends C_V; the user answers one packed ciphertext of
[test squared-error sum, test count, 1].

Private metrics: nothing per-user travels in the clear (DESIGN.md, threat
model). The server multiplies the round's metric ciphertexts (a homomorphic
sum) and asks ONE keyed user, with ``query.fedmf_decrypt``, to decrypt the
aggregate; it learns only the sums. The last slot counts the summed users:
the decrypting user refuses an aggregate of fewer than ``strategy.min_users``
users (so an honest-but-curious server cannot ask for one user's values),
and the server refuses to ask for one. Per-user compute seconds ride along
only with ``simulation.telemetry=true``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from crypto.fixed_point import FixedPointCodec
from crypto.packed_matrix import PackedMatrixPrivate, PackedMatrixPublic
from crypto.paillier import bytes_to_int
from crypto.paillier_codec import PackingCodec
from schemas import common
from schemas.sizes import content_nbytes, filler
from schemas.config import PAILLIER_KEY_BITS, AppConfig
from schemas.validation import (MAX_METRIC, MessageError, array_record, get_array, get_float_list, get_scalar,
                                require_record, usable_key)

SETUP = "query.paillier_setup"
KEY = "query.paillier_key"
UPDATE = "train.fedmf_update"
EVALUATE = "evaluate.fedmf"
DECRYPT = "query.fedmf_decrypt"
X25519_BYTES = 32
SIGNATURE_BYTES = 64   # Ed25519
SIGNER_KEY_BYTES = 32  # raw Ed25519 public key; its sha256 hex is the users' trust anchor

# Metric slots: non-negative fixed-point values, one 128-bit slot each, then a user-counter slot.
# A user's value is < 2^40 (refused otherwise), so 2^(40+32) x 2^56 users still fits 128 bits.
METRIC_FRAC_BITS = 32
METRIC_SLOT_BITS = 128
METRIC_VALUE_LIMIT = float(2 ** 40)
# training: the sum of the users' own losses only; the counter slot says how many users it covers (a sum of
# rating counts, over many rounds of different users, would solve for each user's count)
TRAIN_METRICS = ("loss_sum",)
# + the ranking case's [hit, ndcg, ranked]: 5 values + the counter = 6 x 128 = 768 bits < the 1024-bit minimum key
EVAL_METRICS = ("sse", "count", "hit", "ndcg", "ranked")
METRIC_KINDS = {"train": TRAIN_METRICS, "eval": EVAL_METRICS}


def _codec_params(cfg: AppConfig) -> dict:
    """The packing codec's parameters from the run config (the users in a round bound the summands)."""
    s = cfg.strategy
    return dict(frac_bits=int(s.frac_bits), value_bound=float(s.value_bound), max_summands=int(cfg.clients_per_round))


def packing_codec(cfg: AppConfig) -> PackingCodec:
    """The codec :func:`matrix_crypto` builds, without a key: its encode/decode are the plaintext arithmetic
    the batched engine runs, and its slots give the ciphertexts per row."""
    p = _codec_params(cfg)
    return PackingCodec(FixedPointCodec(p["frac_bits"], p["value_bound"]), max_summands=p["max_summands"],
                        key_bits=int(cfg.strategy.key_bits))


def cts_per_row(cfg: AppConfig) -> int:
    """Ciphertexts per row of C_V (:attr:`PackedMatrixPublic.cts_per_row` of the run's matrix)."""
    return -(-int(cfg.model.dim) // packing_codec(cfg).slots)


def matrix_crypto(cfg: AppConfig, n_items: int, n_bytes: np.ndarray, p_bytes: np.ndarray | None = None,
                  q_bytes: np.ndarray | None = None) -> PackedMatrixPublic:
    """The packed-matrix crypto both sides build from the run config: the server's PackedMatrixPublic
    without p, q; a user's PackedMatrixPrivate with them."""
    n = bytes_to_int(n_bytes)
    params = dict(dim=int(cfg.model.dim), n_rows=n_items, **_codec_params(cfg))
    if p_bytes is None or q_bytes is None:
        return PackedMatrixPublic(n, **params)
    return PackedMatrixPrivate(n, bytes_to_int(p_bytes), bytes_to_int(q_bytes), **params)


def pack_metrics(values: Sequence[float]) -> int:
    """[v_0, .., v_k-1] (each in [0, 2^40)) -> one plaintext: fixed-point slots, then a slot holding 1.

    The counter slot makes the decrypted aggregate say how many users it sums.
    """
    slots = []
    for v in values:
        v = float(v)
        if not 0.0 <= v < METRIC_VALUE_LIMIT:
            # the value is not quoted: Flower forwards a ClientApp's exception message to the server
            raise ValueError(f"metric {len(slots)} is outside [0, 2^40) or not a number and cannot be summed privately")
        slots.append(int(round(v * 2 ** METRIC_FRAC_BITS)))
    slots.append(1)
    return sum(x << (i * METRIC_SLOT_BITS) for i, x in enumerate(slots))


def clip_ranking(ranking: np.ndarray | None) -> np.ndarray:
    """Users' [..., hit, ndcg, ranked] clipped to what one case can add (hit, ranked in {0, 1}, hit <= ranked,
    0 <= ndcg <= hit): a user moves the sums by at most one case. None (no case): zeros [3]."""
    r = np.zeros(3) if ranking is None else np.nan_to_num(np.asarray(ranking, dtype=np.float64), nan=0.0)
    ranked = (r[..., 2] >= 0.5) * 1.0
    hit = np.minimum((r[..., 0] >= 0.5) * 1.0, ranked)
    return np.stack([hit, np.clip(r[..., 1], 0.0, hit), ranked], axis=-1)


def unpack_metrics(plaintext: int, n_values: int) -> tuple[np.ndarray, int]:
    """Inverse of a sum of :func:`pack_metrics` plaintexts: (summed values, number of users)."""
    mask = (1 << METRIC_SLOT_BITS) - 1
    slots = [(plaintext >> (i * METRIC_SLOT_BITS)) & mask for i in range(n_values + 1)]
    if plaintext >> ((n_values + 1) * METRIC_SLOT_BITS):
        raise MessageError("the metric aggregate has data beyond its slots (not a sum of metric ciphertexts)")
    values = np.array([x / 2 ** METRIC_FRAC_BITS for x in slots[:n_values]], dtype=np.float64)
    return values, int(slots[n_values])


def modulus_bytes(key_bits: int) -> int:
    return key_bits // 8


def ciphertext_bytes(key_bits: int) -> int:
    return 2 * key_bits // 8


def setup_message(key_bits: int, run: str) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"key_bits": key_bits, "run": run})})


def parse_setup_message(content: RecordDict) -> tuple[int, str]:
    rec = require_record(content, "cfg", ConfigRecord)
    bits = int(get_scalar(rec, "key_bits", int, 1024, 8192))
    if bits not in PAILLIER_KEY_BITS:  # phe cannot make others (1025 never ends, 1026 overflows)
        raise MessageError(f"key_bits must be one of {PAILLIER_KEY_BITS}, got {bits}")
    return bits, str(get_scalar(rec, "run", str))


def public_key_reply(n_bytes: np.ndarray) -> RecordDict:
    return RecordDict({"key": array_record(n=n_bytes)})


def parse_public_key_reply(content: RecordDict, key_bits: int) -> np.ndarray:
    n = get_array(require_record(content, "key", ArrayRecord), "n", np.uint8, (modulus_bytes(key_bits),))
    if n[0] < 0x80 or n[-1] % 2 == 0:  # full length and odd
        raise MessageError("public modulus is not a full-length odd number")
    return n


def key_message(stage: str, run: str, n_bytes: np.ndarray, **arrays: np.ndarray) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"stage": stage, "run": run}),
                       "data": array_record(n=n_bytes, **arrays)})


def parse_key_message(content: RecordDict) -> tuple[str, str, ArrayRecord]:
    rec = require_record(content, "cfg", ConfigRecord)
    stage = str(get_scalar(rec, "stage", str))
    if stage not in ("announce", "seal", "deliver"):
        raise MessageError(f"unknown key-distribution stage {stage!r}")
    return stage, str(get_scalar(rec, "run", str)), require_record(content, "data", ArrayRecord)


def announce_reply(x25519_public: bytes) -> RecordDict:
    return RecordDict({"key": array_record(x25519=np.frombuffer(x25519_public, dtype=np.uint8))})


def parse_announce_reply(content: RecordDict) -> bytes:
    raw = get_array(require_record(content, "key", ArrayRecord), "x25519", np.uint8, (X25519_BYTES,)).tobytes()
    return usable_key(raw, "announced X25519 key")


def seal_reply(boxes: np.ndarray, sigs: np.ndarray | None = None, signer: np.ndarray | None = None) -> RecordDict:
    """Sealed boxes, and with a signing key one Ed25519 signature per box plus the raw signer key."""
    extra = {} if sigs is None else {"sigs": sigs, "signer": signer}
    return RecordDict({"boxes": array_record(boxes=boxes, **extra)})


@dataclass
class SealedKeys:
    boxes: np.ndarray
    sigs: np.ndarray | None
    signer: np.ndarray | None


def parse_seal_reply(content: RecordDict, n_users: int) -> SealedKeys:
    rec = require_record(content, "boxes", ArrayRecord)
    boxes = get_array(rec, "boxes", np.uint8, (n_users, None))
    if not 60 <= boxes.shape[1] <= 4096:
        raise MessageError(f"sealed key boxes of {boxes.shape[1]} bytes are outside the allowed size")
    if "sigs" not in rec:
        return SealedKeys(boxes, None, None)
    return SealedKeys(boxes, get_array(rec, "sigs", np.uint8, (n_users, SIGNATURE_BYTES)),
                      get_array(rec, "signer", np.uint8, (SIGNER_KEY_BYTES,)))


def signed_key_statement(run: str, n_bytes: bytes, user: int, announce_pub: bytes) -> bytes:
    """What the key holder signs for each recipient: this run's modulus n is for this user's announce key."""
    return b"fedmf-paillier-key|v1|" + run.encode() + b"|" + n_bytes + b"|" + str(int(user)).encode() + b"|" + \
        announce_pub


def ack_reply() -> RecordDict:
    return RecordDict({"ack": ConfigRecord({"ok": True})})


def parse_ack_reply(content: RecordDict) -> bool:
    if get_scalar(require_record(content, "ack", ConfigRecord), "ok", bool) is not True:
        raise MessageError("key delivery not acknowledged")
    return True


def key_context(run: str, user: int) -> bytes:
    return f"fedmf|{run}|{user}|paillier-secret-key".encode()


def update_message(rnd: int, cv: np.ndarray) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"round": rnd}), "model": array_record(C_V=cv)})


def parse_model_message(content: RecordDict, n_items: int, cts_per_row: int, key_bits: int) -> np.ndarray:
    return get_array(require_record(content, "model", ArrayRecord), "C_V", np.uint8,
                     (n_items, cts_per_row, ciphertext_bytes(key_bits)))


def parse_round(content: RecordDict) -> int:
    return int(get_scalar(require_record(content, "cfg", ConfigRecord), "round", int, 1))


@dataclass
class Upload:
    items: np.ndarray
    cts: np.ndarray  # uint8 [k, c, width], checked in range by the strategy's ciphertext parser
    metric_ct: np.ndarray  # uint8 [1, width]: Enc([the user's training loss, 1])
    seconds: float | None  # only with simulation.telemetry=true
    ct_list: list | None = None  # parsed ciphertexts, filled by the strategy after range checks
    metric: object | None = None  # parsed metric ciphertext, filled by the strategy


def telemetry_record(seconds: float | None) -> dict[str, MetricRecord]:
    """The opt-in per-user timing record (empty unless telemetry is on)."""
    return {} if seconds is None else {"telemetry": MetricRecord({common.CLIENT_SECONDS: float(seconds)})}


def parse_telemetry(content: RecordDict) -> float | None:
    if "telemetry" not in content:
        return None
    return float(get_scalar(require_record(content, "telemetry", MetricRecord), common.CLIENT_SECONDS, float, 0.0,
                            MAX_METRIC))


def update_reply(items: np.ndarray, cts: np.ndarray, metric_ct: np.ndarray, seconds: float | None) -> RecordDict:
    return RecordDict({"grad": array_record(items=items.astype(np.int64), cts=cts),
                       "metric": array_record(ct=metric_ct), **telemetry_record(seconds)})


def parse_metric_ct(content: RecordDict, key_bits: int) -> np.ndarray:
    return get_array(require_record(content, "metric", ArrayRecord), "ct", np.uint8, (1, ciphertext_bytes(key_bits)))


def evaluation_reply(metric_ct: np.ndarray, seconds: float | None) -> RecordDict:
    """A user's test metrics, only as Enc([sse, count, 1]) (and its seconds with telemetry)."""
    return RecordDict({"metric": array_record(ct=metric_ct), **telemetry_record(seconds)})


def parse_evaluation_reply(content: RecordDict, key_bits: int) -> tuple[np.ndarray, float | None]:
    return parse_metric_ct(content, key_bits), parse_telemetry(content)


def decrypt_message(kind: str, rnd: int, users: int, aggregate: np.ndarray) -> RecordDict:
    """Ask one keyed user to decrypt the product of ``users`` metric ciphertexts."""
    return RecordDict({"cfg": ConfigRecord({"kind": kind, "round": rnd, "users": users}),
                       "data": array_record(ct=aggregate)})


def parse_decrypt_message(content: RecordDict, key_bits: int) -> tuple[str, int, int, np.ndarray]:
    rec = require_record(content, "cfg", ConfigRecord)
    kind = str(get_scalar(rec, "kind", str))
    if kind not in METRIC_KINDS:
        raise MessageError(f"unknown metric kind {kind!r}")
    rnd = int(get_scalar(rec, "round", int, 0))
    users = int(get_scalar(rec, "users", int, 1, 10**9))
    ct = get_array(require_record(content, "data", ArrayRecord), "ct", np.uint8, (1, ciphertext_bytes(key_bits)))
    return kind, rnd, users, ct


def decrypt_reply(values: np.ndarray, users: int) -> RecordDict:
    return RecordDict({"sums": MetricRecord({"values": [float(v) for v in values], "users": int(users)})})


def parse_decrypt_reply(content: RecordDict, kind: str, users: int) -> np.ndarray:
    rec = require_record(content, "sums", MetricRecord)
    values = get_float_list(rec, "values")
    if values.shape != (len(METRIC_KINDS[kind]),) or not np.isfinite(values).all() or (values < 0).any():
        raise MessageError(f"decrypt reply values {values.tolist()} are not {len(METRIC_KINDS[kind])} sums >= 0")
    if int(get_scalar(rec, "users", int, 0)) != users:
        raise MessageError("decrypted aggregate covers a different number of users than were summed")
    return values


def parse_update_reply(content: RecordDict, n_items: int, cts_per_row: int, key_bits: int, mode: str,
                       pad_to: int) -> Upload:
    rec = require_record(content, "grad", ArrayRecord)
    items = get_array(rec, "items", np.int64, (None,), low=0, high=n_items)
    cts = get_array(rec, "cts", np.uint8, (len(items), cts_per_row, ciphertext_bytes(key_bits)))
    if len(np.unique(items)) != len(items):
        raise MessageError("uploaded item ids are not unique")
    if mode == "fulltext" and len(items) != n_items:
        raise MessageError(f"FullText upload has {len(items)} rows, expected all {n_items}")
    if mode == "padded" and len(items) < min(pad_to, n_items):
        raise MessageError(f"padded upload has {len(items)} rows, fewer than pad_to={pad_to}")
    return Upload(items, cts, parse_metric_ct(content, key_bits), parse_telemetry(content))


def plain_metric_sum(values: np.ndarray) -> tuple[np.ndarray, int]:
    """What the decrypted aggregate of these users' metric ciphertexts holds: (summed values, users).

    ``values`` [B, k], one row per user. The sum of the packed plaintexts is
    what the homomorphic product of their encryptions decrypts to, so this is
    :func:`pack_metrics` per user, an integer sum and :func:`unpack_metrics`
    (the batched engine reports the same fixed-point-rounded sums this way).
    """
    values = np.asarray(values, dtype=np.float64)
    return unpack_metrics(sum(pack_metrics(row) for row in values), values.shape[1])


@lru_cache(maxsize=4096)
def _update_reply_nbytes(rows: int, cts_per_row: int, width: int, telemetry: bool) -> int:
    return content_nbytes(update_reply(filler(rows, np.int64), filler((rows, cts_per_row, width), np.uint8),
                                       filler((1, width), np.uint8), 1.0 if telemetry else None))


def message_sizes(cfg: AppConfig, rnd: int, n_items: int, rows: np.ndarray) -> dict[str, float]:
    """Bytes per client the Flower path measures in training round ``rnd`` (key delivery is not counted).

    Down: C_V; up: each user's items, encrypted rows (``rows`` [B] per user,
    :func:`schemas.distributed_mf.upload_rows`) and metric ciphertext. The
    train-metric sum's decryption (one user, when the round has at least
    ``min_users`` and the loss is released) is metered to that user, i.e. 1/B of it per client.
    Built with this module's message builders around placeholder arrays.
    """
    users, width, per_row = len(rows), ciphertext_bytes(int(cfg.strategy.key_bits)), cts_per_row(cfg)
    down = float(content_nbytes(update_message(rnd, filler((n_items, per_row, width), np.uint8))))
    telemetry = bool(cfg.simulation.telemetry)
    up = float(np.mean([_update_reply_nbytes(int(k), per_row, width, telemetry) for k in rows])) if users else 0.0
    if users >= int(cfg.strategy.min_users) and cfg.train.releases_loss(cfg.dp.enabled):
        down += content_nbytes(decrypt_message("train", rnd, users, filler((1, width), np.uint8))) / users
        up += content_nbytes(decrypt_reply(np.ones(len(TRAIN_METRICS)), users)) / users
    return {"bytes_down": down, "bytes_up": up}
