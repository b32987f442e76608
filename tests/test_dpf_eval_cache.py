"""The capped path cache of SecEmb's evaluation context (issue 15).

A cap that keeps every path, about half of them, or none must give bit-identical retrieval
shares and aggregates: the keys past the cap are re-expanded in aggregation and run through the
same ConvertEval. Tiny domains and batches; the memory and time figures are in
benchmarks/bench_secemb.py (``--tables cache``).
"""

from __future__ import annotations

import numpy as np
import pytest

from crypto.dpf_eval import DpfEvaluator, StaleContextError
from crypto.dpf_gen import convert_gen, gen
from crypto.dpf_keys import AGGREGATE_DOMAIN

M, K, WIDTH = 300, 24, 5
PER_KEY = 17 * M  # bytes of one key's path: 16-byte leaf + t bit per item
CHUNK = 4 * PER_KEY  # paths re-expanded at once when the cap binds (128 MiB by default)
HALF_CAP = 16 * PER_KEY  # one chunk of 4 keys + 12 cached paths: half of the 24 keys
CAPS = {"all cached": 1 << 30, "half cached": HALF_CAP, "none cached": 3 * PER_KEY}  # the last: 3-key chunks


def _rand_ring(rng, shape, dtype):
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=np.uint64, endpoint=True).astype(dtype)


def _round(ring, seed=0):
    """One round's keys of both parties, a table, correction words, a keep mask and the expected sum."""
    rng = np.random.default_rng(seed)
    alphas = rng.integers(0, M, size=K)
    k0, k1, state = gen(alphas, np.ones((K, 1), dtype=ring), M)
    betas = _rand_ring(rng, (K, WIDTH), ring)
    keep = np.ones(K, bool)
    keep[[1, 13, 14, 23]] = False  # dropouts among the cached keys and among the recomputed ones
    expected = np.zeros((M, WIDTH), dtype=ring)
    np.add.at(expected, alphas[keep], betas[keep])
    return (k0, k1), _rand_ring(rng, (M, 3), ring), convert_gen(state, betas, AGGREGATE_DOMAIN), keep, alphas, \
        expected


def _evaluator(party, ring, cap):
    ev = DpfEvaluator(party, M, ring, expand_chunk_keys=5, max_cache_bytes=cap)  # chunks straddle the cache edge
    ev.group_blocks = 2 * M  # two keys per aggregation group
    ev.recompute_chunk_bytes = CHUNK
    return ev


def test_the_cap_decides_how_many_paths_are_kept():
    ev = {name: _evaluator(0, np.uint32, cap) for name, cap in CAPS.items()}
    assert [e.cached_keys(K) for e in ev.values()] == [K, 12, 0]
    assert ev["half cached"].recompute_chunk_keys == 4 and ev["none cached"].recompute_chunk_keys == 3
    assert ev["half cached"].cached_keys(16) == 16  # a batch that fits is cached whole, chunk or not
    assert _evaluator(0, np.uint32, 0).cached_keys(K) == 0 and _evaluator(0, np.uint32, 0).recompute_chunk_keys == 1
    with pytest.raises(ValueError, match="max_cache_bytes"):
        DpfEvaluator(0, M, np.uint32, max_cache_bytes=-1)


@pytest.mark.parametrize("ring", [np.uint32, np.uint64])
def test_retrieval_and_aggregation_are_bit_identical_whatever_the_cap(ring):
    keys, table, cw, keep, alphas, expected = _round(ring)
    results = {}
    for name, cap in CAPS.items():
        evs = [_evaluator(p, ring, cap) for p in (0, 1)]
        (s0, c0), (s1, c1) = (ev.retrieve(k, table) for ev, k in zip(evs, keys))
        assert c0.n_keys == K and c0.n_recomputed == K - c0.n_cached
        results[name] = (s0, s1, evs[0].aggregate(c0, cw, keep), evs[1].aggregate(c1, cw, keep),
                         evs[0].aggregate(c0, cw), c0.n_cached)
    assert [r[-1] for r in results.values()] == [K, 12, 0]
    reference = results["all cached"]
    for name, result in results.items():
        for got, want in zip(result[:5], reference[:5]):
            assert np.array_equal(got, want), name
    s0, s1, a0, a1, _all, _ = reference
    assert np.array_equal(s0 + s1, table[alphas])
    assert np.array_equal(a0 + a1, expected)


def test_a_capped_context_holds_the_first_paths_and_stays_within_the_cap():
    (k0, _), _, _, _, _, _ = _round(np.uint32)
    full = _evaluator(0, np.uint32, CAPS["all cached"]).expand(k0)
    ev = _evaluator(0, np.uint32, HALF_CAP)
    part = ev.expand(k0)
    assert part.leaves.shape == (12, M, 2) and part.t.shape == (12, M)
    assert np.array_equal(part.leaves, full.leaves[:12]) and np.array_equal(part.t, full.t[:12])
    assert np.array_equal(part.recompute.seeds, k0.seeds[12:])  # the rest are kept as keys
    assert part.leaves.nbytes + part.t.nbytes + ev.recompute_chunk_keys * PER_KEY <= HALF_CAP


def test_stale_checks_hold_for_capped_contexts_and_recompute_leaves_them_valid():
    keys, table, cw, keep, _, expected = _round(np.uint32)
    evs = [_evaluator(p, np.uint32, HALF_CAP) for p in (0, 1)]
    _, old = evs[0].retrieve(keys[0], table)
    (_, c0), (_, c1) = (ev.retrieve(k, table) for ev, k in zip(evs, keys))
    with pytest.raises(StaleContextError):
        evs[0].aggregate(old, cw)
    first = evs[0].aggregate(c0, cw, keep) + evs[1].aggregate(c1, cw, keep)
    fresh0, fresh1, _ = gen(np.array([2, 7]), np.ones((2, WIDTH), np.uint32), M, domain=AGGREGATE_DOMAIN)
    evs[0].sum_full(fresh0), evs[1].sum_full(fresh1)  # the scratch buffer recompute uses, too
    assert c0.valid and c1.valid
    again = evs[0].aggregate(c0, cw, keep) + evs[1].aggregate(c1, cw, keep)
    assert np.array_equal(first, expected) and np.array_equal(again, expected)


def test_a_capped_server_party_aggregates_the_kept_users_like_an_uncapped_one():
    from twoserver.party import SecEmbParty

    ring, rng = np.uint32, np.random.default_rng(5)
    items = {u: rng.choice(M, 6, replace=False) for u in (3, 4, 5, 6)}
    keys, cws = ({}, {}), {}
    expected = np.zeros((M, 2), ring)
    for u, it in items.items():
        k0, k1, state = gen(it, np.ones((6, 1), ring), M)
        keys[0][u], keys[1][u] = k0, k1
        betas = _rand_ring(rng, (6, 2), ring)
        cws[u] = convert_gen(state, betas, AGGREGATE_DOMAIN)
        if u != 4:  # user 4 drops out before aggregation
            np.add.at(expected, it, betas)
    table = _rand_ring(rng, (M, 2), ring)
    kept = {u: cws[u] for u in (3, 5, 6)}
    totals = []
    n_cached = []
    for cap in (CAPS["all cached"], 10 * PER_KEY, 0):  # 24 keys: all, 8 (beside a 2-key chunk), none (1-key chunks)
        parties = [SecEmbParty(p, M, ring, max_cache_bytes=cap) for p in (0, 1)]
        for p in parties:
            p.evaluator.recompute_chunk_bytes = 2 * PER_KEY
        shares = [p.retrieve(keys[p.party], table) for p in parties]
        assert all(np.array_equal(shares[0][u] + shares[1][u], table[items[u]]) for u in items)
        totals.append(parties[0].aggregate(kept, 2) + parties[1].aggregate(kept, 2))
        n_cached.append(parties[0].context.n_cached)
    assert n_cached == [24, 8, 0]
    assert all(np.array_equal(total, expected) for total in totals)


def test_strategy_path_cache_mib_reaches_both_servers():
    """``strategy.path_cache_mib`` caps server 0's evaluator and the in-process server 1's."""
    from recdata.dataset import dataset_meta
    from simulations.config import compose_config, to_app_config
    from strategies.secemb import SecEmbStrategy

    cfg = to_app_config(compose_config(["strategy=secemb", "strategy.path_cache_mib=3",
                                        "dataset.max_users=20", "dataset.max_items=50"]))
    strategy = SecEmbStrategy(cfg, dataset_meta(cfg))
    assert strategy.party0.evaluator.max_cache_bytes == 3 << 20
    assert strategy.server1.link.server.max_cache_bytes == 3 << 20
