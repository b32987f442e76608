"""``distributed_mf``: FedMF Algorithm 1 — users upload plaintext item gradients.

The server keeps V in the clear, sends it to the round's users and applies
v_j <- v_j - sum of the uploaded Gradient_j. This is FedMF's plaintext twin
and the victim of the gradient-leakage attack (``simulations.leakage_attack``):
with ``strategy.record_uploads=true`` the server keeps what it received
(its view) so the attack can be run on a real simulation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import RecordDict

from models.fedmf_mf import init_item_matrix
from schemas import distributed_mf as schema
from recdata.dataset import DatasetMeta
from strategies.base import RecStrategy, weighted_train_loss
from schemas.config import AppConfig


def expected_upload_count(mode: str, n_items: int) -> int | None:
    return n_items if mode == "fulltext" else None


class DistributedMFStrategy(RecStrategy):
    name = "distributed_mf"
    evaluate_type = schema.EVALUATE

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        self.dim = int(cfg.model.dim)
        self.V = init_item_matrix(meta.n_items, self.dim, int(cfg.seed), float(cfg.model.init_std))
        self.mode = cfg.strategy.mode
        self.record = bool(cfg.strategy.record_uploads)
        self.view: list[dict[str, Any]] = []  # the server's view, kept only when recording

    def train_round(self, rnd: int, users: list[int]) -> dict[str, float]:
        assert self.exchange is not None
        V_sent = self.V.copy()
        count = expected_upload_count(self.mode, self.meta.n_items)
        pad_to = int(self.cfg.strategy.pad_to or 0)
        uploads = self.exchange.phase(
            schema.UPDATE, {u: schema.update_message(rnd, V_sent) for u in users}, str(rnd),
            lambda _u, c: self._check(schema.parse_update_reply(c, self.meta.n_items, self.dim, count), pad_to))
        total = np.zeros_like(self.V)
        for u, up in uploads.items():
            np.add.at(total, up.items, up.grads)
            self.record_client_seconds(u, up.seconds)
            if self.record:
                self.view.append({"round": rnd, "user": u, "V": V_sent, "items": up.items, "grads": up.grads})
        self.V -= total
        return {"train_loss": weighted_train_loss(uploads.values())}

    def _check(self, up: schema.Upload, pad_to: int) -> schema.Upload:
        if self.mode == "padded" and len(up.items) < pad_to:
            raise ValueError(f"padded upload has {len(up.items)} rows, fewer than pad_to={pad_to}")
        return up

    def evaluation_content(self) -> RecordDict:
        return schema.evaluate_message(self.V)
