"""SecEmb Algorithms 1-2 (PadOrTruncIdx / PadOrTruncEmb): a fixed number m' of items per user.

Truncation decides which ratings a user trains on this round, so it is drawn
from a generator seeded by (seed, round, user): a secure protocol and its
plaintext twin then truncate identically. Padding decides which fake items
hide the real ones, so it comes from ``secrets`` — a seeded choice would let a
server that knows the seed recompute the padding and subtract it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from models.batch import concat_ranges


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` of a 1-D array, by a sort and a neighbour comparison.

    numpy 2's hash-based ``np.unique`` costs about 7 us on a user's hundred items against 2 us
    for this: half a millisecond of every batched round of 100 users.
    """
    ordered = np.sort(np.asarray(values).ravel())
    keep = np.empty(len(ordered), dtype=bool)
    keep[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def truncate_items(rated: np.ndarray, m_prime: int | None, seed: int, rnd: int, user: int) -> np.ndarray:
    """The rated items a user works with this round: all, or a seeded sample of m'."""
    rated = sorted_distinct(rated)
    if m_prime is None or len(rated) <= m_prime:
        return rated
    rng = np.random.default_rng([seed, rnd, user, 0x7A11])
    return np.sort(rng.choice(rated, size=m_prime, replace=False))


EVAL_SALT = 0xE7A1  # seed-sequence salt of the evaluation sample (never shares a stream with training's)


def evaluation_items(test_items: np.ndarray, case: np.ndarray | None, m_eval: int, seed: int,
                     user: int) -> np.ndarray:
    """The items (sorted, distinct) whose rows a user retrieves to evaluate: its ranking case and its test
    items, at most ``m_eval`` of them.

    A private retrieval pads every user to the same m', so a user whose items do not fit keeps its whole
    ranking case and a seeded sample of its other test items (from (seed, user)): its RMSE is then over
    the test ratings of those items. The batched engine calls this too, so both engines evaluate the
    same ratings.
    """
    case_items = np.unique(case) if case is not None else np.zeros(0, np.int64)
    if len(case_items) > m_eval:
        raise ValueError(f"an evaluation m' of {m_eval} cannot hold a ranking case of {len(case_items)} items")
    others = np.setdiff1d(np.unique(test_items), case_items)
    room = m_eval - len(case_items)
    if len(others) > room:
        others = np.random.default_rng([seed, user, EVAL_SALT]).choice(others, size=room, replace=False)
    return np.union1d(case_items, others).astype(np.int64)


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
    """Local indices into ``items`` and ratings of the user's ratings whose item is in ``items``
    (a device's call: :func:`ratings_of_many` for one user)."""
    local, ratings, _ = ratings_of_many([items], np.zeros(1, np.int64), np.array([len(user_items)], np.int64),
                                        user_items, user_ratings)
    return local, ratings


def ratings_of_many(requests: Sequence[np.ndarray], starts: np.ndarray, lengths: np.ndarray,
                    all_items: np.ndarray, all_ratings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each user b, the ratings ``all_items/all_ratings[starts[b]:starts[b] + lengths[b]]`` whose item is
    in ``requests[b]``, as (local indices into ``requests[b]`` [R], ratings [R], per-user counts [B]).

    Users are concatenated in order and each keeps its ratings' order, so user b's slice of the output is
    what the device computes for itself. One sort of (user, item) keys serves the whole batch: the
    batched engine calls it once per round instead of once per user. An item requested twice matches its
    first occurrence.
    """
    n_users = len(requests)
    req_len = np.fromiter(map(len, requests), dtype=np.int64, count=n_users)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) != n_users:
        raise ValueError(f"{n_users} requests but {len(lengths)} rating ranges")
    req = np.concatenate(requests).astype(np.int64, copy=False) if n_users else np.zeros(0, np.int64)
    flat = concat_ranges(starts, lengths)
    rated, ratings = np.asarray(all_items)[flat].astype(np.int64, copy=False), np.asarray(all_ratings)[flat]
    owner = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    if not len(req):
        return np.zeros(0, np.int64), ratings[:0], np.zeros(n_users, np.int64)
    width = int(max(req.max(), rated.max(initial=0))) + 1  # (user, item) -> user * width + item, collision-free
    keys = np.repeat(np.arange(n_users, dtype=np.int64), req_len) * width + req
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    probe = owner * width + rated
    at = np.minimum(np.searchsorted(sorted_keys, probe), len(keys) - 1)
    found = sorted_keys[at] == probe
    req_start = np.cumsum(req_len) - req_len
    local = order[at[found]] - req_start[owner[found]]
    return local.astype(np.int64, copy=False), ratings[found], np.bincount(owner[found], minlength=n_users)
