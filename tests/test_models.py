"""Model parameter split (private / item rows / dense), SecEmb Table 9 sizes, init and learning."""

from __future__ import annotations

import numpy as np
import pytest

from models import (ModelSpec, PrivateState, dense_layout, init_dense, init_item_table, init_private, make_batch,
                    train_batch)

SPECS = [ModelSpec("mf", 8), ModelSpec("ncf", 8), ModelSpec("fm", 8, 5, 4), ModelSpec("deepfm", 8, 5, 4)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_parameter_group_gets_a_gradient(spec):
    batch = make_batch([np.array([0, 1, 5])], [np.full(3, 4.0, np.float32)], np.ones((1, spec.n_user_features)),
                       [np.ones((3, spec.n_item_features))])
    res = train_batch(spec, init_item_table(spec, 6, 0)[None], init_dense(spec, 0),
                      PrivateState.initial(spec, [3], 0), batch, lr=0.1, reg=0.0, steps=1)
    assert res.row_grads.shape == (1, 6, spec.row_dim) and res.dense_grads.shape == (1, spec.dense_size)
    assert np.abs(res.row_grads[0, [0, 1, 5]]).sum() > 0 and not res.row_grads[0, [2, 3, 4]].any()
    assert np.abs(res.dense_grads).sum() > 0
    assert not np.array_equal(res.private.params, init_private(spec, 3, 0)[None])  # the private step moved


@pytest.mark.parametrize("spec,items,sparse,dense", [
    (ModelSpec("mf", 64), 1682, 109_330, 1),
    (ModelSpec("ncf", 16), 1682, 55_506, 688),
    (ModelSpec("fm", 64, 84, 19), 1682, 109_330, 6_696),
    (ModelSpec("deepfm", 64, 84, 19), 1682, 109_330, 1_761_065),
    (ModelSpec("deepfm", 64, 30, 18), 3883, 252_395, 856_370),
])
def test_sizes_match_secemb_table_9(spec, items, sparse, dense):
    assert spec.row_dim * items == sparse
    assert spec.dense_size == dense == sum(int(np.prod(shape)) for _, shape in dense_layout(spec))


def test_init_is_deterministic_and_per_user():
    spec = ModelSpec("deepfm", 8, 3, 2)
    assert np.array_equal(init_item_table(spec, 10, 1), init_item_table(spec, 10, 1))
    assert np.array_equal(init_dense(spec, 1), init_dense(spec, 1))
    assert not np.array_equal(init_private(spec, 1, 0), init_private(spec, 2, 0))


def test_bad_specs_are_refused():
    for kwargs in ({"name": "svd", "dim": 8}, {"name": "mf", "dim": 0}, {"name": "ncf", "dim": 7}):
        with pytest.raises(ValueError):
            ModelSpec(**kwargs)
    spec = ModelSpec("mf", 4)
    batch = make_batch([np.array([0])], [np.ones(1, np.float32)], np.zeros((1, 0)), [np.zeros((1, 0))])
    with pytest.raises(ValueError, match="dense vector"):
        train_batch(spec, np.zeros((1, 2, spec.row_dim), np.float32), np.zeros(5, np.float32),
                    PrivateState.initial(spec, [0], 0), batch, 0.1, 0.0, 1)


@pytest.mark.parametrize("name", ["mf", "ncf", "fm", "deepfm"])
def test_local_training_reduces_error_on_a_planted_problem(name):
    from clients.local_training import train_locally

    spec = ModelSpec(name, 8, 2, 2)
    rng = np.random.default_rng(0)
    rows, dense = init_item_table(spec, 20, 0), init_dense(spec, 0)
    private = {"params": init_private(spec, 0, 0), "m": np.zeros(spec.private_size, np.float32),
               "v": np.zeros(spec.private_size, np.float32), "step": np.zeros(1, np.int64)}
    items = np.arange(20)
    ratings = rng.uniform(1, 5, 20).astype(np.float32)
    item_x = rng.integers(0, 2, (20, 2)).astype(np.float32)
    losses = []
    for _ in range(60):  # the user step plus a plain SGD step on the public parts
        res = train_locally(spec, rows, dense, private, items, ratings, np.ones(2, np.float32), item_x, 0.05, 0.0, 1)
        rows = rows - 0.5 * res.row_grads
        dense = dense - 0.05 * res.dense_grad
        private = res.private
        losses.append(res.loss)
    assert losses[-1] < 0.5 * losses[0]
