"""SecEmb Algorithms 1-2 (PadOrTruncIdx / PadOrTruncEmb): a fixed number m' of items per user.

Truncation decides which ratings a user trains on this round, so it is drawn
from a generator seeded by (seed, round, user): a secure protocol and its
plaintext twin then truncate identically. Padding decides which fake items
hide the real ones, so it comes from ``secrets`` — a seeded choice would let a
server that knows the seed recompute the padding and subtract it.
"""

from __future__ import annotations

import secrets

import numpy as np


def truncate_items(rated: np.ndarray, m_prime: int | None, seed: int, rnd: int, user: int) -> np.ndarray:
    """The rated items a user works with this round: all, or a seeded sample of m'."""
    rated = np.unique(rated)
    if m_prime is None or len(rated) <= m_prime:
        return rated
    rng = np.random.default_rng([seed, rnd, user, 0x7A11])
    return np.sort(rng.choice(rated, size=m_prime, replace=False))


def pad_items(real: np.ndarray, m_prime: int, n_items: int) -> np.ndarray:
    """Append uniformly random unrated items (from ``secrets``) until there are m'.

    The real items stay first so local indices of the real rows are 0..len(real)-1.
    """
    need = m_prime - len(real)
    if need < 0:
        raise ValueError("pad_items needs at most m' real items; truncate first")
    if need > n_items - len(real):
        raise ValueError(f"cannot pad to m'={m_prime} with only {n_items} items")
    if need == 0:
        return real.astype(np.int64)
    taken = np.zeros(n_items, dtype=bool)
    taken[real] = True
    sysrand = secrets.SystemRandom()
    free = np.flatnonzero(~taken)
    pads = np.array(sysrand.sample(range(len(free)), need), dtype=np.int64)
    return np.concatenate([real.astype(np.int64), free[pads]])


def ratings_of(items: np.ndarray, user_items: np.ndarray, user_ratings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local indices into ``items`` and ratings of the user's ratings whose item is in ``items``."""
    order = np.argsort(items, kind="stable")
    sorted_items = items[order]
    at = np.clip(np.searchsorted(sorted_items, user_items), 0, max(len(items) - 1, 0))
    mask = sorted_items[at] == user_items if len(items) else np.zeros(len(user_items), dtype=bool)
    return order[at[mask]].astype(np.int64), user_ratings[mask]
