"""Sealed boxes, additive secret sharing and the fixed-point ring codec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crypto.fixed_point import FixedPointCodec
from crypto.sealed import SealedMessageError, generate_keypair, open_array, open_sealed, seal, seal_array
from crypto.secret_sharing import reconstruct, share


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


@given(arrays(st.sampled_from([np.uint32, np.uint64]), st.integers(1, 50)))
@settings(max_examples=30, deadline=None)
def test_shares_reconstruct_and_a_share_alone_is_uniform_looking(x):
    s0, s1 = share(x)
    assert np.array_equal(reconstruct(s0, s1), x)
    assert s0.dtype == x.dtype and s1.dtype == x.dtype


def test_share_is_fresh_randomness():
    x = np.zeros(1000, dtype=np.uint32)
    s0, _ = share(x)
    t0, _ = share(x)
    assert not np.array_equal(s0, t0) and len(np.unique(s0)) > 990


@given(st.lists(st.floats(-100, 100), min_size=1, max_size=30), st.integers(1, 20))
@settings(max_examples=40, deadline=None)
def test_ring_codec_sums_like_floats(values, users):
    codec = FixedPointCodec(16, 100.0)
    x = np.array(values)
    ring = sum((codec.to_ring(x / users, np.uint32) for _ in range(users)), np.zeros(len(x), np.uint32))
    assert np.allclose(codec.from_ring(ring), x, atol=users * 2**-16)


def test_codec_refuses_out_of_range_and_rings_too_small():
    with pytest.raises(ValueError, match="exceed the bound"):
        FixedPointCodec(16, 1.0).to_ring(np.array([2.0]), np.uint32)
    with pytest.raises(ValueError, match="ring"):
        FixedPointCodec(20, 5000.0).to_ring(np.array([1.0]), np.uint32)
