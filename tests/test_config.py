"""Every Hydra config composes and validates; bad values get errors naming the key.

The schemas of schemas/config.py are Hydra structured configs, so Hydra itself
refuses unknown keys and wrong types; value and protocol checks live with the
dataclasses. Static checks keep the dataclasses, conf/ and the code that reads
the config in step.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import time
import typing
from pathlib import Path
from typing import Any

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

import schemas.config as sc
from simulations.config import CONF_DIR, ConfigError, compose_config, to_app_config

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = [p.stem for p in (CONF_DIR / "strategy").glob("*.yaml")]
MODELS = [p.stem for p in (CONF_DIR / "model").glob("*.yaml")]
DATASETS = [p.stem for p in (CONF_DIR / "dataset").glob("*.yaml")]
EXPERIMENTS = [p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")]
# Presets of the synthetic generator at the SecEmb paper's sizes (Table 7); each is `name: synthetic`.
SYNTHETIC_PRESET_FILES = {"synthetic_ml_1m", "synthetic_ml_10m", "synthetic_ml_25m", "synthetic_yelp"}


def test_groups_are_the_documented_ones():
    assert set(STRATEGIES) == {"plaintext", "distributed_mf", "fedmf", "secemb", "secfedrec"}
    assert set(MODELS) == {"mf", "ncf", "fm", "deepfm"}
    base = set(DATASETS) - SYNTHETIC_PRESET_FILES
    assert base == {"ml_latest_small", "ml_100k", "ml_1m", "ml_10m", "ml_25m", "synthetic", "csv"}


@pytest.mark.parametrize("strategy,model", list(itertools.product(STRATEGIES, MODELS)))
def test_every_strategy_model_pair_composes_or_is_refused_clearly(strategy, model):
    overrides = [f"strategy={strategy}", f"model={model}"]
    if strategy in ("distributed_mf", "fedmf") and model != "mf":
        with pytest.raises(ConfigError, match="matrix factorisation only"):
            compose_config(overrides)
        return
    cfg = compose_config(overrides)
    assert cfg.strategy.name == strategy and cfg.model.name == model
    app = to_app_config(cfg)
    assert type(app.strategy) is sc.STRATEGY_CONFIGS[strategy]


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_composes(dataset):
    overrides = [f"dataset={dataset}"] + (["dataset.path=/tmp/x.csv"] if dataset == "csv" else [])
    cfg = compose_config(overrides)
    expected = "synthetic" if dataset in SYNTHETIC_PRESET_FILES else dataset
    assert cfg.dataset.name == expected
    assert isinstance(to_app_config(cfg).dataset, sc.DatasetConfig)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_composes(experiment):
    cfg = compose_config([f"+experiment={experiment}"])
    assert cfg.rounds > 0


@pytest.mark.parametrize("overrides,strategy", [
    # the README's commands: the secemb experiments choose secemb; an explicit strategy= still wins
    (["+experiment=secemb_ml100k_mf", "dataset.path=../shared/data/ml-100k"], "secemb"),
    (["+experiment=secemb_ml100k_mf", "strategy=secemb", "dataset.path=../shared/data/ml-100k"], "secemb"),
    (["+experiment=secemb_ml100k_mf", "strategy=plaintext", "dataset.path=../shared/data/ml-100k"], "plaintext"),
    (["+experiment=secemb_ml100k_deepfm"], "secemb"),
])
def test_secemb_experiments_choose_their_strategy(overrides, strategy):
    app = to_app_config(compose_config(overrides))
    assert app.strategy.name == strategy
    assert app.dataset.name == "ml_100k" and app.clients_per_round == 100
    if strategy == "secemb":
        assert app.strategy.m_prime is None  # m' from the secure count, as the README's results


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


@pytest.mark.parametrize("override,needle", [
    ("strategy=distributed_mf strategy.mode=padded", "pad_to"),
    ("strategy=secemb strategy.frac_bits=30", "frac_bits"),       # not < ring_bits - 2
    ("strategy=secfedrec strategy.frac_bits=29", "R_u"),          # R_u = (2^2 - 1) / 100 < 1
    ("strategy=secemb strategy.m_prime=0", "m_prime"),
    ("strategy=plaintext strategy.min_users=0", "min_users"),
    ("dataset=synthetic dataset.n_items=0", "n_items"),
    ("dataset=csv", "dataset.path"),
    ("train.server_optimizer=rmsprop", "server_optimizer"),
    ("simulation.register_timeout=0", "register_timeout"),
    ("checkpoint_every=-1", "checkpoint_every"),
])
def test_protocol_invariants_are_checked_at_composition(override, needle):
    with pytest.raises(ConfigError, match=needle):
        compose_config(override.split())


@pytest.mark.parametrize("strategy,key", [("secemb", "server1_fingerprint"), ("fedmf", "key_holder_fingerprint")])
def test_a_trust_anchor_composes_exactly_when_the_users_check_accepts_it(strategy, key):
    """Composition and the user's pin check read a fingerprint through the same helper, so a value one
    accepts (uppercase, spaces around it) the other accepts too, and a non-fingerprint fails both."""
    from crypto.sealed import fingerprint
    from schemas.two_server import check_pinned
    from schemas.validation import MessageError

    server_key = bytes(range(32))
    written = " " + fingerprint(server_key).upper() + " "
    app = to_app_config(compose_config([f"strategy={strategy}", f"strategy.{key}='{written}'"]))
    check_pinned(server_key, getattr(app.strategy, key))
    for bad in ("xyz", fingerprint(server_key)[:63], fingerprint(server_key)[:63] + "g"):
        with pytest.raises(ConfigError, match=f"strategy.{key}"):
            compose_config([f"strategy={strategy}", f"strategy.{key}={bad}"])
        with pytest.raises(MessageError, match="not a fingerprint"):
            check_pinned(server_key, bad)


def test_unknown_option_and_unknown_key_are_refused():
    with pytest.raises(HydraException, match="strategy"):
        compose_config(["strategy=nonexistent"])
    with pytest.raises((HydraException, ConfigKeyError), match="no_such_key"):
        compose_config(["no_such_key=1"])


@pytest.mark.parametrize("override,needle", [
    ("strategy.no_such_key=1", "strategy.no_such_key"),              # plaintext's schema
    ("strategy=secemb strategy.key_bits=2048", "strategy.key_bits"),  # a fedmf key is not a secemb key
    ("model.no_such_key=1", "model.no_such_key"),
    ("dataset.no_such_key=1", "dataset.no_such_key"),
    ("train.no_such_key=1", "train.no_such_key"),
    ("simulation.no_such_key=1", "simulation.no_such_key"),
    ("strategy=nonexistent", "strategy=nonexistent"),
])
def test_unknown_keys_and_options_are_refused_by_the_schema_with_one_line(override, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        compose_config(override.split())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override,needle", [
    ("rounds=abc", "rounds"), ("model.dim=wide", "model.dim"), ("strategy=fedmf strategy.key_bits=big", "key_bits"),
    ("simulation.telemetry=maybe", "telemetry"), ("dataset.test_fraction=half", "test_fraction"),
])
def test_wrong_types_are_refused_by_the_schema(override, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        compose_config(override.split())
    assert "\n" not in str(err.value)


def test_composed_config_is_typed_and_becomes_the_app_config():
    cfg = compose_config(["strategy=secemb", "model=deepfm", "rounds=3"])
    assert OmegaConf.get_type(cfg) is sc.AppConfig and OmegaConf.get_type(cfg.strategy) is sc.SecEmbConfig
    app = to_app_config(cfg)
    assert isinstance(app, sc.AppConfig) and isinstance(app.strategy, sc.SecEmbConfig)
    assert app.rounds == 3 and app.model.name == "deepfm"
    # the results.json path: a plain dict round-trips through from_dict to an equal config
    assert sc.from_dict(sc.to_dict(app)) == app


def test_fedmf_codec_that_cannot_fit_fails_before_any_key_is_generated():
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="frac_bits") as err:
        compose_config(["strategy=fedmf", "strategy.frac_bits=50"])
    elapsed = time.perf_counter() - start
    assert "value_bound" in str(err.value) and "clients_per_round" in str(err.value)
    assert elapsed < 1.0, f"took {elapsed:.2f}s: a key was generated?"
    # the strategies' own call refuses it too, without Hydra
    app = sc.AppConfig(strategy=sc.FedMFConfig(frac_bits=50))
    with pytest.raises(ConfigError, match="strategy.frac_bits"):
        app.strategy.check(app)


def test_dataclass_values_are_checked_without_hydra():
    with pytest.raises(ConfigError, match="strategy.ring_bits"):
        sc.SecEmbConfig(ring_bits=48)
    with pytest.raises(ConfigError, match="unknown keys"):
        sc.from_dict({"strategy": {"name": "secemb", "key_bits": 2048}})
    app = sc.AppConfig(model=sc.ModelConfig(name="ncf", dim=16), strategy=sc.DistributedMFConfig())
    with pytest.raises(ConfigError, match="matrix factorisation only"):
        app.strategy.check(app)


# ------------------------------------------------ conf/ and the dataclasses agree
def _yaml_keys(path: Path) -> set[str]:
    return {k for k in OmegaConf.load(path).keys() if k != "defaults"}


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_declared_field_appears_in_its_yaml():
    main = OmegaConf.load(CONF_DIR / "config.yaml")
    groups = {"strategy", "model", "dataset", "train", "simulation"}
    assert _field_names(sc.AppConfig) - groups <= set(main.keys())
    assert _field_names(sc.TrainConfig) == set(main.train.keys())
    assert _field_names(sc.SimulationConfig) == set(main.simulation.keys())
    for name, cls in sc.STRATEGY_CONFIGS.items():
        assert _field_names(cls) == _yaml_keys(CONF_DIR / "strategy" / f"{name}.yaml"), name
    for model in MODELS:
        assert _field_names(sc.ModelConfig) == _yaml_keys(CONF_DIR / "model" / f"{model}.yaml"), model
    files = {d: _yaml_keys(CONF_DIR / "dataset" / f"{d}.yaml") for d in DATASETS}
    assert _field_names(sc.DatasetConfig) == set().union(*files.values())
    common = {"name", "path", "split", "test_fraction", "k", "max_items", "max_users"}
    for d, keys in files.items():
        if d not in SYNTHETIC_PRESET_FILES:  # presets set only what differs from synthetic's defaults
            assert common <= keys, d
    synthetic_only = {"n_users", "n_items", "rank", "mean_ratings", "popularity_exponent", "noise",
                      "n_user_features", "n_item_features", "preset"}
    assert synthetic_only <= files["synthetic"]


def test_every_group_file_extends_its_schema():
    for path in CONF_DIR.glob("*/*.yaml"):
        if path.parent.name == "experiment":
            continue
        schema = f"{path.stem}_schema" if path.parent.name == "strategy" else f"{path.parent.name}_schema"
        assert list(OmegaConf.load(path).get("defaults", [])) == [schema, "_self_"], path


def test_every_declared_field_has_a_comment():
    for cls in (sc.AppConfig, sc.TrainConfig, sc.SimulationConfig, sc.ModelConfig, sc.DatasetConfig,
                *sc.STRATEGY_CONFIGS.values(), sc.StrategyConfig, sc.TwoServerConfig):
        lines, _ = inspect.getsourcelines(cls)
        for node in ast.parse(inspect.getsource(cls)).body[0].body:
            if isinstance(node, ast.AnnAssign) and not dataclasses.is_dataclass(
                    getattr(sc, ast.unparse(node.annotation), None)):
                assert "#" in lines[node.lineno - 1], f"{cls.__name__}.{ast.unparse(node.target)} has no comment"


# ------------------------------------------ every key the code reads is declared
READERS = ("clients", "strategies", "simulations", "twoserver", "recdata", "benchmarks")
CFG_ANNOTATIONS = ("AppConfig", "DictConfig")


def _chain(node: ast.Attribute) -> list[str] | None:
    """``cfg.a.b`` / ``self.cfg.a`` / ``env.cfg.a`` -> [root, a, b]; None for anything else."""
    names: list[str] = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute):
        names.append(cur.attr)
        cur = cur.value
    if not isinstance(cur, ast.Name):
        return None
    names.append(cur.id)
    names.reverse()
    if names[0] in ("self", "env") and len(names) > 1 and names[1] == "cfg":
        return ["cfg", *names[2:]]
    return names


def _config_reads(path: Path) -> list[tuple[int, list[str]]]:
    """Attribute chains read from the app config in one file, as ``["cfg", key, ...]``.

    Roots: ``cfg`` / ``self.cfg`` / ``env.cfg`` (unless a function annotates ``cfg`` with some other
    type), ``app`` only where a function annotates it ``AppConfig`` (elsewhere ``app`` is a Flower
    app), and local aliases such as ``s = cfg.strategy`` or ``sim = env.cfg.simulation``.
    """
    tree = ast.parse(path.read_text())
    reads: list[tuple[int, list[str]]] = []

    def config_chain(node: ast.AST, roots: dict[str, list[str]]) -> list[str] | None:
        chain = _chain(node) if isinstance(node, ast.Attribute) else (
            [node.id] if isinstance(node, ast.Name) else None)
        if not chain or chain[0] not in roots:
            return None
        return [*roots[chain[0]], *chain[1:]]

    def visit(node: ast.AST, roots: dict[str, list[str]]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            roots = dict(roots)  # a new scope: aliases made inside stay inside
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                ann = ast.unparse(arg.annotation) if getattr(arg, "annotation", None) else ""
                if arg.arg in ("cfg", "app") and (any(t in ann for t in CFG_ANNOTATIONS)
                                                  or (arg.arg == "cfg" and not ann)):
                    roots[arg.arg] = ["cfg"]
                else:
                    roots.pop(arg.arg, None)
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            visit(node.value, roots)
            alias = config_chain(node.value, roots)
            name = node.targets[0].id
            if alias is not None and len(alias) > 1:
                roots[name] = alias
            elif name != "cfg":
                roots.pop(name, None)
            return
        if isinstance(node, ast.Attribute):
            chain = config_chain(node, roots)
            if chain and len(chain) > 1:
                reads.append((node.lineno, chain))
        for child in ast.iter_child_nodes(node):
            visit(child, roots)

    visit(tree, {"cfg": ["cfg"]})
    return reads


def _resolve(chain: list[str]) -> bool:
    """Does ``cfg.<chain>`` name a declared field (or a method/property) of the dataclasses?"""
    types: list[Any] = [sc.AppConfig]
    for attr in chain[1:]:
        nxt: list[Any] = []
        found = False
        for cls in types:
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                return True  # a value (int, str, ...): its own methods are not config keys
            fields = {f.name for f in dataclasses.fields(cls)}
            if attr in fields:
                found = True
                hint = typing.get_type_hints(cls, vars(sc))[attr]
                nxt.extend(sc.STRATEGY_CONFIGS.values() if hint is Any else [hint])
            elif hasattr(cls, attr):
                return True  # a method or property (model.spec, strategy.check, ...)
        if not found:
            return False
        types = nxt
    return True



def test_every_config_key_the_code_reads_is_declared():
    undeclared, seen = [], 0
    for folder in READERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for lineno, chain in _config_reads(path):
                seen += 1
                if not _resolve(chain):
                    undeclared.append(f"{path.relative_to(REPO)}:{lineno}: {'.'.join(chain)}")
    assert seen > 50  # the scan does find the code's reads
    assert not undeclared, "config keys read but not declared in schemas/config.py:\n" + "\n".join(undeclared)


def test_the_static_scan_catches_an_undeclared_read():
    assert _resolve(["cfg", "simulation", "register_timeout"])
    assert _resolve(["cfg", "strategy", "server1_fingerprint"]) and _resolve(["cfg", "model", "spec"])
    assert not _resolve(["cfg", "simulation", "no_such_timeout"])
    assert not _resolve(["cfg", "strategy", "no_such_key"])


def test_synthetic_presets_match_the_generators():
    from recdata.synthetic import PRESETS

    assert set(sc.SYNTHETIC_PRESETS) == set(PRESETS)
    with pytest.raises(ConfigError, match="dataset.preset"):
        compose_config(["dataset=synthetic", "dataset.preset=netflix"])
