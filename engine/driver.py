"""The interface every batched-engine protocol driver implements.

A driver holds one protocol's whole federation in one process: the public model
(through the protocol's own strategy object, so sampling and the server update are
the Flower path's code), every user's private state as arrays indexed by user, and
the protocol's aggregation arithmetic (the same pure functions the Flower strategy
calls). The round loop (engine/loop.py) owns sampling, the evaluation schedule and
the records; a driver only trains a given set of users and evaluates a given set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from recdata import FederatedSplit
from recdata.dataset import DatasetMeta
from schemas.config import AppConfig


class StateMismatch(ValueError):
    """Checkpoint arrays that do not fit this run's driver (names, shapes or dtypes)."""


class Driver(ABC):
    """One protocol on the batched engine.

    Subclasses are registered by name in engine/registry.py (the name is
    ``cfg.strategy.name``). The loop builds one driver per run and calls
    :meth:`sampler` for the strategy object that does the seeded sampling.
    """

    cfg: AppConfig  # the run's config (every driver keeps it)
    checkpointable: bool = False  # whether checkpoint_state / restore_state are implemented

    @abstractmethod
    def __init__(self, cfg: AppConfig, split: FederatedSplit, meta: DatasetMeta) -> None:
        """Build the public model, every user's private state and the codecs."""

    @abstractmethod
    def sampler(self) -> Any:
        """The protocol's Flower strategy object (``users`` set to 0..n_users-1), whose
        ``sample_users(rnd)`` and ``evaluation_users()`` the loop calls, so sampling is
        literally the Flower path's code."""

    @abstractmethod
    def train_round(self, rnd: int, users: np.ndarray) -> dict[str, float]:
        """Train ``users`` (int64 user ids, sampling order) for round ``rnd`` and apply the
        server update. Returns at least ``train_loss`` (the same number the Flower path
        records for the round) and the computed per-client bytes ``bytes_up`` /
        ``bytes_down`` (mean per sampled client, from :meth:`message_sizes`)."""

    @abstractmethod
    def evaluate(self, users: np.ndarray) -> tuple[float, int]:
        """Test SSE and rating count over ``users`` on the current public model (for
        protocols whose Flower path clips/encodes metric sums, the same clipped value)."""

    def ranking(self, users: np.ndarray) -> np.ndarray | None:
        """Summed [hits, ndcg, ranked] of ``users``' ranking cases, as the Flower path's server gets them
        (None: ``train.ranking`` off, or a protocol that does not rank)."""
        return None

    @abstractmethod
    def message_sizes(self, users: np.ndarray | None = None) -> dict[str, float]:
        """Serialized bytes per client the Flower path would measure for one training
        round of ``users`` (None: the last trained round): ``bytes_up``, ``bytes_down``
        (mean per client) - computed by the protocol's schema-module size function."""

    def summary(self) -> dict[str, Any]:
        """Extra final results for results.json (like a strategy's ``server_state_summary``); default none."""
        return {}

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """Everything a resumed run needs to continue as the uninterrupted run would: the server's state and,
        since on this engine the users' devices are this process, every user's private state (the Flower
        path's devices keep their own). Plain numeric arrays (saved with ``np.savez``, never pickled)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no checkpoints")

    def restore_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Load :meth:`checkpoint_state`'s arrays into a freshly built driver; :class:`StateMismatch` when
        they do not fit it."""
        raise NotImplementedError(f"{type(self).__name__} keeps no checkpoints")


def restore_array(arrays: dict[str, np.ndarray], name: str, like: np.ndarray) -> np.ndarray:
    """A copy of ``arrays[name]``, which must have ``like``'s shape and dtype (:class:`StateMismatch` if not)."""
    saved = arrays.get(name)
    if saved is None:
        raise StateMismatch(f"the checkpoint has no {name!r}")
    if saved.shape != like.shape or saved.dtype != like.dtype:
        raise StateMismatch(f"{name!r} is {saved.dtype}{list(saved.shape)} in the checkpoint, "
                            f"{like.dtype}{list(like.shape)} in this run")
    return np.array(saved, copy=True)


def server_arrays(strategy: Any) -> dict[str, np.ndarray]:
    """The protocol strategy's own checkpoint (the Flower path's), under ``server.``."""
    return {f"server.{k}": v for k, v in strategy.checkpoint_state().items()}


def restore_server(strategy: Any, arrays: dict[str, np.ndarray]) -> None:
    """Load :func:`server_arrays`' part of ``arrays`` back into the strategy (which checks its shapes)."""
    try:
        strategy.restore_state({k.removeprefix("server."): v for k, v in arrays.items() if k.startswith("server.")})
    except (KeyError, ValueError) as err:
        raise StateMismatch(f"the server's state does not fit this run: {err}") from err
