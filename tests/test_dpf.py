"""DPF evaluation against its definition: Eval sums to the point function, path sharing, the explicit context.

Keys, generation, expansion and the PRG have their own files (test_dpf_keys, test_dpf_gen,
test_dpf_expand, test_prg); the ring products are in test_ring.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.dpf_eval import DpfEvaluator, EvalContext, StaleContextError
from crypto.dpf_gen import convert_gen, gen
from crypto.dpf_keys import AGGREGATE_DOMAIN

RINGS = st.sampled_from([np.uint32, np.uint64])


def _rand_ring(rng, shape, dtype):
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=np.uint64, endpoint=True).astype(dtype)


def _point_table(alphas, betas, m):
    out = np.zeros((len(alphas), m, betas.shape[1]), dtype=betas.dtype)
    out[np.arange(len(alphas)), alphas] = betas
    return out


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 4096), k=st.integers(1, 4), width=st.integers(1, 70), ring=RINGS, seed=st.integers(0, 2**32))
def test_eval_sums_to_the_point_function_on_the_whole_domain(m, k, width, ring, seed):
    rng = np.random.default_rng(seed)
    alphas = rng.integers(0, m, size=k)
    betas = _rand_ring(rng, (k, width), ring)
    k0, k1, _ = gen(alphas, betas, m)
    total = DpfEvaluator(0, m, ring).eval_full(k0) + DpfEvaluator(1, m, ring).eval_full(k1)
    assert np.array_equal(total, _point_table(alphas, betas, m))


@settings(max_examples=6, deadline=None)
@given(m=st.integers(4097, 2**20), seed=st.integers(0, 2**32))
def test_large_domains_up_to_2_pow_20(m, seed):
    rng = np.random.default_rng(seed)
    alphas = np.array([0, m - 1, rng.integers(0, m)])
    betas = _rand_ring(rng, (3, 1), np.uint32)
    k0, k1, _ = gen(alphas, betas, m)
    total = DpfEvaluator(0, m, np.uint32).eval_full(k0) + DpfEvaluator(1, m, np.uint32).eval_full(k1)
    assert np.array_equal(total, _point_table(alphas, betas, m))


@settings(max_examples=20, deadline=None)
@given(m=st.integers(2, 3000), k=st.integers(1, 12), width=st.integers(1, 66), ring=RINGS, seed=st.integers(0, 2**32))
def test_convert_eval_on_cached_paths_equals_fresh_full_keys(m, k, width, ring, seed):
    """Path sharing: retrieval keys' leaves + new CW^(n+1) == fresh keys for the new payload."""
    rng = np.random.default_rng(seed)
    alphas = rng.integers(0, m, size=k)
    keep = rng.random(k) < 0.7
    k0, k1, state = gen(alphas, np.ones((k, 1), dtype=ring), m)
    table = _rand_ring(rng, (m, 5), ring)
    ev0, ev1 = DpfEvaluator(0, m, ring), DpfEvaluator(1, m, ring)
    (s0, ctx0), (s1, ctx1) = ev0.retrieve(k0, table), ev1.retrieve(k1, table)
    assert np.array_equal(s0 + s1, table[alphas])
    betas = _rand_ring(rng, (k, width), ring)
    cw = convert_gen(state, betas, AGGREGATE_DOMAIN)
    shared = ev0.aggregate(ctx0, cw, keep) + ev1.aggregate(ctx1, cw, keep)
    f0, f1, _ = gen(alphas[keep], betas[keep], m, domain=AGGREGATE_DOMAIN) if keep.any() else (None, None, None)
    fresh = (DpfEvaluator(0, m, ring).sum_full(f0) + DpfEvaluator(1, m, ring).sum_full(f1)) if keep.any() \
        else np.zeros((m, width), ring)
    expected = np.zeros((m, width), dtype=ring)
    np.add.at(expected, alphas[keep], betas[keep])
    assert np.array_equal(shared, expected)
    assert np.array_equal(fresh, expected)


@settings(max_examples=6, deadline=None)
@given(m=st.integers(9000, 40000), chunk=st.integers(1, 7), ring=RINGS, seed=st.integers(0, 2**32))
def test_retrieval_and_aggregation_across_chunks_tiles_and_groups(m, chunk, ring, seed):
    """Many key chunks, several retrieval tiles per chunk and several aggregation groups per thread
    give the same shares as the definition (the paths a round of 100 users takes)."""
    rng = np.random.default_rng(seed)
    k = 17
    alphas = rng.integers(0, m, size=k)
    keep = rng.random(k) < 0.6
    k0, k1, state = gen(alphas, np.ones((k, 1), dtype=ring), m)
    table = _rand_ring(rng, (m, 3), ring)
    evs = [DpfEvaluator(p, m, ring, expand_chunk_keys=chunk) for p in (0, 1)]
    for ev in evs:
        ev.group_blocks = 2 * m  # two keys per aggregation group
    (s0, ctx0), (s1, ctx1) = evs[0].retrieve(k0, table), evs[1].retrieve(k1, table)
    assert np.array_equal(s0 + s1, table[alphas])
    betas = _rand_ring(rng, (k, 4), ring)
    cw = convert_gen(state, betas, AGGREGATE_DOMAIN)
    expected = np.zeros((m, 4), dtype=ring)
    np.add.at(expected, alphas[keep], betas[keep])
    assert np.array_equal(evs[0].aggregate(ctx0, cw, keep) + evs[1].aggregate(ctx1, cw, keep), expected)


def test_single_key_is_not_the_point_function():
    """One party's key alone evaluates to pseudorandom values, not to beta at alpha and 0 elsewhere."""
    k0, _, _ = gen(np.array([7]), np.full((1, 1), 5, np.uint32), 64)
    share = DpfEvaluator(0, 64, np.uint32).eval_full(k0)[0, :, 0]
    assert np.count_nonzero(share) > 60


# ------------------------------------------------------------ evaluation context
def _round(m: int = 50, k: int = 4, ring=np.uint32, seed: int = 0):
    rng = np.random.default_rng(seed)
    alphas = rng.integers(0, m, size=k)
    k0, k1, state = gen(alphas, np.ones((k, 1), dtype=ring), m)
    betas = _rand_ring(rng, (k, 3), ring)
    expected = np.zeros((m, 3), dtype=ring)
    np.add.at(expected, alphas, betas)
    return k0, k1, convert_gen(state, betas, AGGREGATE_DOMAIN), _rand_ring(rng, (m, 2), ring), expected


def test_expand_returns_the_keys_paths_as_read_only_context():
    k0, _, _, _, _ = _round()
    ctx = DpfEvaluator(0, 50, np.uint32).expand(k0)
    assert isinstance(ctx, EvalContext) and ctx.valid
    assert ctx.leaves.shape == (4, 50, 2) and ctx.t.shape == (4, 50)
    assert np.array_equal(ctx.t, (ctx.leaves[:, :, 0] & 1).astype(np.uint8))  # t is the leaf's lowest bit
    assert np.array_equal(np.sort(ctx.order), np.arange(50))
    with pytest.raises(ValueError):
        ctx.leaves[0, 0, 0] = 1


def test_a_stale_context_is_refused_after_the_next_expansion():
    """Buffers are reused across rounds: last round's context must not silently read this round's leaves."""
    k0, _, cw, table, _ = _round()
    ev = DpfEvaluator(0, 50, np.uint32)
    _, old = ev.retrieve(k0, table)
    _, new = ev.retrieve(k0, table)
    assert not old.valid and new.valid
    with pytest.raises(StaleContextError):
        ev.aggregate(old, cw)
    ev.aggregate(new, cw)  # the fresh one still works


def test_sum_full_and_eval_full_leave_a_held_context_valid_and_correct():
    """The ablations' fresh keys are evaluated in scratch buffers: the round's shared path survives them."""
    k0, k1, cw, table, expected = _round()
    ev0, ev1 = DpfEvaluator(0, 50, np.uint32), DpfEvaluator(1, 50, np.uint32)
    (_, ctx0), (_, ctx1) = ev0.retrieve(k0, table), ev1.retrieve(k1, table)
    other0, other1, _ = gen(np.array([1, 2, 3, 4, 5, 6]), np.ones((6, 3), np.uint32), 50, domain=AGGREGATE_DOMAIN)
    ev0.sum_full(other0), ev1.sum_full(other1)
    ev0.eval_full(k0), ev1.eval_full(k1)
    assert ctx0.valid and ctx1.valid
    assert np.array_equal(ev0.aggregate(ctx0, cw) + ev1.aggregate(ctx1, cw), expected)


def test_contexts_of_another_party_or_a_wrong_mask_are_refused():
    k0, k1, cw, table, _ = _round()
    ev0, ev1 = DpfEvaluator(0, 50, np.uint32), DpfEvaluator(1, 50, np.uint32)
    _, ctx1 = ev1.retrieve(k1, table)
    with pytest.raises(ValueError, match="another party"):
        ev0.aggregate(ctx1, cw)
    with pytest.raises(ValueError, match="mask"):
        ev1.aggregate(ctx1, cw, keep=np.ones(3, bool))
    with pytest.raises(ValueError, match="correction words"):
        ev1.aggregate(ctx1, cw[:2])
    with pytest.raises(ValueError, match="party, domain or ring"):
        ev0.expand(k1)


def test_aggregate_with_no_key_kept_is_zero():
    k0, k1, cw, table, _ = _round()
    ev0, ev1 = DpfEvaluator(0, 50, np.uint32), DpfEvaluator(1, 50, np.uint32)
    (_, ctx0), (_, ctx1) = ev0.retrieve(k0, table), ev1.retrieve(k1, table)
    none = np.zeros(4, bool)
    assert not (ev0.aggregate(ctx0, cw, none) + ev1.aggregate(ctx1, cw, none)).any()


def test_a_server_party_keeps_its_round_context_through_an_ablation_call():
    """twoserver.party holds one evaluator and the round's explicit context: fresh-key sums in between
    (which once overwrote a hidden cache) leave the shared-path aggregation intact."""
    from twoserver.party import SecEmbParty

    m, ring = 60, np.uint32
    rng = np.random.default_rng(3)
    items = {7: np.array([1, 5, 9]), 8: np.array([5, 59, 0])}
    keys, states = ({}, {}), {}
    for u, it in items.items():
        k0, k1, states[u] = gen(it, np.ones((3, 1), ring), m)
        keys[0][u], keys[1][u] = k0, k1
    table = _rand_ring(rng, (m, 2), ring)
    parties = [SecEmbParty(p, m, ring) for p in (0, 1)]
    shares = [p.retrieve(keys[p.party], table) for p in parties]
    assert all(np.array_equal(shares[0][u] + shares[1][u], table[items[u]]) for u in items)
    f0, f1, _ = gen(np.array([2, 3]), np.ones((2, 2), ring), m, domain=AGGREGATE_DOMAIN)
    fresh = parties[0].aggregate_fresh({1: f0}, 2) + parties[1].aggregate_fresh({1: f1}, 2)
    assert np.array_equal(np.flatnonzero(fresh.any(axis=1)), [2, 3])
    betas = {u: _rand_ring(rng, (3, 2), ring) for u in items}
    cws = {u: convert_gen(states[u], betas[u], AGGREGATE_DOMAIN) for u in items}
    total = parties[0].aggregate({8: cws[8]}, 2) + parties[1].aggregate({8: cws[8]}, 2)  # user 7 dropped out
    expected = np.zeros((m, 2), ring)
    np.add.at(expected, items[8], betas[8])
    assert np.array_equal(total, expected)
    assert parties[0].retrieve({}, table) == {} and not parties[0].aggregate({8: cws[8]}, 2).any()
