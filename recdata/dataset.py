"""Load the configured dataset and its per-user split, once per process.

Both the ServerApp (which needs only sizes: users, items, feature widths) and
every ClientApp process (which needs its own user's ratings) call
:func:`load_split`; the result is cached per process so Ray's long-lived
actors parse the files once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from recdata import FederatedSplit, Ratings, load_ratings, split_users


@dataclass(frozen=True)
class DatasetMeta:
    """What the server may know of the data: sizes and public item/user feature widths."""

    name: str
    n_users: int
    n_items: int
    n_user_features: int
    n_item_features: int
    # The rating scale's (lowest, highest) value, e.g. (0.5, 5.0) stars: public knowledge of the service, read off
    # the dataset (as the star scale a deployment declares). Models start their global bias at its midpoint, so a
    # short run does not spend its first rounds climbing from 0 to the scale. (0, 0) = unknown (synthetic data):
    # the bias starts at 0.
    rating_scale: tuple[float, float] = (0.0, 0.0)

    @property
    def rating_midpoint(self) -> float:
        return 0.5 * (float(self.rating_scale[0]) + float(self.rating_scale[1]))


def _loader_options(ds: dict[str, Any]) -> dict[str, Any]:
    skip = {"name", "path", "split", "test_fraction", "k", "max_users", "download"}
    opts = {k: v for k, v in ds.items() if k not in skip and v is not None}
    if ds.get("download") is False:
        opts["allow_download"] = False
    return opts


def limit_users(ratings: Ratings, max_users: int | None) -> Ratings:
    """Keep the ``max_users`` users with most ratings (ties by id), re-indexed densely."""
    if max_users is None or max_users >= ratings.n_users:
        return ratings
    counts = np.bincount(ratings.user, minlength=ratings.n_users)
    order = np.lexsort((np.arange(ratings.n_users), -counts))
    keep = np.sort(order[:max_users])
    new_id = np.full(ratings.n_users, -1, dtype=np.int64)
    new_id[keep] = np.arange(len(keep))
    mask = new_id[ratings.user] >= 0
    return Ratings(
        user=new_id[ratings.user[mask]], item=ratings.item[mask], rating=ratings.rating[mask],
        timestamp=ratings.timestamp[mask], n_users=len(keep), n_items=ratings.n_items,
        user_features=ratings.user_features[keep], item_features=ratings.item_features, name=ratings.name,
        item_ids=ratings.item_ids, user_ids=ratings.user_ids[keep],
    )


@functools.lru_cache(maxsize=4)
def _load_split_cached(ds_json: str, seed: int) -> FederatedSplit:
    ds = json.loads(ds_json)
    ratings = load_ratings(ds["name"], path=ds.get("path"), **_loader_options(ds))
    ratings = limit_users(ratings, ds.get("max_users"))
    return split_users(ratings, method=ds["split"], test_fraction=ds["test_fraction"], k=ds["k"], seed=seed)


def load_split(cfg: Any) -> FederatedSplit:
    """The configured dataset split into per-user train/test sets (cached).

    ``cfg`` is the app config (anything with a ``dataset`` dataclass and a ``seed``);
    the data package reads only those two, so it needs nothing from the app's packages.
    """
    return _load_split_cached(json.dumps(dataclasses.asdict(cfg.dataset), sort_keys=True), int(cfg.seed))


def dataset_meta(cfg: Any) -> DatasetMeta:
    split = load_split(cfg)
    return DatasetMeta(
        name=cfg.dataset.name, n_users=split.n_users, n_items=split.n_items,
        n_user_features=split.user_features.shape[1], n_item_features=split.item_features.shape[1],
        # A star scale is declared by real rating services (MovieLens, a csv of stars); synthetic data is a
        # planted real-valued matrix with no scale of its own, so its models keep the bias at 0.
        rating_scale=(0.0, 0.0) if cfg.dataset.name == "synthetic" else split.rating_scale(),
    )
