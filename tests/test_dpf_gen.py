"""DPF key generation against its definition: the two parties' trees agree off the point, and ConvertGen."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import prg
from crypto.dpf_expand import expand_leaves
from crypto.dpf_gen import convert_gen, gen, path_gen
from crypto.dpf_keys import AGGREGATE_DOMAIN, DpfKeyBatch, t_of, to_words

RINGS = st.sampled_from([np.uint32, np.uint64])


def test_points_outside_the_domain_are_refused():
    with pytest.raises(ValueError):
        gen(np.array([10]), np.ones((1, 1), np.uint32), 10)
    with pytest.raises(ValueError):
        gen(np.array([-1]), np.ones((1, 1), np.uint32), 10)
    with pytest.raises(ValueError):
        path_gen(np.array([], dtype=np.int64), 10)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 3000), k=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_the_parties_leaves_agree_off_the_point_and_differ_in_t_on_it(m, k, seed):
    """BGI's invariant: at every x != alpha both parties reach the same seed and t; at alpha their t differ."""
    alphas = np.random.default_rng(seed).integers(0, m, size=k)
    k0, k1, state = gen(alphas, np.ones((k, 1), np.uint32), m)
    l0, order = (a.copy() for a in expand_leaves(k0))  # expand_leaves returns the thread's workspace
    l1 = expand_leaves(k1)[0]
    on = order[:, None] == alphas[None, :]  # [m, K]: leaf row p holds the key's point
    same = (l0 == l1).all(axis=-1)
    assert same[~on].all() and not same[on].any()
    assert np.array_equal((t_of(l0) ^ t_of(l1))[on], np.ones(k, np.uint8))
    row = np.argmax(on, axis=0)  # each key's point: the generator's final state is that leaf
    assert np.array_equal(state.t1, t_of(l1[row, np.arange(k)]))
    assert np.array_equal(to_words(state.s0), l0[row, np.arange(k)])


def test_both_parties_share_the_correction_words_and_not_the_seeds():
    k0, k1, _ = gen(np.array([3, 3]), np.ones((2, 2), np.uint32), 100)
    assert np.array_equal(k0.cw_seeds, k1.cw_seeds) and np.array_equal(k0.cw_t, k1.cw_t)
    assert np.array_equal(k0.cw_out, k1.cw_out)
    assert not np.array_equal(k0.seeds, k1.seeds) and not np.array_equal(k0.seeds[0], k0.seeds[1])
    assert k0.t0.tolist() == [0, 0] and k1.t0.tolist() == [1, 1]


@settings(max_examples=20, deadline=None)
@given(k=st.integers(1, 6), width=st.integers(1, 40), ring=RINGS, domain=st.sampled_from([0, AGGREGATE_DOMAIN]),
       seed=st.integers(0, 2**32))
def test_convert_gen_is_its_formula(k, width, ring, domain, seed):
    """CW^(n+1) = (-1)^t1 [beta - Convert(s0) + Convert(s1)] (SecEmb Algorithm 5)."""
    rng = np.random.default_rng(seed)
    _, _, state = path_gen(rng.integers(0, 500, size=k), 500)
    betas = rng.integers(0, np.iinfo(ring).max, (k, width), dtype=np.uint64, endpoint=True).astype(ring)
    cw = convert_gen(state, betas, domain)
    raw = betas - prg.convert(to_words(state.s0), width, ring, domain) + prg.convert(to_words(state.s1), width,
                                                                                     ring, domain)
    sign = np.where(state.t1.astype(bool)[:, None], np.array(-1, np.int64).astype(ring), np.array(1, ring))
    assert cw.dtype == np.dtype(ring) and np.array_equal(cw, (raw * sign).astype(ring))


def test_convert_gen_checks_its_payload():
    _, _, state = path_gen(np.array([1, 2]), 10)
    with pytest.raises(ValueError, match="betas"):
        convert_gen(state, np.ones((3, 1), np.uint32), AGGREGATE_DOMAIN)
    with pytest.raises(ValueError, match="ring dtype"):
        convert_gen(state, np.ones((2, 1), np.int64), AGGREGATE_DOMAIN)


def test_every_key_is_fresh_randomness():
    a, _, _ = gen(np.array([5]), np.ones((1, 1), np.uint32), 64)
    b, _, _ = gen(np.array([5]), np.ones((1, 1), np.uint32), 64)
    assert isinstance(a, DpfKeyBatch) and not np.array_equal(a.seeds, b.seeds)
    assert not np.array_equal(a.cw_seeds, b.cw_seeds)
