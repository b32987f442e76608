"""The public model the server side holds: the item table and the dense parameters.

Clients upload gradients; the server averages them over the round's
contributing users and takes one optimiser step (Adam, as in SecEmb
Appendix I). Plaintext, SecEmb and Secure FedRec all step this same object,
so the only difference between twins is how the averaged gradient reached it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models import init_dense, init_item_table
from models.spec import ModelSpec
from recdata.dataset import DatasetMeta
from schemas.config import model_spec
from strategies.base import RecStrategy
from schemas.config import AppConfig


class PublicModel:
    def __init__(self, spec: ModelSpec, n_items: int, seed: int, lr: float, optimizer: str = "adam") -> None:
        self.spec = spec
        self.n_items = n_items
        self.table = torch.nn.Parameter(torch.from_numpy(init_item_table(spec, n_items, seed).astype(np.float32)))
        self.dense = torch.nn.Parameter(torch.from_numpy(init_dense(spec, seed).astype(np.float32)))
        opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        self.opt = opt_cls([self.table, self.dense], lr=lr)

    @property
    def row_dim(self) -> int:
        return int(self.table.shape[1])

    @property
    def dense_size(self) -> int:
        return int(self.dense.shape[0])

    def table_numpy(self) -> np.ndarray:
        return self.table.detach().numpy()

    def dense_numpy(self) -> np.ndarray:
        return self.dense.detach().numpy()

    def rows(self, items: np.ndarray) -> np.ndarray:
        return self.table_numpy()[items]

    def step(self, table_grad_sum: np.ndarray, dense_grad_sum: np.ndarray, n_users: int) -> None:
        """Apply the mean of the round's gradients (sums over ``n_users`` users)."""
        if n_users <= 0:
            return
        if table_grad_sum.shape != tuple(self.table.shape) or dense_grad_sum.shape != tuple(self.dense.shape):
            raise ValueError("aggregated gradient has the wrong shape")
        self.table.grad = torch.from_numpy(np.asarray(table_grad_sum, dtype=np.float32) / n_users)
        self.dense.grad = torch.from_numpy(np.asarray(dense_grad_sum, dtype=np.float32) / n_users)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class ModelStrategy(RecStrategy):
    """Base of the strategies that train a :class:`PublicModel` (plaintext, SecEmb, Secure FedRec)."""

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        self.spec = model_spec(cfg, meta.n_user_features, meta.n_item_features)
        self.model = PublicModel(self.spec, meta.n_items, int(cfg.seed), float(cfg.model.lr),
                                 cfg.train.server_optimizer)
