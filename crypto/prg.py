"""Fixed-key AES-128 PRGs of the DPF: Matyas-Meyer-Oseas for the tree, Davies-Meyer-style Convert.

Tree: G(x) = (H_L(x), H_R(x)) with H_K(x) = AES_K(x) XOR x for fixed public keys
K (Matyas-Meyer-Oseas), the correlation-robust hash Google's
distributed_point_functions library also uses; BGI's XOR corrections act on
its output.

Convert (leaf seed -> d ring elements): block b is AES_{K_b}(s) + s, the
addition taken lane-wise in the output ring Z_2^k (4 lanes of Z_2^32 or 2 of
Z_2^64 per 128-bit block). The feed-forward is what makes the map one-way for
a public permutation (without it, one known output block would give s by AES
decryption and with it every other block); it may be any group operation in
which x -> y + x is a bijection, as in Davies-Meyer with modular addition
(SHA-2's feed-forward), so the ideal-cipher argument for MMO carries over
unchanged. Addition in the ring is chosen because ConvertEval sums outputs
over keys: sum_k Convert(s_k) = sum_k AES(s_k) + sum_k s_k, so the
feed-forward costs one sum per key group instead of one XOR per output block.

Every use gets its own public key (derived from a label by SHA-256): the
tree's left and right children, and block b of the retrieval and aggregation
Convert maps. Separate keys instead of input tweaks give the same domain
separation but let AES read the seeds where they lie: no per-use copy of the
input, which is what keeps the DPF's hot loops close to bare AES speed.

Layout: 128-bit seeds are uint64 arrays [..., 2] (little-endian words, the
exact bytes AES reads). In the DPF tree the lowest bit of word 0 carries the
BGI control bit t, so one XOR corrects seed and t together.

Speed: AES runs inside OpenSSL through ``cryptography``; ``update_into`` on
warm buffers runs at ~450-570 M blocks/s per core here. Every thread keeps
its own AES contexts (ECB holds no state between whole-block updates).
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
TREE_LEFT, TREE_RIGHT = b"tree/left", b"tree/right"


def convert_label(domain: int, block: int) -> bytes:
    """Key label of Convert block ``block`` in ``domain`` (0 = retrieval, 1 = aggregation)."""
    return b"convert/%d/%d" % (domain, block)


def public_key(label: bytes) -> bytes:
    """The fixed AES key of one use: a public parameter, not a secret."""
    return hashlib.sha256(b"secrec dpf fixed AES key v2|" + label).digest()[:16]


_tls = threading.local()


def encryptor(label: bytes):
    """This thread's AES-ECB context for ``label``."""
    cache = getattr(_tls, "enc", None)
    if cache is None:
        cache = _tls.enc = {}
    enc = cache.get(label)
    if enc is None:
        enc = cache[label] = Cipher(algorithms.AES(public_key(label)), modes.ECB()).encryptor()
    return enc


def _bytes(a: np.ndarray) -> memoryview:
    return memoryview(a.reshape(-1).view(np.uint8))


def aes_into(label: bytes, blocks: np.ndarray, out: np.ndarray) -> None:
    """out[:blocks.size] = AES_K(blocks) for contiguous uint64 [..., 2]; ``out`` has 2 spare words.

    Whole blocks only: ECB keeps a partial block for the next update, which would shift every
    later output of this thread's cached context.
    """
    data = _bytes(blocks)
    if data.nbytes % BLOCK:
        raise ValueError(f"AES input of {data.nbytes} bytes is not a whole number of 16-byte blocks")
    encryptor(label).update_into(data, _bytes(out))


def mmo(label: bytes, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """H_K(x) = AES_K(x) XOR x for contiguous uint64 blocks [..., 2]."""
    blocks = np.ascontiguousarray(blocks)
    buf = np.empty(blocks.size + 2, dtype=np.uint64) if out is None else out
    aes_into(label, blocks, buf)
    res = buf[: blocks.size].reshape(blocks.shape)
    np.bitwise_xor(res, blocks, out=res)
    return res


def expand_tree(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G(s) = (H_left(s), H_right(s)) of BGI'16; each child's lowest bit is its control bit t."""
    return mmo(TREE_LEFT, blocks), mmo(TREE_RIGHT, blocks)


def blocks_for(n_elems: int, ring_dtype: np.dtype | type) -> int:
    return -(-n_elems * np.dtype(ring_dtype).itemsize // BLOCK)


def convert_block(label: bytes, blocks: np.ndarray, ring_dtype: np.dtype | type, out: np.ndarray | None = None
                  ) -> np.ndarray:
    """AES_K(x) + x, lane-wise in the ring, for contiguous uint64 blocks [..., 2]: uint64 words like ``blocks``."""
    dt = np.dtype(ring_dtype)
    blocks = np.ascontiguousarray(blocks)
    buf = np.empty(blocks.size + 2, dtype=np.uint64) if out is None else out
    aes_into(label, blocks, buf)
    res = buf[: blocks.size]
    np.add(res.view(dt), blocks.reshape(-1).view(dt), out=res.view(dt))
    return res.reshape(blocks.shape)


def convert(blocks: np.ndarray, n_elems: int, ring_dtype: np.dtype | type, domain: int) -> np.ndarray:
    """Convert_G: seeds [..., 2] -> ring [..., n_elems]; block b of the output is AES_{K_domain,b}(s) + s."""
    dt = np.dtype(ring_dtype)
    nb = blocks_for(n_elems, dt)
    lead = blocks.shape[:-1]
    out = np.empty((nb, int(np.prod(lead, dtype=np.int64)) * 2 + 2), dtype=np.uint64)
    for b in range(nb):  # a loop over the <= 33 blocks of one output row; each step is one AES call
        convert_block(convert_label(domain, b), blocks, dt, out=out[b])
    words = out[:, :-2].reshape(nb, -1, 2)
    lanes = np.moveaxis(words, 0, 1).reshape(-1, nb * 2).view(dt)  # [N, nb * 16 / itemsize]
    return lanes[:, :n_elems].reshape(*lead, n_elems)


def aes_blocks_per_second(n_blocks: int = 1 << 22, threads: int = 1, repeats: int = 3, passes: int = 1) -> float:
    """AES-128-ECB throughput of this machine via ``cryptography``, in blocks per second.

    Each of ``threads`` threads encrypts its own buffer of n_blocks / threads blocks ``passes``
    times; the best of ``repeats`` is returned. Small buffers (cache-resident) give the
    highest rate, large ones include memory traffic.
    """
    per = n_blocks // threads
    bufs = [(np.frombuffer(os.urandom(per * BLOCK), dtype=np.uint8).copy(), np.zeros(per * BLOCK + BLOCK, np.uint8))
            for _ in range(threads)]

    def work(i: int) -> None:
        enc = encryptor(b"throughput")
        src, dst = memoryview(bufs[i][0]), memoryview(bufs[i][1])
        for _ in range(passes):
            enc.update_into(src, dst)

    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            list(pool.map(work, range(threads)))
            best = max(best, per * threads * passes / (time.perf_counter() - start))
    return best
