"""Full-domain expansion against a one-key, one-level-at-a-time walk of the BGI tree."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import prg
from crypto.dpf_expand import expand_leaves, leaf_order, level_plan, store_leaves
from crypto.dpf_gen import gen
from crypto.dpf_keys import DpfKeyBatch, depth, t_of, to_words, with_t
from crypto.workers import parallel_map


def _walk(keys: DpfKeyBatch, key: int, x: int) -> np.ndarray:
    """Eval's tree walk for one key and one point, straight from the definition (block with t in its low bit)."""
    n = depth(keys.domain_size)
    node = with_t(to_words(keys.seeds[key:key + 1]), keys.t0[key:key + 1])
    for level in range(n):
        left, right = prg.expand_tree(node)
        if t_of(node)[0]:
            left = left ^ with_t(to_words(keys.cw_seeds[key, level:level + 1]), keys.cw_t[key, level:level + 1, 0])
            right = right ^ with_t(to_words(keys.cw_seeds[key, level:level + 1]), keys.cw_t[key, level:level + 1, 1])
        node = right if (x >> (n - 1 - level)) & 1 else left
    return node[0]


@given(m=st.integers(2, 5000))
@settings(max_examples=30, deadline=None)
def test_leaf_rows_cover_every_item_once(m):
    """The expansion's leaf order (left/right blocks, pruned) is a permutation of the domain."""
    keys, _, _ = gen(np.array([m - 1]), np.ones((1, 1), np.uint32), m)
    leaves, order = expand_leaves(keys)
    assert leaves.shape == (m, 1, 2)
    assert np.array_equal(np.sort(order), np.arange(m))


@settings(max_examples=15, deadline=None)
@given(m=st.integers(2, 300), k=st.integers(1, 4), party=st.sampled_from([0, 1]), seed=st.integers(0, 2**32))
def test_every_leaf_is_the_tree_walk_to_its_item(m, k, party, seed):
    keys = gen(np.random.default_rng(seed).integers(0, m, size=k), np.ones((k, 1), np.uint32), m)[party]
    leaves, order = expand_leaves(keys)
    leaves = leaves.copy()
    rows = np.random.default_rng(seed).choice(m, size=min(m, 12), replace=False)
    for p in rows:
        for key in range(k):
            assert np.array_equal(leaves[p, key], _walk(keys, key, int(order[p])))


def test_leaf_order_is_fixed_per_domain_and_read_only():
    order = leaf_order(1000)
    assert order is level_plan(1000)[1] and not order.flags.writeable
    plan, _ = level_plan(1000)
    assert len(plan) == depth(1000) and plan[-1][0] == 1000  # the last level keeps exactly m leaves


def test_store_leaves_transposes_to_key_major_and_extracts_t():
    keys, _, _ = gen(np.array([1, 7, 9]), np.ones((3, 1), np.uint32), 700)
    nodes, _ = expand_leaves(keys)
    leaves = np.empty((3, 700, 2), np.uint64)
    bits = np.empty((3, 700), np.uint8)
    store_leaves(nodes, leaves, bits)
    assert np.array_equal(leaves, nodes.transpose(1, 0, 2))
    assert np.array_equal(bits, t_of(leaves))


def test_each_worker_thread_expands_independently():
    """The workspaces are per thread: chunks expanded concurrently equal chunks expanded alone."""
    batches = [gen(np.arange(5) * (i + 1), np.ones((5, 1), np.uint32), 999)[0] for i in range(6)]
    alone = [expand_leaves(b)[0].copy() for b in batches]
    together = parallel_map(lambda b: expand_leaves(b)[0].copy(), batches)
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))
