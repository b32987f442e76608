"""Sealed boxes (X25519 + HKDF + AES-GCM): round trip, authentication, context binding, key serialisation.

Secret sharing and the fixed-point codec, once tested here too, have their own files
(test_secret_sharing.py, test_fixed_point.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.sealed import (
    OVERHEAD, SealedMessageError, check_public_key, generate_keypair, open_array, open_sealed, private_key_bytes,
    private_key_from_bytes, public_bytes, seal, seal_array,
)

# Low-order X25519 points, little-endian u-coordinates: u = 0, u = 1 and two of order 8 that curve25519
# libraries list. An exchange with any of them yields the all-zero secret (RFC 7748 section 6.1's check).
LOW_ORDER = [bytes(32), bytes([1]) + bytes(31),
             bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
             bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157")]


@given(st.binary(max_size=2000), st.binary(max_size=40))
@settings(max_examples=30, deadline=None)
def test_seal_round_trip(msg, ctx):
    sk, pk = generate_keypair()
    assert open_sealed(sk, seal(pk, msg, ctx), ctx) == msg


def test_tampering_wrong_key_and_wrong_context_fail_authentication():
    sk, pk = generate_keypair()
    other, _ = generate_keypair()
    box = bytearray(seal(pk, b"secret primes", b"round 1"))
    with pytest.raises(SealedMessageError):
        open_sealed(sk, bytes(box), b"round 2")
    with pytest.raises(SealedMessageError):
        open_sealed(other, bytes(box), b"round 1")
    box[50] ^= 1
    with pytest.raises(SealedMessageError):
        open_sealed(sk, bytes(box), b"round 1")
    with pytest.raises(SealedMessageError, match="shorter"):
        open_sealed(sk, b"x" * 10, b"round 1")


def test_sealed_arrays_declare_dtype_and_shape():
    sk, pk = generate_keypair()
    a = np.arange(12, dtype=np.uint32).reshape(3, 4)
    box = seal_array(pk, a, b"c")
    assert np.array_equal(open_array(sk, box, b"c", np.uint32, (3, 4)), a)
    with pytest.raises(SealedMessageError, match="expected"):
        open_array(sk, box, b"c", np.uint64, (3, 4))


def test_every_box_is_fresh_and_costs_a_fixed_overhead():
    _, pk = generate_keypair()
    a, b = seal(pk, b"same", b"ctx"), seal(pk, b"same", b"ctx")
    assert a != b and len(a) == len(b) == 4 + OVERHEAD


def test_private_keys_survive_serialisation_and_open_their_boxes():
    """A client keeps its X25519 key as raw bytes in its own state between messages."""
    sk, pk = generate_keypair()
    raw = private_key_bytes(sk)
    assert isinstance(raw, bytes) and len(raw) == 32
    back = private_key_from_bytes(raw)
    assert public_bytes(back) == pk
    assert open_sealed(back, seal(pk, b"p and q", b"deliver"), b"deliver") == b"p and q"
    with pytest.raises(SealedMessageError, match="32 bytes"):
        private_key_from_bytes(raw[:31])


def test_low_order_public_keys_are_refused_as_bad_keys_not_crashes():
    """A received key one cannot seal to is the sender's error (SealedMessageError), where it is parsed
    and at seal time; before, ``cryptography``'s bare ValueError at seal time failed a whole batch."""
    _priv, good = generate_keypair()
    assert check_public_key(good) == good
    for raw in LOW_ORDER:
        with pytest.raises(SealedMessageError, match="low-order"):
            check_public_key(raw)
        with pytest.raises(SealedMessageError, match="low-order"):
            seal(raw, b"shares", b"ctx")
    with pytest.raises(SealedMessageError, match="32 bytes"):
        check_public_key(good[:31])
