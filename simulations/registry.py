"""Which strategy class and which client handlers implement each protocol."""

from __future__ import annotations

import importlib
from typing import Any

from recdata.dataset import DatasetMeta
from strategies.base import RecStrategy
from schemas.config import AppConfig

STRATEGY_CLASSES = {
    "plaintext": "strategies.plaintext:PlaintextStrategy",
    "distributed_mf": "strategies.distributed_mf:DistributedMFStrategy",
    "fedmf": "strategies.fedmf:FedMFStrategy",
    "secemb": "strategies.secemb:SecEmbStrategy",
    "secfedrec": "strategies.secfedrec:SecFedRecStrategy",
    "dp_fedrec": "strategies.dp_fedrec:DPFedRecStrategy",
    "compressed": "strategies.compressed:CompressedPlaintextStrategy",
}  # keys: AppConfig.protocol


def build_strategy(cfg: AppConfig, meta: DatasetMeta) -> RecStrategy:
    module, cls = STRATEGY_CLASSES[cfg.protocol].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, meta)
