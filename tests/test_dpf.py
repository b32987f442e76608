"""DPF correctness against its definition, path sharing, key sizes and key validation."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import dpf, prg

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
    k0, k1, _ = dpf.gen(alphas, betas, m)
    total = dpf.DpfEvaluator(0, m, ring).eval_full(k0) + dpf.DpfEvaluator(1, m, ring).eval_full(k1)
    assert np.array_equal(total, _point_table(alphas, betas, m))


@settings(max_examples=6, deadline=None)
@given(m=st.integers(4097, 2**20), seed=st.integers(0, 2**32))
def test_large_domains_up_to_2_pow_20(m, seed):
    rng = np.random.default_rng(seed)
    alphas = np.array([0, m - 1, rng.integers(0, m)])
    betas = _rand_ring(rng, (3, 1), np.uint32)
    k0, k1, _ = dpf.gen(alphas, betas, m)
    total = dpf.DpfEvaluator(0, m, np.uint32).eval_full(k0) + dpf.DpfEvaluator(1, m, np.uint32).eval_full(k1)
    assert np.array_equal(total, _point_table(alphas, betas, m))


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
    assert np.array_equal(dpf.ring_matmul(a, b).astype(object), expected)
    assert np.array_equal(dpf.ring_matmul(np.asfortranarray(a), b).astype(object), expected)  # transposed layout


@settings(max_examples=12, deadline=None)
@given(m=st.integers(1 << 16, 1 << 19), k=st.integers(1, 48), w=st.integers(1, 4), ring=RINGS,
       all_ones=st.booleans(), seed=st.integers(0, 2**32))
def test_bits_times_rows_is_exact_mod_2_pow_k(m, k, w, ring, all_ones, seed):
    """sum_k t_k(x) CW_k over several float64 slices and both pool threads equals the integer product mod 2^k."""
    rng = np.random.default_rng(seed)
    t = np.ones((k, m), np.uint8) if all_ones else rng.integers(0, 2, (k, m), dtype=np.uint8)
    cw = np.full((k, w), np.iinfo(ring).max, ring) if all_ones else _rand_ring(rng, (k, w), ring)
    expected = t.T.astype(ring) @ cw  # numpy's integer matmul wraps mod 2^k
    assert np.array_equal(dpf.bits_times_rows(t, cw), expected)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(2, 3000), k=st.integers(1, 12), width=st.integers(1, 66), ring=RINGS, seed=st.integers(0, 2**32))
def test_convert_eval_on_cached_paths_equals_fresh_full_keys(m, k, width, ring, seed):
    """Path sharing: retrieval keys' leaves + new CW^(n+1) == fresh keys for the new payload."""
    rng = np.random.default_rng(seed)
    alphas = rng.integers(0, m, size=k)
    keep = rng.random(k) < 0.7
    k0, k1, state = dpf.gen(alphas, np.ones((k, 1), dtype=ring), m)
    table = _rand_ring(rng, (m, 5), ring)
    ev0, ev1 = dpf.DpfEvaluator(0, m, ring), dpf.DpfEvaluator(1, m, ring)
    assert np.array_equal(ev0.retrieve(k0, table) + ev1.retrieve(k1, table), table[alphas])
    betas = _rand_ring(rng, (k, width), ring)
    cw = dpf.convert_gen(state, betas, dpf.AGGREGATE_DOMAIN)
    shared = ev0.aggregate(cw, keep) + ev1.aggregate(cw, keep)
    f0, f1, _ = dpf.gen(alphas[keep], betas[keep], m, domain=dpf.AGGREGATE_DOMAIN) if keep.any() else (None, None, None)
    fresh = (dpf.DpfEvaluator(0, m, ring).sum_full(f0) + dpf.DpfEvaluator(1, m, ring).sum_full(f1)) if keep.any() \
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
    k0, k1, state = dpf.gen(alphas, np.ones((k, 1), dtype=ring), m)
    table = _rand_ring(rng, (m, 3), ring)
    evs = [dpf.DpfEvaluator(p, m, ring, expand_chunk_keys=chunk) for p in (0, 1)]
    for ev in evs:
        ev.group_blocks = 2 * m  # two keys per aggregation group
    assert np.array_equal(evs[0].retrieve(k0, table) + evs[1].retrieve(k1, table), table[alphas])
    betas = _rand_ring(rng, (k, 4), ring)
    cw = dpf.convert_gen(state, betas, dpf.AGGREGATE_DOMAIN)
    expected = np.zeros((m, 4), dtype=ring)
    np.add.at(expected, alphas[keep], betas[keep])
    assert np.array_equal(evs[0].aggregate(cw, keep) + evs[1].aggregate(cw, keep), expected)


@given(m=st.integers(2, 2**20), a=st.integers(0, 2**20), b=st.integers(0, 2**20))
@settings(max_examples=30, deadline=None)
def test_key_size_does_not_depend_on_the_point(m, a, b):
    ka, _, _ = dpf.gen(np.array([a % m]), np.ones((1, 1), np.uint32), m)
    kb, _, _ = dpf.gen(np.array([b % m]), np.ones((1, 1), np.uint32), m)
    assert ka.nbytes == kb.nbytes
    n = dpf.depth(m)
    assert ka.nbytes == 16 + 16 * n + (1 + 2 * n + 7) // 8 + 4  # lambda + 1 + (lambda + 2) n + 32 bits, packed


def test_single_key_is_not_the_point_function():
    """One party's key alone evaluates to pseudorandom values, not to beta at alpha and 0 elsewhere."""
    k0, _, _ = dpf.gen(np.array([7]), np.full((1, 1), 5, np.uint32), 64)
    share = dpf.DpfEvaluator(0, 64, np.uint32).eval_full(k0)[0, :, 0]
    assert np.count_nonzero(share) > 60


def _mmo_reference(label: bytes, block: bytes) -> bytes:
    """H_K(x) = AES_K(x) XOR x, one block at a time, straight from `cryptography`."""
    enc = Cipher(algorithms.AES(prg.public_key(label)), modes.ECB()).encryptor()
    return bytes(a ^ b for a, b in zip(enc.update(block) + enc.finalize(), block))


@settings(max_examples=20, deadline=None)
@given(raw=st.binary(min_size=16, max_size=16 * 9).filter(lambda b: len(b) % 16 == 0))
def test_tree_prg_is_fixed_key_aes_in_matyas_meyer_oseas_form(raw):
    blocks = dpf.to_words(np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16))
    left, right = prg.expand_tree(blocks)
    for i in range(len(raw) // 16):
        x = raw[16 * i:16 * i + 16]
        assert dpf.to_bytes(left[i]).tobytes() == _mmo_reference(prg.TREE_LEFT, x)
        assert dpf.to_bytes(right[i]).tobytes() == _mmo_reference(prg.TREE_RIGHT, x)


def _dm_reference(label: bytes, block: bytes, ring) -> np.ndarray:
    """AES_K(x) + x in the ring's little-endian lanes, one block at a time, straight from `cryptography`."""
    enc = Cipher(algorithms.AES(prg.public_key(label)), modes.ECB()).encryptor()
    lane = np.dtype(ring).newbyteorder("<")
    return np.frombuffer(enc.update(block) + enc.finalize(), dtype=lane) + np.frombuffer(block, dtype=lane)


@settings(max_examples=20, deadline=None)
@given(raw=st.binary(min_size=16, max_size=64).filter(lambda b: len(b) % 16 == 0), width=st.integers(1, 9),
       ring=RINGS, domain=st.sampled_from([0, 1]))
def test_convert_is_aes_plus_seed_block_b_under_its_own_key(raw, width, ring, domain):
    """Convert(s) = (AES_{K_domain,0}(s) + s) || (AES_{K_domain,1}(s) + s) || ..., ring lanes, cut to width."""
    blocks = dpf.to_words(np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16))
    out = prg.convert(blocks, width, ring, domain)
    for i in range(len(raw) // 16):
        x = raw[16 * i:16 * i + 16]
        stream = np.concatenate([_dm_reference(prg.convert_label(domain, b), x, ring)
                                 for b in range(prg.blocks_for(width, ring))])
        assert np.array_equal(out[i], stream[:width])


def test_convert_feed_forward_hides_the_seed():
    """Without the feed-forward, AES decryption of one output block would give the seed back."""
    seed = dpf.to_words(np.frombuffer(bytes(range(16)), dtype=np.uint8).reshape(1, 16))
    block0 = prg.convert(seed, 4, np.uint32, 1)[0].astype("<u4").tobytes()
    dec = Cipher(algorithms.AES(prg.public_key(prg.convert_label(1, 0))), modes.ECB()).decryptor()
    assert dec.update(block0) + dec.finalize() != bytes(range(16))
    assert block0 != bytes(range(16))


def test_uses_are_domain_separated():
    """Tree children, retrieval Convert and aggregation Convert use different public keys."""
    labels = [prg.TREE_LEFT, prg.TREE_RIGHT] + [prg.convert_label(d, b) for d in (0, 1) for b in range(33)]
    assert len({prg.public_key(label) for label in labels}) == len(labels)
    seeds = dpf.to_words(np.frombuffer(bytes(range(32)), dtype=np.uint8).reshape(2, 16))
    assert not np.array_equal(prg.convert(seeds, 4, np.uint32, 0), prg.convert(seeds, 4, np.uint32, 1))
    left, right = prg.expand_tree(seeds)
    assert not np.array_equal(left, right)


@given(m=st.integers(2, 5000))
@settings(max_examples=30, deadline=None)
def test_leaf_rows_cover_every_item_once(m):
    """The expansion's leaf order (left/right blocks, pruned) is a permutation of the domain."""
    keys, _, _ = dpf.gen(np.array([m - 1]), np.ones((1, 1), np.uint32), m)
    leaves, order = dpf.expand_leaves(keys)
    assert leaves.shape == (m, 1, 2)
    assert np.array_equal(np.sort(order), np.arange(m))


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(cw_seeds=d["cw_seeds"][:, :-1]), "correction seeds"),
    (lambda d: d.update(seeds=d["seeds"].astype(np.uint16)), "seeds"),
    (lambda d: d.update(cw_out=d["cw_out"].astype(np.uint64)), "output correction"),
    (lambda d: d.update(tbits=d["tbits"][:-1]), "t bits"),
    (lambda d: d.pop("cw_out"), "lack"),
])
def test_received_keys_are_validated(mutate, needle):
    k0, _, _ = dpf.gen(np.array([1, 2, 3]), np.ones((3, 1), np.uint32), 1000)
    arrays = dict(k0.to_arrays())
    mutate(arrays)
    with pytest.raises(ValueError, match=needle):
        dpf.DpfKeyBatch.from_arrays(arrays, party=0, domain_size=1000, width=1, ring_dtype=np.uint32)


def test_keys_for_another_depth_are_refused():
    k0, _, _ = dpf.gen(np.array([1]), np.ones((1, 1), np.uint32), 100)
    with pytest.raises(ValueError, match="depth"):
        dpf.DpfKeyBatch.from_arrays(k0.to_arrays(), party=0, domain_size=5000, width=1, ring_dtype=np.uint32)


def test_points_outside_the_domain_are_refused():
    with pytest.raises(ValueError):
        dpf.gen(np.array([10]), np.ones((1, 1), np.uint32), 10)
