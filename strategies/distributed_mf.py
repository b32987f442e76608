"""``distributed_mf``: FedMF Algorithm 1 — users upload plaintext item gradients.

The server keeps V in the clear, sends it to the round's users and applies
v_j <- v_j - sum of the uploaded Gradient_j. This is FedMF's plaintext twin
and the victim of the gradient-leakage attack (``simulations.leakage_attack``):
with ``strategy.record_uploads=true`` the server keeps what it received
(its view) so the attack can be run on a real simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import RecordDict

from models.fedmf_mf import apply_gradient_sum, init_item_matrix
from schemas import distributed_mf as schema
from recdata.dataset import DatasetMeta
from strategies.base import RecStrategy, RoundState as BaseRoundState, mean_train_loss
from schemas.config import AppConfig


@dataclass
class RoundState(BaseRoundState):
    """One round's working state, passed through :attr:`DistributedMFStrategy.stages` in order."""

    V_sent: np.ndarray | None = None
    uploads: dict[int, schema.Upload] = field(default_factory=dict)


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

    @property
    def stages(self) -> tuple:
        """FedMF Algorithm 1, one round, run by :meth:`RecStrategy.train_round` in this order."""
        return (self.update_stage, self.aggregate_stage, self.train_metrics_stage)

    def new_round_state(self, rnd: int, users: list[int]) -> RoundState:
        return RoundState(rnd, users)

    def update_stage(self, state: RoundState) -> None:
        """Send V; receive each user's item ids, plaintext Gradient rows and its metrics."""
        assert self.exchange is not None
        state.V_sent = self.V.copy()
        count = expected_upload_count(self.mode, self.meta.n_items)
        pad_to = int(self.cfg.strategy.pad_to or 0)
        state.uploads = self.exchange.phase(
            schema.UPDATE, {u: schema.update_message(state.rnd, state.V_sent) for u in state.users}, str(state.rnd),
            lambda _u, c: self._check(schema.parse_update_reply(c, self.meta.n_items, self.dim, count), pad_to))
        for u, up in state.uploads.items():
            self.record_client_seconds(u, up.seconds)
            if self.record:
                self.view.append({"round": state.rnd, "user": u, "V": state.V_sent, "items": up.items,
                                  "grads": up.grads})

    def aggregate_stage(self, state: RoundState) -> None:
        """v_j <- v_j - sum of the uploaded Gradient_j (users in id order, as the batched engine sums them)."""
        ups = [state.uploads[u] for u in sorted(state.uploads)]
        if ups:
            self.V = apply_gradient_sum(self.V, np.concatenate([up.items for up in ups]),
                                        np.concatenate([up.grads for up in ups]))

    def train_metrics_stage(self, state: RoundState) -> None:
        """The plaintext twin promises nothing: per-user losses, weighted by their rating counts."""
        state.metrics = {"train_loss": mean_train_loss(u.loss for u in state.uploads.values())}

    def _check(self, up: schema.Upload, pad_to: int) -> schema.Upload:
        if self.mode == "padded" and len(up.items) < pad_to:
            raise ValueError(f"padded upload has {len(up.items)} rows, fewer than pad_to={pad_to}")
        return up

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The server's state a resumed run needs: V (plain SGD, no moments)."""
        return {"V": self.V.copy()}

    def restore_state(self, arrays: dict[str, np.ndarray]) -> None:
        V = np.asarray(arrays["V"], dtype=self.V.dtype)
        if V.shape != self.V.shape:
            raise ValueError(f"checkpoint V has shape {V.shape}, expected {self.V.shape}")
        self.V = V.copy()

    def evaluation_content(self) -> RecordDict:
        return RecordDict({"model": schema.model_record(self.V)})

    def evaluation_message(self, rnd: int, content: RecordDict) -> RecordDict:
        return schema.round_message(rnd, content["model"])  # type: ignore[arg-type]
