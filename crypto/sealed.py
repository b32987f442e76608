"""Sealed boxes: X25519 key agreement + HKDF-SHA256 + AES-256-GCM, all from ``cryptography``.

A relaying server (FedMF's server relays the Paillier secret key; SecEmb's
server 0 relays everything for server 1) must not read or alter what it
relays. ``seal`` uses a fresh ephemeral X25519 key per box, so only the holder
of the recipient's private key can derive the AES key; the ``context`` (what
the box is for: protocol, run, round, user, purpose) is bound both into the
HKDF info and as AES-GCM associated data, so a box cannot be replayed
elsewhere.

Box layout: ephemeral public key (32) || nonce (12) || ciphertext || tag (16).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = PUBLIC_KEY_BYTES + NONCE_BYTES + TAG_BYTES


class SealedMessageError(ValueError):
    """A box that is malformed, was tampered with, or is opened with the wrong key or context."""


def generate_keypair() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, public_bytes(private)


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key_bytes(private: X25519PrivateKey) -> bytes:
    """The raw 32-byte private key, for a client to keep in its own state between messages.

    Virtual clients do not survive between rounds, so a one-round or announce key is stored
    (in ``Context.state``, on the user's device) and rebuilt with :func:`private_key_from_bytes`.
    """
    return private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())


def private_key_from_bytes(raw: bytes) -> X25519PrivateKey:
    """Inverse of :func:`private_key_bytes`; anything but 32 bytes is refused."""
    if len(raw) != PRIVATE_KEY_BYTES:
        raise SealedMessageError(f"an X25519 private key is {PRIVATE_KEY_BYTES} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def fingerprint(raw_public_key: bytes) -> str:
    """sha256 hex of a raw public key (X25519 or Ed25519): the value an operator gives users to pin,
    so a key relayed by server 0 can be checked against a trust anchor server 0 does not control."""
    return hashlib.sha256(bytes(raw_public_key)).hexdigest()


FINGERPRINT_HEX = 64  # hex digits of a sha256 fingerprint


def canonical_fingerprint(text: object) -> str:
    """A pinned fingerprint written the way :func:`fingerprint` writes it (spaces around it dropped,
    lowercase), so the check at composition and the check on a user's device accept the same strings;
    anything but 64 hex digits is a ValueError."""
    value = str(text).strip().lower()
    if len(value) != FINGERPRINT_HEX or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"a fingerprint is the {FINGERPRINT_HEX} hex digits of a sha256, got {text!r}")
    return value


def _key(shared: bytes, eph_pub: bytes, recipient_pub: bytes, context: bytes) -> bytes:
    info = b"secrec sealed box v1|" + eph_pub + recipient_pub + b"|" + context
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def check_public_key(raw: bytes) -> bytes:
    """``raw`` if it is an X25519 public key one can seal to: 32 bytes, not a low-order point.

    Why: with a low-order point (all zeros, say) every exchange gives the all-zero secret, which
    ``cryptography`` refuses with a ValueError at seal time. A received key is checked where it is
    parsed, so one sender's bad key is that sender's refusal, not the failure of a whole batch of
    seals (server 1's retrieval reply, FedMF's key delivery). One exchange, about 0.1 ms.
    """
    if len(raw) != PUBLIC_KEY_BYTES:
        raise SealedMessageError(f"an X25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError as exc:
        raise SealedMessageError("X25519 public key is a low-order point: no shared secret") from exc
    return raw


def seal(recipient_public: bytes, plaintext: bytes, context: bytes) -> bytes:
    if len(recipient_public) != PUBLIC_KEY_BYTES:
        raise SealedMessageError("recipient public key must be 32 bytes")
    eph = X25519PrivateKey.generate()
    eph_pub = public_bytes(eph)
    try:
        shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    except ValueError as exc:
        raise SealedMessageError("recipient public key is a low-order point: no shared secret") from exc
    nonce = os.urandom(NONCE_BYTES)
    ct = AESGCM(_key(shared, eph_pub, recipient_public, context)).encrypt(nonce, plaintext, context)
    return eph_pub + nonce + ct


def open_sealed(recipient_private: X25519PrivateKey, box: bytes, context: bytes) -> bytes:
    if len(box) < OVERHEAD:
        raise SealedMessageError(f"sealed box of {len(box)} bytes is shorter than the {OVERHEAD}-byte overhead")
    eph_pub, nonce, ct = box[:PUBLIC_KEY_BYTES], box[PUBLIC_KEY_BYTES:PUBLIC_KEY_BYTES + NONCE_BYTES], \
        box[PUBLIC_KEY_BYTES + NONCE_BYTES:]
    try:
        shared = recipient_private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _key(shared, eph_pub, public_bytes(recipient_private), context)
        return AESGCM(key).decrypt(nonce, ct, context)
    except (InvalidTag, ValueError) as exc:
        raise SealedMessageError("sealed box failed authentication (tampered, wrong key or wrong context)") from exc


def seal_array(recipient_public: bytes, arr: np.ndarray, context: bytes) -> bytes:
    """Seal the raw bytes of an array; the receiver states dtype and shape (nothing is pickled)."""
    return seal(recipient_public, np.ascontiguousarray(arr).tobytes(), context)


def open_array(recipient_private: X25519PrivateKey, box: bytes, context: bytes, dtype: np.dtype | type,
               shape: tuple[int, ...]) -> np.ndarray:
    raw = open_sealed(recipient_private, box, context)
    want = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if len(raw) != want:
        raise SealedMessageError(f"sealed array has {len(raw)} bytes, expected {want} for {shape} {np.dtype(dtype)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
