"""One config source for every entry point: compose ``conf/`` with Hydra and check it.

``python -m simulations.run`` gets its config from ``@hydra.main``; the Flower
apps (``flwr run .`` and the deployment) compose the same files through Hydra's
compose API from the overrides in the run config, so both paths see identical
settings.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from schemas.config import AppConfig, ConfigError, from_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

STRATEGIES = ("plaintext", "distributed_mf", "fedmf", "secemb", "secfedrec")
MODELS = ("mf", "ncf", "fm", "deepfm")
DATASETS = ("ml_latest_small", "ml_100k", "ml_1m", "ml_10m", "ml_25m", "synthetic", "csv")
MF_ONLY_STRATEGIES = ("distributed_mf", "fedmf")


def compose_config(overrides: str | list[str] = "") -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides (a string or a list)."""
    from hydra import compose, initialize_config_dir

    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    validate_config(cfg)
    return cfg


def _positive_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def _optional_positive_int(cfg: DictConfig, key: str) -> None:
    if OmegaConf.select(cfg, key) is not None:
        _positive_int(cfg, key)


def _positive_float(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}")


def _non_negative_float(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{key} must be a non-negative number, got {value!r}")


def _one_of(cfg: DictConfig, key: str, options: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(options)}")


def validate_config(cfg: DictConfig) -> None:
    """Reject values that cannot work before any data is loaded or process started."""
    for key in ("rounds", "clients_per_round", "model.dim", "train.local_user_steps"):
        _positive_int(cfg, key)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    _one_of(cfg, "strategy.name", STRATEGIES)
    _one_of(cfg, "model.name", MODELS)
    _one_of(cfg, "dataset.name", DATASETS)
    _one_of(cfg, "dataset.split", ("random", "last_k"))
    _one_of(cfg, "train.server_optimizer", ("adam", "sgd"))
    _positive_float(cfg, "model.lr")
    _non_negative_float(cfg, "model.reg")
    _positive_float(cfg, "model.init_std")
    frac = cfg.dataset.test_fraction
    if not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ConfigError(f"dataset.test_fraction must be in (0, 1), got {frac!r}")
    _positive_int(cfg, "dataset.k")
    for key in ("dataset.max_items", "dataset.max_users", "train.eval_clients"):
        _optional_positive_int(cfg, key)
    every = cfg.train.eval_every
    if not isinstance(every, int) or every < 0:
        raise ConfigError(f"train.eval_every must be an integer >= 0, got {every!r}")
    if cfg.dataset.name == "synthetic":
        for key in ("n_users", "n_items", "rank", "mean_ratings"):
            _positive_int(cfg, f"dataset.{key}")
    if cfg.model.name == "ncf" and cfg.model.dim % 2:
        raise ConfigError(f"model.dim must be even for ncf (MLP 2d -> d -> d/2), got {cfg.model.dim}")
    _validate_strategy(cfg)


def _validate_strategy(cfg: DictConfig) -> None:
    name = cfg.strategy.name
    if name in MF_ONLY_STRATEGIES:
        if cfg.model.name != "mf":
            raise ConfigError(f"strategy={name} trains matrix factorisation only; got model={cfg.model.name}")
        _one_of(cfg, "strategy.mode", ("parttext", "fulltext", "padded"))
        _positive_float(cfg, "strategy.lr")
        _non_negative_float(cfg, "strategy.reg_u")
        _non_negative_float(cfg, "strategy.reg_v")
        pad = cfg.strategy.pad_to
        if cfg.strategy.mode == "padded" and (not isinstance(pad, int) or pad <= 0):
            raise ConfigError(f"strategy.pad_to must be a positive integer in padded mode, got {pad!r}")
    if name == "fedmf":
        if cfg.strategy.key_bits not in (1024, 2048, 3072, 4096):
            raise ConfigError(f"strategy.key_bits must be 1024, 2048, 3072 or 4096, got {cfg.strategy.key_bits!r}")
        _positive_int(cfg, "strategy.frac_bits")
        _positive_float(cfg, "strategy.value_bound")
    if name in ("secemb", "secfedrec"):
        if cfg.strategy.ring_bits not in (32, 64):
            raise ConfigError(f"strategy.ring_bits must be 32 or 64, got {cfg.strategy.ring_bits!r}")
        _positive_int(cfg, "strategy.frac_bits")
        if cfg.strategy.frac_bits >= cfg.strategy.ring_bits - 2:
            raise ConfigError("strategy.frac_bits must leave integer bits in the ring (frac_bits < ring_bits - 2)")
    if name == "secemb":
        _one_of(cfg, "strategy.variant", ("secemb", "rowenc", "init"))
        _optional_positive_int(cfg, "strategy.m_prime")
        _positive_float(cfg, "strategy.alpha")
    if name == "plaintext":
        _optional_positive_int(cfg, "strategy.m_prime")


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain dict of the resolved config."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def to_app_config(cfg: DictConfig) -> AppConfig:
    """The typed config that clients and strategies read (see :mod:`schemas.config`)."""
    return from_dict(to_container(cfg))
