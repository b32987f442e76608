"""``plaintext``: federated training of MF/NCF/FM/DeepFM without protection (SecEmb's twin).

Per round: (1) each sampled user names the items it needs; (2) the server
sends their rows and the dense parameters, the user trains and uploads row
gradients and the dense gradient; the server sums, averages over the users
that answered, and steps the public model with Adam.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import RecordDict

from recdata.dataset import DatasetMeta
from schemas import plaintext as schema
from schemas.config import AppConfig
from strategies.base import RoundState, weighted_train_loss
from strategies.public_model import ModelStrategy


@dataclass
class PlaintextRoundState(RoundState):
    requests: dict[int, np.ndarray] = field(default_factory=dict)  # user -> item ids (truncated to m')
    updates: dict[int, Any] = field(default_factory=dict)          # user -> row and dense gradients


class PlaintextStrategy(ModelStrategy):
    name = "plaintext"

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        self.m_prime: int | None = cfg.strategy.m_prime

    def new_round_state(self, rnd: int, users: list[int]) -> PlaintextRoundState:
        return PlaintextRoundState(rnd, users)

    @property
    def stages(self):
        """Same shape as SecEmb's round: items requested, rows sent and gradients returned, then the step."""
        return (self.request_stage, self.update_stage, self.step_stage)

    def request_stage(self, st: PlaintextRoundState) -> None:
        """Each user names the items whose rows it needs (truncated to m')."""
        assert self.exchange is not None
        max_items = self.m_prime or self.meta.n_items
        st.requests = self.exchange.phase(
            schema.REQUEST, {u: schema.request_message(st.rnd, self.m_prime) for u in st.users}, str(st.rnd),
            lambda _u, c: schema.parse_request_reply(c, self.meta.n_items, max_items))

    def update_stage(self, st: PlaintextRoundState) -> None:
        """Send those rows and the dense parameters; users train and return gradients."""
        assert self.exchange is not None
        table, dense = self.model.table_numpy(), self.model.dense_numpy()
        st.updates = self.exchange.phase(
            schema.UPDATE, {u: schema.update_message(st.rnd, table[items], dense) for u, items in st.requests.items()},
            str(st.rnd), lambda u, c: schema.parse_update_reply(c, len(st.requests[u]), self.spec.row_dim,
                                                                self.spec.dense_size))

    def step_stage(self, st: PlaintextRoundState) -> None:
        """Sum, average over the users that answered, step the public model."""
        table_sum = np.zeros(self.model.table.shape, dtype=np.float64)
        dense_sum = np.zeros(self.model.dense.shape, dtype=np.float64)
        for u, up in st.updates.items():
            np.add.at(table_sum, st.requests[u], up.row_grads)
            dense_sum += up.dense_grad
            self.record_client_seconds(u, up.seconds)
        self.model.step(table_sum, dense_sum, len(st.updates))
        st.metrics = {"train_loss": weighted_train_loss(st.updates.values())}

    def evaluation_content(self) -> RecordDict:
        return schema.model_content(self.model.table_numpy(), self.model.dense_numpy())
