"""Every Hydra config composes and validates; bad values get errors naming the key."""

from __future__ import annotations

import itertools

import pytest
from hydra.errors import HydraException
from omegaconf.errors import ConfigKeyError

from simulations.config import CONF_DIR, ConfigError, compose_config

STRATEGIES = [p.stem for p in (CONF_DIR / "strategy").glob("*.yaml")]
MODELS = [p.stem for p in (CONF_DIR / "model").glob("*.yaml")]
DATASETS = [p.stem for p in (CONF_DIR / "dataset").glob("*.yaml")]
EXPERIMENTS = [p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")]


def test_groups_are_the_documented_ones():
    assert set(STRATEGIES) == {"plaintext", "distributed_mf", "fedmf", "secemb", "secfedrec"}
    assert set(MODELS) == {"mf", "ncf", "fm", "deepfm"}
    assert set(DATASETS) == {"ml_latest_small", "ml_100k", "ml_1m", "ml_10m", "ml_25m", "synthetic", "csv"}


@pytest.mark.parametrize("strategy,model", list(itertools.product(STRATEGIES, MODELS)))
def test_every_strategy_model_pair_composes_or_is_refused_clearly(strategy, model):
    overrides = [f"strategy={strategy}", f"model={model}"]
    if strategy in ("distributed_mf", "fedmf") and model != "mf":
        with pytest.raises(ConfigError, match="matrix factorisation only"):
            compose_config(overrides)
        return
    cfg = compose_config(overrides)
    assert cfg.strategy.name == strategy and cfg.model.name == model


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_composes(dataset):
    overrides = [f"dataset={dataset}"] + (["dataset.path=/tmp/x.csv"] if dataset == "csv" else [])
    assert compose_config(overrides).dataset.name == dataset


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_composes(experiment):
    cfg = compose_config([f"+experiment={experiment}"])
    assert cfg.rounds > 0


@pytest.mark.parametrize("override,needle", [
    ("rounds=0", "rounds"), ("rounds=-3", "rounds"), ("clients_per_round=0", "clients_per_round"),
    ("model.dim=0", "model.dim"), ("model.lr=-1", "model.lr"), ("seed=-1", "seed"),
    ("dataset.test_fraction=1.5", "test_fraction"), ("dataset.max_items=0", "max_items"),
    ("train.eval_every=-1", "eval_every"), ("strategy=secemb strategy.ring_bits=16", "ring_bits"),
    ("strategy=fedmf strategy.key_bits=512", "key_bits"), ("strategy=fedmf strategy.mode=halftext", "mode"),
    ("strategy=secemb strategy.variant=fast", "variant"), ("model=ncf model.dim=15", "even"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        compose_config(override.split())


def test_unknown_option_and_unknown_key_are_refused():
    with pytest.raises(HydraException, match="strategy"):
        compose_config(["strategy=nonexistent"])
    with pytest.raises((HydraException, ConfigKeyError), match="no_such_key"):
        compose_config(["no_such_key=1"])
