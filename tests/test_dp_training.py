"""Record-level clipping (SecEmb Appendix G) against its definition: per-rating gradients, clipped, summed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import ModelSpec, PrivateState, init_dense, init_item_table, make_batch, train_batch
from models.dp_training import train_batch_clipped


def _mf_by_definition(table, mu, user, items, ratings, reg, clip):
    """One rating at a time: autograd of (pred - r)^2 + reg ||q_i||^2, joint L2 clip over (q_i, mu), summed."""
    d = len(user) - 1
    rows_sum, dense_sum = np.zeros_like(table), np.zeros(1)
    for i, r in zip(items, ratings):
        q = torch.tensor(table[i], dtype=torch.float64, requires_grad=True)
        g = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
        p = torch.tensor(user, dtype=torch.float64)
        pred = (q[:d] * p[:d]).sum() + q[d] + p[d] + g[0]
        ((pred - r) ** 2 + reg * (q ** 2).sum()).backward()
        norm = float(torch.sqrt((q.grad ** 2).sum() + (g.grad ** 2).sum()))
        factor = min(1.0, clip / norm)
        rows_sum[i] += q.grad.numpy() * factor
        dense_sum += g.grad.numpy() * factor
    return rows_sum, dense_sum


@pytest.mark.parametrize("clip", [0.05, 1.0, 1e6])
def test_mf_clipped_upload_equals_per_rating_definition(clip):
    spec = ModelSpec("mf", 6)
    table, dense = init_item_table(spec, 7, 1), init_dense(spec, 1, global_bias=3.0)
    users = [2, 5]
    local = [np.array([0, 3, 4, 6]), np.array([1, 2])]
    ratings = [np.array([5, 1, 3, 4], np.float32), np.array([2, 5], np.float32)]
    batch = make_batch(local, ratings, np.zeros((2, 0)), [np.zeros((4, 0)), np.zeros((2, 0))])
    private = PrivateState.initial(spec, users, 0)
    rows = np.stack([table, table])
    res = train_batch_clipped(spec, rows, dense, private, batch, lr=0.05, reg=0.01, steps=2, clip=clip)
    plain = train_batch(spec, rows, dense, private, batch, lr=0.05, reg=0.01, steps=2)
    for b in range(2):
        want_rows, want_dense = _mf_by_definition(table, dense, private.params[b], local[b], ratings[b], 0.01, clip)
        np.testing.assert_allclose(res.row_grads[b], want_rows, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(res.dense_grads[b], want_dense, rtol=1e-4, atol=1e-6)
    # private parameters and loss are the non-DP step's: they never leave the device
    np.testing.assert_array_equal(res.private.params, plain.private.params)
    np.testing.assert_array_equal(res.loss, plain.loss)
    if clip == 0.05:  # every record is clipped: each user's upload norm is at most n_ratings x clip
        norms = np.sqrt((res.row_grads ** 2).sum((1, 2)) + (res.dense_grads ** 2).sum(1))
        assert (norms <= np.array([4, 2]) * clip + 1e-6).all()


@pytest.mark.parametrize("spec", [ModelSpec("ncf", 4), ModelSpec("deepfm", 4, 3, 2)], ids=lambda s: s.name)
def test_chunking_changes_nothing_and_unclipped_sum_is_the_summed_loss_gradient(spec):
    """Chunks of one record give the same upload; with no effective clipping, the upload is the gradient
    of the SUM of record losses (n x the mean-loss gradient on the error part) - checked against train_batch."""
    from models.dp_training import clipped_public_gradients
    table, dense = init_item_table(spec, 5, 2), init_dense(spec, 2)
    items = np.array([0, 2, 4])
    batch = make_batch([np.arange(3)], [np.array([4, 2, 5], np.float32)], np.ones((1, spec.n_user_features)),
                       [np.ones((3, spec.n_item_features))])
    priv = PrivateState.initial(spec, [1], 0)
    rows = table[items][None]
    a = clipped_public_gradients(spec, rows, priv.params, dense, batch, 0.0, 1e9)
    b = clipped_public_gradients(spec, rows, priv.params, dense, batch, 0.0, 1e9, chunk_elements=1)
    # a chunk's shared layers are one GEMM over its records, whose float32 rounding depends on how many
    # (gradients here reach about 30: 1e-5 is a few float32 ulps of that scale)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)
    plain = train_batch(spec, rows, dense, priv, batch, lr=0.01, reg=0.0, steps=1)  # mean loss over 3 ratings
    np.testing.assert_allclose(a[0], 3 * plain.row_grads, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a[1], 3 * plain.dense_grads, rtol=1e-4, atol=1e-6)


def _clipped_by_definition(spec, rows, user, dense, batch, reg, clip):
    """One rating at a time through user_losses with the whole flat dense vector as one leaf: the record's
    full gradient (rows and every dense value, DeepFM's first layer included), clipped, summed per user."""
    from models.training import user_losses
    row_out, dense_out = np.zeros_like(rows), np.zeros((rows.shape[0], spec.dense_size), np.float32)
    for b in range(rows.shape[0]):
        for j in range(int(batch.n_ratings[b])):
            i = int(batch.local_items[b, j])
            q = torch.tensor(rows[b, i][None, None], requires_grad=True)
            d = torch.tensor(dense[None], requires_grad=True)
            one = make_batch([np.zeros(1, np.int64)], [batch.ratings[b, j:j + 1].numpy()], batch.user_x[b:b + 1].numpy(),
                             [batch.item_x[b, j:j + 1].numpy()])
            user_losses(spec, q, torch.tensor(user[b:b + 1]), d, one, reg).sum().backward()
            norm = float(torch.sqrt((q.grad ** 2).sum() + (d.grad ** 2).sum()))
            factor = min(1.0, clip / norm)
            row_out[b, i] += q.grad[0, 0].numpy() * factor
            dense_out[b] += d.grad[0].numpy() * factor
    return row_out, dense_out


@pytest.mark.parametrize("model", ["deepfm", "ncf"])
@pytest.mark.parametrize("reg_dense", [True, False])
@pytest.mark.parametrize("clip", [0.3, 3.0, 1e6])
def test_linear_layers_never_materialised_equal_per_rating_definition(model, reg_dense, clip):
    """Every linear layer's weight is clipped from ||g||^2 ||a||^2 (+ its L2 terms) and summed as g a^T per
    user, never per record (models/dp_training.py: DeepFM's first layer from mlp_input, the others from the
    model's tapped forward): the upload equals per-rating autograd of the whole dense vector, for clips
    that bind on every record, on some, and on none; also with several users sharing a chunk."""
    from models.dp_training import clipped_public_gradients, shared_layers
    spec = (ModelSpec("deepfm", 4, 3, 2, reg_form="rating", reg_dense=reg_dense) if model == "deepfm"
            else ModelSpec("ncf", 4, reg_dense=reg_dense))
    assert len(shared_layers(spec)) == 3  # deepfm: deep.0, deep.3, deep.6; ncf: mlp.0, mlp.2, out
    gen = np.random.default_rng(7)
    dense = init_dense(spec, 3) + gen.normal(0, 0.3, spec.dense_size).astype(np.float32)  # biases, norms != 0
    table = init_item_table(spec, 6, 1)
    local = [np.array([0, 2, 5, 1]), np.array([3]), np.array([4, 0, 2])]
    ratings = [gen.integers(1, 6, len(li)).astype(np.float32) for li in local]
    batch = make_batch(local, ratings, gen.random((3, spec.n_user_features)),
                       [gen.random((len(li), spec.n_item_features)) for li in local])
    user = PrivateState.initial(spec, [0, 1, 2], 0).params.astype(np.float32)
    rows = np.stack([table] * 3) + gen.normal(0, 0.2, (3,) + table.shape).astype(np.float32)
    want_rows, want_dense = _clipped_by_definition(spec, rows, user, dense, batch, 0.1, clip)
    for chunk in (1 << 24, 1):  # all records in one chunk (several users in one padded product), one each
        got_rows, got_dense = clipped_public_gradients(spec, rows, user, dense, batch, 0.1, clip, chunk_elements=chunk)
        np.testing.assert_allclose(got_rows, want_rows, rtol=2e-4, atol=2e-6)
        np.testing.assert_allclose(got_dense, want_dense, rtol=2e-4, atol=2e-6)
    norms = [np.linalg.norm(np.concatenate([want_rows[b].ravel(), want_dense[b]])) for b in range(3)]
    if clip == 0.3:  # every record clipped: a user's upload is at most n_ratings x clip
        assert all(n <= len(li) * clip + 1e-5 for n, li in zip(norms, local))
