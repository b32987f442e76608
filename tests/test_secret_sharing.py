"""Additive secret sharing over Z_2^k against its definition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crypto.secret_sharing import random_ring, reconstruct, share


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


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20), st.integers(2, 6))
@settings(max_examples=30, deadline=None)
def test_sums_of_shares_are_shares_of_sums(values, users):
    xs = [np.array(values, dtype=np.uint32) * np.uint32(u + 1) for u in range(users)]
    pairs = [share(x) for x in xs]
    total0 = sum((p[0] for p in pairs), np.zeros(len(values), np.uint32))
    total1 = sum((p[1] for p in pairs), np.zeros(len(values), np.uint32))
    assert np.array_equal(reconstruct(total0, total1), sum(xs, np.zeros(len(values), np.uint32)))


def test_only_ring_arrays_are_shared():
    with pytest.raises(ValueError, match="uint32 or uint64"):
        share(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="differ"):
        reconstruct(np.zeros(3, np.uint32), np.zeros(4, np.uint32))
    with pytest.raises(ValueError, match="uint32 or uint64"):
        random_ring((2,), np.float64)
