"""Ring Z_2^k helpers and the exact float64 ring products, against integer arithmetic mod 2^k."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crypto.ring as ring_module
from crypto.ring import (
    RING_DTYPES, bits_times_rows, check_ring, negate, party_sign, ring_bits, ring_dtype, ring_matmul, signed_view,
)

RINGS = st.sampled_from([np.uint32, np.uint64])


def _rand_ring(rng, shape, dtype):
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=np.uint64, endpoint=True).astype(dtype)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9000), k=st.integers(1, 5), w=st.integers(1, 6), ring=RINGS,
       top_bits=st.sampled_from([1, 9, 10, 11, 15, 20, 25, 31, 64]), extreme=st.booleans(), seed=st.integers(0, 2**32))
def test_ring_matmul_is_exact_mod_2_pow_k(rows, k, w, ring, top_bits, extreme, seed):
    """The float64 BLAS product equals the integer product mod 2^k, also at the largest magnitudes."""
    rng = np.random.default_rng(seed)
    a = np.full((k, rows), np.iinfo(ring).max // 2 + 1, ring) if extreme else _rand_ring(rng, (k, rows), ring)
    bits = min(top_bits, np.dtype(ring).itemsize * 8 - 1)
    b = rng.integers(-(2 ** bits), 2 ** bits, size=(rows, w), dtype=np.int64).astype(np.dtype(ring).str.replace("u", "i"))
    if extreme:
        b[:] = -(2 ** bits)
    b = b.view(ring)
    mod = 2 ** (np.dtype(ring).itemsize * 8)
    expected = (a.astype(object) @ b.astype(object)) % mod
    assert np.array_equal(ring_matmul(a, b).astype(object), expected)
    assert np.array_equal(ring_matmul(np.asfortranarray(a), b).astype(object), expected)  # transposed layout


@settings(max_examples=12, deadline=None)
@given(m=st.integers(1 << 16, 1 << 19), k=st.integers(1, 48), w=st.integers(1, 4), ring=RINGS,
       all_ones=st.booleans(), seed=st.integers(0, 2**32))
def test_bits_times_rows_is_exact_mod_2_pow_k(m, k, w, ring, all_ones, seed):
    """sum_k t_k(x) CW_k over several float64 slices and both pool threads equals the integer product mod 2^k."""
    rng = np.random.default_rng(seed)
    t = np.ones((k, m), np.uint8) if all_ones else rng.integers(0, 2, (k, m), dtype=np.uint8)
    cw = np.full((k, w), np.iinfo(ring).max, ring) if all_ones else _rand_ring(rng, (k, w), ring)
    expected = t.T.astype(ring) @ cw  # numpy's integer matmul wraps mod 2^k
    assert np.array_equal(bits_times_rows(t, cw), expected)


def test_bits_times_rows_sums_slices_of_keys_beyond_the_exact_limit(monkeypatch):
    """More keys than one exact float64 matmul may take are summed slice by slice (limit lowered to 5 here),
    and tiles narrower than all leaves add up (tile of 40 entries: 5 keys x 8 leaves)."""
    monkeypatch.setattr(ring_module, "BITS_MATMUL_MAX_KEYS", 5)
    monkeypatch.setattr(ring_module, "BITS_TILE", 40)
    rng = np.random.default_rng(7)
    t = rng.integers(0, 2, (23, 300), dtype=np.uint8)
    cw = _rand_ring(rng, (23, 3), np.uint32)
    assert np.array_equal(bits_times_rows(t, cw), t.T.astype(np.uint32) @ cw)
    with pytest.raises(ValueError, match="at most"):
        ring_module._bits_matmul(t, cw, np.empty(t.size))


def test_bits_times_rows_of_no_keys_is_zero():
    assert not bits_times_rows(np.zeros((0, 7), np.uint8), np.zeros((0, 3), np.uint32)).any()


def test_ring_dtype_is_the_one_map_from_ring_bits():
    assert ring_dtype(32) == np.dtype(np.uint32) and ring_dtype(64) == np.dtype(np.uint64)
    assert ring_dtype(np.int64(64)) == np.dtype(np.uint64)
    assert ring_bits(ring_dtype(32)) == 32 and ring_bits(np.uint64) == 64
    for bad in (16, 31, 128, True, 32.5, "32"):
        with pytest.raises(ValueError, match="ring_bits"):
            ring_dtype(bad)


def test_check_ring_accepts_native_unsigned_32_and_64_only():
    assert check_ring(np.uint32) in RING_DTYPES and check_ring(np.dtype(np.uint64)) in RING_DTYPES
    for bad in (np.int32, np.uint16, np.float64, ">u4", ">u8"):
        with pytest.raises(ValueError, match="uint32 or uint64"):
            check_ring(bad)


@given(st.integers(0, 2**64 - 1), RINGS)
@settings(max_examples=50, deadline=None)
def test_negation_signed_view_and_party_sign_follow_twos_complement(x, ring):
    bits = np.dtype(ring).itemsize * 8
    v = np.array([x % 2**bits], dtype=ring)
    assert int(negate(v)[0]) == (-x) % 2**bits
    assert int(signed_view(v)[0]) == (x % 2**bits) - (2**bits if x % 2**bits >= 2 ** (bits - 1) else 0)
    assert party_sign(v, 0) is v and int((party_sign(v, 1) + v)[0]) == 0
