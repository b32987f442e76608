"""Additive secret sharing over Z_2^k on numpy unsigned integers (k = 32 or 64).

x = x0 + x1 mod 2^k with x0 uniform from ``os.urandom``: either share alone
is uniformly distributed and says nothing about x. Sums of shares are shares
of sums, which is all the two-server aggregation needs. Wrap-around of numpy
uint32/uint64 arithmetic is exactly the modulus (:mod:`crypto.ring`).
"""

from __future__ import annotations

import os

import numpy as np

from crypto.ring import check_ring


def random_ring(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """Uniform ring elements from ``os.urandom`` (every bit pattern equally likely)."""
    dt = check_ring(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(os.urandom(n * dt.itemsize), dtype=dt).reshape(shape).copy()


def share(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two additive shares of ``x`` (share 0 random, share 1 = x - share 0)."""
    check_ring(x.dtype)
    x0 = random_ring(x.shape, x.dtype)
    return x0, x - x0


def reconstruct(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    check_ring(x0.dtype)
    if x0.dtype != x1.dtype or x0.shape != x1.shape:
        raise ValueError("shares differ in dtype or shape")
    return x0 + x1
