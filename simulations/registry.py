"""Which strategy class and which client handlers implement each protocol."""

from __future__ import annotations

import importlib
from typing import Any

from recdata.dataset import DatasetMeta
from strategies.base import RecStrategy
from strategies.privacy import protocol_name
from engine.registry import driver_name
from schemas.config import AppConfig

STRATEGY_CLASSES = {
    "plaintext": "strategies.plaintext:PlaintextStrategy",
    "distributed_mf": "strategies.distributed_mf:DistributedMFStrategy",
    "fedmf": "strategies.fedmf:FedMFStrategy",
    "secemb": "strategies.secemb:SecEmbStrategy",
    "secfedrec": "strategies.secfedrec:SecFedRecStrategy",
    "dp_fedrec": "strategies.dp_fedrec:DPFedRecStrategy",  # strategy=plaintext with dp.mode=local
    "compressed": "strategies.compressed:CompressedPlaintextStrategy",  # strategy=plaintext, compression != none
}


def build_strategy(cfg: AppConfig, meta: DatasetMeta) -> RecStrategy:
    module, cls = STRATEGY_CLASSES[driver_name(protocol_name(cfg), cfg)].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, meta)
