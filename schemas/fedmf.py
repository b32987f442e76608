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
the item ids and encrypted (negated, offset) gradient rows it uploads.
``evaluate.fedmf`` sends C_V; the user decrypts and reports its test error sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from schemas import common
from schemas.validation import MessageError, array_record, get_array, get_scalar, require_record

SETUP = "query.paillier_setup"
KEY = "query.paillier_key"
UPDATE = "train.fedmf_update"
EVALUATE = "evaluate.fedmf"
X25519_BYTES = 32


def modulus_bytes(key_bits: int) -> int:
    return key_bits // 8


def ciphertext_bytes(key_bits: int) -> int:
    return 2 * key_bits // 8


def setup_message(key_bits: int, run: str) -> RecordDict:
    return RecordDict({"cfg": ConfigRecord({"key_bits": key_bits, "run": run})})


def parse_setup_message(content: RecordDict) -> tuple[int, str]:
    rec = require_record(content, "cfg", ConfigRecord)
    bits = int(get_scalar(rec, "key_bits", int, 1024, 8192))
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
    return get_array(require_record(content, "key", ArrayRecord), "x25519", np.uint8, (X25519_BYTES,)).tobytes()


def seal_reply(boxes: np.ndarray) -> RecordDict:
    return RecordDict({"boxes": array_record(boxes=boxes)})


def parse_seal_reply(content: RecordDict, n_users: int) -> np.ndarray:
    boxes = get_array(require_record(content, "boxes", ArrayRecord), "boxes", np.uint8, (n_users, None))
    if not 60 <= boxes.shape[1] <= 4096:
        raise MessageError(f"sealed key boxes of {boxes.shape[1]} bytes are outside the allowed size")
    return boxes


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
    loss: float
    n_ratings: int
    seconds: float
    ct_list: list | None = None  # parsed ciphertexts, filled by the strategy after range checks


def update_reply(items: np.ndarray, cts: np.ndarray, loss: float, n: int, seconds: float) -> RecordDict:
    return RecordDict({"grad": array_record(items=items.astype(np.int64), cts=cts),
                       "metrics": common.train_metrics(loss, n, seconds)})


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
    loss, n, seconds = common.parse_train_metrics(content)
    return Upload(items, cts, loss, n, seconds)
