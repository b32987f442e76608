"""The in-memory form of a ratings dataset, and the operations every loader shares."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


class DatasetError(ValueError):
    """A dataset that is missing, corrupt, malformed or asked for with impossible sizes."""


@dataclass(frozen=True)
class Ratings:
    """Explicit ratings with dense 0-based ids (original ids kept in ``user_ids``/``item_ids``)."""

    user: np.ndarray          # int64 [N]
    item: np.ndarray          # int64 [N]
    rating: np.ndarray        # float32 [N]
    timestamp: np.ndarray     # int64 [N]
    n_users: int
    n_items: int
    user_features: np.ndarray  # float32 [n_users, l_x] multi-hot (0 columns if none)
    item_features: np.ndarray  # float32 [n_items, l_y]
    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.user)
        if not (len(self.item) == len(self.rating) == len(self.timestamp) == n):
            raise DatasetError(f"{self.name}: rating columns have different lengths")
        if n == 0:
            raise DatasetError(f"{self.name}: no ratings")
        if self.user.min() < 0 or self.user.max() >= self.n_users or self.item.min() < 0 or self.item.max() >= self.n_items:
            raise DatasetError(f"{self.name}: ids outside 0..n-1")
        if self.user_features.shape[0] != self.n_users or self.item_features.shape[0] != self.n_items:
            raise DatasetError(f"{self.name}: feature matrices do not match the user/item counts")


def from_raw(name: str, raw_user: np.ndarray, raw_item: np.ndarray, rating: np.ndarray, timestamp: np.ndarray,
             user_feature_table: tuple[np.ndarray, np.ndarray] | None = None,
             item_feature_table: tuple[np.ndarray, np.ndarray] | None = None,
             all_item_ids: np.ndarray | None = None) -> Ratings:
    """Re-index raw ids densely (sorted order) and align feature tables given as (ids, features)."""
    user_ids, user = np.unique(raw_user, return_inverse=True)
    item_ids = np.unique(raw_item) if all_item_ids is None else np.unique(all_item_ids)
    item = np.searchsorted(item_ids, raw_item)
    if np.any(item_ids[np.clip(item, 0, len(item_ids) - 1)] != raw_item):
        raise DatasetError(f"{name}: ratings refer to items missing from the item list")
    return Ratings(
        user=user.astype(np.int64), item=item.astype(np.int64), rating=rating.astype(np.float32),
        timestamp=timestamp.astype(np.int64), n_users=len(user_ids), n_items=len(item_ids),
        user_features=_align(user_feature_table, user_ids, name, "user"),
        item_features=_align(item_feature_table, item_ids, name, "item"),
        name=name, user_ids=user_ids, item_ids=item_ids,
    )


def _align(table: tuple[np.ndarray, np.ndarray] | None, ids: np.ndarray, name: str, what: str) -> np.ndarray:
    if table is None:
        return np.zeros((len(ids), 0), dtype=np.float32)
    t_ids, feats = table
    order = np.argsort(t_ids)
    pos = np.searchsorted(t_ids[order], ids)
    pos = np.clip(pos, 0, len(order) - 1)
    if np.any(t_ids[order][pos] != ids):
        raise DatasetError(f"{name}: some {what}s have no feature row")
    return feats[order][pos].astype(np.float32)


def keep_top_items(r: Ratings, max_items: int | None) -> Ratings:
    """Keep the ``max_items`` most-rated items (ties by id), drop users left without ratings."""
    if max_items is None:
        return r
    if max_items <= 0:
        raise DatasetError(f"max_items must be positive, got {max_items}")
    if max_items >= r.n_items:
        return r
    counts = np.bincount(r.item, minlength=r.n_items)
    keep_items = np.sort(np.lexsort((np.arange(r.n_items), -counts))[:max_items])
    new_item = np.full(r.n_items, -1, dtype=np.int64)
    new_item[keep_items] = np.arange(max_items)
    mask = new_item[r.item] >= 0
    users_left = np.unique(r.user[mask])
    new_user = np.full(r.n_users, -1, dtype=np.int64)
    new_user[users_left] = np.arange(len(users_left))
    return replace(r, user=new_user[r.user[mask]], item=new_item[r.item[mask]], rating=r.rating[mask],
                   timestamp=r.timestamp[mask], n_users=len(users_left), n_items=max_items,
                   user_features=r.user_features[users_left], item_features=r.item_features[keep_items],
                   user_ids=r.user_ids[users_left], item_ids=r.item_ids[keep_items])


def multi_hot(codes: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(codes), n), dtype=np.float32)
    out[np.arange(len(codes)), codes] = 1.0
    return out
