"""Distributed point functions (Boyle, Gilboa, Ishai 2016), vectorised over batches of keys.

Point function f_{alpha,beta}(x) = beta if x == alpha else 0, beta in (Z_2^k)^w.
Gen splits it into keys k0, k1 with Eval(k0, x) + Eval(k1, x) = f(x) for every
x in the domain [0, m); either key alone is pseudorandom. lambda = 128, n =
ceil(log2 m) tree levels. Keys are plain data (:class:`DpfKeyBatch`); an
evaluation context (:class:`DpfEvaluator`) carries the evaluated tree paths
between calls, which is what SecEmb's path sharing needs: the retrieval keys'
leaves are cached and reused with the aggregation phase's new final
correction words (FSS.ConvertGen / ConvertEval, SecEmb Algorithms 4-7).

Everything works on all keys at once, level by level, as numpy arrays: the
only Python loops run over tree levels and over chunks of keys.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

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
    """uint8 [..., 16] seeds -> uint64 words [2, ...] (low word, high word)."""
    w = np.ascontiguousarray(seed_bytes).view("<u8")
    return np.moveaxis(w, -1, 0).astype(np.uint64)


def to_bytes(S: np.ndarray) -> np.ndarray:
    """uint64 words [2, ...] -> uint8 [..., 16]."""
    return np.ascontiguousarray(np.moveaxis(S, 0, -1).astype("<u8")).view(np.uint8)


def _mask(t: np.ndarray) -> np.ndarray:
    """All-ones uint64 where the bit t is 1 (for branch-free conditional XOR)."""
    return np.zeros(1, np.uint64) - t.astype(np.uint64)


def path_gen(alphas: np.ndarray, domain_size: int) -> tuple[dict, dict, GenState]:
    """FSS.PathGen (SecEmb Algorithm 7) for K points at once: both parties' tree keys and the gen state."""
    alphas = np.asarray(alphas, dtype=np.int64).reshape(-1)
    if alphas.size == 0 or alphas.min() < 0 or alphas.max() >= domain_size:
        raise ValueError(f"DPF points must lie in [0, {domain_size})")
    n, k = depth(domain_size), len(alphas)
    rand = np.frombuffer(os.urandom(2 * k * LAMBDA_BYTES), dtype=np.uint8).reshape(2, k, LAMBDA_BYTES)
    s0, s1 = to_words(rand[0]), to_words(rand[1])
    t0 = np.zeros(k, dtype=np.uint8)
    t1 = np.ones(k, dtype=np.uint8)
    bits = _bits(alphas, n)
    cw_s = np.empty((2, k, n), dtype=np.uint64)
    cw_t = np.empty((k, n, 2), dtype=np.uint8)
    for level in range(n):
        a = bits[:, level]
        keep_r = a.astype(bool)
        sL, tL, sR, tR = prg.expand_tree(np.concatenate([s0, s1], axis=1))  # both parties in one call
        s0L, s1L, s0R, s1R = sL[:, :k], sL[:, k:], sR[:, :k], sR[:, k:]
        t0L, t1L, t0R, t1R = tL[:k], tL[k:], tR[:k], tR[k:]
        s_cw = np.where(keep_r, s0L ^ s1L, s0R ^ s1R)  # the "lose" side
        tL_cw = t0L ^ t1L ^ a ^ 1
        tR_cw = t0R ^ t1R ^ a
        cw_s[:, :, level], cw_t[:, level, 0], cw_t[:, level, 1] = s_cw, tL_cw, tR_cw
        t_keep_cw = np.where(keep_r, tR_cw, tL_cw)
        s0 = np.where(keep_r, s0R, s0L) ^ (_mask(t0) & s_cw)
        s1 = np.where(keep_r, s1R, s1L) ^ (_mask(t1) & s_cw)
        t0 = np.where(keep_r, t0R, t0L) ^ (t0 & t_keep_cw)
        t1 = np.where(keep_r, t1R, t1L) ^ (t1 & t_keep_cw)
    cw_bytes = to_bytes(cw_s)
    path0 = {"seeds": rand[0].copy(), "t0": np.zeros(k, np.uint8), "cw_seeds": cw_bytes, "cw_t": cw_t}
    path1 = {"seeds": rand[1].copy(), "t0": np.ones(k, np.uint8), "cw_seeds": cw_bytes, "cw_t": cw_t}
    return path0, path1, GenState(t1=t1, s0=to_bytes(s0), s1=to_bytes(s1))


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
    return (DpfKeyBatch(0, domain_size, cw_out=cw_out, **path0), DpfKeyBatch(1, domain_size, cw_out=cw_out, **path1),
            state)


def expand_leaves(keys: DpfKeyBatch) -> tuple[np.ndarray, np.ndarray]:
    """FSS.PathEval for every x in [0, m): leaf seeds as words uint64 [2, K, m] and t bits uint8 [K, m].

    Full-domain evaluation level by level, pruned to the nodes that cover [0, m).
    """
    m, n, k = keys.domain_size, depth(keys.domain_size), keys.n_keys
    S = to_words(keys.seeds)[:, :, None]
    t = keys.t0[:, None].copy()
    cws = to_words(keys.cw_seeds)  # [2, K, n]
    for level in range(n):
        width = -(-m // (1 << (n - level - 1)))  # nodes needed at the next level
        sL, tL, sR, tR = prg.expand_tree(S)
        corr = _mask(t)[None] & cws[:, :, level][:, :, None]
        sL ^= corr
        sR ^= corr
        tL ^= t & keys.cw_t[:, level, 0][:, None]
        tR ^= t & keys.cw_t[:, level, 1][:, None]
        c = S.shape[2]
        S = np.empty((2, k, 2 * c), dtype=np.uint64)
        S[:, :, 0::2], S[:, :, 1::2] = sL, sR
        tn = np.empty((k, 2 * c), dtype=np.uint8)
        tn[:, 0::2], tn[:, 1::2] = tL, tR
        S, t = S[:, :, :width], tn[:, :width]
    return np.ascontiguousarray(S), np.ascontiguousarray(t)


def _signed(v: np.ndarray, party: int) -> np.ndarray:
    return (np.zeros(1, v.dtype) - v) if party == 1 else v


def ring_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact (a @ b) mod 2^k for ring arrays, via 16-bit limbs and float64 BLAS (sums kept < 2^53)."""
    dt = a.dtype
    n_limbs = dt.itemsize * 8 // 16
    inner = a.shape[1]
    step = 1 << 20  # 2^16 * 2^16 * 2^20 = 2^52 < 2^53
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.uint64)
    for lo in range(0, inner, step):
        a_l = [((a[:, lo:lo + step] >> (16 * i)) & 0xFFFF).astype(np.float64) for i in range(n_limbs)]
        b_l = [((b[lo:lo + step] >> (16 * j)) & 0xFFFF).astype(np.float64) for j in range(n_limbs)]
        for i in range(n_limbs):
            for j in range(n_limbs - i):
                out += (a_l[i] @ b_l[j]).astype(np.uint64) << np.uint64(16 * (i + j))
    return out.astype(dt)


def _bits_matmul(t: np.ndarray, cw: np.ndarray) -> np.ndarray:
    """t^T @ cw mod 2^k for binary t [K, m] and ring cw [K, w]: one float64 matmul per 16-bit limb."""
    dt = cw.dtype
    out = np.zeros((t.shape[1], cw.shape[1]), dtype=np.uint64)
    tf = t.astype(np.float64).T
    step = 1 << 14  # keys per float64 matmul: sums stay below 2^14 * 2^16 < 2^53, memory stays small
    for lo in range(0, t.shape[0], step):
        for j in range(dt.itemsize * 8 // 16):
            limb = ((cw[lo:lo + step] >> (16 * j)) & 0xFFFF).astype(np.float64)
            out += (tf[:, lo:lo + step] @ limb).astype(np.uint64) << np.uint64(16 * j)
    return out.astype(dt)


class DpfEvaluator:
    """One party's evaluation context: evaluates key batches and keeps their leaves for ConvertEval."""

    def __init__(self, party: int, domain_size: int, ring_dtype, chunk_keys: int = 512,
                 expand_chunk_keys: int = 32) -> None:
        if party not in (0, 1):
            raise ValueError("party must be 0 or 1")
        self.party = party
        self.domain_size = domain_size
        self.ring = _ring(ring_dtype)
        self.chunk_keys = chunk_keys
        self.expand_chunk_keys = expand_chunk_keys  # small batches keep each tree level in cache
        self.leaf_seeds: np.ndarray | None = None
        self.leaf_t: np.ndarray | None = None

    def _check(self, keys: DpfKeyBatch) -> None:
        if keys.party != self.party or keys.domain_size != self.domain_size or keys.cw_out.dtype != self.ring:
            raise ValueError("keys do not belong to this evaluator's party, domain or ring")

    def expand(self, keys: DpfKeyBatch) -> None:
        """Evaluate every key's tree on the whole domain and cache the leaves (the shared path)."""
        self._check(keys)
        seeds = np.empty((2, keys.n_keys, self.domain_size), dtype=np.uint64)
        ts = np.empty((keys.n_keys, self.domain_size), dtype=np.uint8)

        def work(lo: int) -> None:
            hi = min(lo + self.expand_chunk_keys, keys.n_keys)
            seeds[:, lo:hi], ts[lo:hi] = expand_leaves(keys.select(slice(lo, hi)))

        with ThreadPoolExecutor(prg.N_THREADS) as pool:  # numpy and OpenSSL release the GIL
            list(pool.map(work, range(0, keys.n_keys, self.expand_chunk_keys)))
        self.leaf_seeds, self.leaf_t = seeds, ts

    def eval_full(self, keys: DpfKeyBatch, domain: int = RETRIEVE_DOMAIN) -> np.ndarray:
        """Eval(k, x) for all x: ring [K, m, w] (tests and small domains)."""
        self.expand(keys)
        conv = prg.convert(self.leaf_seeds, keys.width, self.ring, domain)
        return _signed(conv + self.leaf_t[:, :, None].astype(self.ring) * keys.cw_out[:, None, :], self.party)

    def _scalar_convert(self, lo: int, hi: int) -> np.ndarray:
        """Convert to one ring element per leaf (retrieval domain) for keys lo:hi -> [hi-lo, m]."""
        S = self.leaf_seeds[:, lo:hi]
        ws = prg.workspace(2 * S[0].size)
        words = ws.convert_blocks(S[0].reshape(-1), S[1].reshape(-1), 1, RETRIEVE_DOMAIN)[0, :, 0]
        return words.astype(self.ring).reshape(hi - lo, self.domain_size)

    def retrieve(self, keys: DpfKeyBatch, table: np.ndarray) -> np.ndarray:
        """Phase 1 of SecEmb: shares sum_j Eval(k, j) * table[j] -> ring [K, w]; caches the leaves."""
        if keys.width != 1:
            raise ValueError("retrieval keys encode beta = 1 (width 1)")
        if table.dtype != self.ring or table.shape[0] != self.domain_size:
            raise ValueError(f"table must be {self.ring} [{self.domain_size}, w]")
        self.expand(keys)
        out = np.empty((keys.n_keys, table.shape[1]), dtype=self.ring)
        for lo in range(0, keys.n_keys, self.chunk_keys):
            hi = min(lo + self.chunk_keys, keys.n_keys)
            e = self._scalar_convert(lo, hi)
            e += self.leaf_t[lo:hi].astype(self.ring) * keys.cw_out[lo:hi, 0][:, None]
            out[lo:hi] = ring_matmul(_signed(e, self.party), table)
        return out

    def aggregate(self, cw: np.ndarray, keep: np.ndarray | None = None, domain: int = AGGREGATE_DOMAIN
                  ) -> np.ndarray:
        """ConvertEval (Algorithm 4) summed over the cached keys kept: ring [m, w]."""
        if self.leaf_seeds is None:
            raise ValueError("aggregate needs the leaves of a previous retrieve/expand")
        k = self.leaf_seeds.shape[1]
        if cw.dtype != self.ring or cw.ndim != 2 or cw.shape[0] != k:
            raise ValueError(f"correction words must be {self.ring} [{k}, w], got {cw.dtype} {cw.shape}")
        idx = np.arange(k) if keep is None else np.flatnonzero(keep)
        return self._sum_convert(cw, idx, domain)

    def sum_full(self, keys: DpfKeyBatch, domain: int = AGGREGATE_DOMAIN) -> np.ndarray:
        """Sum over fresh full keys of Eval on the whole domain (ablations without path sharing)."""
        self.expand(keys)
        return self._sum_convert(keys.cw_out, np.arange(keys.n_keys), domain)

    def _sum_convert(self, cw: np.ndarray, idx: np.ndarray, domain: int) -> np.ndarray:
        m, w = self.domain_size, cw.shape[1]
        nb = prg.blocks_for(w, self.ring)
        per_block = 16 // self.ring.itemsize
        chunk = max(1, (1 << 19) // (m * nb))  # ~8 MiB of blocks per step, in reused buffers
        runs = [idx[i:i + chunk] for i in range(0, len(idx), chunk)]
        seeds = self.leaf_seeds

        def work(my_runs: list[np.ndarray]) -> np.ndarray:
            acc = np.zeros((nb, m, per_block), dtype=self.ring)
            ws = prg.workspace(2 * nb * chunk * m)
            for ids in my_runs:
                contiguous = len(ids) and ids[-1] - ids[0] == len(ids) - 1
                S = seeds[:, ids[0]:ids[-1] + 1] if contiguous else seeds[:, ids]
                words = ws.convert_blocks(S[0].reshape(-1), S[1].reshape(-1), nb, domain)
                ring = words.view(self.ring).reshape(nb, len(ids), m, per_block)
                acc += ring.sum(axis=1, dtype=self.ring)
            return acc

        groups = [runs[i::prg.N_THREADS] for i in range(prg.N_THREADS)] if len(runs) > 1 else [runs]
        with ThreadPoolExecutor(len(groups)) as pool:
            partial = list(pool.map(work, groups))
        acc = partial[0]
        for p in partial[1:]:
            acc += p
        total = np.ascontiguousarray(acc.transpose(1, 0, 2)).reshape(m, nb * per_block)[:, :w].copy()
        total += _bits_matmul(self.leaf_t[idx], cw[idx])
        return _signed(total, self.party)
