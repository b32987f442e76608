"""Strategy name -> batched-engine driver class.

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
    "dp_fedrec": "engine.dp_protocols:DPFedRecDriver",  # strategy=plaintext with dp.mode=local
    "compressed": "engine.compressed_protocol:CompressedPlaintextDriver",  # strategy=plaintext, compression != none
}


def driver_name(protocol: str, cfg) -> str:
    """The DRIVERS key of a run: ``compressed`` for plaintext with strategy.compression != none
    (as simulations.registry.build_strategy chooses), else the protocol name."""
    return "compressed" if protocol == "plaintext" and cfg.strategy.compression != "none" else protocol


def get_driver(name: str) -> type[Driver]:
    """The driver class for strategy ``name``; KeyError names the supported ones."""
    if name not in DRIVERS:
        raise KeyError(f"engine=batched has no driver for strategy {name!r}; supported: {sorted(DRIVERS)}")
    module, cls = DRIVERS[name].split(":")
    return getattr(importlib.import_module(module), cls)
