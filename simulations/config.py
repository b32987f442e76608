"""One config source for every entry point: compose ``conf/`` with Hydra against the typed schemas.

``python -m simulations.run`` gets its config from ``@hydra.main``; the Flower
apps (``flwr run .`` and the deployment) compose the same files through Hydra's
compose API from the overrides in the run config, so both paths see identical
settings.

The dataclasses of :mod:`schemas.config` are registered in Hydra's ConfigStore
at import of this module (``simulations.run`` imports it before ``@hydra.main``
runs), with Hydra's "schema" pattern: ``conf/config.yaml`` extends
``app_schema`` (an :class:`AppConfig`) and every group file starts with
``defaults: [<its>_schema, _self_]``. Hydra itself therefore refuses a wrong
type or an unknown key while composing, and ``OmegaConf.to_object`` yields the
typed :class:`AppConfig`, whose ``__post_init__`` checks values and whose
``strategy.check`` checks protocol invariants. ``schemas/`` cannot do the
registration itself: it must not import Hydra.

Every user error leaves here as :class:`ConfigError` (a ``ValueError``) with
one line naming the key, so entry points can print it and exit 1 without a
traceback.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from schemas.config import (DATASETS, MF_ONLY_STRATEGIES, MODELS, STRATEGIES, STRATEGY_CONFIGS, AppConfig,
                            ConfigError, DatasetConfig, ModelConfig, from_dict)

__all__ = ["CONF_DIR", "ConfigError", "ConfigCompositionError", "compose_config", "validate_config",
           "to_app_config", "to_container", "register_schemas", "STRATEGIES", "MODELS", "DATASETS",
           "MF_ONLY_STRATEGIES"]

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class ConfigCompositionError(ConfigError, HydraException):
    """Hydra could not compose the config (unknown option or key, wrong type, bad override syntax).

    A :class:`ConfigError` so entry points handle every config mistake alike, and a
    ``HydraException`` so code that catches Hydra's errors still does.
    """


# --------------------------------------------------------------- ConfigStore
def _app_schema() -> DictConfig:
    """AppConfig as a structured node whose ``strategy`` is left open (MISSING).

    AppConfig's dataclass default for ``strategy`` is a PlaintextConfig; OmegaConf
    refuses to merge a SecEmbConfig into a node typed PlaintextConfig (not a
    subclass), so the schema leaves the slot empty and the strategy group's own
    schema node (``<name>_schema``) decides its type.
    """
    node = OmegaConf.structured(AppConfig)
    node.strategy = MISSING
    return node


def register_schemas() -> None:
    """Store the typed schemas in Hydra's ConfigStore (idempotent; runs at import of this module)."""
    cs = ConfigStore.instance()
    cs.store(name="app_schema", node=_app_schema())
    for name, cls in STRATEGY_CONFIGS.items():
        cs.store(group="strategy", name=f"{name}_schema", node=cls)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)


register_schemas()


# ------------------------------------------------------------------- compose
def _one_line(exc: BaseException) -> str:
    """The first meaningful line of an error, prefixed by the config key it is about when known."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OmegaConfBaseException) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException):
        text = str(getattr(cause, "msg", "") or cause).strip().splitlines()[0]
        key = getattr(cause, "full_key", None)
        if isinstance(cause, MissingMandatoryValue) and key:
            return f"{key}: a value is required (it is ??? in conf/); set it, e.g. {key}=..."
        return f"{key}: {text}" if key else text
    if isinstance(exc, OverrideParseException):
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "cannot parse")
        return f"{exc.override}: {first}" if exc.override else first
    if isinstance(exc, MissingConfigException):
        missing = str(exc.missing_cfg_file or "")
        group, _, option = missing.rpartition("/")
        options = [o for o in (exc.options or []) if not o.endswith("_schema")]
        if group and options:
            return f"{group}={option}: no such option; choose one of {', '.join(options)}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(exc).__name__


def compose_config(overrides: str | list[str] = "") -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides (a string or a list) and check it.

    Returns the typed DictConfig (use :func:`to_app_config` for the AppConfig);
    raises :class:`ConfigError` naming the key on any mistake.
    """
    from hydra import compose, initialize_config_dir

    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigCompositionError(_one_line(exc)) from exc
    validate_config(cfg)
    return cfg


def validate_config(cfg: DictConfig) -> None:
    """Reject values that cannot work before any data is loaded or process started.

    The checks live with the dataclasses (``__post_init__`` and ``strategy.check``);
    this builds the AppConfig once to run them.
    """
    to_app_config(cfg)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain dict of the resolved config."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def to_app_config(cfg: DictConfig | AppConfig) -> AppConfig:
    """The typed config that clients and strategies read (see :mod:`schemas.config`), fully checked."""
    if isinstance(cfg, AppConfig):
        app = cfg
    else:
        try:
            if OmegaConf.get_type(cfg) is AppConfig:
                app = OmegaConf.to_object(cfg)
            else:  # an untyped DictConfig (e.g. a results.json loaded back): build it key by key
                container = to_container(cfg)
                container.pop("hydra", None)
                app = from_dict(container)
        except ConfigError:
            raise
        except (OmegaConfBaseException, HydraException) as exc:
            raise ConfigCompositionError(_one_line(exc)) from exc
        except TypeError as exc:  # from_dict: a dataclass refused its arguments
            raise ConfigError(str(exc)) from exc
    app.check()
    return app
