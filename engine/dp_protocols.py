"""Batched-engine driver of ``dp_fedrec`` (local DP, DP-FedRec): the Flower client's arithmetic on a round.

Users train with the clipped step (ModelDriver.local_steps runs it when dp.enabled),
each user's row gradients are scattered into a full [n_items, row_dim] update and
noised by :func:`clients.dp_fedrec.noised_upload` (the client's own function), in
chunks of users so memory stays bounded, and the sum goes through
:meth:`PlaintextStrategy.apply_gradients` as on the Flower path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clients.dp_fedrec import noised_upload
from engine.model_protocols import ENCODE_CHUNK_ELEMENTS, PlaintextDriver, RoundBatch
from schemas import dp_fedrec as dp_schema
from schemas.sizes import int_width
from strategies.dp_fedrec import DPFedRecStrategy


class DPFedRecDriver(PlaintextDriver):
    strategy_class = DPFedRecStrategy
    strategy: DPFedRecStrategy

    def request(self, rnd: int, user: int) -> np.ndarray:
        """DP-FedRec users download the full model and train on all their rated items."""
        return np.unique(self.train_items(user))

    def aggregate(self, batch: RoundBatch) -> dict[str, Any]:
        st, n_items, width = self.strategy, self.meta.n_items, self.spec.row_dim
        assert st.dp is not None
        n_users = len(batch.items)
        rows_sum = np.zeros((n_items, width), dtype=np.float64)
        dense = np.empty_like(batch.dense_grads)
        step = max(1, ENCODE_CHUNK_ELEMENTS // (n_items * width + self.spec.dense_size))
        for lo in range(0, n_users, step):  # chunks of users: each holds a full [n_items, row_dim] upload
            part = slice(lo, lo + step)
            full = np.zeros((len(batch.items[part]), n_items, width), dtype=np.float32)
            owner = np.repeat(np.arange(full.shape[0]), [len(i) for i in batch.items[part]])
            full[owner, np.concatenate(batch.items[part])] = batch.row_grads[part][batch.row_mask[part]]
            full, dense[part] = noised_upload(full, batch.dense_grads[part], st.dp.noise_multiplier, st.dp.clip)
            rows_sum += full.sum(axis=0, dtype=np.float64)
        st.apply_gradients(np.arange(n_items), rows_sum, dense)
        return {"train_loss": None}  # as on the Flower path: the users send no loss (schemas/dp_fedrec.py)

    def round_sizes(self, rnd: int, items: list[np.ndarray]) -> dict[str, float]:
        down, up = self.cached_bytes((int_width(rnd),), lambda: dp_schema.round_bytes(
            rnd, self.meta.n_items, self.spec.row_dim, self.spec.dense_size))
        return {"bytes_down": float(down), "bytes_up": float(up)}
