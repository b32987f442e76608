"""Record-level clipped local step (SecEmb Appendix G): what a user uploads when differential privacy is on.

The privacy unit is one rating. A user's upload (item-row gradients and dense
gradient) is the SUM over its ratings of each rating's own gradient, clipped
jointly over rows and dense part to L2 norm ``clip``
(:func:`models.dp.clip_per_record`). Adding or removing one rating then moves
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
each hold one rating, its one row and their own copy of the dense vector, and
:func:`models.training.user_losses` (hence :func:`models.recommenders.predict`)
is run on that batch: one backward pass gives every record's gradient, no
second model implementation. Records are processed in chunks so that the
per-record dense copies stay below ``chunk_elements`` floats: DeepFM's dense
vector (1,761,065 entries at d=64 with ML-100K's 103 features, SecEmb Table 9)
is 7 MB per record, so a chunk holds 4 records and a user with 100 ratings
costs 100 dense-sized per-record gradients instead of one batched gradient.

Private parameters never leave the device and are not part of the release:
they are updated exactly as without DP, by :func:`models.training._update_private`
on the user's ordinary (mean) loss, whose first gradient is taken here.
"""

from __future__ import annotations

import numpy as np
import torch

from models.batch import UserBatch
from models.dp import clip_per_record
from models.spec import ModelSpec
from models.training import BatchResult, PrivateState, _check, _update_private, user_losses

CHUNK_ELEMENTS = 1 << 24  # floats of per-record dense copies (parameter + gradient) one chunk may hold


def _records(batch: UserBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner user [R], position in that user's padded rating list [R]) of every real rating."""
    owner, pos = torch.nonzero(batch.mask > 0, as_tuple=True)
    return owner, pos


def record_gradients(spec: ModelSpec, rows: torch.Tensor, user: torch.Tensor, dense: torch.Tensor,
                     batch: UserBatch, reg: float, owner: torch.Tensor, pos: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unclipped gradients of records (owner[r], pos[r]): (row grads [R, row_dim], dense grads [R, D], local row [R]).

    ``rows`` [B, K, row_dim], ``user`` [B, P] (constants), ``dense`` [D] are the downloaded values.
    """
    local = batch.local_items[owner, pos]
    n = len(owner)
    rec_rows = rows[owner, local].detach().clone().unsqueeze(1).requires_grad_(True)  # [R, 1, row_dim]
    rec_dense = dense.detach().expand(n, -1).clone().requires_grad_(True)
    one = UserBatch(local_items=torch.zeros((n, 1), dtype=torch.int64),
                    ratings=batch.ratings[owner, pos].unsqueeze(1), mask=torch.ones((n, 1)),
                    user_x=batch.user_x[owner], item_x=batch.item_x[owner, pos].unsqueeze(1),
                    n_ratings=torch.ones(n, dtype=torch.int64))
    # one rating per pseudo-user: user_losses = its squared error + reg x (||q||^2 + ||E||^2 + ||p_u||^2);
    # p_u is a constant here, so its term adds no gradient to the public parameters
    user_losses(spec, rec_rows, user[owner].detach(), rec_dense, one, reg).sum().backward()
    return rec_rows.grad.squeeze(1), rec_dense.grad, local


def clipped_public_gradients(spec: ModelSpec, rows: np.ndarray, user: np.ndarray, dense: np.ndarray,
                             batch: UserBatch, reg: float, clip: float,
                             chunk_elements: int = CHUNK_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the sum of its records' jointly clipped gradients: (rows [B, K, row_dim], dense [B, D]) float32."""
    rows_t, user_t = torch.from_numpy(np.asarray(rows, np.float32)), torch.from_numpy(np.asarray(user, np.float32))
    dense_t = torch.from_numpy(np.asarray(dense, np.float32))
    row_out = torch.zeros(rows_t.shape, dtype=torch.float32)
    dense_out = torch.zeros((rows_t.shape[0], spec.dense_size), dtype=torch.float32)
    owner, pos = _records(batch)
    step = max(1, chunk_elements // (2 * spec.dense_size + 4 * spec.row_dim))
    for lo in range(0, len(owner), step):  # chunks of records: memory bounded by chunk_elements
        o, p = owner[lo:lo + step], pos[lo:lo + step]
        g_rows, g_dense, local = record_gradients(spec, rows_t, user_t, dense_t, batch, reg, o, p)
        g_rows, g_dense = clip_per_record(g_rows, g_dense, clip=clip)
        row_out.index_put_((o, local), g_rows, accumulate=True)
        dense_out.index_add_(0, o, g_dense)
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
    new_private = _update_private(spec, rows_t, dense_t, user_t, private, batch, lr, reg, steps)
    row_grads, dense_grads = clipped_public_gradients(spec, rows, private.params, dense, batch, reg, clip)
    return BatchResult(row_grads=row_grads, dense_grads=dense_grads,
                       loss=loss.detach().numpy().astype(np.float64), n_ratings=batch.n_ratings.numpy().copy(),
                       private=new_private)
