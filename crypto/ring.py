"""The ring Z_2^k (k = 32 or 64) as numpy unsigned integers: the one home of its dtype and exact products.

Wrap-around of numpy uint32 / uint64 arithmetic is exactly the modulus, so
sums, differences and negations need no code of their own; what does is

* the dtype itself: :func:`ring_dtype` maps a configured ``ring_bits`` to it
  and :func:`check_ring` refuses anything else (a big-endian or signed array
  would silently compute something else);
* the signed reading of an element (two's complement, :func:`signed_view`)
  and party b's sign (-1)^b of a DPF share (:func:`party_sign`);
* exact matrix products. numpy's integer matmul runs no BLAS and is far too
  slow at SecEmb's sizes, so products are computed in float64 BLAS with every
  partial sum below 2^53 (:class:`RingRhs`, :func:`bits_times_rows`).
"""

from __future__ import annotations

import numpy as np

from crypto.workers import parallel_map, per_thread, scratch

RING_BITS = (32, 64)
RING_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))
_SIGNED = {4: np.dtype(np.int32), 8: np.dtype(np.int64)}


def ring_dtype(bits: int) -> np.dtype:
    """The numpy dtype of Z_2^bits; only 32 and 64 are rings here (a config's ``ring_bits``)."""
    if isinstance(bits, bool) or int(bits) != bits or int(bits) not in RING_BITS:
        raise ValueError(f"ring_bits must be 32 or 64, got {bits!r}")
    return RING_DTYPES[RING_BITS.index(int(bits))]


def check_ring(dtype: np.dtype | type) -> np.dtype:
    """``dtype`` as a ring dtype (native uint32 or uint64), else ValueError naming what was given."""
    dt = np.dtype(dtype)
    if dt not in RING_DTYPES:
        raise ValueError(f"ring dtype must be uint32 or uint64, got {dt}")
    return dt


def ring_bits(dtype: np.dtype | type) -> int:
    return check_ring(dtype).itemsize * 8


def signed_view(v: np.ndarray) -> np.ndarray:
    """Ring elements read as two's-complement signed integers (a view, no copy)."""
    v = np.asarray(v)
    return v.view(_SIGNED[check_ring(v.dtype).itemsize])


def negate(v: np.ndarray) -> np.ndarray:
    """-v mod 2^k (numpy refuses unary minus on unsigned arrays without a warning; 0 - v wraps)."""
    return np.zeros(1, v.dtype) - v


def party_sign(v: np.ndarray, party: int) -> np.ndarray:
    """(-1)^party v: party 1's DPF shares are negated so the two parties' shares add up to the output."""
    return negate(v) if party == 1 else v


def limbs(a: np.ndarray, bits: int) -> list[np.ndarray]:
    """Unsigned limbs of ``bits`` bits each (lowest first), as float64 (exact for bits <= 53)."""
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
        self.dtype, self.inner, self.width = check_ring(b.dtype), b.shape[0], b.shape[1]
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
            self.limbs = limbs(b, 16)

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
            a_l = limbs(a[:, lo:lo + step], 16)
            for i in range(n_limbs):
                for j in range(n_limbs - i):
                    out += (a_l[i] @ self.limbs[j][lo:lo + step]).astype(np.uint64) << np.uint64(16 * (i + j))
        return out


def ring_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact (a @ b) mod 2^k for ring arrays via float64 BLAS (see :class:`RingRhs`)."""
    return RingRhs(b).left_multiply(a)


BITS_MATMUL_MAX_KEYS = 1 << 20  # a sum of 2^20 products of a bit and a 32-bit limb stays below 2^53


def _bits_matmul(t: np.ndarray, cw: np.ndarray, workspace: np.ndarray) -> np.ndarray:
    """t^T @ cw mod 2^k for binary t [K, m] and ring cw [K, w], K <= 2^20: one float64 matmul per 32-bit limb.

    With at most 2^20 keys every partial sum stays below 2^53, so the float64 product is exact.
    ``workspace``: >= K * m float64 values that hold t as float64 (a reused buffer: a fresh 32 MB
    array per tile is above glibc's mmap threshold, and first-touching its pages cost ~8 ms a tile).
    """
    if t.shape[0] > BITS_MATMUL_MAX_KEYS:
        raise ValueError(f"an exact bits x ring matmul takes at most 2^20 keys, got {t.shape[0]}")
    out = np.zeros((t.shape[1], cw.shape[1]), dtype=np.uint64)
    tf = workspace[:t.size].reshape(t.shape)
    tf[...] = t
    for j, limb in enumerate(limbs(cw, 32)):
        out += (tf.T @ limb).astype(np.uint64) << np.uint64(32 * j)
    return out.astype(cw.dtype)


BITS_TILE = 1 << 22  # t entries (float64: 32 MB) per exact matmul of bits_times_rows
BITS_TILE_MIN_KEYS = 1 << 10  # keys a tile takes before it narrows to fewer leaves (see bits_times_rows)


def bits_times_rows(t: np.ndarray, cw: np.ndarray) -> np.ndarray:
    """t^T @ cw mod 2^k for control bits t uint8 [K, m] and ring rows cw [K, w]: ring [m, w].

    Exact float64 matmuls over tiles of t, ~32 MB of float64 bits each, split between the worker
    pool's threads (each sums into its own [m, w]). A tile takes whole rows (every leaf) of as
    many keys as fit, but at least ``BITS_TILE_MIN_KEYS`` keys (never more than
    ``BITS_MATMUL_MAX_KEYS``, which keeps the sums exact), and then fewer leaves: every tile
    writes a partial product of its leaves x w, so a tile of few keys spends its time on that
    output. Whole rows alone gave 67 keys per tile at ML-25M's 62,423 items, and the t term cost
    2.7x as much per key and item there as at ML-1M's 3,706.
    """
    check_ring(cw.dtype)
    k, m = t.shape
    keys = max(1, min(k, BITS_MATMUL_MAX_KEYS, max(BITS_TILE_MIN_KEYS, BITS_TILE // m)))
    cols = min(m, max(1, BITS_TILE // keys))
    tiles = [(k_lo, c_lo) for k_lo in range(0, k, keys) for c_lo in range(0, m, cols)]

    def work(mine: list[tuple[int, int]]) -> np.ndarray:
        total = np.zeros((m, cw.shape[1]), dtype=cw.dtype)
        workspace = scratch(keys * cols).view(np.float64)  # the pool thread's own buffer, reused across calls
        for k_lo, c_lo in mine:
            total[c_lo:c_lo + cols] += _bits_matmul(t[k_lo:k_lo + keys, c_lo:c_lo + cols], cw[k_lo:k_lo + keys],
                                                    workspace)
        return total

    parts = parallel_map(work, per_thread(tiles))
    if not parts:
        return np.zeros((m, cw.shape[1]), dtype=cw.dtype)
    return sum(parts[1:], parts[0])
