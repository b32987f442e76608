"""The fast paths of the local step change no value: length buckets partition the users within the padding
bound and training bucket by bucket gives every user what one padded batch gives it; a batch of one is
padded exactly as a user inside a larger batch."""

from __future__ import annotations

import numpy as np
import pytest

from models import ModelSpec, PrivateState, gather_rows, init_dense, init_item_table, make_batch, train_batch
from models.batch import length_buckets, pad_flat


def test_length_buckets_partition_the_users_within_the_padding_bound():
    lengths = np.array([5, 1, 10, 9, 2, 0, 0, 7])
    groups = length_buckets(lengths, 1.5)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    for group in groups[:-1]:  # padded size <= 1.5 x real ratings (the last group rates nothing, pads nothing)
        assert len(group) * lengths[group].max() <= 1.5 * lengths[group].sum()
    # by hand, longest first: 10, 9, 7, 5 (4 x 10 = 40 <= 1.5 x 31); adding 2 would give 50 > 1.5 x 33.
    # Then 2, 1 (2 x 2 <= 1.5 x 3); then the two users with no rating.
    assert [g.tolist() for g in groups] == [[2, 3, 7, 0], [4, 1], [5, 6]]
    assert [g.tolist() for g in length_buckets(lengths, 1.0)][:2] == [[2], [3]]
    with pytest.raises(ValueError):
        length_buckets(lengths, 0.9)


def test_a_single_user_is_padded_as_inside_a_batch():
    flat = np.arange(12, dtype=np.float32).reshape(6, 2)
    both = pad_flat(np.concatenate([flat, flat[:2]]), np.array([6, 2]), 8)
    np.testing.assert_array_equal(pad_flat(flat, np.array([6]), 8), both[:1])
    np.testing.assert_array_equal(both[0, 6:], 0)
    np.testing.assert_array_equal(both[1], np.concatenate([flat[:2], np.zeros((6, 2), np.float32)]))


def test_pad_flat_refuses_a_width_shorter_than_a_user():
    """On the flat view a user longer than the width would spill into the next user's slots."""
    with pytest.raises(ValueError, match="shorter than the longest"):
        pad_flat(np.arange(8, dtype=np.float32), np.array([6, 2]), 5)
    with pytest.raises(ValueError, match="shorter than the longest"):
        pad_flat(np.arange(6, dtype=np.float32), np.array([6]), 5)


def test_training_by_length_bucket_equals_one_padded_batch():
    spec = ModelSpec("mf", 4)
    rng = np.random.default_rng(3)
    table, dense = init_item_table(spec, 30, 0), init_dense(spec, 0)
    n = np.array([12, 1, 7, 3, 12, 2])
    items = [rng.choice(30, k, replace=False) for k in n]
    ratings = [rng.uniform(1, 5, k).astype(np.float32) for k in n]
    local = [np.arange(k) for k in n]
    user_x = np.zeros((len(n), 0), np.float32)
    item_x = [np.zeros((k, 0), np.float32) for k in n]
    state = PrivateState.initial(spec, np.arange(len(n)), 0)
    whole = train_batch(spec, gather_rows(table, items)[0], dense, state, make_batch(local, ratings, user_x, item_x),
                        0.05, 0.01, 3)
    for group in length_buckets(n, 1.2):
        pick = [int(b) for b in group]
        part = train_batch(spec, gather_rows(table, [items[b] for b in pick])[0], dense, state.take(group),
                           make_batch([local[b] for b in pick], [ratings[b] for b in pick], user_x[group],
                                      [item_x[b] for b in pick]), 0.05, 0.01, 3)
        k = part.row_grads.shape[1]
        np.testing.assert_allclose(part.row_grads, whole.row_grads[group, :k], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(part.private.params, whole.private.params[group], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(part.loss, whole.loss[group], rtol=1e-6)
