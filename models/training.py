"""Local step of a batch of users for the model-based protocols (plaintext, SecEmb, Secure FedRec).

Each user holds only the item rows it fetched and the public dense vector.
It computes its loss on its training ratings of those items (mean squared
error + reg x regulariser), the gradients of all three parameter groups at the
downloaded point (the public ones are uploaded, as in SecEmb Algorithm 3), and
then updates its private parameters with Adam for ``steps`` steps.

The Flower client runs this as a batch of one and the batched simulation
engine as a batch of a round's users: the same code, so twins and engines
train identically by construction. The batch loss is the SUM of the users'
losses; since users share no parameter tensor (each has its own copy of the
dense vector), the gradient of every leaf is exactly its user's own gradient.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from models.batch import UserBatch
from models.init import init_private
from models.private_adam import adam_step, bias_corrections
from models.recommenders import (DenseParams, Memo, dense_blocks, dense_squares, fixed, predict, regularised_dense,
                                 regularizer, row_squares)
from models.spec import ModelSpec


@dataclass
class PrivateState:
    """B users' private parameters and Adam moments (numpy), one row per user."""

    params: np.ndarray  # float32 [B, P]
    m: np.ndarray       # float32 [B, P]
    v: np.ndarray       # float32 [B, P]
    step: np.ndarray    # int64 [B]: Adam steps taken so far

    def __len__(self) -> int:
        return int(self.step.shape[0])

    @classmethod
    def initial(cls, spec: ModelSpec, user_ids: Sequence[int] | np.ndarray, seed: int) -> PrivateState:
        """The seeded initial state of each user (as a client starts it): init_private, zero moments."""
        params = np.zeros((len(user_ids), spec.private_size), dtype=np.float32)
        for row, user in enumerate(user_ids):  # once per user per run; init_private seeds a stream per user
            params[row] = init_private(spec, int(user), seed)
        return cls(params=params, m=np.zeros_like(params), v=np.zeros_like(params),
                   step=np.zeros(len(params), dtype=np.int64))

    @classmethod
    def from_dicts(cls, states: Sequence[dict[str, np.ndarray]]) -> PrivateState:
        """Stack per-user dicts {"params", "m", "v", "step" (shape (1,))} as kept in Context.state."""
        return cls(params=np.stack([s["params"] for s in states]).astype(np.float32),
                   m=np.stack([s["m"] for s in states]).astype(np.float32),
                   v=np.stack([s["v"] for s in states]).astype(np.float32),
                   step=np.concatenate([np.asarray(s["step"], dtype=np.int64).reshape(1) for s in states]))

    def to_dicts(self) -> list[dict[str, np.ndarray]]:
        """Per-user dicts in the Context.state format (step of shape (1,))."""
        return [{"params": self.params[i].copy(), "m": self.m[i].copy(), "v": self.v[i].copy(),
                 "step": self.step[i:i + 1].copy()} for i in range(len(self))]

    def take(self, idx: np.ndarray) -> PrivateState:
        """The rows of users ``idx`` (a copy)."""
        return PrivateState(self.params[idx], self.m[idx], self.v[idx], self.step[idx])

    def put(self, idx: np.ndarray, other: PrivateState) -> None:
        """Overwrite the rows of users ``idx`` with ``other``'s (in order)."""
        self.params[idx], self.m[idx], self.v[idx], self.step[idx] = other.params, other.m, other.v, other.step


@dataclass
class BatchResult:
    row_grads: np.ndarray    # float32 [B, K, row_dim]; zero on padded rows
    dense_grads: np.ndarray  # float32 [B, dense_size]: each user's own dense gradient
    loss: np.ndarray         # float64 [B]: each user's training loss at the downloaded model
    n_ratings: np.ndarray    # int64 [B]
    private: PrivateState    # after the Adam steps


def user_losses(spec: ModelSpec, rows: torch.Tensor, user: torch.Tensor, dense: torch.Tensor | DenseParams,
                batch: UserBatch, reg: float, memo: Memo | None = None) -> torch.Tensor:
    """Each user's loss [B]: mean squared error over its real ratings (0 with none) + reg x regulariser
    (its rows' part per ``spec.reg_form``).

    ``memo``: an empty dict kept across calls in which rows, dense and batch do not change (the private
    Adam steps): the terms without the user's parameters are computed once (:func:`models.recommenders.fixed`).
    """
    err = (predict(spec, rows, user, dense, batch, memo) - batch.ratings) ** 2 * batch.mask
    count = fixed(memo, "count", lambda: batch.n_ratings.clamp(min=1).to(err.dtype))
    mse = err.sum(1) / count
    rows_part = None
    if spec.reg_form == "rating":  # each rating carries its own row's term: the rows' sum over the count
        rows_part = fixed(memo, "rows_part", lambda: row_squares(rows)) / count
    return mse + reg * regularizer(spec, rows, user, dense, rows_part, memo)


def _check(spec: ModelSpec, rows: np.ndarray, dense: np.ndarray, n_users: int, batch: UserBatch) -> None:
    if rows.ndim != 3 or rows.shape[0] != n_users or rows.shape[2] != spec.row_dim:
        raise ValueError(f"rows have shape {rows.shape}, expected ({n_users}, K, {spec.row_dim})")
    if dense.shape != (spec.dense_size,):
        raise ValueError(f"dense vector has shape {dense.shape}, expected ({spec.dense_size},)")
    if len(batch) != n_users:
        raise ValueError(f"batch holds {len(batch)} users, the private state {n_users}")


def _flushing() -> bool:
    """Whether this thread already computes with denormals flushed (1e-30 x 1e-10 is a float32 denormal)."""
    return (torch.tensor(1e-30, dtype=torch.float32) * 1e-10).item() == 0.0


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Compute with float32 values below 1.2e-38 as zero on this thread (x86 FTZ/DAZ), then restore the flag.

    Why: under Adam with an L2 term, weights that only decay (e.g. a dead MLP unit's) shrink
    geometrically into the denormal range, and MKL's sgemm then slows down about 3x. A DeepFM
    TernQuant run on ml_100k had 1,467 denormal dense parameters by round 1,800. Its rounds took
    4.87 and 4.63 s with the flag off, and 1.61 and 1.53 s with it on (alternating 15-round blocks,
    rounds 1,801-1,860). Values this small are zero at float32 precision. Both engines compute
    inside it: a user's local steps (:func:`train_batch`) and the server's optimizer step. So they
    stay one arithmetic. The flag is per thread and process-wide in effect (numpy too), so it is
    restored on exit rather than left on for the caller.
    """
    was = _flushing()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was:
            torch.set_flush_denormal(False)


def train_batch(spec: ModelSpec, rows: np.ndarray, dense: np.ndarray, private: PrivateState, batch: UserBatch,
                lr: float, reg: float, steps: int) -> BatchResult:
    """One participation of each of B users (``private`` and ``batch`` in the same user order).

    ``rows`` [B, K, row_dim] float32 are the users' fetched rows (zero-padded),
    ``dense`` [dense_size] the public dense vector every user downloaded.
    """
    with denormals_flushed():
        return _train_batch(spec, rows, dense, private, batch, lr, reg, steps)


def _train_batch(spec: ModelSpec, rows: np.ndarray, dense: np.ndarray, private: PrivateState, batch: UserBatch,
                 lr: float, reg: float, steps: int) -> BatchResult:
    n_users = len(private)
    rows = np.asarray(rows, dtype=np.float32)
    dense = np.asarray(dense, dtype=np.float32)
    _check(spec, rows, dense, n_users, batch)
    rows_t = torch.from_numpy(rows.copy()).requires_grad_(True)
    # each user's own copy of the dense vector; its leaves are the pieces the model reads, views of that copy
    # (the same strides as a flat leaf's views, so the same kernels), each given its own gradient by autograd
    copies = torch.from_numpy(dense).expand(n_users, -1).clone()
    dense_t = {name: view.detach().requires_grad_(True) for name, view in dense_blocks(spec, copies).items()}
    user_t = torch.from_numpy(private.params.astype(np.float32, copy=True)).requires_grad_(True)
    # The terms that depend only on rows, dense and batch (models.recommenders.fixed), computed once here and
    # reused by the private steps, whose rows, dense and batch are the same values; the dense L2 value is given.
    memo, l2_grads = _shared_dense_l2(spec, dense, reg, n_users)
    loss = user_losses(spec, rows_t, user_t, dense_t, batch, reg, memo)
    # the gradients as autograd computes them (a leaf's .grad would first be copied to the leaf's layout)
    row_grad, user_grad, *piece_grads = torch.autograd.grad(loss.sum(), [rows_t, user_t, *dense_t.values()],
                                                            allow_unused=True)
    dense_grads = _flat_gradients(spec, dict(zip(dense_t, piece_grads)), n_users, l2_grads)
    fixed_terms = {key: None if term is None else term.detach() for key, term in memo.items()}
    new_private = _update_private(spec, rows_t.detach(), {name: leaf.detach() for name, leaf in dense_t.items()},
                                  user_t.detach(), user_grad, private, batch, lr, reg, steps, fixed_terms)
    return BatchResult(row_grads=_array(row_grad, rows.shape), dense_grads=dense_grads,
                       loss=loss.detach().numpy().astype(np.float64), n_ratings=batch.n_ratings.numpy().copy(),
                       private=new_private)


def _array(grad: torch.Tensor | None, shape: tuple[int, ...]) -> np.ndarray:
    """A gradient as a C-contiguous float32 array (zeros for an unused input)."""
    return np.zeros(shape, np.float32) if grad is None else np.ascontiguousarray(grad.numpy(), dtype=np.float32)


def _flat_gradients(spec: ModelSpec, grads: dict[str, torch.Tensor | None], n_users: int,
                    added: DenseParams) -> np.ndarray:
    """The users' dense gradients float32 [B, dense_size] from the gradients of :func:`dense_blocks`' pieces,
    plus ``added[piece]`` (the dense L2 term's gradient) where given, each piece written once through the same
    views of the output (one pass, where joining them and then adding was three)."""
    out = np.empty((n_users, spec.dense_size), dtype=np.float32)
    targets = dense_blocks(spec, torch.from_numpy(out))
    for name, piece in grads.items():
        target = targets[name]
        grad = torch.zeros(target.shape) if piece is None else piece
        if name in added:  # torch, not numpy: it walks a permuted gradient (W's blocks) in the target's order
            torch.add(grad, added[name], out=target)
        else:
            target.copy_(grad)
    return out


def _shared_dense_l2(spec: ModelSpec, dense: np.ndarray, reg: float, n_users: int) -> tuple[Memo, DenseParams]:
    """The regulariser's dense part as a constant of the users' loss (a memo for :func:`fixed`), computed once
    from the one dense vector every user downloaded, and its gradient 2 reg x for each piece it covers
    ([1, *shape], to add to every user's gradient); nothing for a model whose regulariser has no dense part.

    Why: every user's copy of the dense vector is the same x, so the term's gradient is 2 reg x for all of
    them. Backpropagating it through each user's copy, and squaring the copies again for the private steps'
    memo, were about a fifth of a DeepFM round on ml_100k (x**2 and its backward over B x 873K values). The
    result is the same bits: the value is :func:`dense_squares` of one copy; autograd's gradient of
    reg * sum(x**2) is fl(reg) * fl(2x), one rounding of 2 reg x, as is x * fl(2 reg); and it was the sum of
    two parts of a user's gradient (the flat copy's views taken for the regulariser apart from the model's),
    as :func:`_flat_gradients` adds them (float addition is commutative).
    """
    one = torch.from_numpy(dense).unsqueeze(0)
    value = dense_squares(spec, one)
    if value is None:
        return {}, {}
    covered = regularised_dense(spec)
    doubled = dense_blocks(spec, one * np.float32(2 * reg))
    return ({"dense_part": value.expand(n_users)},
            {name: piece for name, piece in doubled.items() if covered is None or name in covered})


def _update_private(spec: ModelSpec, rows: torch.Tensor, dense: torch.Tensor | DenseParams, user: torch.Tensor,
                    user_grad: torch.Tensor | None, private: PrivateState, batch: UserBatch, lr: float, reg: float,
                    steps: int, known: Memo | None = None) -> PrivateState:
    """Adam on the private parameters only, resuming each user's moments; the public parts stay fixed.

    The first step reuses the gradient computed for the upload (``user_grad``, at the parameters ``user``).
    """
    params = user
    grads = user_grad if user_grad is not None else torch.zeros_like(params)
    m, v = torch.from_numpy(private.m.astype(np.float32)), torch.from_numpy(private.v.astype(np.float32))
    step = torch.from_numpy(private.step.astype(np.int64))
    # rows, dense and batch are constants here: their terms are computed once, not per step; ``known``: terms
    # the upload's forward already computed from the same values (detached)
    memo: Memo = dict(known or {})
    step_size, bc2_sqrt = bias_corrections(step, steps, lr, dtype=params.dtype)  # every step's, at once
    for i in range(steps):
        if i > 0:
            leaf = params.requires_grad_(True)  # params is a fresh tensor (adam_step's output), never shared
            loss = user_losses(spec, rows, leaf, dense, batch, reg, memo).sum()
            (grads,) = torch.autograd.grad(loss, leaf)
            params = leaf.detach()
        params, m, v, step = adam_step(params, grads, m, v, step, lr,
                                       corrections=(step_size[:, i:i + 1], bc2_sqrt[:, i:i + 1]))
    return PrivateState(params=params.numpy().astype(np.float32), m=m.numpy().astype(np.float32),
                        v=v.numpy().astype(np.float32), step=step.numpy().astype(np.int64))


def evaluate_batch(spec: ModelSpec, rows: np.ndarray, dense: np.ndarray, private_params: np.ndarray,
                   batch: UserBatch) -> tuple[np.ndarray, np.ndarray]:
    """Each user's sum of squared errors on its (test) ratings, float64 [B], and their count, int64 [B]."""
    params = np.asarray(private_params, dtype=np.float32)
    rows = np.asarray(rows, dtype=np.float32)
    dense = np.asarray(dense, dtype=np.float32)
    _check(spec, rows, dense, len(params), batch)
    with torch.no_grad():
        pred = predict(spec, torch.from_numpy(rows), torch.from_numpy(params),
                       torch.from_numpy(dense).expand(len(params), -1), batch)
    err = (pred.numpy().astype(np.float64) - batch.ratings.numpy().astype(np.float64)) ** 2
    return (err * batch.mask.numpy()).sum(1), batch.n_ratings.numpy().copy()
