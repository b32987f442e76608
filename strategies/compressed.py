"""``plaintext`` with a compressed item-embedding upload (SecEmb's Bit8 / TernGrad / SVD / CoLR baselines).

Per round each sampled user downloads the full model, trains on all its rated
items and uploads its ``[n_items, row_dim]`` item update through the codec plus
the uncompressed dense gradient. The server decodes every payload, sums,
averages over the users and steps with the plaintext optimiser
(``self.model.step`` exactly as :meth:`PlaintextStrategy.apply_gradients`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import RecordDict

from models.compression import reduction_ratio
from recdata.dataset import DatasetMeta
from schemas import compressed as schema
from schemas.config import AppConfig
from strategies.base import mean_train_loss
from strategies.plaintext import PlaintextRoundState, PlaintextStrategy


class CompressedPlaintextStrategy(PlaintextStrategy):
    name = "plaintext"

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        self.codec, self.rank = schema.codec_for(cfg)

    @property
    def stages(self):
        """One exchange (full model down, payload up), then the step."""
        return (self.update_stage, self.step_stage)

    def update_stage(self, st: PlaintextRoundState) -> None:
        assert self.exchange is not None
        msg = schema.update_message(st.rnd, self.model.table_numpy(), self.model.dense_numpy())
        st.updates = self.exchange.phase(
            schema.UPDATE, {u: msg for u in st.users}, str(st.rnd), lambda _u, c: self.decoded(c, st.rnd))

    def decoded(self, content: RecordDict, rnd: int) -> schema.Update:
        """A user's reply with its payload decoded once here, where a payload that decodes beyond the gradient
        bound leaves out this user alone (:func:`schemas.compressed.decoded_update`)."""
        update = schema.parse_update_reply(content, self.codec.name, self.rank, self.meta.n_items, self.spec.row_dim,
                                           self.spec.dense_size)
        update.decoded = schema.decoded_update(self.codec, update.payload, self.update_shape, rnd)
        return update

    @property
    def update_shape(self) -> tuple[int, int]:
        return (self.meta.n_items, self.spec.row_dim)

    def step_stage(self, st: PlaintextRoundState) -> None:
        users = list(st.updates)
        for u in users:
            self.record_client_seconds(u, st.updates[u].seconds)
        if users:
            self.apply_updates((st.updates[u].decoded for u in users),
                               np.stack([st.updates[u].dense_grad for u in users]))
        st.metrics = {"train_loss": mean_train_loss(u.loss for u in st.updates.values()),
                      "reduction_ratio": self.reduction_ratio(st.rnd)}

    def apply_payloads(self, rnd: int, payloads: Iterable[dict[str, np.ndarray]], dense_grads: np.ndarray) -> None:
        """Decode each user's payload and step (:meth:`apply_updates`): the batched engine's call, whose users
        are this package's own clients."""
        self.apply_updates((self.codec.decompress(p, self.update_shape, rnd) for p in payloads), dense_grads)

    def apply_updates(self, updates: Iterable[np.ndarray], dense_grads: np.ndarray) -> None:
        """Sum the users' decoded updates in float64, average over the users, one optimiser step.
        The Flower path and the batched engine both end here."""
        total = np.zeros(self.update_shape, dtype=np.float64)
        for update in updates:  # users in the order given
            total += update
        self.model.step(total, dense_grads.sum(axis=0, dtype=np.float64), len(dense_grads))

    def reduction_ratio(self, rnd: int) -> float:
        """SecEmb's R.R. of this run's upload: full float32 update + dense over payload + dense."""
        spec = schema.payload_spec(self.codec.name, self.rank, self.meta.n_items, self.spec.row_dim)
        payload = {k: np.zeros(shape, dtype=dt) for k, (dt, shape) in spec.items()}
        return reduction_ratio((self.meta.n_items, self.spec.row_dim), payload, self.spec.dense_size)
