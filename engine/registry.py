"""Protocol (``AppConfig.protocol``) -> batched-engine driver class.

Entries are "module:Class" strings imported on first use, so choosing one protocol
does not import the others' modules (and helpers can add drivers with a one-line edit).
"""

from __future__ import annotations

import importlib

from engine.driver import Driver

DRIVERS: dict[str, str] = {
    "plaintext": "engine.model_protocols:PlaintextDriver",
    "secemb": "engine.model_protocols:SecEmbDriver",
    "secfedrec": "engine.model_protocols:SecFedRecDriver",
    "distributed_mf": "engine.mf_protocols:DistributedMFDriver",
    "fedmf": "engine.mf_protocols:FedMFDriver",
    "dp_fedrec": "engine.dp_protocols:DPFedRecDriver",
    "compressed": "engine.compressed_protocol:CompressedPlaintextDriver",
}  # keys: AppConfig.protocol


def get_driver(name: str) -> type[Driver]:
    """The driver class for strategy ``name``; KeyError names the supported ones."""
    if name not in DRIVERS:
        raise KeyError(f"engine=batched has no driver for strategy {name!r}; supported: {sorted(DRIVERS)}")
    module, cls = DRIVERS[name].split(":")
    return getattr(importlib.import_module(module), cls)
