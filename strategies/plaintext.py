"""``plaintext``: federated training of MF/NCF/FM/DeepFM without protection (SecEmb's twin).

Per round: (1) each sampled user names the items it needs; (2) the server
sends their rows and the dense parameters, the user trains and uploads row
gradients and the dense gradient; the server sums, averages over the users
that answered, and steps the public model with Adam.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import RecordDict

from schemas import plaintext as schema
from recdata.dataset import DatasetMeta
from strategies.base import weighted_train_loss
from strategies.public_model import ModelStrategy
from schemas.config import AppConfig


class PlaintextStrategy(ModelStrategy):
    name = "plaintext"

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        self.m_prime: int | None = cfg.strategy.m_prime

    def train_round(self, rnd: int, users: list[int]) -> dict[str, float]:
        ex = self.exchange
        assert ex is not None
        max_items = self.m_prime or self.meta.n_items
        requests = ex.phase(schema.REQUEST, {u: schema.request_message(rnd, self.m_prime) for u in users},
                            str(rnd), lambda _u, c: schema.parse_request_reply(c, self.meta.n_items, max_items))
        table, dense = self.model.table_numpy(), self.model.dense_numpy()
        updates = ex.phase(
            schema.UPDATE, {u: schema.update_message(rnd, table[items], dense) for u, items in requests.items()},
            str(rnd), lambda u, c: schema.parse_update_reply(c, len(requests[u]), self.spec.row_dim,
                                                             self.spec.dense_size))
        table_sum = np.zeros(table.shape, dtype=np.float64)
        dense_sum = np.zeros(dense.shape, dtype=np.float64)
        for u, up in updates.items():
            np.add.at(table_sum, requests[u], up.row_grads)
            dense_sum += up.dense_grad
            self.record_client_seconds(u, up.seconds)
        self.model.step(table_sum, dense_sum, len(updates))
        return {"train_loss": weighted_train_loss(updates.values())}

    def evaluation_content(self) -> RecordDict:
        return schema.model_content(self.model.table_numpy(), self.model.dense_numpy())

