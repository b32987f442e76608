"""FedMF's matrix factorisation (FedMF Section 3, eqs. 2-6 and Algorithm 1), one user at a time.

Prediction is <u_i, v_j> (no biases, as in the FedMF paper). One participation
of user i with item matrix V, learning rate gamma, regularisation lambda (user)
and mu (items):

    e_j      = r_ij - <u_i, v_j>                     for the rated items j
    grad_u   = -2 sum_j v_j e_j + 2 lambda u_i       (eq. 5, this user's terms)
    grad_v_j = -2 u_i e_j + 2 mu v_j                 (eq. 6, this user's terms)
    u_i     <- u_i - gamma grad_u                    (eq. 3, on the device)
    upload     Gradient_j = gamma grad_v_j           (Algorithm 1; the server does v_j <- v_j - Gradient_j)

``distributed_mf`` uploads Gradient in plaintext; ``fedmf`` uploads it
encrypted. Both call this one function, so they are twins by construction.
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


def init_item_matrix(n_items: int, dim: int, seed: int, std: float) -> np.ndarray:
    """Deterministic initial V, built by the server."""
    return np.random.default_rng([seed, ITEM_SALT]).normal(0.0, std, size=(n_items, dim))


def user_step(u: np.ndarray, v_rated: np.ndarray, ratings: np.ndarray, hp: MFHyper) -> tuple[np.ndarray, np.ndarray, float]:
    """One FedMF user update: returns (new u, Gradient rows for the rated items, squared-error loss)."""
    err = ratings - v_rated @ u
    grad_u = -2.0 * (v_rated.T @ err) + 2.0 * hp.reg_u * u
    grad_v = -2.0 * np.outer(err, u) + 2.0 * hp.reg_v * v_rated
    return u - hp.lr * grad_u, hp.lr * grad_v, float(np.mean(err**2)) if len(err) else 0.0


def squared_error(u: np.ndarray, v_items: np.ndarray, ratings: np.ndarray) -> tuple[float, int]:
    """Sum of squared errors and count, for local test evaluation."""
    if len(ratings) == 0:
        return 0.0, 0
    return float(np.sum((ratings - v_items @ u) ** 2)), int(len(ratings))
