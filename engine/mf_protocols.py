"""Batched-engine drivers of FedMF's two protocols: ``distributed_mf`` and ``fedmf`` (every mode).

Both train a round's users in one call of :func:`models.fedmf_mf.user_step_batch`
(the function a Flower client runs as a batch of one) and keep every user's
private u in one [n_users, d] array, filled lazily with the device's own
seeded start (:func:`models.fedmf_mf.init_user_matrix`) when a user first
appears. What differs is the server's arithmetic, taken from each protocol:

* ``distributed_mf``: V in the clear, v_j <- v_j - sum of Gradient_j, by
  :func:`models.fedmf_mf.apply_gradient_sum`, which the Flower strategy calls too.
* ``fedmf``: the Paillier path sums the users' fixed-point *integers*
  homomorphically and each user decodes what it decrypts. Without keys the
  engine keeps those integers E (the stored entries minus their public offset):
  users see ``codec.decode_entries(E)`` (with the same value_bound refusal) and
  the round does E <- E - sum of ``codec.encode_entries(Gradient rows)``, each
  user's rows encoded separately as its upload is, the sum exact in int64 (the
  codec's headroom guarantees no slot overflows, so no carry is lost on either
  path). FullText's unrated rows and padding rows are zeros, which encode to 0
  and change no sum, so only rated rows are summed in every mode. Training loss
  and test sums are the same fixed-point sums the decrypted metric aggregate
  holds (:func:`schemas.fedmf.plain_metric_sum`), refused below ``min_users``.

Sampling is the strategy object's own (:meth:`Driver.sampler`); its constructor
does no cryptography (the Paillier key is made in ``setup()``, never called here).
Bytes per client are each schema's ``message_sizes`` (computed, not measured).
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from clients.fedmf_common import hyper, sorted_by_item
from engine.driver import Driver, restore_array, restore_server, server_arrays
from models.ranking import mf_candidate_scores, ranking_sums
from recdata.ranking import ranking_candidates
from models.fedmf_mf import (apply_gradient_sum, init_item_matrix, init_user_matrix, squared_error_batch,
                             user_step_batch)
from recdata import FederatedSplit
from recdata.dataset import DatasetMeta
from schemas import distributed_mf as dmf_schema
from schemas import fedmf as fedmf_schema
from schemas.config import AppConfig
from strategies.base import mean_train_loss
from strategies.distributed_mf import DistributedMFStrategy
from strategies.fedmf import FedMFStrategy

log = logging.getLogger("secrec.engine")


def entries_of(ptr: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries users own in a by-user layout (user u owns ptr[u]:ptr[u+1]), concatenated in ``users`` order.

    Returns (entry indices [N], batch slot of each entry [N]), without a Python loop.
    """
    users = np.asarray(users, dtype=np.int64)
    starts, lengths = ptr[users], ptr[users + 1] - ptr[users]
    seg = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) - offsets[seg] + starts[seg], seg


class _FedMFFamilyDriver(Driver):
    """What both protocols share: data layout, private u of every user, the batched step and evaluation."""

    strategy: DistributedMFStrategy | FedMFStrategy

    def __init__(self, cfg: AppConfig, split: FederatedSplit, meta: DatasetMeta) -> None:
        self.cfg, self.meta, self.split = cfg, meta, split
        s = cfg.strategy
        self.mode, self.pad_to = str(s.mode), int(s.pad_to or 0)
        self.dim, self.seed, self.init_std = int(cfg.model.dim), int(cfg.seed), float(cfg.model.init_std)
        self.hp = hyper(cfg)
        self.strategy.users = list(range(meta.n_users))
        # each user's training ratings in the order its device uses (by item id), test ratings as stored
        self.train_ptr = np.asarray(split.train_ptr, dtype=np.int64)
        self.train_item, self.train_rating = sorted_by_item(self.train_ptr, split.train_item, split.train_rating)
        self.test_ptr = np.asarray(split.test_ptr, dtype=np.int64)
        self.test_item = np.asarray(split.test_item, dtype=np.int64)
        self.test_rating = np.asarray(split.test_rating, dtype=np.float64)
        self.U = np.zeros((meta.n_users, self.dim), dtype=np.float64)  # private u of every user (float64)
        self.started = np.zeros(meta.n_users, dtype=bool)
        self.last_users = np.zeros(0, dtype=np.int64)
        self.last_round = 0

    # ---------------------------------------------------------------- hooks
    @abstractmethod
    def item_matrix(self) -> np.ndarray:
        """V as the round's users receive it."""

    @abstractmethod
    def aggregate(self, items: np.ndarray, grads: np.ndarray) -> None:
        """The server update from the round's Gradient rows (entries in user order)."""

    @abstractmethod
    def train_loss(self, loss: np.ndarray) -> float | None:
        """train_loss as the Flower path records it, from each user's loss."""

    @abstractmethod
    def test_sums(self, sse: np.ndarray, count: np.ndarray) -> tuple[float, int]:
        """(SSE, count) as the Flower path's evaluation sums them."""

    # --------------------------------------------------------------- driver
    def sampler(self) -> Any:
        return self.strategy

    def private_u(self, users: np.ndarray) -> np.ndarray:
        """The users' current u [B, d]; a user seen for the first time starts from its device's seeded u."""
        new = users[~self.started[users]]
        if len(new):
            self.U[new] = init_user_matrix(self.dim, new, self.seed, self.init_std)
            self.started[new] = True
        return self.U[users]

    def ranking(self, users: np.ndarray) -> np.ndarray | None:
        """Every evaluated user's [hit, ndcg, ranked] (zeros without a case), scored as its device scores it."""
        if not self.cfg.train.ranking:
            return None
        users = np.asarray(users, dtype=np.int64)
        case = ranking_candidates(self.split, self.seed, int(self.cfg.train.ranking_negatives), users)
        per_user = np.zeros((len(users), 3))
        if len(case.users):
            scores = mf_candidate_scores(self.private_u(case.users), self.item_matrix()[case.items])
            per_user[:len(case.users)] = ranking_sums(scores, int(self.cfg.train.ranking_k))
        return self.ranking_sums(per_user)

    def ranking_sums(self, per_user: np.ndarray) -> np.ndarray | None:
        """Summed [hits, ndcg, ranked] as the Flower path's evaluation sums them (plaintext twin: in the clear)."""
        return per_user.sum(axis=0)

    def train_round(self, rnd: int, users: np.ndarray) -> dict[str, Any]:
        users = np.asarray(users, dtype=np.int64)
        idx, seg = entries_of(self.train_ptr, users)
        items = self.train_item[idx]
        U_new, grads, loss = user_step_batch(self.private_u(users), self.item_matrix()[items], seg,
                                             self.train_rating[idx], self.hp)
        self.U[users] = U_new
        self.aggregate(items, grads)
        self.last_users, self.last_round = users, rnd
        return {"train_loss": self.train_loss(loss), **self.message_sizes(users)}

    def evaluate(self, users: np.ndarray) -> tuple[float, int]:
        users = np.asarray(users, dtype=np.int64)
        idx, seg = entries_of(self.test_ptr, users)
        sse, count = squared_error_batch(self.private_u(users), self.item_matrix()[self.test_item[idx]], seg,
                                         self.test_rating[idx])
        return self.test_sums(sse, count)

    def n_ratings(self, users: np.ndarray) -> np.ndarray:
        """Each user's number of training ratings."""
        return self.train_ptr[users + 1] - self.train_ptr[users]

    def upload_rows(self, users: np.ndarray) -> np.ndarray:
        """Each user's upload rows in this mode (what the message sizes are computed for)."""
        return dmf_schema.upload_rows(self.mode, self.n_ratings(users), self.meta.n_items, self.pad_to)


class DistributedMFDriver(_FedMFFamilyDriver):
    """``distributed_mf`` (parttext, fulltext, padded): the strategy's V, updated by the strategy's arithmetic."""

    def __init__(self, cfg: AppConfig, split: FederatedSplit, meta: DatasetMeta) -> None:
        self.strategy = DistributedMFStrategy(cfg, meta)  # builds V exactly as the Flower server does
        super().__init__(cfg, split, meta)
        if self.strategy.record:
            log.warning("engine=batched receives no uploads, so strategy.record_uploads=true keeps no server view; "
                        "run the leakage attack on engine=flower")

    checkpointable = True

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The strategy's V (``server.V``) and every user's private u and whether it has started."""
        return {**server_arrays(self.strategy),
                "private.U": self.U, "private.started": self.started}

    def restore_state(self, arrays: dict[str, np.ndarray]) -> None:
        U = restore_array(arrays, "private.U", self.U)
        started = restore_array(arrays, "private.started", self.started)
        restore_server(self.strategy, arrays)
        self.U, self.started = U, started

    def item_matrix(self) -> np.ndarray:
        return self.strategy.V

    def aggregate(self, items: np.ndarray, grads: np.ndarray) -> None:
        self.strategy.V = apply_gradient_sum(self.strategy.V, items, grads)

    def train_loss(self, loss: np.ndarray) -> float | None:
        """The users' mean loss, as :func:`strategies.base.mean_train_loss`."""
        return mean_train_loss(loss)

    def test_sums(self, sse: np.ndarray, count: np.ndarray) -> tuple[float, int]:
        return float(sse.sum()), int(count.sum())

    def message_sizes(self, users: np.ndarray | None = None) -> dict[str, float]:
        users = self.last_users if users is None else np.asarray(users, dtype=np.int64)
        return dmf_schema.message_sizes(max(self.last_round, 1), self.meta.n_items, self.dim, self.upload_rows(users),
                                        self.n_ratings(users))


class FedMFDriver(_FedMFFamilyDriver):
    """``fedmf`` (parttext, fulltext, padded): the plaintext image of the encrypted item matrix."""

    def __init__(self, cfg: AppConfig, split: FederatedSplit, meta: DatasetMeta) -> None:
        self.strategy = FedMFStrategy(cfg, meta)  # checks the codec fits; makes no key
        super().__init__(cfg, split, meta)
        # who holds the key, as on the Flower path: everyone after an eager set-up; lazily, the holder (the
        # first user, who answers first in simulation), the evaluation sample (keyed before its first
        # evaluation, which precedes every use) and each round's users as they are sampled (train_round)
        st = self.strategy
        st.keyed = (set(st.users) if cfg.strategy.key_delivery == "eager"
                    else {st.users[0] if cfg.strategy.key_holder is None else int(cfg.strategy.key_holder),
                          *st.evaluation_sample()})
        self.codec = fedmf_schema.packing_codec(cfg)
        self.min_users = int(cfg.strategy.min_users)
        # the server encrypts V once (encrypt_model_stage): these are the integers inside C_V
        self.E = self.codec.encode_entries(init_item_matrix(meta.n_items, self.dim, self.seed, self.init_std))

    def train_round(self, rnd: int, users: np.ndarray) -> dict[str, float]:
        self.strategy.keyed.update(int(u) for u in users)  # lazy delivery keys the sampled users first
        return super().train_round(rnd, users)

    def item_matrix(self) -> np.ndarray:
        return _beyond_bound(self.codec.decode_entries, self.E, "an entry of V")

    def aggregate(self, items: np.ndarray, grads: np.ndarray) -> None:
        self.E = apply_gradient_sum(self.E, items, _beyond_bound(self.codec.encode_entries, grads, "a Gradient row"))

    def _secure_sum(self, values: np.ndarray) -> np.ndarray | None:
        """The decrypted metric aggregate, or None where the Flower path refuses it (fewer than min_users)."""
        if len(values) < self.min_users:
            return None
        return fedmf_schema.plain_metric_sum(values)[0]

    def train_loss(self, loss: np.ndarray) -> float | None:
        if not self.cfg.train.releases_loss(self.cfg.dp.enabled):  # as the Flower path: no sum asked for
            return None
        sums = self._secure_sum(np.asarray(loss, dtype=np.float64)[:, None])
        return None if sums is None else float(sums[0]) / len(loss)

    def test_sums(self, sse: np.ndarray, count: np.ndarray) -> tuple[float, int]:
        sums = self._secure_sum(np.stack([sse, count], axis=1))
        if sums is None:
            return math.nan, 0
        return float(sums[0]), int(round(sums[1]))

    def ranking_sums(self, per_user: np.ndarray) -> np.ndarray | None:
        """Clipped per user and summed in the packed fixed point, None where the Flower path refuses the sum."""
        sums = self._secure_sum(fedmf_schema.clip_ranking(per_user))
        return None if sums is None else np.asarray(sums, dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        """The Flower server's final keys that exist without a key (no key holder: no key was made)."""
        return {"key_bits": int(self.cfg.strategy.key_bits), "keyed_users": len(self.strategy.keyed),
                "cts_per_row": fedmf_schema.cts_per_row(self.cfg)}

    def message_sizes(self, users: np.ndarray | None = None) -> dict[str, float]:
        users = self.last_users if users is None else np.asarray(users, dtype=np.int64)
        return fedmf_schema.message_sizes(self.cfg, max(self.last_round, 1), self.meta.n_items,
                                          self.upload_rows(users))


def _beyond_bound(code: Callable[[np.ndarray], np.ndarray], values: np.ndarray, what: str) -> np.ndarray:
    """``code(values)``; a value beyond ``strategy.value_bound`` stops the run with the reason.

    On the Flower path a user whose Gradient leaves the bound fails to encrypt
    it and is dropped (every user is, once V itself leaves it, as none can
    decrypt): such a run has diverged. The engine does not model drops; it
    stops and says why.
    """
    try:
        return code(values)
    except ValueError as exc:
        raise ValueError(f"fedmf: {what} left strategy.value_bound ({exc}); the Flower path's users would be "
                         "dropped from then on: lower strategy.lr or raise strategy.value_bound") from None
