"""Fixed-key AES-128 in Matyas-Meyer-Oseas form, the PRG of the DPF.

H(x) = AES_K(x) XOR x for a fixed public key K is the correlation-robust hash
that Google's distributed_point_functions library also uses as its PRG. Each
seed-derived block is H(s XOR tweak) with a distinct public tweak per use, so
the tree PRG G and the two Convert maps (retrieval, aggregation) never share
an input (domain separation). Tweaks only touch the low 64-bit word of a block.

Layout: a batch of 128-bit seeds is a uint64 array ``S`` of shape [2, ...]
(S[0] = low words, S[1] = high words; little-endian bytes 0-7 and 8-15). This
keeps every XOR and mask in the DPF a plain elementwise numpy operation over
long axes; blocks are interleaved only right before AES.

Speed: AES runs inside OpenSSL through ``cryptography``; ``update_into`` on
warm, preallocated buffers runs at ~400 M blocks/s per core here, while fresh
allocations pay page faults that cost more than the AES itself. Hot loops
therefore reuse per-thread workspaces.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
KEY = hashlib.sha256(b"secrec dpf fixed AES key v1").digest()[:16]  # public parameter, not a secret
N_THREADS = max(1, min(2, os.cpu_count() or 1))
TREE_TWEAKS = (np.uint64(0xA5 << 56), np.uint64((0xA5 << 56) | 1))
_CONVERT_TAG = 0xC7


def convert_tweak(domain: int, block: int) -> np.uint64:
    """Low-word tweak of Convert block ``block`` in ``domain`` (disjoint from the tree tweaks)."""
    return np.uint64((_CONVERT_TAG << 56) | ((domain & 0xFFFF) << 32) | block)


_tls = threading.local()


def _encryptor():
    """This thread's AES-ECB context (ECB keeps no state between whole-block updates, so it is reused)."""
    enc = getattr(_tls, "enc", None)
    if enc is None:
        enc = _tls.enc = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    return enc


def mmo_buffer(buf: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = AES_K(buf) XOR buf for a contiguous uint64 buffer [..., 2]; ``out`` has >= 16 spare bytes."""
    _encryptor().update_into(memoryview(buf.reshape(-1).view(np.uint8)), memoryview(out.reshape(-1).view(np.uint8)))
    res = out.reshape(-1)[: buf.size]
    np.bitwise_xor(res, buf.reshape(-1), out=res)
    return res.reshape(buf.shape)


def mmo_words(lo: np.ndarray, hi: np.ndarray, tweak: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """H((lo XOR tweak, hi)) for word arrays of any shape; returns (lo', hi')."""
    shape = lo.shape
    buf = np.empty((lo.size, 2), dtype=np.uint64)
    np.bitwise_xor(lo.reshape(-1), tweak, out=buf[:, 0])
    buf[:, 1] = hi.reshape(-1)
    out = np.empty(buf.size + 2, dtype=np.uint64)
    res = mmo_buffer(buf, out)
    return res[:, 0].reshape(shape), res[:, 1].reshape(shape)


def expand_tree(S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """G(s) = sL || tL || sR || tR of BGI'16 for seeds S [2, ...] (one AES call for both halves).

    The t bit is the lowest bit of each output block, cleared in the returned seed.
    """
    shape = S.shape[1:]
    n = S[0].size
    buf = np.empty((2, n, 2), dtype=np.uint64)
    for side, tweak in enumerate(TREE_TWEAKS):
        np.bitwise_xor(S[0].reshape(-1), tweak, out=buf[side, :, 0])
        buf[side, :, 1] = S[1].reshape(-1)
    res = mmo_buffer(buf, np.empty(buf.size + 2, dtype=np.uint64))
    t = (res[:, :, 0] & np.uint64(1)).astype(np.uint8)
    res[:, :, 0] &= ~np.uint64(1)
    seeds = np.moveaxis(res, 2, 1)  # [side, word, n]
    return (seeds[0].reshape(2, *shape), t[0].reshape(shape), seeds[1].reshape(2, *shape), t[1].reshape(shape))


def blocks_for(n_elems: int, ring_dtype: np.dtype | type) -> int:
    return -(-n_elems * np.dtype(ring_dtype).itemsize // BLOCK)


def convert(S: np.ndarray, n_elems: int, ring_dtype: np.dtype | type, domain: int) -> np.ndarray:
    """Convert_G: seeds S [2, ...] -> ring array [..., n_elems], domain-separated (one AES call)."""
    dt = np.dtype(ring_dtype)
    nb = blocks_for(n_elems, dt)
    lo, hi = S[0].reshape(-1), S[1].reshape(-1)
    buf = np.empty((lo.size, nb, 2), dtype=np.uint64)
    for b in range(nb):
        np.bitwise_xor(lo, convert_tweak(domain, b), out=buf[:, b, 0])
        buf[:, b, 1] = hi
    words = mmo_buffer(buf, np.empty(buf.size + 2, dtype=np.uint64))
    return words.view(dt).reshape(*S.shape[1:], -1)[..., :n_elems]


class Workspace:
    """Reusable buffers of one thread for chunked Convert (no allocation or page faults in the loop)."""

    def __init__(self, max_words: int) -> None:
        self.buf = np.zeros(max_words, dtype=np.uint64)
        self.out = np.zeros(max_words + 2, dtype=np.uint64)

    def convert_blocks(self, lo: np.ndarray, hi: np.ndarray, nb: int, domain: int) -> np.ndarray:
        """H of nb domain-tweaked blocks per seed; seeds given as flat word arrays [N] -> words [nb, N, 2]."""
        n = lo.size
        buf = self.buf[: nb * n * 2].reshape(nb, n, 2)
        for b in range(nb):  # a loop over the <= 33 blocks of one leaf; each step is a whole-array op
            np.bitwise_xor(lo, convert_tweak(domain, b), out=buf[b, :, 0])
            buf[b, :, 1] = hi
        return mmo_buffer(buf, self.out)


_local = threading.local()


def workspace(max_words: int) -> Workspace:
    ws = getattr(_local, "ws", None)
    if ws is None or ws.buf.size < max_words:
        ws = _local.ws = Workspace(max_words)
    return ws


def aes_blocks_per_second(n_blocks: int = 1 << 22, threads: int = 1, repeats: int = 3) -> float:
    """AES-128-ECB throughput of this machine via ``cryptography`` (warm buffers), in blocks per second."""
    per = n_blocks // threads
    bufs = [(np.frombuffer(os.urandom(per * BLOCK), dtype=np.uint8).copy(), np.zeros(per * BLOCK + BLOCK, np.uint8))
            for _ in range(threads)]

    def work(i: int) -> None:
        _encryptor().update_into(memoryview(bufs[i][0]), memoryview(bufs[i][1]))

    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            list(pool.map(work, range(threads)))
            best = max(best, per * threads / (time.perf_counter() - start))
    return best
