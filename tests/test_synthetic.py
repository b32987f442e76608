"""The synthetic generator at the papers' sizes: Table 7 presets, long tails, distinct items, exact sampling law,
determinism, and memory linear in the ratings (no users x items matrix)."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from recdata import DatasetError, load_ratings
from recdata.synthetic import (PRESETS, _Popularity, _sample_block, _sample_dense, _sizes, _user_counts,
                               load_synthetic)

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"


@pytest.fixture(scope="module")
def ml_1m():
    return load_synthetic(preset="ml_1m", seed=0)


def _top_decile_share(r) -> float:
    per_item = np.sort(np.bincount(r.item, minlength=r.n_items))[::-1]
    return per_item[: r.n_items // 10].sum() / per_item.sum()


def test_presets_are_table_7():
    # SecEmb Table 7 (users, items, ratings)
    assert {k: (p.n_users, p.n_items, p.n_ratings) for k, p in PRESETS.items()} == {
        "ml_1m": (6_040, 3_883, 1_000_209), "ml_10m": (69_878, 10_681, 10_000_054),
        "ml_25m": (162_541, 62_423, 25_000_095), "yelp": (10_000, 93_386, 1_007_956)}


def test_ml_1m_preset_has_its_sizes(ml_1m):
    p = PRESETS["ml_1m"]
    assert (ml_1m.n_users, ml_1m.n_items) == (p.n_users, p.n_items)
    assert abs(len(ml_1m.rating) - p.n_ratings) <= 0.02 * p.n_ratings
    assert np.bincount(ml_1m.user, minlength=ml_1m.n_users).min() >= 1     # every user is a client
    assert ml_1m.user.dtype == ml_1m.item.dtype == np.int64 and ml_1m.rating.dtype == np.float32


@pytest.mark.parametrize("preset", ["ml_10m", "ml_25m"])
def test_large_presets_get_their_rating_count(preset):
    # the per-user counts alone (not the data: ML-25M is for the benchmark, not the tests)
    p = PRESETS[preset]
    counts = _user_counts(np.random.default_rng(0), p.n_users, p.n_items, p.n_ratings)
    assert len(counts) == p.n_users and counts.min() >= 1 and counts.max() <= p.n_items
    assert abs(int(counts.sum()) - p.n_ratings) <= 0.02 * p.n_ratings


def test_per_user_counts_are_long_tailed_lognormal(ml_1m):
    counts = np.bincount(ml_1m.user, minlength=ml_1m.n_users)
    assert counts.max() > 10 * np.median(counts) and np.median(counts) < counts.mean()
    logs = np.log(counts[(counts > 1) & (counts < ml_1m.n_items)])
    assert 0.8 < logs.std() < 1.2                        # lognormal sigma 1
    assert abs(((logs - logs.mean()) ** 3).mean() / logs.std() ** 3) < 0.3   # log-counts are not skewed


def test_item_popularity_is_long_tailed_or_uniform(ml_1m):
    assert _top_decile_share(ml_1m) > 0.35               # Zipf exponent 1: the top 10% hold ~half
    flat = load_synthetic(preset="ml_1m", popularity_exponent=0.0)
    assert 0.09 < _top_decile_share(flat) < 0.14         # uniform: about their 10%
    assert _top_decile_share(load_synthetic(preset="ml_1m", popularity_exponent=2.0)) > _top_decile_share(ml_1m)


@pytest.mark.parametrize("kwargs", [
    {"preset": "ml_1m"},
    {"preset": "yelp", "popularity_exponent": 3.0},
    {"n_users": 300, "n_items": 40, "mean_ratings": 25},           # many users want most items (dense path)
    {"n_users": 2000, "n_items": 500, "mean_ratings": 60, "popularity_exponent": 2.5},
    {"n_users": 30, "n_items": 1, "mean_ratings": 1},
])
def test_each_users_items_are_distinct(kwargs, ml_1m):
    r = ml_1m if kwargs == {"preset": "ml_1m"} else load_synthetic(**kwargs)
    key = r.user * r.n_items + r.item
    assert np.all(np.diff(key) > 0)                      # sorted by (user, item) and no duplicate
    counts = np.bincount(r.user, minlength=r.n_users)
    assert counts.min() >= 1 and counts.max() <= r.n_items


def test_ratings_timestamps_and_features():
    r = load_synthetic(n_users=500, n_items=300, mean_ratings=30, n_user_features=7, n_item_features=5, seed=4)
    assert len(r.rating) == 500 * 30
    assert np.all(r.rating * 2 == np.round(r.rating * 2)) and r.rating.min() >= 0.5 and r.rating.max() <= 5
    assert 3.2 < r.rating.mean() < 3.8 and r.rating.std() > 0.5
    assert r.timestamp.min() >= 900_000_000 and r.timestamp.max() < 1_600_000_000
    assert r.user_features.shape == (500, 7) and r.item_features.shape == (300, 5)
    assert set(np.unique(r.user_features)) <= {0.0, 1.0} and set(np.unique(r.item_features)) <= {0.0, 1.0}


def test_planted_structure_is_learnable():
    # the planted low-rank part explains the ratings: per-item means carry signal beyond the global mean
    r = load_synthetic(n_users=2000, n_items=200, mean_ratings=50, noise=0.1, seed=2)
    item_mean = np.bincount(r.item, weights=r.rating, minlength=r.n_items) / np.bincount(r.item, minlength=r.n_items)
    resid = r.rating - item_mean[r.item]
    assert resid.var() < 0.95 * r.rating.var()


def test_deterministic_for_a_seed():
    kw = {"n_users": 2000, "n_items": 1000, "mean_ratings": 50, "n_item_features": 3}
    a, b, c = load_synthetic(seed=7, **kw), load_synthetic(seed=7, **kw), load_synthetic(seed=8, **kw)
    for field in ("user", "item", "rating", "timestamp", "item_features"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a.item, c.item)


@pytest.mark.parametrize("exponent", [1.0, 2.5])
def test_both_sampling_paths_follow_successive_sampling_exactly(exponent):
    # P(rank r is among a user's c items) under "draw the next item with probability p among those not
    # yet drawn", by enumeration; the vectorised top-up path and the dense path must both match it.
    n, c, m = 12, 3, 100_000
    pop = _Popularity(n, exponent, np.arange(n))
    exact = np.zeros(n)
    for seq in itertools.permutations(range(n), c):
        prob, left = 1.0, 1.0
        for i in seq:
            prob *= pop.p[i] / left
            left -= pop.p[i]
        exact[list(seq)] += prob
    se = np.sqrt(exact * (1 - exact) / m)
    rng = np.random.default_rng(11)
    light = _sample_block(rng, np.full(m, c), pop)       # c * 4 <= n: the rejection / top-up path
    dense = _sample_dense(rng, np.arange(m), np.full(m, c), np.empty(0, np.int64), pop.log_w)
    for keys in (light, dense):
        assert len(keys) == m * c and len(np.unique(keys)) == m * c
        freq = np.bincount(keys % n, minlength=n) / m
        assert np.all(np.abs(freq - exact) < 5 * se), (freq - exact) / se


@pytest.mark.parametrize("preset", ["ml_1m", "yelp"])
def test_memory_is_linear_in_the_ratings(preset):
    # numpy's allocations are traced by tracemalloc. A dense users x items float64 matrix would be
    # 187 B per rating at ML-1M and 7.4 kB per rating at Yelp; the result itself is 28 B per rating.
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        r = load_synthetic(preset=preset)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = len(r.rating)
    assert peak < 100 * n + (4 << 20), f"{peak / n:.0f} B per rating"


def test_preset_through_the_loader_and_conflicts():
    r = load_ratings("synthetic", preset="yelp", max_items=5000)   # as recdata.dataset passes the options
    assert r.n_items == 5000 and r.n_users <= 10_000
    assert _sizes("ml_1m", 6040, 3883, 166) == (6040, 3883, 1_000_209)   # sizes agreeing with the preset are fine
    with pytest.raises(DatasetError, match="contradicts preset ml_1m"):
        load_synthetic(preset="ml_1m", n_users=100)
    with pytest.raises(DatasetError, match="mean_ratings"):
        load_synthetic(preset="ml_10m", mean_ratings=20)
    with pytest.raises(DatasetError, match="unknown preset"):
        load_synthetic(preset="ml_5m")
    with pytest.raises(DatasetError, match="popularity_exponent"):
        load_synthetic(popularity_exponent=-1.0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_conf_file_has_the_preset_sizes_and_every_synthetic_key(preset):
    base = OmegaConf.load(CONF / "synthetic.yaml")
    conf = OmegaConf.load(CONF / f"synthetic_{preset}.yaml")
    p = PRESETS[preset]
    assert set(conf.keys()) == set(base.keys()) and conf.name == "synthetic" and conf.preset == preset
    assert (conf.n_users, conf.n_items) == (p.n_users, p.n_items)
    assert conf.mean_ratings == round(p.n_ratings / p.n_users)
    assert (conf.n_user_features, conf.n_item_features) == (p.n_user_features, p.n_item_features)
    assert "Table 7" in (CONF / f"synthetic_{preset}.yaml").read_text()
