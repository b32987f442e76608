"""The fixed-key AES PRGs against `cryptography`'s AES one block at a time: MMO tree, Convert, domain separation."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import prg
from crypto.dpf_keys import to_bytes, to_words

RINGS = st.sampled_from([np.uint32, np.uint64])


def _blocks(lo: int, hi: int) -> st.SearchStrategy[bytes]:
    """lo..hi whole 16-byte blocks (drawn by count, not filtered, so generation stays fast under load)."""
    return st.integers(lo, hi).flatmap(lambda n: st.binary(min_size=16 * n, max_size=16 * n))


def _mmo_reference(label: bytes, block: bytes) -> bytes:
    """H_K(x) = AES_K(x) XOR x, one block at a time, straight from `cryptography`."""
    enc = Cipher(algorithms.AES(prg.public_key(label)), modes.ECB()).encryptor()
    return bytes(a ^ b for a, b in zip(enc.update(block) + enc.finalize(), block))


@settings(max_examples=20, deadline=None)
@given(raw=_blocks(1, 9))
def test_tree_prg_is_fixed_key_aes_in_matyas_meyer_oseas_form(raw):
    blocks = to_words(np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16))
    left, right = prg.expand_tree(blocks)
    for i in range(len(raw) // 16):
        x = raw[16 * i:16 * i + 16]
        assert to_bytes(left[i]).tobytes() == _mmo_reference(prg.TREE_LEFT, x)
        assert to_bytes(right[i]).tobytes() == _mmo_reference(prg.TREE_RIGHT, x)


def _dm_reference(label: bytes, block: bytes, ring) -> np.ndarray:
    """AES_K(x) + x in the ring's little-endian lanes, one block at a time, straight from `cryptography`."""
    enc = Cipher(algorithms.AES(prg.public_key(label)), modes.ECB()).encryptor()
    lane = np.dtype(ring).newbyteorder("<")
    return np.frombuffer(enc.update(block) + enc.finalize(), dtype=lane) + np.frombuffer(block, dtype=lane)


@settings(max_examples=20, deadline=None)
@given(raw=_blocks(1, 4), width=st.integers(1, 9),
       ring=RINGS, domain=st.sampled_from([0, 1]))
def test_convert_is_aes_plus_seed_block_b_under_its_own_key(raw, width, ring, domain):
    """Convert(s) = (AES_{K_domain,0}(s) + s) || (AES_{K_domain,1}(s) + s) || ..., ring lanes, cut to width."""
    blocks = to_words(np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16))
    out = prg.convert(blocks, width, ring, domain)
    for i in range(len(raw) // 16):
        x = raw[16 * i:16 * i + 16]
        stream = np.concatenate([_dm_reference(prg.convert_label(domain, b), x, ring)
                                 for b in range(prg.blocks_for(width, ring))])
        assert np.array_equal(out[i], stream[:width])


def test_convert_feed_forward_hides_the_seed():
    """Without the feed-forward, AES decryption of one output block would give the seed back."""
    seed = to_words(np.frombuffer(bytes(range(16)), dtype=np.uint8).reshape(1, 16))
    block0 = prg.convert(seed, 4, np.uint32, 1)[0].astype("<u4").tobytes()
    dec = Cipher(algorithms.AES(prg.public_key(prg.convert_label(1, 0))), modes.ECB()).decryptor()
    assert dec.update(block0) + dec.finalize() != bytes(range(16))
    assert block0 != bytes(range(16))


def test_uses_are_domain_separated():
    """Tree children, retrieval Convert and aggregation Convert use different public keys."""
    labels = [prg.TREE_LEFT, prg.TREE_RIGHT] + [prg.convert_label(d, b) for d in (0, 1) for b in range(33)]
    assert len({prg.public_key(label) for label in labels}) == len(labels)
    seeds = to_words(np.frombuffer(bytes(range(32)), dtype=np.uint8).reshape(2, 16))
    assert not np.array_equal(prg.convert(seeds, 4, np.uint32, 0), prg.convert(seeds, 4, np.uint32, 1))
    left, right = prg.expand_tree(seeds)
    assert not np.array_equal(left, right)


def test_a_partial_block_is_refused_and_leaves_the_cached_context_aligned():
    """ECB would keep a partial block and shift this thread's later outputs: refused up front."""
    with pytest.raises(ValueError, match="16-byte blocks"):
        prg.aes_into(prg.TREE_LEFT, np.zeros(3, np.uint64), np.zeros(8, np.uint64))
    raw = bytes(range(16))
    left, _ = prg.expand_tree(to_words(np.frombuffer(raw, dtype=np.uint8).reshape(1, 16)))
    assert to_bytes(left[0]).tobytes() == _mmo_reference(prg.TREE_LEFT, raw)
