"""Synthetic ratings with a planted low-rank structure and a long-tailed number of ratings per user.

Used by tests (small, fast) and by benchmarks that need the sizes of datasets
we may not ship (ML-1M, ML-10M, ML-25M, Yelp): per-user counts follow a
lognormal, like Figure 2(a) of the SecEmb paper.
"""

from __future__ import annotations

import numpy as np

from recdata.ratings import DatasetError, Ratings, from_raw


def load_synthetic(n_users: int = 100, n_items: int = 200, rank: int = 8, mean_ratings: int = 20, seed: int = 0,
                   n_user_features: int = 0, n_item_features: int = 0, noise: float = 0.3, **_: object) -> Ratings:
    for key, value in (("n_users", n_users), ("n_items", n_items), ("rank", rank), ("mean_ratings", mean_ratings)):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise DatasetError(f"synthetic: {key} must be a positive integer, got {value!r}")
    rng = np.random.default_rng([seed, 0x5E7])
    sigma = 1.0
    counts = rng.lognormal(np.log(mean_ratings) - sigma**2 / 2, sigma, size=n_users)
    counts = np.clip(np.round(counts), 1, n_items).astype(np.int64)
    # each user's items: a random permutation prefix, done for all users at once via argsort of random keys
    keys = rng.random((n_users, n_items))
    ranked = np.argsort(keys, axis=1)
    mask = np.arange(n_items)[None, :] < counts[:, None]
    users = np.repeat(np.arange(n_users), counts)
    items = ranked[mask]
    U = rng.normal(0, 1 / np.sqrt(rank), size=(n_users, rank))
    V = rng.normal(0, 1 / np.sqrt(rank), size=(n_items, rank))
    bu, bi = rng.normal(0, 0.3, n_users), rng.normal(0, 0.3, n_items)
    raw = 3.5 + (U[users] * V[items]).sum(1) + bu[users] + bi[items] + rng.normal(0, noise, len(users))
    ratings = np.clip(np.round(raw * 2) / 2, 0.5, 5.0)
    timestamps = rng.integers(9e8, 1.6e9, size=len(users))
    uf = (rng.random((n_users, n_user_features)) < 0.3).astype(np.float32) if n_user_features else None
    itf = (rng.random((n_items, n_item_features)) < 0.3).astype(np.float32) if n_item_features else None
    return from_raw("synthetic", users, items, ratings, timestamps,
                    user_feature_table=(np.arange(n_users), uf) if uf is not None else None,
                    item_feature_table=(np.arange(n_items), itf) if itf is not None else None,
                    all_item_ids=np.arange(n_items))
