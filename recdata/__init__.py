"""Dataset loaders: MovieLens (latest-small shipped; 100K/1M/10M/25M by folder or download), synthetic, CSV."""

from __future__ import annotations

from typing import Any

from recdata.movielens import (load_csv, load_ml_1m, load_ml_10m, load_ml_25m, load_ml_100k,
                                                load_ml_latest_small)
from recdata.ranking import N_NEGATIVES, RankingCandidates, ranking_candidates
from recdata.ratings import DatasetError, Ratings, keep_top_items
from recdata.split import SPLIT_METHODS, FederatedSplit, UserData, split_users
from recdata.synthetic import load_synthetic

LOADERS = {
    "ml_latest_small": load_ml_latest_small,
    "ml_100k": load_ml_100k,
    "ml_1m": load_ml_1m,
    "ml_10m": load_ml_10m,
    "ml_25m": load_ml_25m,
    "synthetic": load_synthetic,
    "csv": load_csv,
}


def load_ratings(name: str, path: str | None = None, max_items: int | None = None, **options: Any) -> Ratings:
    """Load dataset ``name`` (see LOADERS); ``max_items`` keeps the most-rated items."""
    if name not in LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}")
    return keep_top_items(LOADERS[name](path=path, **options), max_items)


__all__ = ["N_NEGATIVES", "SPLIT_METHODS", "DatasetError", "FederatedSplit", "RankingCandidates", "Ratings", "UserData",
           "load_ratings", "ranking_candidates", "split_users"]
