"""Client pieces shared by ``distributed_mf`` and ``fedmf``: the user vector and the upload set."""

from __future__ import annotations

import secrets

import numpy as np
from flwr.app import Context

from clients.environment import ClientEnv
from models.fedmf_mf import MFHyper, init_user_vector
from schemas.validation import array_record

USER_KEY = "mf_user"


def hyper(env: ClientEnv) -> MFHyper:
    s = env.cfg.strategy
    return MFHyper(lr=float(s.lr), reg_u=float(s.reg_u), reg_v=float(s.reg_v))


def load_user_vector(context: Context, env: ClientEnv) -> np.ndarray:
    if USER_KEY in context.state:
        return context.state[USER_KEY]["u"].numpy().copy()
    return init_user_vector(int(env.cfg.model.dim), env.user.user_id, env.seed,
                            float(env.cfg.model.init_std))


def save_user_vector(context: Context, u: np.ndarray) -> None:
    context.state[USER_KEY] = array_record(u=u.astype(np.float64))


def rated_items(env: ClientEnv) -> tuple[np.ndarray, np.ndarray]:
    """The user's training items (sorted, unique) and their ratings."""
    order = np.argsort(env.user.train_items, kind="stable")
    return env.user.train_items[order].astype(np.int64), env.user.train_ratings[order].astype(np.float64)


def upload_items(mode: str, rated: np.ndarray, n_items: int, pad_to: int) -> np.ndarray:
    """Which item rows a user uploads: PartText = rated, FullText = all, padded = rated + random unrated.

    Padding items come from ``secrets`` so the server cannot recompute them.
    A user with more than ``pad_to`` rated items uploads all of them (its
    count then exceeds pad_to: documented leak of padded mode).
    """
    if mode == "parttext":
        return rated
    if mode == "fulltext":
        return np.arange(n_items, dtype=np.int64)
    need = max(pad_to - len(rated), 0)
    free = np.setdiff1d(np.arange(n_items, dtype=np.int64), rated, assume_unique=True)
    need = min(need, len(free))
    picks = np.array(secrets.SystemRandom().sample(range(len(free)), need), dtype=np.int64)
    items = np.concatenate([rated, free[picks]]) if need else rated
    return np.sort(items)


def scatter_rows(items: np.ndarray, rated: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Rows for ``items`` (sorted): the rated items' gradients, zeros elsewhere."""
    rows = np.zeros((len(items), grads.shape[1]), dtype=np.float64)
    rows[np.searchsorted(items, rated)] = grads
    return rows
