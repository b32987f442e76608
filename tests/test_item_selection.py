"""The clients' item selection: which of a user's ratings fall on the rows it requested.

``ratings_of_many`` answers for a whole round at once (the batched engine) and ``ratings_of`` is its
batch of one (a device); both are checked against the definition written out per rating.
"""

from __future__ import annotations

import numpy as np
import pytest

from clients.item_selection import evaluation_items, ratings_of, ratings_of_many, sorted_distinct, truncate_items
from models.batch import concat_ranges


def by_definition(request: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> tuple[list[int], list[float]]:
    """For each rating in order: if its item was requested, (its first position in the request, the rating)."""
    first: dict[int, int] = {}
    for pos, item in enumerate(request.tolist()):
        first.setdefault(item, pos)
    kept = [(first[i], r) for i, r in zip(items.tolist(), ratings.tolist()) if i in first]
    return [p for p, _ in kept], [r for _, r in kept]


def test_ratings_of_hand_case() -> None:
    local, ratings = ratings_of(np.array([7, 3, 9]), np.array([3, 5, 9, 7]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert local.tolist() == [1, 2, 0] and ratings.tolist() == [1.0, 3.0, 4.0]


def test_ratings_of_many_equals_the_definition_per_user() -> None:
    rng = np.random.default_rng(5)
    n_users, n_items = 40, 60
    lengths = rng.integers(0, 25, n_users)
    all_items = rng.integers(0, n_items, int(lengths.sum()))
    all_ratings = rng.integers(1, 6, len(all_items)).astype(np.float32)
    starts = np.cumsum(lengths) - lengths
    # requests: truncated rated items, some with unrated (padding) items, one empty, one with a repeat
    requests = []
    for u in range(n_users):
        mine = all_items[starts[u]:starts[u] + lengths[u]]
        req = truncate_items(mine, 8, seed=1, rnd=2, user=u)
        requests.append(np.concatenate([req, rng.integers(0, n_items, int(rng.integers(0, 4)))]))
    requests[3] = np.zeros(0, np.int64)
    requests[4] = np.concatenate([requests[4], requests[4][:2]])
    local, ratings, counts = ratings_of_many(requests, starts, lengths, all_items, all_ratings)
    assert counts.sum() == len(local) == len(ratings)
    at = np.cumsum(counts) - counts
    for u in range(n_users):
        mine = slice(starts[u], starts[u] + lengths[u])
        want_local, want_ratings = by_definition(requests[u], all_items[mine], all_ratings[mine])
        assert local[at[u]:at[u] + counts[u]].tolist() == want_local
        assert ratings[at[u]:at[u] + counts[u]].tolist() == want_ratings
        one_local, one_ratings = ratings_of(requests[u], all_items[mine], all_ratings[mine])
        assert one_local.tolist() == want_local and one_ratings.tolist() == want_ratings


def test_ratings_of_many_refuses_mismatched_ranges() -> None:
    with pytest.raises(ValueError, match="2 requests but 1 rating ranges"):
        ratings_of_many([np.array([1]), np.array([2])], np.zeros(1, np.int64), np.ones(1, np.int64),
                        np.array([1]), np.array([5.0]))


def test_concat_ranges() -> None:
    assert concat_ranges(np.array([4, 0, 9]), np.array([2, 0, 3])).tolist() == [4, 5, 9, 10, 11]


def test_evaluation_items_take_everything_that_fits() -> None:
    got = evaluation_items(np.array([5, 2, 5, 9]), np.array([9, 30, 31]), 6, seed=0, user=3)
    assert got.tolist() == [2, 5, 9, 30, 31]


def test_evaluation_items_keep_the_ranking_case_and_a_seeded_sample_of_the_rest() -> None:
    test_items, case = np.arange(10, 30), np.array([29, 50, 51, 52])
    got = evaluation_items(test_items, case, 9, seed=4, user=7)
    assert len(got) == 9 and np.all(np.diff(got) > 0)
    assert set(case) <= set(got.tolist()) and set(got.tolist()) - set(case) <= set(range(10, 29))
    assert np.array_equal(got, evaluation_items(test_items, case, 9, seed=4, user=7))  # the device and the engine
    others = {tuple(evaluation_items(test_items, case, 9, seed=4, user=u)) for u in range(8)}
    assert len(others) > 1  # the sample depends on the user (and the seed), not on who calls
    assert evaluation_items(test_items, None, 3, seed=4, user=7).shape == (3,)


def test_evaluation_items_refuse_an_m_prime_below_the_ranking_case() -> None:
    with pytest.raises(ValueError, match="cannot hold a ranking case of 4 items"):
        evaluation_items(np.array([1]), np.array([1, 2, 3, 4]), 3, seed=0, user=0)


@pytest.mark.parametrize("values", [[], [4], [4, 4], [9, 2, 2, 7, 9, 0], list(range(50, 0, -3)) * 2])
def test_sorted_distinct_is_np_unique(values: list[int]) -> None:
    """The sort-and-compare distinct items give np.unique's values and dtype, on hand cases and random ones."""
    cases = [np.array(values, dtype=np.int64)]
    rng = np.random.default_rng(len(values))
    cases += [rng.integers(0, 30, rng.integers(0, 60)) for _ in range(20)]
    for case in cases:
        got = sorted_distinct(case)
        np.testing.assert_array_equal(got, np.unique(case))
        assert got.dtype == case.dtype
