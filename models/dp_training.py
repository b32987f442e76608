"""Record-level clipped local step (SecEmb Appendix G): what a user uploads when differential privacy is on.

The privacy unit is one rating. A user's upload (item-row gradients and dense
gradient) is the SUM over its ratings of each rating's own gradient, clipped
jointly over rows and dense part to L2 norm ``clip``
(:func:`models.dp.clip_factors`). Adding or removing one rating then moves
the upload, and so the servers' aggregate, by at most ``clip``.

Record loss. Rating j of item i_j contributes
``l_j = (r_hat_j - r_j)^2 + reg * (||q_{i_j}||^2 + ||E||^2)`` (E: FM/DeepFM
feature embeddings, part of the dense vector): its squared error and the
regulariser of the public parameters it touches. There is deliberately no
``1 / n_ratings`` factor: with it, adding a rating would rescale every other
rating's gradient and the sensitivity would no longer be ``clip``. (Without
clipping, the sum of the record gradients is therefore ``n_ratings`` times the
non-DP mean-loss gradient on the dense part; the server's Adam step is
insensitive to that scale.)

How it is computed: the user's ratings are expanded into pseudo-users that
each hold one rating, its one row and their own copy of the dense parameters,
and :func:`models.training.user_losses` (hence :func:`models.recommenders.predict`)
is run on that batch: one backward pass gives every record's gradient, no
second model implementation. Records are processed in chunks so that the
per-record copies stay below ``chunk_elements`` floats.

No linear layer's weight is copied per record (:func:`shared_layers`): a
dense-sized gradient per rating made a 10-user DeepFM round take 5.9 s against
0.87 s without DP, and its second MLP layer alone was 32,768 of the 37,235
values still copied per record once the first was not. Each weight W enters as
one shared constant, and its per-record gradient, g a^T + 2 reg W (g: the
gradient at the layer's output; a: the layer's input; the reg term with
``spec.reg_dense``), is never formed. Its squared norm is
||g||^2 ||a||^2 + 4 reg g.(W a) + 4 reg^2 ||W||^2, and a user's clipped sum
is sum_j c_j g_j a_j^T + 2 reg W sum_j c_j, one matrix product per user (the
"ghost clipping" of Goodfellow 2015 / Li et al. 2022 for a layer applied once
per record). g and a come from the model's own forward
(:func:`models.recommenders.layer_taps`), except the input of DeepFM's first
layer (835,584 of its 872,819 dense values at d=64 on ML-100K), which the model applies blockwise without forming it: that a is
rebuilt by :func:`models.recommenders.mlp_input`. tests/test_dp_training.py
checks both against per-rating autograd.

Private parameters never leave the device and are not part of the release:
they are updated exactly as without DP, by :func:`models.training._update_private`
on the user's ordinary (mean) loss, whose first gradient is taken here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.batch import UserBatch
from models.dp import clip_factors
from models.recommenders import dense_offsets, layer_taps, linear_layers, mlp_input, unflatten_dense
from models.spec import ModelSpec
from models.training import BatchResult, PrivateState, _check, _update_private, user_losses

CHUNK_ELEMENTS = 1 << 24  # floats of per-record dense copies (parameter + gradient) one chunk may hold


def _records(batch: UserBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner user [R], position in that user's padded rating list [R]) of every real rating."""
    owner, pos = torch.nonzero(batch.mask > 0, as_tuple=True)
    return owner, pos


def _one_rating_batch(batch: UserBatch, owner: torch.Tensor, pos: torch.Tensor) -> UserBatch:
    """Records (owner[r], pos[r]) as pseudo-users holding one rating each, of their one row (local index 0)."""
    n = len(owner)
    return UserBatch(local_items=torch.zeros((n, 1), dtype=torch.int64),
                     ratings=batch.ratings[owner, pos].unsqueeze(1), mask=torch.ones((n, 1)),
                     user_x=batch.user_x[owner], item_x=batch.item_x[owner, pos].unsqueeze(1),
                     n_ratings=torch.ones(n, dtype=torch.int64))


@dataclass(frozen=True)
class SharedLayer:
    """A linear layer whose weight W record clipping passes as one shared constant: never copied per record."""

    name: str    # the layer's name; its weight is ``<name>.weight`` [n_out, n_in]
    offset: int  # the weight's offset in the flat dense vector
    shape: tuple[int, int]

    @property
    def weight(self) -> str:
        return f"{self.name}.weight"

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]


def shared_layers(spec: ModelSpec) -> list[SharedLayer]:
    """Every linear layer of ``spec``, in flat-vector order."""
    offsets = dense_offsets(spec)
    return [SharedLayer(n, *offsets[f"{n}.weight"]) for n in linear_layers(spec)]


def record_gradients(spec: ModelSpec, rows: torch.Tensor, user: torch.Tensor, dense: torch.Tensor,
                     batch: UserBatch, reg: float, owner: torch.Tensor, pos: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Unclipped gradients of records (owner[r], pos[r]): (row grads [R, row_dim], dense grads [R, D - shared],
    local row [R], {shared layer: (g [R, out], a [R, in])}); ``dense`` [D], ``rows`` [B, K, row_dim],
    ``user`` [B, P] the downloaded values (constants).

    The dense grads omit the weights of :func:`shared_layers`, which are shared constants here; for each,
    g is the gradient at the layer's output and a its input, from which the caller forms the record's
    weight gradient g a^T (module docstring).
    """
    local = batch.local_items[owner, pos]
    n = len(owner)
    layers = shared_layers(spec)
    shared = {layer.weight for layer in layers}
    rec_rows = rows[owner, local].detach().clone().unsqueeze(1).requires_grad_(True)  # [R, 1, row_dim]
    params = {name: value if name in shared else value.expand(n, *value.shape[1:]).clone().requires_grad_(True)
              for name, value in unflatten_dense(spec, dense.detach().unsqueeze(0)).items()}
    one = _one_rating_batch(batch, owner, pos)
    # one rating per pseudo-user: user_losses = its squared error + reg x (||q||^2 + ||E||^2 + ||p_u||^2);
    # p_u is a constant here, so its term adds no gradient to the public parameters
    with layer_taps() as taps:
        user_losses(spec, rec_rows, user[owner].detach(), params, one, reg).sum().backward()
    outer = {}
    for layer in layers:
        if layer.name not in taps:
            raise RuntimeError(f"{spec.name}'s layer {layer.name} was not tapped: its per-record input and output "
                               "gradient are unknown")
        x, y = taps[layer.name]
        if x is None:  # DeepFM's first layer, applied blockwise without forming its input: rebuild it
            with torch.no_grad():
                x = mlp_input(spec, rec_rows, user[owner], params, one)
        outer[layer.name] = (y.grad[:, 0], x.detach()[:, 0])
    small = torch.cat([v.grad.reshape(n, -1) for name, v in params.items() if name not in shared], dim=1)
    return rec_rows.grad.squeeze(1), small, local, outer


def _outer_sums(weighted_g: torch.Tensor, inputs: torch.Tensor, owner: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per distinct owner (in order): sum_j c_j g_j a_j^T [U, out, in], via one padded matrix product."""
    users, counts = torch.unique_consecutive(owner, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    group = torch.repeat_interleave(torch.arange(len(users)), counts)
    slot = torch.arange(len(owner)) - starts[group]
    width = int(counts.max())
    g_pad = weighted_g.new_zeros((len(users), width, weighted_g.shape[1]))
    a_pad = inputs.new_zeros((len(users), width, inputs.shape[1]))
    g_pad[group, slot] = weighted_g
    a_pad[group, slot] = inputs
    return users, torch.bmm(g_pad.transpose(1, 2), a_pad)


def clipped_public_gradients(spec: ModelSpec, rows: np.ndarray, user: np.ndarray, dense: np.ndarray,
                             batch: UserBatch, reg: float, clip: float,
                             chunk_elements: int = CHUNK_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the sum of its records' jointly clipped gradients: (rows [B, K, row_dim], dense [B, D]) float32."""
    rows_t, user_t = torch.from_numpy(np.asarray(rows, np.float32)), torch.from_numpy(np.asarray(user, np.float32))
    dense_t = torch.from_numpy(np.asarray(dense, np.float32))
    n_users = rows_t.shape[0]
    layers = shared_layers(spec)
    weights = {layer.name: dense_t[layer.offset:layer.offset + layer.size].reshape(layer.shape) for layer in layers}
    w_reg_sq = 4 * reg ** 2 * sum(((w ** 2).sum() for w in weights.values()), torch.zeros(()))  # ||2 reg W||^2
    row_out = torch.zeros(rows_t.shape, dtype=torch.float32)
    small_out = torch.zeros((n_users, spec.dense_size - sum(layer.size for layer in layers)), dtype=torch.float32)
    outer_out = {layer.name: torch.zeros((n_users,) + layer.shape, dtype=torch.float32) for layer in layers}
    clip_sum = torch.zeros(n_users, dtype=torch.float32)
    owner, pos = _records(batch)
    per_record = (2 * small_out.shape[1] + 4 * spec.row_dim
                  + sum(3 * sum(layer.shape) for layer in layers))
    step = max(1, chunk_elements // per_record)
    for lo in range(0, len(owner), step):  # chunks of records: memory bounded by chunk_elements
        o, p = owner[lo:lo + step], pos[lo:lo + step]
        g_rows, g_small, local, outer = record_gradients(spec, rows_t, user_t, dense_t, batch, reg, o, p)
        sq = (g_rows ** 2).sum(1) + (g_small ** 2).sum(1)
        for name, (g, a) in outer.items():  # each record's ||g a^T (+ 2 reg W)||^2, not formed
            sq = sq + (g ** 2).sum(1) * (a ** 2).sum(1)
            if spec.reg_dense:
                sq = sq + 4 * reg * (g * (a @ weights[name].T)).sum(1)
        if spec.reg_dense:
            sq = sq + w_reg_sq
        factor = clip_factors(sq, clip)
        row_out.index_put_((o, local), g_rows * factor[:, None], accumulate=True)
        small_out.index_add_(0, o, g_small * factor[:, None])
        clip_sum.index_add_(0, o, factor)
        for name, (g, a) in outer.items():
            users, sums = _outer_sums(g * factor[:, None], a, o)
            outer_out[name].index_add_(0, users, sums)
    if not layers:
        return row_out.numpy(), small_out.numpy()
    dense_out = torch.zeros((n_users, spec.dense_size), dtype=torch.float32)
    kept = torch.ones(spec.dense_size, dtype=torch.bool)
    for layer in layers:
        kept[layer.offset:layer.offset + layer.size] = False
        total = outer_out[layer.name]
        if spec.reg_dense:  # + 2 reg W in each record's W gradient (dense_squares)
            total += 2 * reg * clip_sum[:, None, None] * weights[layer.name]
        dense_out[:, layer.offset:layer.offset + layer.size] = total.reshape(n_users, -1)
    dense_out[:, kept] = small_out
    return row_out.numpy(), dense_out.numpy()


def train_batch_clipped(spec: ModelSpec, rows: np.ndarray, dense: np.ndarray, private: PrivateState,
                        batch: UserBatch, lr: float, reg: float, steps: int, clip: float) -> BatchResult:
    """:func:`models.training.train_batch` with record-level clipped public gradients (module docstring).

    Loss and private update are train_batch's (the user's mean loss); only the uploaded
    row and dense gradients differ. Rows fetched without a rating (none in SecEmb / Secure
    FedRec, whose users fetch rated items) get a zero gradient: they belong to no record.
    """
    n_users = len(private)
    rows = np.asarray(rows, dtype=np.float32)
    dense = np.asarray(dense, dtype=np.float32)
    _check(spec, rows, dense, n_users, batch)
    rows_t = torch.from_numpy(rows)
    dense_t = torch.from_numpy(dense).expand(n_users, -1)
    user_t = torch.from_numpy(private.params.astype(np.float32, copy=True)).requires_grad_(True)
    loss = user_losses(spec, rows_t, user_t, dense_t, batch, reg)
    loss.sum().backward()  # only the private leaf needs a gradient: it seeds the private Adam steps
    new_private = _update_private(spec, rows_t, dense_t, user_t.detach(), user_t.grad, private, batch, lr, reg, steps)
    row_grads, dense_grads = clipped_public_gradients(spec, rows, private.params, dense, batch, reg, clip)
    return BatchResult(row_grads=row_grads, dense_grads=dense_grads,
                       loss=loss.detach().numpy().astype(np.float64), n_ratings=batch.n_ratings.numpy().copy(),
                       private=new_private)
