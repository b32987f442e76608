"""Distributed point functions (Boyle, Gilboa, Ishai 2016), vectorised over batches of keys.

Point function f_{alpha,beta}(x) = beta if x == alpha else 0, beta in (Z_2^k)^w.
Gen splits it into keys k0, k1 with Eval(k0, x) + Eval(k1, x) = f(x) for every
x in the domain [0, m); either key alone is pseudorandom. lambda = 128, n =
ceil(log2 m) tree levels. Keys are plain data (:class:`DpfKeyBatch`); an
evaluation context (:class:`DpfEvaluator`) carries the evaluated tree paths
between calls, which is what SecEmb's path sharing needs: the retrieval keys'
leaves are cached and reused with the aggregation phase's new final
correction words (FSS.ConvertGen / ConvertEval, SecEmb Algorithms 4-7).

Representation: a tree node is one 128-bit block (uint64 [..., 2]) whose
lowest bit is the BGI control bit t, so the PRG output of a parent gives each
child's seed and t at once and one XOR with (s_cw | t_cw) corrects both. The
transported key format is unchanged by this (seeds, CW seeds, packed t bits).

Everything works on all keys at once, level by level, as numpy arrays: the
only Python loops run over tree levels, over chunks of keys and over the
<= 33 output blocks of a Convert. Where the time goes (server, ML1M sizes):
the AES calls, about one numpy pass per 16-byte block for each XOR / mask /
sum around them, the exact float64 matmuls of retrieval, and Python thread
hand-offs of the GIL between calls; see benchmarks/bench_secemb.py.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from crypto import prg

LAMBDA_BYTES = 16
RING_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))
RETRIEVE_DOMAIN = 0
AGGREGATE_DOMAIN = 1


def depth(domain_size: int) -> int:
    if domain_size < 2:
        raise ValueError(f"DPF domain must have at least 2 points, got {domain_size}")
    return int(np.ceil(np.log2(domain_size)))


def _bits(alphas: np.ndarray, n: int) -> np.ndarray:
    """MSB-first bit decomposition [K, n] (level 1 decides the top bit)."""
    shifts = np.arange(n - 1, -1, -1, dtype=np.int64)
    return ((alphas[:, None] >> shifts) & 1).astype(np.uint8)


def _ring(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in RING_DTYPES:
        raise ValueError(f"ring dtype must be uint32 or uint64, got {dt}")
    return dt


@dataclass(frozen=True)
class DpfKeyBatch:
    """K keys of one party: s^(0), t^(0), CW^(1..n) = (s_cw, tL_cw, tR_cw), CW^(n+1)."""

    party: int
    domain_size: int
    seeds: np.ndarray     # uint8 [K, 16]
    t0: np.ndarray        # uint8 [K]
    cw_seeds: np.ndarray  # uint8 [K, n, 16]
    cw_t: np.ndarray      # uint8 [K, n, 2]
    cw_out: np.ndarray    # ring [K, w]

    @property
    def n_keys(self) -> int:
        return int(self.seeds.shape[0])

    @property
    def width(self) -> int:
        return int(self.cw_out.shape[1])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.to_arrays().values())

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Transport form: seeds, CW seeds and CW^(n+1) as arrays, all t bits bit-packed."""
        bits = np.concatenate([self.t0[:, None], self.cw_t.reshape(self.n_keys, -1)], axis=1)
        return {"seeds": self.seeds, "cw_seeds": self.cw_seeds, "tbits": np.packbits(bits, axis=None),
                "cw_out": self.cw_out}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], party: int, domain_size: int, width: int,
                    ring_dtype) -> DpfKeyBatch:
        """Rebuild and validate received keys; any mismatch raises ValueError naming the field."""
        dt = _ring(ring_dtype)
        n = depth(domain_size)
        missing = {"seeds", "cw_seeds", "tbits", "cw_out"} - set(arrays)
        if missing:
            raise ValueError(f"DPF keys lack {sorted(missing)}")
        seeds, cw_seeds, tbits, cw_out = (np.asarray(arrays[k]) for k in ("seeds", "cw_seeds", "tbits", "cw_out"))
        if seeds.dtype != np.uint8 or seeds.ndim != 2 or seeds.shape[1] != LAMBDA_BYTES:
            raise ValueError(f"DPF seeds must be uint8 [K, 16], got {seeds.dtype} {seeds.shape}")
        k = seeds.shape[0]
        if cw_seeds.dtype != np.uint8 or cw_seeds.shape != (k, n, LAMBDA_BYTES):
            raise ValueError(f"DPF correction seeds must be uint8 {(k, n, LAMBDA_BYTES)} for a domain of "
                             f"{domain_size} (depth {n}), got {cw_seeds.dtype} {cw_seeds.shape}")
        n_bits = k * (1 + 2 * n)
        if tbits.dtype != np.uint8 or tbits.shape != ((n_bits + 7) // 8,):
            raise ValueError(f"DPF t bits must be uint8 [{(n_bits + 7) // 8}], got {tbits.dtype} {tbits.shape}")
        if cw_out.dtype != dt or cw_out.shape != (k, width):
            raise ValueError(f"DPF output correction words must be {dt} {(k, width)}, got {cw_out.dtype} {cw_out.shape}")
        bits = np.unpackbits(tbits)[:n_bits].reshape(k, 1 + 2 * n)
        return cls(party=party, domain_size=domain_size, seeds=seeds, t0=bits[:, 0].copy(), cw_seeds=cw_seeds,
                   cw_t=bits[:, 1:].reshape(k, n, 2).copy(), cw_out=cw_out)

    @staticmethod
    def concatenate(batches: list[DpfKeyBatch]) -> DpfKeyBatch:
        first = batches[0]
        return DpfKeyBatch(first.party, first.domain_size, *(np.concatenate([getattr(b, f) for b in batches])
                                                             for f in ("seeds", "t0", "cw_seeds", "cw_t", "cw_out")))

    def select(self, idx: np.ndarray) -> DpfKeyBatch:
        return DpfKeyBatch(self.party, self.domain_size, self.seeds[idx], self.t0[idx], self.cw_seeds[idx],
                           self.cw_t[idx], self.cw_out[idx])


@dataclass(frozen=True)
class GenState:
    """What the key generator keeps for later ConvertGen calls: t_1^(n), s_0^(n), s_1^(n) per key."""

    t1: np.ndarray  # uint8 [K]
    s0: np.ndarray  # uint8 [K, 16]
    s1: np.ndarray  # uint8 [K, 16]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"t1": self.t1, "s0": self.s0, "s1": self.s1}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> GenState:
        return cls(np.asarray(arrays["t1"]), np.asarray(arrays["s0"]), np.asarray(arrays["s1"]))


def to_words(seed_bytes: np.ndarray) -> np.ndarray:
    """uint8 [..., 16] seeds -> uint64 blocks [..., 2] (the bytes AES reads)."""
    return np.ascontiguousarray(seed_bytes, dtype=np.uint8).view("<u8").astype(np.uint64)


def to_bytes(blocks: np.ndarray) -> np.ndarray:
    """uint64 blocks [..., 2] -> uint8 [..., 16]."""
    return np.ascontiguousarray(blocks, dtype="<u8").view(np.uint8)


_ONE = np.uint64(1)


def _with_t(blocks: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blocks whose lowest bit is the control bit t (seed and t travel as one 128-bit value)."""
    out = blocks.copy()
    out[..., 0] = (out[..., 0] & ~_ONE) | t.astype(np.uint64)
    return out


def _t_of(blocks: np.ndarray) -> np.ndarray:
    return (blocks[..., 0] & _ONE).astype(np.uint8)


def _mask(t: np.ndarray) -> np.ndarray:
    """All-ones uint64 where the bit t is 1 (for branch-free conditional XOR)."""
    return np.zeros(1, np.uint64) - (t & 1).astype(np.uint64)


def path_gen(alphas: np.ndarray, domain_size: int) -> tuple[dict, dict, GenState]:
    """FSS.PathGen (SecEmb Algorithm 7) for K points at once: both parties' tree keys and the gen state.

    Node values are 128-bit blocks whose lowest bit is the control bit t: the PRG output of a
    node gives the child seed and its t together, and the correction word of a level is
    (s_cw with t_cw in its lowest bit) for the kept side.
    """
    alphas = np.asarray(alphas, dtype=np.int64).reshape(-1)
    if alphas.size == 0 or alphas.min() < 0 or alphas.max() >= domain_size:
        raise ValueError(f"DPF points must lie in [0, {domain_size})")
    n, k = depth(domain_size), len(alphas)
    rand = np.frombuffer(os.urandom(2 * k * LAMBDA_BYTES), dtype=np.uint8).reshape(2, k, LAMBDA_BYTES)
    nodes = np.concatenate([_with_t(to_words(rand[0]), np.zeros(k, np.uint8)),
                            _with_t(to_words(rand[1]), np.ones(k, np.uint8))])  # [2K, 2]: party 0 then 1
    bits = _bits(alphas, n)
    cw_s = np.empty((k, n, 2), dtype=np.uint64)
    cw_t = np.empty((k, n, 2), dtype=np.uint8)
    for level in range(n):
        a = bits[:, level].astype(bool)
        left, right = prg.expand_tree(nodes)  # both parties in one call
        tl, tr = _t_of(left), _t_of(right)
        lose = np.where(a[:, None], left[:k] ^ left[k:], right[:k] ^ right[k:])
        lose[:, 0] &= ~_ONE
        tl_cw = tl[:k] ^ tl[k:] ^ a ^ 1
        tr_cw = tr[:k] ^ tr[k:] ^ a
        cw_s[:, level], cw_t[:, level, 0], cw_t[:, level, 1] = lose, tl_cw, tr_cw
        keep_cw = _with_t(lose, np.where(a, tr_cw, tl_cw))
        keep = np.where(np.concatenate([a, a])[:, None], right, left)
        nodes = keep ^ (_mask(_t_of(nodes))[:, None] & np.concatenate([keep_cw, keep_cw]))
    cw_bytes = to_bytes(cw_s)
    path0 = {"seeds": rand[0].copy(), "t0": np.zeros(k, np.uint8), "cw_seeds": cw_bytes, "cw_t": cw_t}
    path1 = {"seeds": rand[1].copy(), "t0": np.ones(k, np.uint8), "cw_seeds": cw_bytes.copy(), "cw_t": cw_t.copy()}
    return path0, path1, GenState(t1=_t_of(nodes[k:]), s0=to_bytes(nodes[:k]), s1=to_bytes(nodes[k:]))


def convert_gen(state: GenState, betas: np.ndarray, domain: int) -> np.ndarray:
    """FSS.ConvertGen (Algorithm 5): CW^(n+1) = (-1)^t1 [beta - Convert(s0) + Convert(s1)]."""
    dt = _ring(betas.dtype)
    if betas.ndim != 2 or betas.shape[0] != len(state.t1):
        raise ValueError(f"betas must be [K, w] with K = {len(state.t1)}, got {betas.shape}")
    w = betas.shape[1]
    cw = betas - prg.convert(to_words(state.s0), w, dt, domain) + prg.convert(to_words(state.s1), w, dt, domain)
    neg = state.t1.astype(bool)
    cw[neg] = np.zeros(1, dt) - cw[neg]
    return cw


def gen(alphas: np.ndarray, betas: np.ndarray, domain_size: int, domain: int = RETRIEVE_DOMAIN
        ) -> tuple[DpfKeyBatch, DpfKeyBatch, GenState]:
    """FSS.Gen for K point functions: keys of party 0 and 1 plus the state for later ConvertGen."""
    path0, path1, state = path_gen(alphas, domain_size)
    cw_out = convert_gen(state, np.asarray(betas), domain)
    return (DpfKeyBatch(0, domain_size, cw_out=cw_out, **path0),
            DpfKeyBatch(1, domain_size, cw_out=cw_out.copy(), **path1), state)


class _ExpandWorkspace:
    """One thread's buffers for :func:`expand_leaves`, reused across calls (no page faults per level)."""

    def __init__(self) -> None:
        self.size = 0

    def ensure(self, n_blocks: int) -> None:
        if n_blocks > self.size:
            self.size = n_blocks
            self.a = np.empty(2 * n_blocks + 2, dtype=np.uint64)  # ping
            self.b = np.empty(2 * n_blocks + 2, dtype=np.uint64)  # pong
            self.corr = np.empty(n_blocks, dtype=np.uint64)  # half-size buffers: one per parent
            self.t = np.empty(n_blocks // 2 + 1, dtype=np.uint64)


_expand_tls = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _worker_pool() -> ThreadPoolExecutor:
    """One process-wide pool: its threads live on, so their workspaces are reused across rounds."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(prg.N_THREADS, thread_name_prefix="dpf")
        return _pool


@functools.lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def parallel_map(fn, items) -> list:
    """fn over items on the DPF pool (numpy and OpenSSL release the GIL).

    BLAS runs single-threaded meanwhile: each pool thread already owns a core, and a
    multi-threaded OpenBLAS call beside another busy thread oversubscribes the cores
    (its spinning threads made fused retrieval 2x slower here).
    """
    with _blas().limit(limits=1, user_api="blas"):
        return list(_worker_pool().map(fn, items))


def per_thread(items: list) -> list[list]:
    """items dealt round-robin into one non-empty share per pool thread (fewer if items are few)."""
    return [share for share in (items[i::prg.N_THREADS] for i in range(prg.N_THREADS)) if share]


def _scratch(n_words: int) -> np.ndarray:
    """This thread's reusable uint64 buffer of at least n_words (fresh large arrays cost page faults)."""
    buf = getattr(_expand_tls, "scratch", None)
    if buf is None or buf.size < n_words:
        buf = _expand_tls.scratch = np.empty(n_words, dtype=np.uint64)
    return buf[:n_words]


@functools.lru_cache(maxsize=32)
def _level_plan(m: int) -> tuple[tuple[tuple[int, int | None], ...], np.ndarray]:
    """Per tree level (nodes kept, row dropped or None), and the item each final row holds.

    Each level is stored as [left children; right children]; pruning to [0, m) drops at most
    one node per level (a right child past the domain) and moves the last row into its place.
    """
    n = depth(m)
    order = np.zeros(1, dtype=np.int64)
    plan = []
    for level in range(n):
        width = -(-m // (1 << (n - level - 1)))  # nodes needed at the next level
        order = np.concatenate([2 * order, 2 * order + 1])
        drop = None
        if len(order) > width:
            drop = int(np.flatnonzero(order >= width)[0])
            order[drop] = order[-1]
        order = order[:width]
        plan.append((width, drop))
    order.setflags(write=False)
    return tuple(plan), order


def _leaf_order(m: int) -> np.ndarray:
    """Item held by each leaf row of :func:`expand_leaves` (the same for every key)."""
    return _level_plan(m)[1]


def _level_corrections(keys: DpfKeyBatch) -> tuple[np.ndarray, np.ndarray]:
    """Per level and key: the left child's correction s_cw | tL_cw [n, K, 2], and tL_cw ^ tR_cw [n, K].

    The right child's correction differs from the left one only in the control bit, so one
    corrected copy of the parents serves both children and the right side gets a 1-bit fix.
    """
    left = _with_t(to_words(keys.cw_seeds), keys.cw_t[:, :, 0]).transpose(1, 0, 2).copy()
    flip = (keys.cw_t[:, :, 0] ^ keys.cw_t[:, :, 1]).T.astype(np.uint64)
    return left, np.ascontiguousarray(flip)


def expand_leaves(keys: DpfKeyBatch) -> tuple[np.ndarray, np.ndarray]:
    """FSS.PathEval for every x in [0, m): leaf blocks uint64 [m, K, 2] and the item of each row.

    Full-domain evaluation level by level over all K keys at once, pruned to the nodes that
    cover [0, m). Each level is stored as [left children; right children] (not interleaved),
    so every AES call and XOR runs over contiguous memory; the leaves therefore come out in a
    fixed permutation of the items, returned as ``order`` (row p holds item order[p]; the
    same for every key; see :func:`_level_plan`). A child is AES(x) XOR (x XOR t_x CW): AES
    writes straight into the child's slot and one XOR applies the MMO feed-forward and the
    correction, computed once per parent for both sides. The returned array lives in a
    per-thread workspace: copy it before the next call on the same thread.
    """
    m, k = keys.domain_size, keys.n_keys
    plan, order = _level_plan(m)
    ws = getattr(_expand_tls, "ws", None) or _ExpandWorkspace()
    _expand_tls.ws = ws
    ws.ensure((m + 1) * k)
    cur, nxt = ws.a, ws.b  # ping-pong: nodes of this level live in cur, children go to nxt
    nodes = cur[:2 * k].reshape(1, k, 2)
    nodes[0] = _with_t(to_words(keys.seeds), keys.t0)
    cw_left, flip = _level_corrections(keys)
    zero, one = np.zeros(1, np.uint64), np.uint64(1)
    for level, (width, drop) in enumerate(plan):
        c = nodes.shape[0]
        size = c * k * 2
        t = ws.t[:c * k].reshape(c, k)
        np.bitwise_and(nodes[:, :, 0], one, out=t)
        np.subtract(zero, t, out=t)  # all-ones where the parent's t is 1
        corr = ws.corr[:size].reshape(c, k, 2)
        np.bitwise_and(t, cw_left[level, :, 0], out=corr[:, :, 0])
        np.bitwise_and(t, cw_left[level, :, 1], out=corr[:, :, 1])
        np.bitwise_xor(corr, nodes, out=corr)  # x XOR t * CW_left
        prg.aes_into(prg.TREE_LEFT, nodes, nxt)
        prg.aes_into(prg.TREE_RIGHT, nodes, nxt[size:])
        children = nxt[:2 * size].reshape(2, c, k, 2)
        np.bitwise_xor(children, corr, out=children)
        np.bitwise_and(t, flip[level], out=t)  # right child: t_cw differs by tL_cw ^ tR_cw
        np.bitwise_xor(children[1, :, :, 0], t, out=children[1, :, :, 0])
        children = children.reshape(2 * c, k, 2)
        if drop is not None:
            children[drop] = children[2 * c - 1]
        nodes = children[:width]
        cur, nxt = nxt, cur
    return nodes, order


def _signed(v: np.ndarray, party: int) -> np.ndarray:
    return (np.zeros(1, v.dtype) - v) if party == 1 else v


def _limbs(a: np.ndarray, bits: int) -> list[np.ndarray]:
    """Unsigned limbs of ``bits`` bits each, as float64 (exact)."""
    mask = np.uint64((1 << bits) - 1)
    a64 = a.astype(np.uint64, copy=False)
    return [((a64 >> np.uint64(bits * i)) & mask).astype(np.float64) for i in range(a.dtype.itemsize * 8 // bits)]


class RingRhs:
    """The right side of an exact ring product (a @ b) mod 2^k, split into float64 digits once.

    Z_2^32: ``a`` (large, uniform) is read as signed int32 (|a| <= 2^31) and used whole as
    float64; ``b`` (the public table) is read as signed integers and split into digits of 10
    bits (the top one signed), so each product stays below 2^41 and a sum over 2^12 rows
    below 2^53. All digits sit side by side in one float64 matrix, so ``a`` is streamed once
    per block of rows. Fixed-point embeddings (|b| < 2^20) need two digits; a uniform table
    four. Z_2^64: 16-bit limbs of both sides, one matmul per limb pair below 2^64. Preparing
    the digits costs as much as a product with a few hundred rows of ``a``, so a retrieval
    prepares the table once and multiplies it by every chunk of keys.
    """

    ROWS = 1 << 12  # rows of the inner dimension per float64 product (Z_2^32)
    BITS = 53 - 31 - 12  # digit size that keeps every partial sum exact

    def __init__(self, b: np.ndarray) -> None:
        self.dtype, self.inner, self.width = _ring(b.dtype), b.shape[0], b.shape[1]
        if self.dtype == np.uint32:
            signed = b.view(np.int32).astype(np.int64)
            top = int(np.abs(signed).max(initial=0))
            digits = []
            for _ in range(4):
                if top < (1 << self.BITS):
                    digits.append(signed)
                    break
                digits.append(signed & ((1 << self.BITS) - 1))
                signed, top = signed >> self.BITS, top >> self.BITS
            self.n_digits = len(digits)
            self.side = np.concatenate(digits, axis=1).astype(np.float64)  # [inner, n_digits * w]
        else:
            self.limbs = _limbs(b, 16)

    def left_multiply(self, a: np.ndarray) -> np.ndarray:
        """(a @ b) mod 2^k for ring a [K, inner] (any memory layout)."""
        if a.dtype != self.dtype or a.ndim != 2 or a.shape[1] != self.inner:
            raise ValueError(f"left side must be {self.dtype} [K, {self.inner}], got {a.dtype} {a.shape}")
        w = self.width
        out = np.zeros((a.shape[0], w), dtype=np.uint64)
        if self.dtype == np.uint32:
            for lo in range(0, self.inner, self.ROWS):
                prod = a[:, lo:lo + self.ROWS].view(np.int32).astype(np.float64) @ self.side[lo:lo + self.ROWS]
                for j in range(self.n_digits):
                    out += prod[:, j * w:(j + 1) * w].astype(np.int64).view(np.uint64) << np.uint64(self.BITS * j)
            return out.astype(np.uint32)
        n_limbs, step = 4, 1 << 20  # 2^16 * 2^16 * 2^20 = 2^52 < 2^53
        for lo in range(0, self.inner, step):
            a_l = _limbs(a[:, lo:lo + step], 16)
            for i in range(n_limbs):
                for j in range(n_limbs - i):
                    out += (a_l[i] @ self.limbs[j][lo:lo + step]).astype(np.uint64) << np.uint64(16 * (i + j))
        return out


def ring_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact (a @ b) mod 2^k for ring arrays via float64 BLAS (see :class:`RingRhs`)."""
    return RingRhs(b).left_multiply(a)


BITS_MATMUL_MAX_KEYS = 1 << 20  # a sum of 2^20 products of a bit and a 32-bit limb stays below 2^53


def _bits_matmul(t: np.ndarray, cw: np.ndarray) -> np.ndarray:
    """t^T @ cw mod 2^k for binary t [K, m] and ring cw [K, w], K <= 2^20: one float64 matmul per 32-bit limb.

    With at most 2^20 keys every partial sum stays below 2^53, so the float64 product is exact.
    """
    if t.shape[0] > BITS_MATMUL_MAX_KEYS:
        raise ValueError(f"an exact bits x ring matmul takes at most 2^20 keys, got {t.shape[0]}")
    out = np.zeros((t.shape[1], cw.shape[1]), dtype=np.uint64)
    tf = t.astype(np.float64)
    for j, limb in enumerate(_limbs(cw, 32)):
        out += (tf.T @ limb).astype(np.uint64) << np.uint64(32 * j)
    return out.astype(cw.dtype)


def bits_times_rows(t: np.ndarray, cw: np.ndarray) -> np.ndarray:
    """t^T @ cw mod 2^k for control bits t uint8 [K, m] and ring rows cw [K, w]: ring [m, w].

    Exact float64 matmuls over contiguous slices of keys (~32 MB of float64 bits each, and never
    more keys than keep the sums exact), split between the pool's threads.
    """
    k, m = t.shape
    step = min(BITS_MATMUL_MAX_KEYS, max(1, (1 << 22) // m))

    def work(mine: list[int]) -> np.ndarray:
        total = np.zeros((m, cw.shape[1]), dtype=cw.dtype)
        for lo in mine:
            total += _bits_matmul(t[lo:lo + step], cw[lo:lo + step])
        return total

    parts = parallel_map(work, per_thread(list(range(0, k, step))))
    return sum(parts[1:], parts[0])


def store_leaves(nodes: np.ndarray, leaves: np.ndarray, bits: np.ndarray) -> None:
    """Expansion output [m, k, 2] -> key-major leaves [k, m, 2] and control bits [k, m] of the cache."""
    m = nodes.shape[0]
    src, dst = nodes.view(np.complex128)[:, :, 0], leaves.view(np.complex128)[:, :, 0]
    for x in range(0, m, 256):  # transposed tile by tile, while the tile is in cache
        dst[:, x:x + 256] = src[x:x + 256].T  # 16-byte moves
    np.bitwise_and(leaves.view(np.uint8)[:, :, 0], 1, out=bits)  # t: the lowest bit of each leaf


class DpfEvaluator:
    """One party's evaluation context: evaluates key batches and keeps their leaves for ConvertEval.

    The cache holds every key's leaf blocks (seed with the control bit in its lowest bit),
    uint64 [K, m, 2]: 16 bytes per (key, item), the memory SecEmb's path sharing trades
    for not re-expanding the trees in the aggregation phase.
    """

    def __init__(self, party: int, domain_size: int, ring_dtype, expand_chunk_keys: int = 128) -> None:
        if party not in (0, 1):
            raise ValueError("party must be 0 or 1")
        self.party = party
        self.domain_size = domain_size
        self.ring = _ring(ring_dtype)
        self.expand_chunk_keys = expand_chunk_keys  # small batches keep each tree level in cache
        self.group_blocks = 1 << 18  # leaf blocks per aggregation AES call
        self.leaves: np.ndarray | None = None
        self.t: np.ndarray | None = None  # control bit of every cached leaf, uint8 [K, m]
        self._capacity = 0
        self.order: np.ndarray | None = None  # item held by each leaf position

    def _check(self, keys: DpfKeyBatch) -> None:
        if keys.party != self.party or keys.domain_size != self.domain_size or keys.cw_out.dtype != self.ring:
            raise ValueError("keys do not belong to this evaluator's party, domain or ring")

    def expand(self, keys: DpfKeyBatch, table: np.ndarray | None = None) -> np.ndarray | None:
        """Evaluate every key's tree on the whole domain and cache the leaves (the shared path).

        With a ``table`` (ring [m, w], item order) the retrieval shares sum_j Eval(k, j) table[j]
        are computed too, chunk by chunk, while each chunk's leaves are still in cache: ring [K, w].
        """
        self._check(keys)
        n_keys, m = keys.n_keys, self.domain_size
        if self._capacity < n_keys:  # buffers are reused across rounds: no page faults in steady state
            self.leaves = self.t = None
            self._leaf_buf = np.empty((n_keys, m, 2), dtype=np.uint64)
            self._t_buf = np.empty((n_keys, m), dtype=np.uint8)
            self._capacity = n_keys
        leaves, bits = self._leaf_buf[:n_keys], self._t_buf[:n_keys]
        order = _leaf_order(m)
        shares = None if table is None else np.empty((n_keys, table.shape[1]), dtype=self.ring)
        table_by_leaf = None if table is None else RingRhs(table[order])
        step = self.expand_chunk_keys

        def work(lo: int) -> None:
            hi = min(lo + step, n_keys)
            part = keys.select(slice(lo, hi))
            nodes = expand_leaves(part)[0]
            if shares is not None:
                shares[lo:hi] = self._retrieve_chunk(nodes, part.cw_out[:, 0], table_by_leaf)
            store_leaves(nodes, leaves[lo:hi], bits[lo:hi])

        parallel_map(work, range(0, n_keys, step))
        self.leaves, self.t, self.order = leaves, bits, order
        return shares

    def _retrieve_chunk(self, nodes: np.ndarray, cw_out: np.ndarray, table_by_leaf: RingRhs) -> np.ndarray:
        """Shares of one chunk's embeddings from its leaves [m, k, 2] (node-major, in cache).

        Eval(k, x) = (-1)^b [Convert(s_x) + t_x CW^(n+1)] with a width-1 Convert: the first ring
        lane of AES_K(s) + s. The t bit is the lowest bit of that lane.
        """
        lanes = 16 // self.ring.itemsize
        m, k = nodes.shape[:2]
        label = prg.convert_label(RETRIEVE_DOMAIN, 0)
        rows = max(1, (1 << 16) // k)  # ~1 MB of AES output per call: it is read back from L2
        raw = _scratch(rows * k * 2 + 2)
        e = np.empty((m, k), dtype=self.ring)
        t_cw = np.empty((rows, k), dtype=self.ring)
        for x in range(0, m, rows):  # tile by tile, so the AES output and the seeds are read back from cache
            part = nodes[x:x + rows]
            out, tile = e[x:x + rows], t_cw[:len(part)]
            prg.aes_into(label, part, raw)
            seed = part.view(self.ring).reshape(-1, k, lanes)[:, :, 0]
            np.add(raw[:part.size].view(self.ring).reshape(-1, k, lanes)[:, :, 0], seed, out=out)  # AES(s) + s
            np.bitwise_and(seed, 1, out=tile)
            np.multiply(tile, cw_out, out=tile)
            out += tile  # + t CW^(n+1)
        return _signed(table_by_leaf.left_multiply(e.T), self.party)

    def eval_full(self, keys: DpfKeyBatch, domain: int = RETRIEVE_DOMAIN) -> np.ndarray:
        """Eval(k, x) for all x: ring [K, m, w] (tests and small domains)."""
        self.expand(keys)
        conv = prg.convert(self.leaves, keys.width, self.ring, domain)
        out = np.empty_like(conv)
        out[:, self.order] = conv + self.t[:, :, None].astype(self.ring) * keys.cw_out[:, None, :]
        return _signed(out, self.party)

    def retrieve(self, keys: DpfKeyBatch, table: np.ndarray) -> np.ndarray:
        """Phase 1 of SecEmb: shares sum_j Eval(k, j) * table[j] -> ring [K, w]; caches the leaves."""
        if keys.width != 1:
            raise ValueError("retrieval keys encode beta = 1 (width 1)")
        if table.dtype != self.ring or table.shape[0] != self.domain_size:
            raise ValueError(f"table must be {self.ring} [{self.domain_size}, w]")
        return self.expand(keys, table)

    def aggregate(self, cw: np.ndarray, keep: np.ndarray | None = None, domain: int = AGGREGATE_DOMAIN
                  ) -> np.ndarray:
        """ConvertEval (Algorithm 4) summed over the cached keys kept: ring [m, w]."""
        if self.leaves is None:
            raise ValueError("aggregate needs the leaves of a previous retrieve/expand")
        k = self.leaves.shape[0]
        if cw.dtype != self.ring or cw.ndim != 2 or cw.shape[0] != k:
            raise ValueError(f"correction words must be {self.ring} [{k}, w], got {cw.dtype} {cw.shape}")
        idx = np.arange(k) if keep is None else np.flatnonzero(keep)
        return self._sum_convert(cw, idx, domain)

    def sum_full(self, keys: DpfKeyBatch, domain: int = AGGREGATE_DOMAIN, batch_leaves: int = 1 << 24
                 ) -> np.ndarray:
        """Sum over fresh full keys of Eval on the whole domain (ablations without path sharing).

        Streams over batches of keys (~batch_leaves leaves each) so memory stays bounded even
        for SecEmb-Init's one key per element.
        """
        step = max(1, batch_leaves // self.domain_size)
        total = np.zeros((self.domain_size, keys.width), dtype=self.ring)
        for lo in range(0, keys.n_keys, step):
            part = keys.select(slice(lo, lo + step))
            self.expand(part)
            total += self._sum_convert(part.cw_out, np.arange(part.n_keys), domain)
        return total

    def _sum_convert(self, cw: np.ndarray, idx: np.ndarray, domain: int) -> np.ndarray:
        """sum_k Convert(leaf_k) + t_k CW_k over keys idx, for every item.

        Convert's block b is AES_{K_b}(s) + s (ring lanes), so the sum over keys splits into
        sum_k AES_{K_b}(s_k), one AES call under K_{domain,b} per group of keys (AES reads the
        cached leaves in place) and one add into an accumulator [nb, m * lanes], plus
        sum_k s_k once per group for all blocks. The t_k CW_k term is one bits x ring matmul.
        """
        m, w = self.domain_size, cw.shape[1]
        nb = prg.blocks_for(w, self.ring)
        lanes = 16 // self.ring.itemsize
        group = max(1, self.group_blocks // m)  # keys per AES call: ~256K blocks, so each GIL hand-off is amortised
        labels = [prg.convert_label(domain, b) for b in range(nb)]
        groups = [idx[i:i + group] for i in range(0, len(idx), group)]
        leaves = self.leaves

        def work(my_groups: list[np.ndarray]) -> np.ndarray:
            acc = np.zeros((nb + 1, m * lanes), dtype=self.ring)  # row nb: sum of the seeds themselves
            out = _scratch(group * m * 2 + 2)
            for ids in my_groups:
                g = len(ids)
                src = leaves[ids[0]:ids[-1] + 1] if ids[-1] - ids[0] == g - 1 else leaves[ids]
                acc[nb] += src.view(self.ring).reshape(g, m * lanes).sum(axis=0, dtype=self.ring)
                for b, label in enumerate(labels):
                    prg.aes_into(label, src, out)
                    ring = out[:src.size].view(self.ring).reshape(g, m * lanes)
                    acc[b] += ring.sum(axis=0, dtype=self.ring) if g > 1 else ring[0]
            return acc

        acc = np.zeros((nb + 1, m * lanes), dtype=self.ring)
        for part in parallel_map(work, per_thread(groups)):
            acc += part
        acc = acc[:nb] + acc[nb]  # the feed-forward + s_k, the same for every block
        total = np.ascontiguousarray(acc.reshape(nb, m, lanes).transpose(1, 0, 2)).reshape(m, nb * lanes)[:, :w]
        out = np.empty((m, w), dtype=self.ring)
        out[self.order] = total + self._t_term(cw, idx)
        return _signed(out, self.party)

    def _t_term(self, cw: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """sum_k t_k(x) CW_k over the kept keys idx, for every leaf; keys left out get a zero CW."""
        k = self.leaves.shape[0]
        if len(idx) < k:
            kept = np.zeros((k, 1), dtype=cw.dtype)
            kept[idx] = 1
            cw = cw * kept
        return bits_times_rows(self.t, cw)

