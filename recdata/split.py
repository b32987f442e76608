"""Per-user train/test splits; one user is one Flower client (partition).

``random``: each user's ratings are split 80/20 at random (SecEmb Appendix I).
``last_k``: each user's last k ratings by time are the test set (the FedMF
prototype uses k = 3). ``loo``: leave-one-out, as the NCF / PFedRec ranking
protocol (HR@10, NDCG@10; recdata/ranking.py): each user's latest rating (by
timestamp, ties by item id) is its one test rating. A user always keeps at
least one training rating, so a user with a single rating has no test rating
(and no ranking case).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recdata.ratings import DatasetError, Ratings

SPLIT_METHODS = ("random", "last_k", "loo")


@dataclass(frozen=True)
class UserData:
    user_id: int
    train_items: np.ndarray
    train_ratings: np.ndarray
    test_items: np.ndarray
    test_ratings: np.ndarray
    user_features: np.ndarray


@dataclass(frozen=True)
class FederatedSplit:
    n_users: int
    n_items: int
    train_ptr: np.ndarray
    train_item: np.ndarray
    train_rating: np.ndarray
    test_ptr: np.ndarray
    test_item: np.ndarray
    test_rating: np.ndarray
    user_features: np.ndarray
    item_features: np.ndarray
    name: str

    def rating_scale(self) -> tuple[float, float]:
        """(lowest, highest) rating value in the data: the service's public star scale (e.g. 0.5..5)."""
        values = [a for a in (self.train_rating, self.test_rating) if len(a)]
        if not values:
            return (0.0, 0.0)
        return (float(min(a.min() for a in values)), float(max(a.max() for a in values)))

    def user(self, u: int) -> UserData:
        if not 0 <= u < self.n_users:
            raise DatasetError(f"user {u} is outside 0..{self.n_users - 1}")
        a, b = self.train_ptr[u], self.train_ptr[u + 1]
        c, d = self.test_ptr[u], self.test_ptr[u + 1]
        return UserData(u, self.train_item[a:b], self.train_rating[a:b], self.test_item[c:d],
                        self.test_rating[c:d], self.user_features[u])


def split_users(r: Ratings, method: str = "random", test_fraction: float = 0.2, k: int = 3,
                seed: int = 0) -> FederatedSplit:
    if method not in SPLIT_METHODS:
        raise DatasetError(f"split must be one of {', '.join(SPLIT_METHODS)}, got {method!r}")
    if not 0 < test_fraction < 1 or k <= 0:
        raise DatasetError("test_fraction must be in (0, 1) and k positive")
    rng = np.random.default_rng([seed, 0x5B17])
    counts = np.bincount(r.user, minlength=r.n_users)
    if method == "random":
        order = np.lexsort((rng.random(len(r.user)), r.user))  # shuffled within each user
        n_test = np.floor(counts * test_fraction).astype(np.int64)
    elif method == "last_k":
        order = np.lexsort((np.arange(len(r.user)), r.timestamp, r.user))  # by time within each user
        n_test = np.minimum(k, counts - 1)
    else:  # loo: by time, then item id, within each user; the last one is the test rating
        order = np.lexsort((r.item, r.timestamp, r.user))
        n_test = np.minimum(1, counts - 1)
    n_test = np.minimum(n_test, counts - 1).clip(min=0)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - np.repeat(start, counts)  # position within the user's block
    n_train = counts - n_test
    is_test = rank >= np.repeat(n_train, counts)  # random: the tail of a shuffled block; last_k, loo: the latest
    tr, te = order[~is_test], order[is_test]
    return FederatedSplit(
        n_users=r.n_users, n_items=r.n_items,
        train_ptr=np.concatenate([[0], np.cumsum(n_train)]), train_item=r.item[tr], train_rating=r.rating[tr],
        test_ptr=np.concatenate([[0], np.cumsum(n_test)]), test_item=r.item[te], test_rating=r.rating[te],
        user_features=r.user_features, item_features=r.item_features, name=r.name)
