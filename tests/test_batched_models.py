"""The models on a batch of users: each user in a batch gets exactly what it gets alone (the Flower client's
batch of one), padding contributes nothing, dense gradients are per user, Adam keeps per-user step counts,
and the functional models keep the former torch.nn models' initial values and maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import (ModelSpec, PrivateState, evaluate_batch, gather_rows, init_dense, init_item_table, make_batch,
                    predict, regularizer, train_batch)
from models.batch import UserBatch
from models.private_adam import adam_step, bias_corrections
from models.training import _update_private, user_losses

SPECS = [ModelSpec("mf", 4), ModelSpec("ncf", 4), ModelSpec("fm", 4, 2, 3), ModelSpec("deepfm", 4, 2, 3)]
N_ITEMS = 12


def _users(spec: ModelSpec, ks=(3, 5, 1), ns=(4, 7, 2), seed=0):
    """Three users with different numbers of fetched rows (K) and ratings (N)."""
    rng = np.random.default_rng(seed)
    items = [rng.choice(N_ITEMS, k, replace=False) for k in ks]
    local = [rng.integers(0, k, n) for k, n in zip(ks, ns)]
    ratings = [rng.uniform(1, 5, n).astype(np.float32) for n in ns]
    user_x = (rng.random((len(ks), spec.n_user_features)) < 0.5).astype(np.float32)
    item_features = (rng.random((N_ITEMS, spec.n_item_features)) < 0.5).astype(np.float32)
    item_x = [item_features[i[l]] for i, l in zip(items, local)]
    state = PrivateState.initial(spec, np.arange(len(ks)), 0)
    rng_state = np.random.default_rng(seed + 1)
    state.m[:] = rng_state.normal(0, 0.01, state.m.shape)
    state.v[:] = rng_state.uniform(0, 0.01, state.v.shape)
    state.step[:] = np.arange(len(ks)) * 3  # users have taken different numbers of Adam steps
    return items, local, ratings, user_x, item_x, state


def _one(b, items, local, ratings, user_x, item_x, state):
    return items[b:b + 1], make_batch(local[b:b + 1], ratings[b:b + 1], user_x[b:b + 1], item_x[b:b + 1]), \
        state.take(np.array([b]))


def _close(actual, desired) -> None:
    """Equal up to float32 rounding of differently ordered sums (relative 1e-5, absolute 1e-6)."""
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-6)


def _leaf_grads(spec, rows, dense, params, batch, reg):
    """Losses and the gradients of rows, user and per-user dense leaves of the summed loss."""
    rows_t = torch.from_numpy(rows).requires_grad_(True)
    user_t = torch.from_numpy(params.copy()).requires_grad_(True)
    dense_t = torch.from_numpy(dense).expand(len(params), -1).clone().requires_grad_(True)
    loss = user_losses(spec, rows_t, user_t, dense_t, batch, reg)
    loss.sum().backward()
    return loss.detach().numpy(), rows_t.grad.numpy(), user_t.grad.numpy(), dense_t.grad.numpy()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_each_user_in_a_batch_gets_what_it_gets_alone(spec):
    items, local, ratings, user_x, item_x, state = _users(spec)
    table, dense = init_item_table(spec, N_ITEMS, 0), init_dense(spec, 0)
    rows, _ = gather_rows(table, items)
    batch = make_batch(local, ratings, user_x, item_x)
    with torch.no_grad():
        pred = predict(spec, torch.from_numpy(rows), torch.from_numpy(state.params),
                       torch.from_numpy(dense).expand(3, -1), batch).numpy()
    losses, row_g, user_g, dense_g = _leaf_grads(spec, rows, dense, state.params, batch, 0.01)
    res = train_batch(spec, rows, dense, state, batch, lr=0.05, reg=0.01, steps=3)
    sse, count = evaluate_batch(spec, rows, dense, state.params, batch)
    for b in range(3):
        k, n = len(items[b]), len(ratings[b])
        one_items, one_batch, one_state = _one(b, items, local, ratings, user_x, item_x, state)
        one_rows = gather_rows(table, one_items)[0]
        with torch.no_grad():
            one_pred = predict(spec, torch.from_numpy(one_rows), torch.from_numpy(one_state.params),
                               torch.from_numpy(dense)[None], one_batch).numpy()
        one = _leaf_grads(spec, one_rows, dense, one_state.params, one_batch, 0.01)
        one_res = train_batch(spec, one_rows, dense, one_state, one_batch, lr=0.05, reg=0.01, steps=3)
        one_sse, one_count = evaluate_batch(spec, one_rows, dense, one_state.params, one_batch)
        _close(pred[b, :n], one_pred[0])
        _close(losses[b], one[0][0])
        _close(row_g[b, :k], one[1][0])
        _close(user_g[b], one[2][0])
        _close(dense_g[b], one[3][0])
        _close(res.row_grads[b, :k], one_res.row_grads[0])
        _close(res.dense_grads[b], one_res.dense_grads[0])
        _close(res.loss[b], one_res.loss[0])
        for name in ("params", "m", "v"):
            _close(getattr(res.private, name)[b], getattr(one_res.private, name)[0])
        assert res.private.step[b] == one_res.private.step[0] == state.step[b] + 3
        assert res.n_ratings[b] == n == count[b] == one_count[0]
        _close(sse[b], one_sse[0])
        _close(sse[b], np.sum((one_pred[0].astype(np.float64) - ratings[b]) ** 2))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_padding_contributes_nothing(spec):
    items, local, ratings, user_x, item_x, state = _users(spec, ks=(1, 6, 2), ns=(1, 9, 0))
    rows, row_mask = gather_rows(init_item_table(spec, N_ITEMS, 0), items)
    res = train_batch(spec, rows, init_dense(spec, 0), state, make_batch(local, ratings, user_x, item_x),
                      lr=0.05, reg=0.01, steps=2)
    assert np.array_equal(row_mask, np.arange(6)[None, :] < np.array([1, 6, 2])[:, None])
    assert (res.row_grads[row_mask == 0] == 0).all()
    assert np.isfinite(res.loss).all() and np.isfinite(res.dense_grads).all() and np.isfinite(res.private.params).all()
    # A user without ratings has only its regulariser: no NaN from a mean over nothing, no dense gradient
    # except the feature embeddings' regulariser (FM / DeepFM).
    reg_only = 0.01 * ((state.params[2] ** 2).sum() + (rows[2] ** 2).sum())
    if spec.name in ("mf", "ncf"):
        np.testing.assert_allclose(res.loss[2], reg_only, rtol=1e-6)
        assert not res.dense_grads[2].any()


def test_batch_builders_pad_by_hand():
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    rows, mask = gather_rows(table, [np.array([4, 1]), np.array([], np.int64), np.array([2])])
    assert np.array_equal(rows, [[[8, 9], [2, 3]], [[0, 0], [0, 0]], [[4, 5], [0, 0]]])
    assert np.array_equal(mask, [[1, 1], [0, 0], [1, 0]])
    batch = make_batch([np.array([1, 0, 1]), np.array([0])], [np.array([5.0, 4.0, 3.0]), np.array([1.0])],
                       np.array([[1.0], [0.0]]), [np.array([[1, 0], [0, 1], [1, 1]]), np.array([[1, 1]])])
    assert isinstance(batch, UserBatch) and len(batch) == 2
    assert batch.local_items.tolist() == [[1, 0, 1], [0, 0, 0]]
    assert batch.ratings.tolist() == [[5, 4, 3], [1, 0, 0]] and batch.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.item_x.tolist() == [[[1, 0], [0, 1], [1, 1]], [[1, 1], [0, 0], [0, 0]]]
    assert batch.n_ratings.tolist() == [3, 1] and batch.ratings.dtype == torch.float32


def test_mf_prediction_by_hand():
    spec = ModelSpec("mf", 2)
    rows = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 1.0, -1.0]]])  # two items: embedding | bias
    user = torch.tensor([[3.0, 4.0, 0.25]])
    batch = make_batch([np.array([0, 1])], [np.zeros(2)], np.zeros((1, 0)), [np.zeros((2, 0))])
    pred = predict(spec, rows, user, torch.tensor([[2.0]]), batch)
    assert pred.tolist() == [[3 + 8 + 0.5 + 0.25 + 2, 4 - 1 + 0.25 + 2]]


def test_a_rating_index_past_its_users_rows_is_refused_not_read_from_the_next_user():
    spec = ModelSpec("mf", 2)
    rows = torch.zeros((2, 2, 3))  # two users, two rows each
    batch = make_batch([np.array([0, 2]), np.array([1])], [np.zeros(2), np.zeros(1)], np.zeros((2, 0)),
                       [np.zeros((2, 0)), np.zeros((1, 0))])
    with pytest.raises(IndexError, match="outside its user's 2 rows"):
        predict(spec, rows, torch.zeros((2, 3)), torch.zeros((2, 1)), batch)


@pytest.mark.parametrize("form", ["user", "rating"])
def test_mf_loss_by_hand_in_both_regulariser_forms(form):
    """One user, two rated items, all-zero predictions: loss = MSE + reg x (||p||^2 + rows' part),
    the rows' part being their sum of squares ("user") or that sum over the 2 ratings ("rating")."""
    spec = ModelSpec("mf", 2, reg_form=form)
    rows = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])  # item embeddings | bias
    user = torch.tensor([[0.0, 0.0, 3.0]])                     # embedding | user bias
    batch = make_batch([np.array([0, 1])], [np.array([4.0, 1.0])], np.zeros((1, 0)), [np.zeros((2, 0))])
    dense = torch.tensor([[-3.0]])  # global bias: predictions 0 + 0 + 3 - 3 = 0
    mse, user_part, rows_part = (16 + 1) / 2, 9.0, 1 + 4
    want = mse + 0.1 * (user_part + (rows_part if form == "user" else rows_part / 2))
    assert user_losses(spec, rows, user, dense, batch, 0.1).item() == pytest.approx(want)


def test_dense_l2_adds_every_dense_square_once():
    """reg_dense adds sum(dense^2) per user: MF's global bias by hand, and for DeepFM the feature
    embeddings (inside the dense vector) are not counted twice."""
    rows = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    user = torch.tensor([[0.0, 0.0, 3.0]])
    dense = torch.tensor([[-3.0]])
    plain = regularizer(ModelSpec("mf", 2), rows, user, dense).item()
    assert plain == 9 + 5
    assert regularizer(ModelSpec("mf", 2, reg_dense=True), rows, user, dense).item() == 9 + 5 + 9
    spec = ModelSpec("deepfm", 4, n_user_features=2, n_item_features=3, reg_dense=True)
    drows = torch.randn(1, 3, spec.row_dim)
    duser = torch.randn(1, spec.dim + 1)
    ddense = torch.randn(1, spec.dense_size)
    want = (duser ** 2).sum() + (drows ** 2).sum() + (ddense ** 2).sum()
    assert regularizer(spec, drows, duser, ddense).item() == pytest.approx(want.item(), rel=1e-6)


MEMO_SPECS = SPECS + [ModelSpec("fm", 4, 2, 3, reg_form="rating"), ModelSpec("deepfm", 4, 2, 3, reg_dense=True),
                      ModelSpec("ncf", 4, reg_dense=True)]


@pytest.mark.parametrize("spec", MEMO_SPECS, ids=lambda s: f"{s.name}-{s.reg_form}-{s.reg_dense}")
def test_a_memo_of_the_fixed_terms_changes_no_bit_of_the_private_steps(spec):
    """The private Adam steps keep rows, dense and batch fixed and reuse their terms from a memo: the losses
    and the user gradients of later steps are exactly those of recomputing every term, and the memo holds
    the model's dense-only terms (DeepFM's feature block of the first layer)."""
    items, local, ratings, user_x, item_x, state = _users(spec)
    rows, _ = gather_rows(init_item_table(spec, N_ITEMS, 0), items)
    rows_t, batch = torch.from_numpy(rows), make_batch(local, ratings, user_x, item_x)
    dense = torch.from_numpy(init_dense(spec, 0)).expand(3, -1).clone()
    memo: dict = {}
    params = torch.from_numpy(state.params.copy())
    for step in range(3):  # the memo is filled by the first call and read by the next ones
        leaf = params.clone().requires_grad_(True)
        cached = user_losses(spec, rows_t, leaf, dense, batch, 0.01, memo)
        (cached_grad,) = torch.autograd.grad(cached.sum(), leaf)
        fresh_leaf = params.clone().requires_grad_(True)
        fresh = user_losses(spec, rows_t, fresh_leaf, dense, batch, 0.01)
        (fresh_grad,) = torch.autograd.grad(fresh.sum(), fresh_leaf)
        assert torch.equal(cached.detach(), fresh.detach()) and torch.equal(cached_grad, fresh_grad), step
        params = params - 0.05 * fresh_grad  # the user's parameters move; the memo's terms must not
    assert {"rated", "rows_part", "dense_part"} <= memo.keys()
    if spec.name == "deepfm":
        assert {"deepfm.features", "deepfm.items", "fm.features"} <= memo.keys()


@pytest.mark.parametrize("b,n,d", [(1, 1, 4), (3, 7, 16), (33, 150, 64), (5, 590, 65)])
def test_rowwise_dot_is_the_einsum_it_replaces_bit_for_bit(b, n, d):
    """The models' per-user matrix-vector product equals torch.einsum("bnd,bd->bn") exactly, forward and
    backward, on the strided split views the models pass it."""
    from models.recommenders import _rowwise_dot
    gen = torch.Generator().manual_seed(b * n + d)
    rows, user, weight = torch.randn(b, n, d + 1, generator=gen), torch.randn(b, d + 1, generator=gen), \
        torch.randn(b, n, generator=gen)
    results = []
    for product in (lambda m, v: torch.einsum("bnd,bd->bn", m, v), _rowwise_dot):
        r, u = rows.clone().requires_grad_(True), user.clone().requires_grad_(True)
        out = product(r.split([d, 1], dim=2)[0], u[:, :d])
        results.append((out.detach(), *torch.autograd.grad((out * weight).sum(), [r, u])))
    assert all(torch.equal(x, y) for x, y in zip(*results))


def test_unknown_regulariser_form_is_refused():
    with pytest.raises(ValueError, match="reg_form"):
        ModelSpec("mf", 2, reg_form="item")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_dense_gradients_are_per_user_and_sum_to_the_shared_gradient(spec):
    items, local, ratings, user_x, item_x, state = _users(spec)
    rows, _ = gather_rows(init_item_table(spec, N_ITEMS, 0), items)
    dense = init_dense(spec, 0)
    batch = make_batch(local, ratings, user_x, item_x)
    res = train_batch(spec, rows, dense, state, batch, lr=0.05, reg=0.01, steps=1)
    assert not np.allclose(res.dense_grads[0], res.dense_grads[1])
    shared = torch.from_numpy(dense).requires_grad_(True)
    user_losses(spec, torch.from_numpy(rows), torch.from_numpy(state.params), shared.expand(3, -1), batch,
                0.01).sum().backward()
    np.testing.assert_allclose(res.dense_grads.sum(0), shared.grad.numpy(), atol=1e-5)


@pytest.mark.parametrize("spec", [ModelSpec("deepfm", 4, 2, 3, reg_dense=True), ModelSpec("ncf", 4, reg_dense=True),
                                  ModelSpec("mf", 4, reg_dense=True)], ids=lambda s: s.name)
@pytest.mark.parametrize("reg", [0.1, 0.003])
def test_the_dense_l2_gradient_added_once_is_autograds_through_each_users_copy_bit_for_bit(spec, reg):
    """train_batch adds the dense L2 term's gradient 2 reg x to every user's dense gradient instead of
    backpropagating it through each user's copy of x: the losses and gradients are autograd's, bit for bit."""
    items, local, ratings, user_x, item_x, state = _users(spec)
    rows, _ = gather_rows(init_item_table(spec, N_ITEMS, 0), items)
    dense = init_dense(spec, 0) + np.random.default_rng(7).normal(0, 0.3, spec.dense_size).astype(np.float32)
    batch = make_batch(local, ratings, user_x, item_x)
    loss, row_grads, _user_grads, dense_grads = _leaf_grads(spec, rows, dense, state.params, batch, reg)
    res = train_batch(spec, rows, dense, state, batch, lr=0.05, reg=reg, steps=4)
    assert np.array_equal(res.dense_grads, dense_grads) and np.array_equal(res.row_grads, row_grads)
    assert np.array_equal(res.loss, loss.astype(np.float64))
    # The private steps reuse the terms the upload's forward computed: the same bits as steps computing their own.
    user_t = torch.from_numpy(state.params.copy()).requires_grad_(True)
    dense_t = torch.from_numpy(dense).expand(3, -1).clone()
    user_losses(spec, torch.from_numpy(rows), user_t, dense_t, batch, reg).sum().backward()
    own = _update_private(spec, torch.from_numpy(rows), dense_t, user_t.detach(), user_t.grad, state, batch, 0.05, reg,
                          4)
    for field in ("params", "m", "v", "step"):
        assert np.array_equal(getattr(res.private, field), getattr(own, field)), field


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_the_gradients_of_the_pieces_the_model_reads_are_those_of_one_flat_copy_per_user_bit_for_bit(spec):
    """train_batch's leaves are the pieces the model reads (DeepFM's first-layer blocks apart) and it writes
    their gradients into the flat layout itself: the same bits as one flat leaf per user, for a batch and
    for a batch of one (what a Flower device computes)."""
    items, local, ratings, user_x, item_x, state = _users(spec)
    rows, _ = gather_rows(init_item_table(spec, N_ITEMS, 0), items)
    dense = init_dense(spec, 0) + np.random.default_rng(5).normal(0, 0.3, spec.dense_size).astype(np.float32)
    batch = make_batch(local, ratings, user_x, item_x)
    loss, row_grads, _user_grads, dense_grads = _leaf_grads(spec, rows, dense, state.params, batch, 0.01)
    res = train_batch(spec, rows, dense, state, batch, lr=0.05, reg=0.01, steps=2)
    assert np.array_equal(res.dense_grads, dense_grads) and np.array_equal(res.row_grads, row_grads)
    assert np.array_equal(res.loss, loss.astype(np.float64))
    one_items, one_batch, one_state = _one(1, items, local, ratings, user_x, item_x, state)
    one_rows = gather_rows(init_item_table(spec, N_ITEMS, 0), one_items)[0]
    _, one_row_grads, _, one_dense = _leaf_grads(spec, one_rows, dense, one_state.params, one_batch, 0.01)
    one = train_batch(spec, one_rows, dense, one_state, one_batch, lr=0.05, reg=0.01, steps=2)
    assert np.array_equal(one.dense_grads, one_dense) and np.array_equal(one.row_grads, one_row_grads)


def _torch_adam_run(p0, grads, lr):
    """Parameters and moments after torch.optim.Adam applies ``grads`` one after another."""
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([p], lr=lr)
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    return p.detach().numpy(), opt.state[p]["exp_avg"].numpy(), opt.state[p]["exp_avg_sq"].numpy()


def test_adam_step_is_torch_adam_with_a_step_count_per_user():
    rng = np.random.default_rng(3)
    lr, dim, done = 0.05, 5, np.array([0, 2, 7])  # steps each user took before
    p0 = rng.normal(size=(3, dim)).astype(np.float32)
    grads = [rng.normal(size=(3, dim)).astype(np.float32) for _ in range(done.max() + 4)]
    # Bring every user to its own step count with torch, then continue all of them together for 4 steps.
    start = [_torch_adam_run(p0[b], [g[b] for g in grads[:done[b]]], lr) if done[b] else
             (p0[b], np.zeros(dim, np.float32), np.zeros(dim, np.float32)) for b in range(3)]
    params, m, v = (torch.from_numpy(np.stack([s[i] for s in start])) for i in range(3))
    step = torch.from_numpy(done.copy())
    for i in range(4):
        g = torch.from_numpy(np.stack([grads[done[b] + i][b] for b in range(3)]))
        params, m, v, step = adam_step(params, g, m, v, step, lr)
    for b in range(3):
        ref = _torch_adam_run(p0[b], [g[b] for g in grads[:done[b] + 4]], lr)
        for ours, theirs in zip((params[b], m[b], v[b]), ref):
            np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-7)
    assert step.tolist() == (done + 4).tolist()


def test_a_run_of_steps_with_its_corrections_computed_at_once_is_step_by_step_adam_bit_for_bit():
    """bias_corrections gives every step's lr / bc1 and sqrt(bc2) up front (the private steps use it):
    params, moments and counts equal computing them in each step, to the last bit."""
    gen = torch.Generator().manual_seed(5)
    params0, step0 = torch.randn(4, 6, generator=gen), torch.tensor([0, 1, 9, 1000])
    grads = [torch.randn(4, 6, generator=gen) for _ in range(5)]
    runs = []
    for at_once in (False, True):
        params, m, v, step = params0, torch.zeros(4, 6), torch.zeros(4, 6), step0
        size, bc2 = bias_corrections(step0, len(grads), 0.03)
        for i, g in enumerate(grads):
            fixed = (size[:, i:i + 1], bc2[:, i:i + 1]) if at_once else None
            params, m, v, step = adam_step(params, g, m, v, step, 0.03, corrections=fixed)
        runs.append((params, m, v, step))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert runs[1][3].tolist() == [5, 6, 14, 1005]


def _reference_modules(spec: ModelSpec, seed: int) -> list[torch.Tensor]:
    """The dense parameters as the former nn.Module models created them (same seeding, same layer order)."""
    torch.manual_seed(seed)
    d = spec.dim
    if spec.name == "mf":
        return [torch.zeros(1)]
    if spec.name == "ncf":
        mlp = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d // 2), nn.ReLU())
        return list(mlp.parameters()) + list(nn.Linear(d + d // 2, 1, bias=False).parameters())
    feat_emb = torch.zeros(spec.n_features, d).normal_(0.0, spec.init_std,
                                                       generator=torch.Generator().manual_seed(seed + 1))
    fm = [torch.zeros(1), feat_emb, torch.zeros(spec.n_features)]
    if spec.name == "fm":
        return fm
    deep = _deep(spec)
    return fm + list(deep.parameters())


def _deep(spec: ModelSpec) -> nn.Sequential:
    d, f = spec.dim, spec.n_features + 2
    return nn.Sequential(nn.Linear(f * d, 4 * d), nn.LayerNorm(4 * d), nn.ReLU(),
                         nn.Linear(4 * d, 2 * d), nn.LayerNorm(2 * d), nn.ReLU(), nn.Linear(2 * d, 1))


@pytest.mark.parametrize("spec", SPECS + [ModelSpec("deepfm", 4, 0, 0), ModelSpec("ncf", 6)], ids=str)
def test_init_dense_equals_the_torch_nn_layers_init(spec):
    reference = torch.cat([p.detach().reshape(-1) for p in _reference_modules(spec, 5)]).numpy()
    assert np.array_equal(init_dense(spec, 5), reference)


@pytest.mark.parametrize("spec", [ModelSpec("fm", 4, 2, 3), ModelSpec("deepfm", 4, 2, 3)], ids=lambda s: s.name)
def test_fm_and_deepfm_equal_the_field_by_field_formula(spec):
    """The blockwise FM / first DeepFM layer equal the plain formula on materialised field embeddings."""
    items, local, ratings, user_x, item_x, state = _users(spec)
    rows, _ = gather_rows(init_item_table(spec, N_ITEMS, 0), items)
    dense = torch.from_numpy(init_dense(spec, 0))
    with torch.no_grad():
        ours = predict(spec, torch.from_numpy(rows), torch.from_numpy(state.params), dense.expand(3, -1),
                       make_batch(local, ratings, user_x, item_x))
        d, nf = spec.dim, spec.n_features
        feat_emb, feat_w = dense[1:1 + nf * d].view(nf, d), dense[1 + nf * d:1 + nf * (d + 1)]
        deep = _deep(spec)
        if spec.name == "deepfm":
            nn.utils.vector_to_parameters(dense[1 + nf * (d + 1):], deep.parameters())
        for b in range(3):
            q, user = torch.from_numpy(rows[b][local[b]]), torch.from_numpy(state.params[b])
            x = torch.cat([torch.from_numpy(user_x[b]).expand(len(q), -1), torch.from_numpy(item_x[b])], dim=1)
            fields = torch.cat([user[:d].expand(len(q), 1, d), q[:, None, :d], x.unsqueeze(2) * feat_emb], dim=1)
            s = fields.sum(1)
            plain = dense[0] + user[d] + q[:, d] + x @ feat_w + 0.5 * ((s * s).sum(1) - (fields * fields).sum((1, 2)))
            if spec.name == "deepfm":
                plain = plain + deep(fields.reshape(len(q), -1)).squeeze(1)
            np.testing.assert_allclose(ours[b, :len(q)].numpy(), plain.numpy(), rtol=1e-5, atol=1e-5)


def test_local_steps_and_server_step_flush_denormals_and_restore_the_flag():
    """Both engines compute with denormals flushed (an L2-decayed weight made DeepFM rounds 3x slower), and
    leave this thread's flag as they found it (numpy and hypothesis in the caller's thread need subnormals).

    Checked by what each computes: Adam's first moment decays as 0.9 m + 0.1 g, so a denormal moment under
    a zero gradient stays a (smaller) denormal unless the step runs flushed, where it becomes exactly 0."""
    from models.training import denormals_flushed
    from strategies.public_model import PublicModel

    spec = SPECS[0]
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 denormal
    assert (tiny * 0.9).item() != 0.0  # what an unflushed Adam decay gives: the check below can fail
    with denormals_flushed():
        assert (tiny * 0.9).item() == 0.0
    assert (tiny * 1.0).item() != 0.0  # restored

    # Local steps: zero user vector and zero rows give the MF user vector a zero gradient (error x row, and
    # the L2 term of a zero vector); its denormal moments must come out exactly 0.
    items, local, ratings, user_x, item_x, state = _users(spec, ks=(2,), ns=(3,))
    state.params[:] = 0.0
    state.m[:] = 1e-39
    rows = np.zeros((1, 2, spec.row_dim), dtype=np.float32)
    batch = make_batch(local, ratings, user_x, item_x)
    _, _, user_g, _ = _leaf_grads(spec, rows, init_dense(spec, 0), state.params, batch, 0.01)
    still = user_g[0] == 0.0
    assert still.sum() >= spec.dim  # the user vector at least
    res = train_batch(spec, rows, init_dense(spec, 0), state, batch, lr=0.05, reg=0.01, steps=1)
    assert np.all(res.private.m[0, still] == 0.0)

    # Server step: a denormal gradient is read as zero, so Adam's first moment is exactly 0 (unflushed: 1e-40).
    model = PublicModel(spec, N_ITEMS, 0, 0.01)
    model.step(np.full((N_ITEMS, spec.row_dim), 1e-39), np.zeros(spec.dense_size), 1)
    moments = model.state_arrays()
    assert moments["opt.0.exp_avg"].shape == (N_ITEMS, spec.row_dim)  # group 0: the item table
    assert np.all(moments["opt.0.exp_avg"] == 0.0)
    assert (tiny * 1.0).item() != 0.0  # neither leaves the flag on
    assert np.nextafter(np.float32(0), np.float32(1)) * np.float32(1) != 0  # numpy keeps its subnormals
