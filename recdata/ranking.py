"""Leave-one-out ranking cases of the NCF / PFedRec protocol: each user's held-out item among 99 it never rated.

The positive of a user's case is its last test rating in the split's order
(recdata/split.py): with ``dataset.split=loo`` that is its only test rating,
the latest by timestamp (ties by item id), exactly the NCF / PFedRec protocol;
with ``last_k`` the latest of its k test ratings; with ``random`` (shuffled)
one of them, chosen by the split's seeded shuffle. The case is that item
(column 0) followed by ``n_neg`` (99) distinct items the user rated neither in
train nor in test; a model scores the row and models/ranking.py turns the
scores into HR@10 and NDCG@10.

Which users have a case:
- a user with at least one test rating; a user with one rating in all keeps
  it in train (split_users) and has none;
- and with at least ``n_neg`` items it never rated (otherwise 99 distinct
  negatives do not exist); such users are left out, not padded.
A positive that is also among the user's training ratings (the same item
rated twice) is refused: the case would reward memorising it.

Negatives are a function of (seed, user, the user's own ratings) only: user
``u``'s draw ``j`` is one 64-bit word of AES-128 under a key derived from the
seed (crypto.prg), applied to the block (u, j // 2), reduced modulo
``n_items`` (bias below n_items / 2^64). The negatives are the first ``n_neg``
distinct unrated items of that stream. So every process and engine computes
the same cases, a device holding one user's ratings can compute that user's
case alone, and all users' cases come from one vectorised AES call per chunk
(numpy's generators give one stream per generator object, which would mean a
Python loop over users). Not secret: the key is public, like the DPF's fixed
AES keys; it only has to be the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crypto.prg import aes_into
from recdata.ratings import DatasetError
from recdata.split import FederatedSplit

N_NEGATIVES = 99  # the NCF / PFedRec protocol's sampled negatives per user
_CHUNK_DRAWS = 1 << 22  # draws held at once: bounds memory at ML-25M sizes (162k users)


@dataclass(frozen=True)
class RankingCandidates:
    """The ranking cases of a split: row r is user ``users[r]``'s candidate items."""

    users: np.ndarray  # int64 [R], ascending: users that have a ranking case
    items: np.ndarray  # int64 [R, 1 + n_neg]: column 0 the held-out positive, then the sampled negatives


def ranking_candidates(split: FederatedSplit, seed: int, n_neg: int = N_NEGATIVES,
                       users: np.ndarray | None = None) -> RankingCandidates:
    """The ranking cases of ``users`` (default all): each one's last test rating against ``n_neg`` unrated items.

    Users without a case (see the module docstring) are left out of the result;
    a user's row does not depend on which other users are asked for.
    """
    if n_neg < 1:
        raise DatasetError(f"n_neg must be positive, got {n_neg}")
    asked = np.arange(split.n_users, dtype=np.int64) if users is None else np.unique(np.asarray(users, np.int64))
    if asked.size and (asked[0] < 0 or asked[-1] >= split.n_users):
        raise DatasetError(f"users must be in 0..{split.n_users - 1}")
    n_test = np.diff(split.test_ptr)[asked]
    n_rated = np.diff(split.train_ptr)[asked] + n_test
    keep = asked[(n_test >= 1) & (split.n_items - n_rated >= n_neg)]
    positive = split.test_item[split.test_ptr[keep + 1] - 1]  # the last test rating in the split's order
    train_rows, train_pos = _ranges(split.train_ptr, keep)
    if np.any(split.train_item[train_pos] == positive[train_rows]):
        raise DatasetError("some users' held-out item is also among their training ratings (an item rated twice)")
    negatives = np.empty((len(keep), n_neg), dtype=np.int64)
    draws = 2 * n_neg + 32  # enough for one pass unless a user rated more than ~40% of the items
    step = max(1, _CHUNK_DRAWS // draws)
    for a in range(0, len(keep), step):
        negatives[a:a + step] = _negatives(split, keep[a:a + step], keep[a:a + step], seed, n_neg, draws)
    return RankingCandidates(users=keep, items=np.concatenate([positive[:, None], negatives], axis=1))


@dataclass(frozen=True)
class _OneUser:
    """One user's ratings as a one-row split (the CSR fields :func:`_negatives` reads)."""

    n_items: int
    train_ptr: np.ndarray
    train_item: np.ndarray
    test_ptr: np.ndarray
    test_item: np.ndarray


def user_candidates(user: int, train_items: np.ndarray, test_items: np.ndarray, n_items: int, seed: int,
                    n_neg: int = N_NEGATIVES) -> np.ndarray | None:
    """One user's ranking case from its own ratings alone (a device's view), or None if it has none.

    The same row as :func:`ranking_candidates` gives that user on the whole
    split: the stream depends only on (seed, user) and the rejections only on
    the user's own ratings.
    """
    train_items, test_items = np.asarray(train_items, np.int64), np.asarray(test_items, np.int64)
    if len(test_items) == 0 or n_items - len(train_items) - len(test_items) < n_neg:
        return None
    if np.any(train_items == test_items[-1]):
        raise DatasetError("this user's held-out item is also among its training ratings (an item rated twice)")
    one = _OneUser(n_items, np.array([0, len(train_items)]), train_items, np.array([0, len(test_items)]), test_items)
    draws = 2 * n_neg + 32
    negatives = _negatives(one, np.zeros(1, np.int64), np.array([user], np.int64), seed, n_neg, draws)[0]
    return np.concatenate([test_items[-1:], negatives])


def _negatives(split: FederatedSplit | _OneUser, rows: np.ndarray, users: np.ndarray, seed: int, n_neg: int,
               draws: int) -> np.ndarray:
    """The first ``n_neg`` distinct items the users never rated in each user's stream: int64 [len(users), n_neg].

    ``rows`` index the split's CSR parts, ``users`` are the user ids that key the streams (the same
    on a whole split; row 0 and the user's id on a device's one-user view).

    Users not filled by ``draws`` draws are redone with twice as many; their
    streams start the same way, so a row does not depend on the draw count.
    """
    out = np.empty((len(users), n_neg), dtype=np.int64)
    pending = np.arange(len(users))
    while pending.size:
        u, csr = users[pending], rows[pending]
        stream = _stream(u, seed, draws, split.n_items)  # [P, draws]
        row = np.arange(len(u), dtype=np.int64)[:, None]
        rated = np.concatenate([_rated_keys(split.train_ptr, split.train_item, csr, split.n_items),
                                _rated_keys(split.test_ptr, split.test_item, csr, split.n_items)])
        # One stable sort of the rated keys followed by the draws' keys (row * n_items + item): a draw
        # is valid iff the entry sorted just before it has another key, i.e. it is the row's first
        # draw of that item and the user did not rate it.
        key = np.concatenate([rated, (row * split.n_items + stream).ravel()])
        order = np.argsort(key, kind="stable")
        new_key = np.ones(key.size, dtype=bool)
        new_key[order[1:]] = key[order[1:]] != key[order[:-1]]
        valid = new_key[rated.size:].reshape(stream.shape)
        taken = valid & (np.cumsum(valid, axis=1) <= n_neg)
        full = taken.sum(1) == n_neg
        out[pending[full]] = stream[full][taken[full]].reshape(-1, n_neg)
        pending = pending[~full]
        draws *= 2
    return out


def _stream(users: np.ndarray, seed: int, draws: int, n_items: int) -> np.ndarray:
    """Draws 0..draws-1 of each user's item stream (module docstring): int64 [len(users), draws]."""
    n_blocks = -(-draws // 2)
    blocks = np.empty((len(users), n_blocks, 2), dtype=np.uint64)
    blocks[:, :, 0] = users.astype(np.uint64)[:, None]
    blocks[:, :, 1] = np.arange(n_blocks, dtype=np.uint64)
    words = np.empty(blocks.size + 2, dtype=np.uint64)  # aes_into wants 2 spare words
    aes_into(b"ranking/negatives/seed=%d" % seed, blocks, words)
    return (words[:blocks.size].reshape(len(users), 2 * n_blocks)[:, :draws] % np.uint64(n_items)).astype(np.int64)


def _ranges(ptr: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``users``, position) of every entry of the CSR ranges ptr[u]..ptr[u+1] of ``users``."""
    lengths = ptr[users + 1] - ptr[users]
    rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    starts = np.repeat(ptr[users] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return rows, starts + np.arange(rows.size, dtype=np.int64)


def _rated_keys(ptr: np.ndarray, item: np.ndarray, users: np.ndarray, n_items: int) -> np.ndarray:
    """row * n_items + item of every rating of ``users`` in one CSR part of the split (train or test)."""
    rows, pos = _ranges(ptr, users)
    return rows * n_items + item[pos]
