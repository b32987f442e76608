"""FedMF's matrix factorisation (FedMF Section 3, eqs. 2-6 and Algorithm 1), on a batch of users.

Prediction is <u_i, v_j> (no biases, as in the FedMF paper). One participation
of user i with item matrix V, learning rate gamma, regularisation lambda (user)
and mu (items):

    e_j      = r_ij - <u_i, v_j>                     for the rated items j
    grad_u   = -2 sum_j v_j e_j + 2 lambda u_i       (eq. 5, this user's terms)
    grad_v_j = -2 u_i e_j + 2 mu v_j                 (eq. 6, this user's terms)
    u_i     <- u_i - gamma grad_u                    (eq. 3, on the device)
    upload     Gradient_j = gamma grad_v_j           (Algorithm 1; the server does v_j <- v_j - Gradient_j)

The step works on a batch of users given as one flat list of (user slot,
item row, rating) entries: the batched engine (``engine=batched``) trains a
whole round's users in one call, and a Flower client is a batch of one
(:func:`user_step`), so both run the same arithmetic. Per-user sums are
segment sums in entry order (``np.add.at`` / ``np.bincount``), which gives a
user the same floating-point result whether it is alone or in a batch.
``distributed_mf`` uploads Gradient in plaintext; ``fedmf`` uploads it
encrypted; both call this code, so they are twins by construction. The
server's v_j <- v_j - sum_i Gradient_ij is :func:`apply_gradient_sum`, the one
implementation used by the ``distributed_mf`` strategy and by the engine
(which also applies it to ``fedmf``'s fixed-point integers).
Float64 throughout, like the paper's numpy prototype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.init import ITEM_SALT, USER_SALT


@dataclass(frozen=True)
class MFHyper:
    lr: float
    reg_u: float
    reg_v: float


def init_user_vector(dim: int, user_id: int, seed: int, std: float) -> np.ndarray:
    """Deterministic initial u_i (same in every twin for the same seed)."""
    return np.random.default_rng([seed, USER_SALT, user_id]).normal(0.0, std, size=dim)


def init_user_matrix(dim: int, user_ids: np.ndarray, seed: int, std: float) -> np.ndarray:
    """Initial u of several users as rows [len(user_ids), dim]; each row is :func:`init_user_vector`.

    One generator per user (seeded by its id) is what makes a user's start
    independent of who else exists, so this loops over the given users.
    """
    out = np.empty((len(user_ids), dim), dtype=np.float64)
    for row, uid in enumerate(np.asarray(user_ids, dtype=np.int64)):
        out[row] = init_user_vector(dim, int(uid), seed, std)
    return out


def init_item_matrix(n_items: int, dim: int, seed: int, std: float) -> np.ndarray:
    """Deterministic initial V, built by the server."""
    return np.random.default_rng([seed, ITEM_SALT]).normal(0.0, std, size=(n_items, dim))


def _predict(U: np.ndarray, v_rows: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """<u_seg(k), v_k> for every entry k (row-wise products summed over the embedding)."""
    return np.sum(U[seg] * v_rows, axis=1)


def user_step_batch(U: np.ndarray, v_rows: np.ndarray, seg: np.ndarray, ratings: np.ndarray, hp: MFHyper
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One FedMF update of B users at once.

    ``U`` [B, d]: the users' vectors; entries k = 0..N-1 are user ``seg[k]``'s
    rating ``ratings[k]`` of the item whose received row is ``v_rows[k]`` [N, d].
    Returns (new U [B, d], Gradient rows [N, d] (one per entry), each user's
    mean squared training error [B], 0 for a user without entries).
    """
    B = U.shape[0]
    seg = np.asarray(seg, dtype=np.int64)
    err = ratings - _predict(U, v_rows, seg)
    sum_v_err = np.zeros_like(U)
    np.add.at(sum_v_err, seg, v_rows * err[:, None])
    grad_u = -2.0 * sum_v_err + 2.0 * hp.reg_u * U
    grad_v = -2.0 * err[:, None] * U[seg] + 2.0 * hp.reg_v * v_rows
    count = np.bincount(seg, minlength=B)
    sse = np.bincount(seg, weights=err**2, minlength=B)
    loss = np.divide(sse, count, out=np.zeros(B), where=count > 0)
    return U - hp.lr * grad_u, hp.lr * grad_v, loss


def user_step(u: np.ndarray, v_rated: np.ndarray, ratings: np.ndarray, hp: MFHyper
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """One FedMF user update: returns (new u, Gradient rows for the rated items, squared-error loss).

    A batch of one of :func:`user_step_batch`.
    """
    U, grads, loss = user_step_batch(u[None, :], v_rated, np.zeros(len(ratings), dtype=np.int64), ratings, hp)
    return U[0], grads, float(loss[0])


def squared_error_batch(U: np.ndarray, v_rows: np.ndarray, seg: np.ndarray, ratings: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per-user sum of squared test errors [B] and counts [B] (entries laid out as in :func:`user_step_batch`)."""
    B = U.shape[0]
    seg = np.asarray(seg, dtype=np.int64)
    err = ratings - _predict(U, v_rows, seg)
    return np.bincount(seg, weights=err**2, minlength=B), np.bincount(seg, minlength=B)


def squared_error(u: np.ndarray, v_items: np.ndarray, ratings: np.ndarray) -> tuple[float, int]:
    """Sum of squared errors and count, for local test evaluation (a batch of one of :func:`squared_error_batch`)."""
    sse, count = squared_error_batch(u[None, :], v_items, np.zeros(len(ratings), dtype=np.int64), ratings)
    return float(sse[0]), int(count[0])


def apply_gradient_sum(V: np.ndarray, items: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The server's update v_j <- v_j - sum of the uploaded Gradient_j; returns the new V.

    ``items`` [N] and ``rows`` [N, d] are all of a round's uploads
    concatenated (in user order); rows are summed per item in that order, so
    the Flower strategy and the batched engine add the same numbers in the
    same order. Works for any numeric dtype: ``fedmf``'s engine applies it
    to the codec's fixed-point integers, where the sum is exact.
    """
    total = np.zeros_like(V)
    np.add.at(total, np.asarray(items, dtype=np.int64), rows)
    return V - total
