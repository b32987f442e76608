"""Client pieces shared by ``distributed_mf`` and ``fedmf``: the user vector, the upload set and the step.

:func:`compute_upload` is the one implementation of what a user computes
from the V it received: both protocols' handlers call it (``fedmf`` then
encrypts the rows) and so does the leakage attack
(:mod:`simulations.leakage_attack`), which therefore attacks exactly the
uploads the Flower client produces.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
from flwr.app import Context

from clients.environment import ClientEnv
from clients.private_state import device_state_dir, keep_in_context, load_version, oldest_needed, store_arrays
from models.fedmf_mf import MFHyper, init_user_vector, user_step
from recdata import UserData
from schemas.config import AppConfig

USER_KEY = "mf_user"


def hyper(cfg: AppConfig) -> MFHyper:
    """The step's hyper-parameters from the run config (a device and the batched engine read the same keys)."""
    s = cfg.strategy
    return MFHyper(lr=float(s.lr), reg_u=float(s.reg_u), reg_v=float(s.reg_v))


def load_user_vector(context: Context, env: ClientEnv, before: int | None = None) -> np.ndarray:
    """u as of the newest round < ``before`` (None: the newest), kept per round as clients.private_state
    explains (a round redone after a resume starts from the state before it)."""
    found = load_version(context, device_state_dir(env, context), env.user.user_id, USER_KEY, before)
    if found is not None:
        return found["u"].astype(np.float64)
    return init_user_vector(int(env.cfg.model.dim), env.user.user_id, env.seed,
                            float(env.cfg.model.init_std))


def save_user_vector(context: Context, u: np.ndarray, env: ClientEnv, rnd: int) -> None:
    """Keep round ``rnd``'s u in ``Context.state`` and on the device's own disk when it has a state folder."""
    state = {"u": u.astype(np.float64)}
    keep_in_context(context, USER_KEY, state, rnd)
    store_arrays(device_state_dir(env, context), env.user.user_id, USER_KEY, state, rnd,
                 oldest_needed(rnd, int(env.cfg.checkpoint_every)))


def rated_items(env: ClientEnv) -> tuple[np.ndarray, np.ndarray]:
    """The user's training items (sorted, unique) and their ratings."""
    return rated_items_of(env.user)


def rated_items_of(user: UserData) -> tuple[np.ndarray, np.ndarray]:
    """A user's training items (sorted, unique) and their ratings."""
    return sorted_by_item(np.array([0, len(user.train_items)]), user.train_items, user.train_ratings)


def sorted_by_item(ptr: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ratings laid out by user (user u owns entries ptr[u]:ptr[u+1]), each user's entries ordered by item id.

    The order a user's ratings enter the step (:func:`rated_items_of` for one
    user on its device; the batched engine for the whole split at once), so
    both add the same numbers in the same order.
    """
    ptr = np.asarray(ptr, dtype=np.int64)
    owner = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    order = np.lexsort((items, owner))  # stable: by owner, then item
    return np.asarray(items)[order].astype(np.int64), np.asarray(ratings)[order].astype(np.float64)


@dataclass(frozen=True)
class MFUpload:
    """What one participation produces: the new private u and the (plaintext) rows to upload."""

    u: np.ndarray
    items: np.ndarray  # uploaded item ids, sorted
    rows: np.ndarray   # Gradient rows for ``items`` (zeros for padding / unrated items)
    loss: float        # mean squared training error
    n_ratings: int


def compute_upload(V: np.ndarray, items_r: np.ndarray, ratings: np.ndarray, u: np.ndarray, hp: MFHyper,
                   mode: str, pad_to: int) -> MFUpload:
    """FedMF's user step on the received V, then the mode's upload set (PartText, FullText, padded)."""
    u_new, grads, loss = user_step(u, V[items_r], ratings, hp)
    items = upload_items(mode, items_r, V.shape[0], pad_to)
    return MFUpload(u_new, items, scatter_rows(items, items_r, grads), loss, len(ratings))


def compute_user_upload(V: np.ndarray, context: Context, env: ClientEnv, rnd: int) -> MFUpload:
    """:func:`compute_upload` for this device's user and its state before round ``rnd``; keeps the new u
    as round ``rnd``'s."""
    items_r, ratings = rated_items(env)
    s = env.cfg.strategy
    up = compute_upload(V, items_r, ratings, load_user_vector(context, env, before=rnd), hyper(env.cfg), s.mode,
                        int(s.pad_to or 0))
    save_user_vector(context, up.u, env, rnd)
    return up


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
