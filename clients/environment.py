"""What a ClientApp process knows: the run config, its user's data, the model spec.

Virtual clients are created and destroyed freely, so nothing here lives in a
Python object between messages except the cached dataset; per-user state that
must survive rounds (private embedding, its optimiser moments, key material)
lives in ``Context.state`` (see :mod:`clients.private_state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Context

from models.spec import ModelSpec
from schemas.config import model_spec
from recdata import UserData
from recdata.dataset import load_split
from schemas.config import AppConfig


@dataclass(frozen=True)
class ClientEnv:
    cfg: AppConfig
    user: UserData
    n_items: int
    item_features: np.ndarray  # public [n_items, l_y]
    spec: ModelSpec
    n_users: int = 0  # users of the dataset: bounds how many summands an evaluation sum can have

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)


def client_env(cfg: AppConfig, context: Context) -> ClientEnv:
    """Build the environment of the user this node holds (its ``partition-id``)."""
    split = load_split(cfg)
    partition = int(context.node_config.get("partition-id", -1))
    if not 0 <= partition < split.n_users:
        raise ValueError(f"node partition-id {partition} is not a user of {cfg.dataset.name} "
                         f"(0..{split.n_users - 1})")
    spec = model_spec(cfg, split.user_features.shape[1], split.item_features.shape[1])
    return ClientEnv(cfg=cfg, user=split.user(partition), n_items=split.n_items,
                     item_features=split.item_features, spec=spec, n_users=split.n_users)
