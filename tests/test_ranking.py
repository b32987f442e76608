"""Ranking metrics (HR@k, NDCG@k), the leave-one-out split and its ranking candidates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import evaluate_batch, make_batch
from models.ranking import (candidate_scores, hit_rate_at_k, mf_candidate_scores, ndcg_at_k, positive_rank,
                            ranking_sums)
from models.spec import ModelSpec
from recdata import DatasetError, load_ratings, ranking_candidates, split_users
from recdata.ranking import user_candidates
from recdata.ratings import from_raw
from schemas import common
from schemas import fedmf as fedmf_schema
from schemas.two_server import MetricCodec
from schemas.validation import MessageError


# ---------------------------------------------------------------- metrics, by hand
def test_hit_rate_and_ndcg_by_hand():
    # Row 0: the positive 0.5 is beaten by 0.9 and 0.7 -> 0-based rank 2.
    # Row 1: the positive 0.8 is beaten by 0.9 only    -> rank 1.
    # Row 2: the positive 2.0 beats everything         -> rank 0.
    scores = np.array([[0.5, 0.9, 0.1, 0.7],
                       [0.8, 0.9, 0.1, 0.7],
                       [2.0, 0.9, 0.1, 0.7]])
    assert positive_rank(scores).tolist() == [2, 1, 0]
    assert hit_rate_at_k(scores, 2).tolist() == [0.0, 1.0, 1.0]
    assert hit_rate_at_k(scores, 3).tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(ndcg_at_k(scores, 2), [0.0, 1 / math.log2(3), 1.0])
    np.testing.assert_allclose(ndcg_at_k(scores, 3), [0.5, 1 / math.log2(3), 1.0])  # 1/log2(2 + 2) = 0.5


def test_ties_rank_the_positive_last_so_a_constant_predictor_scores_zero():
    const = np.full((3, 100), 4.2)
    assert positive_rank(const).tolist() == [99, 99, 99]
    assert hit_rate_at_k(const, 10).sum() == 0.0 and ndcg_at_k(const, 10).sum() == 0.0
    # a tie with one of three negatives: that one ranks above, the lower one below -> rank 2
    assert positive_rank(np.array([[1.0, 1.0, 3.0, 0.0]])).tolist() == [2]
    assert ndcg_at_k(np.array([[1.0, 1.0, 1.0, 1.0]]), 4).tolist() == [pytest.approx(1 / math.log2(5))]


def test_nan_scores_count_against_the_positive():
    scores = np.array([[np.nan, 0.1, 0.2], [0.5, np.nan, 0.1]])
    assert positive_rank(scores).tolist() == [2, 1]
    assert hit_rate_at_k(scores, 1).tolist() == [0.0, 0.0]


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(64, 100)).astype(np.float32)  # many ties
    t = torch.from_numpy(scores)
    for k in (1, 10, 100):
        assert torch.equal(positive_rank(t), torch.from_numpy(positive_rank(scores)))
        np.testing.assert_allclose(hit_rate_at_k(t, k).numpy(), hit_rate_at_k(scores, k))
        np.testing.assert_allclose(ndcg_at_k(t, k).numpy(), ndcg_at_k(scores, k), rtol=1e-6)


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k must be"):
        hit_rate_at_k(np.zeros((1, 3)), k)


def test_scores_must_be_a_matrix():
    with pytest.raises(ValueError, match=r"\[B, 1 \+ n_neg\]"):
        ndcg_at_k(np.zeros(5), 1)


# ---------------------------------------------------------------- leave-one-out split
def _ratings(users, items, timestamps, n_items=None):
    items = np.asarray(items)
    all_items = None if n_items is None else np.arange(n_items)
    return from_raw("hand", np.asarray(users), items, np.ones(len(items)), np.asarray(timestamps),
                    all_item_ids=all_items)


def test_loo_holds_out_the_latest_rating_ties_by_item_id():
    # user 0: items 5 (t=1), 7 (t=3), 2 (t=3): latest time 3, tie broken by item id -> 7 is held out
    # user 1: one rating only -> kept in train, no test rating
    # user 2: items 1 (t=9), 3 (t=2) -> 1 is held out
    r = _ratings([0, 0, 0, 1, 2, 2], [5, 7, 2, 4, 1, 3], [1, 3, 3, 8, 9, 2], n_items=10)
    s = split_users(r, "loo")
    assert s.user(0).test_items.tolist() == [7] and sorted(s.user(0).train_items.tolist()) == [2, 5]
    assert s.user(1).test_items.tolist() == [] and s.user(1).train_items.tolist() == [4]
    assert s.user(2).test_items.tolist() == [1] and s.user(2).train_items.tolist() == [3]


def test_loo_on_movielens_holds_out_each_users_latest():
    r = load_ratings("ml_latest_small")
    s = split_users(r, "loo")
    assert np.all(np.diff(s.test_ptr) == 1)  # every ml-latest-small user has >= 20 ratings
    latest = np.full(r.n_users, -1, dtype=np.int64)
    np.maximum.at(latest, r.user, r.timestamp)
    ts = {(u, i): t for u, i, t in zip(r.user.tolist(), r.item.tolist(), r.timestamp.tolist())}
    held = s.test_item
    assert all(ts[(u, int(held[u]))] == latest[u] for u in range(r.n_users))


def test_loo_is_a_dataset_split_choice():
    from simulations.config import compose_config, to_app_config

    assert to_app_config(compose_config(["dataset.split=loo"])).dataset.split == "loo"


# ---------------------------------------------------------------- ranking candidates
def test_candidates_are_the_positive_then_distinct_unrated_items():
    s = split_users(load_ratings("ml_latest_small"), "loo")
    c = ranking_candidates(s, seed=0)
    assert c.items.shape == (s.n_users, 100) and c.users.tolist() == list(range(s.n_users))
    for row, u in enumerate(c.users):
        d = s.user(int(u))
        negatives = c.items[row, 1:]
        assert c.items[row, 0] == d.test_items[0]
        assert len(np.unique(negatives)) == 99
        assert not np.isin(negatives, np.concatenate([d.train_items, d.test_items])).any()
    assert len({tuple(r) for r in c.items[:, 1:11]}) == s.n_users  # users get their own negatives


def test_candidates_are_keyed_by_seed_and_user_only():
    s = split_users(load_ratings("ml_latest_small"), "loo")
    full = ranking_candidates(s, seed=3)
    assert np.array_equal(full.items, ranking_candidates(s, seed=3).items)
    some = ranking_candidates(s, seed=3, users=np.array([400, 7, 123]))
    assert some.users.tolist() == [7, 123, 400]
    assert np.array_equal(some.items, full.items[[7, 123, 400]])
    other = ranking_candidates(s, seed=4)
    assert np.array_equal(other.items[:, 0], full.items[:, 0])  # same positives
    assert (other.items[:, 1:] != full.items[:, 1:]).mean() > 0.9  # other negatives


def test_a_user_who_rated_most_items_still_gets_99_negatives():
    # user 0 rated 101 of 200 items (needs far more than one pass of draws: exactly 99 are left);
    # user 1 rated 3; user 2 rated 105 (only 95 unrated: no case); user 3 has one rating (no test: no case)
    n_items = 200
    u0 = np.arange(101)
    users = np.concatenate([np.zeros(101), [1, 1, 1], np.full(105, 2), [3]]).astype(int)
    items = np.concatenate([u0, [10, 20, 30], np.arange(95, 200), [0]])
    r = _ratings(users, items, np.arange(len(items)), n_items=n_items)
    s = split_users(r, "loo")
    c = ranking_candidates(s, seed=1)
    assert c.users.tolist() == [0, 1]
    assert c.items[0, 0] == 100 and sorted(c.items[0, 1:].tolist()) == list(range(101, 200))
    assert c.items[1, 0] == 30 and not np.isin(c.items[1, 1:], [10, 20, 30]).any()
    assert np.array_equal(ranking_candidates(s, seed=1, users=[1]).items[0], c.items[1])


def test_other_splits_rank_the_last_test_rating_and_a_device_draws_the_same_case():
    s = split_users(load_ratings("ml_latest_small"), "last_k", k=3)
    c = ranking_candidates(s, seed=5, users=np.arange(40))
    assert np.array_equal(c.items[:, 0], s.test_item[s.test_ptr[c.users + 1] - 1])  # the latest of the 3
    for r, u in enumerate(c.users[:5]):
        d = s.user(int(u))
        assert np.array_equal(user_candidates(int(u), d.train_items, d.test_items, s.n_items, 5), c.items[r])


def test_a_held_out_item_also_in_train_is_refused():
    r = _ratings([0, 0, 0], [1, 2, 1], [1, 2, 3], n_items=200)  # item 1 rated twice, the last time latest
    with pytest.raises(DatasetError, match="rated twice"):
        ranking_candidates(split_users(r, "loo"), seed=0)


# ------------------------------------------------------------- what a user reports, and how it is summed
def test_ranking_sums_by_hand():
    scores = np.array([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0]])  # ranks 0, 2, 1
    got = ranking_sums(scores, 2)
    assert got.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, pytest.approx(1 / math.log2(3)), 1.0]]


def test_mf_candidate_scores_are_dot_products():
    U = np.array([[1.0, 2.0], [0.5, -1.0]])
    V = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[2.0, 2.0], [0.0, 1.0], [4.0, 0.0]]])
    assert mf_candidate_scores(U, V).tolist() == [[1.0, 2.0, 3.0], [-1.0, -1.0, 2.0]]


def test_candidate_scores_are_the_models_rating_predictions():
    """Scoring a user's items as candidates gives the predictions its test SSE is computed from."""
    spec = ModelSpec(name="mf", dim=4)
    rng = np.random.default_rng(0)
    rows, params = rng.normal(size=(1, 5, spec.row_dim)), rng.normal(size=(1, spec.private_size))
    dense = np.zeros(spec.dense_size)
    scores = candidate_scores(spec, rows, dense, params, np.arange(5)[None], np.zeros((1, 0)), np.zeros((1, 5, 0)))
    ratings = np.arange(5, dtype=np.float32)
    sse, _ = evaluate_batch(spec, rows, dense, params, make_batch([np.arange(5)], [ratings], np.zeros((1, 0)),
                                                                  [np.zeros((5, 0))]))
    assert sse[0] == pytest.approx(float(((scores[0] - ratings) ** 2).sum()), rel=1e-5)


@pytest.mark.parametrize("codec", [MetricCodec.for_training(32, 100), MetricCodec.for_evaluation(100)])
def test_two_server_ranking_codec_sums_and_clips_per_user(codec):
    per_user = [np.array([1.0, 0.5, 1.0]), np.array([0.0, 0.0, 1.0]), None, np.array([1.0, 1 / math.log2(3), 1.0])]
    total = np.sum([codec.encode_ranking(r) for r in per_user], axis=0, dtype=codec.ring)
    hits, ndcg, ranked = codec.decode_ranking(total)
    assert (hits, ranked) == (2.0, 3.0) and ndcg == pytest.approx(0.5 + 1 / math.log2(3), abs=2 ** -codec.frac_bits)
    # a cheating user moves the sums by at most one case: hit, ranked in {0, 1}, 0 <= ndcg <= hit
    assert codec.decode_ranking(codec.encode_ranking(np.array([50.0, 9.0, 7.0]))).tolist() == [1.0, 1.0, 1.0]
    assert codec.decode_ranking(codec.encode_ranking(np.array([1.0, 0.7, 0.0]))).tolist() == [0.0, 0.0, 0.0]
    assert codec.decode_ranking(codec.encode_ranking(np.array([0.0, 0.7, 1.0]))).tolist() == [0.0, 0.0, 1.0]
    sse, count, ranking = codec.decode_eval(codec.encode_eval(2.5, 3, per_user[0]))
    assert (sse, count) == (2.5, 3) and ranking.tolist() == [1.0, 0.5, 1.0]


def test_fedmf_ranking_slots_clip_and_fit_the_smallest_key():
    assert fedmf_schema.clip_ranking(np.array([[3.0, -1.0, 1.0], [1.0, 0.4, 0.0], [1.0, 0.4, 1.0]])).tolist() == \
        [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.4, 1.0]]
    assert fedmf_schema.clip_ranking(None).tolist() == [0.0, 0.0, 0.0]
    values = [[4.0, 3, 1.0, 0.5, 1.0], [1.5, 2, 0.0, 0.0, 1.0]]
    sums, users = fedmf_schema.plain_metric_sum(np.array(values))
    assert users == 2 and sums.tolist() == [5.5, 5.0, 1.0, 0.5, 2.0]
    assert fedmf_schema.pack_metrics(values[0]).bit_length() < 1024  # the smallest allowed Paillier key


def test_plaintext_reply_refuses_impossible_ranking_values():
    def reply(hit, ndcg, ranked):
        return common.evaluation_reply(1.0, 1, 0.1, np.array([hit, ndcg, ranked]))

    assert common.parse_evaluation_reply(reply(1.0, 0.5, 1))[3].tolist() == [1.0, 0.5, 1.0]
    for bad in [(2.0, 0.5, 1), (1.0, 0.5, 0), (0.0, 0.5, 1), (1.0, 1.5, 1), (0.5, 0.1, 1)]:
        with pytest.raises(MessageError):
            common.parse_evaluation_reply(reply(*bad))
