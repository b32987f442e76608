"""The app's typed configuration: every key the code reads, declared once with its type and meaning.

Hydra composes ``conf/`` against these dataclasses (registered in a
ConfigStore by :mod:`simulations.config`), so a wrong type or an unknown key
is refused at composition. Clients and strategies receive an
:class:`AppConfig` instance and read it by attribute. Each strategy config
checks its protocol invariants in :meth:`StrategyConfig.check`, which the
strategy calls at construction, before any client is contacted (as Flower's
``_check_init_params`` does).

The dataclasses live here, below ``clients/`` and ``strategies/`` and above
``crypto/`` and ``models/``, because both sides of every protocol read them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from models.spec import ModelSpec


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


# ------------------------------------------------------------------- groups
@dataclass
class TrainConfig:
    local_user_steps: int = 5        # optimiser steps on the user-private parameters per participation
    eval_every: int = 5              # rounds between test evaluations (0 = only after the last round)
    eval_clients: int | None = None  # None = every user; an int evaluates a fixed seeded sample of users
    server_optimizer: str = "adam"   # adam (SecEmb Appendix I) or sgd


@dataclass
class SimulationConfig:
    num_cpus_per_client: float = 1.0  # Ray resources per virtual client
    backend: str = "ray"              # Flower simulation backend
    reply_timeout: float = 600.0      # seconds a phase waits for replies before leaving clients out
    register_timeout: float = 300.0   # seconds to wait for all nodes to connect before round 1
    telemetry: bool = False           # users report their compute seconds (reveals per-user timing; see README)


@dataclass
class ModelConfig:
    name: str = "mf"        # mf | ncf | fm | deepfm
    dim: int = 64           # embedding dimension d
    lr: float = 0.025       # server Adam learning rate (and the clients' private-parameter rate)
    reg: float = 0.01       # L2 regularisation weight
    init_std: float = 0.1   # std of the normal initial embeddings

    def spec(self, n_user_features: int, n_item_features: int) -> ModelSpec:
        return ModelSpec(name=self.name, dim=int(self.dim), n_user_features=n_user_features,
                         n_item_features=n_item_features, init_std=float(self.init_std))


@dataclass
class DatasetConfig:
    name: str = "ml_latest_small"    # ml_latest_small | ml_100k | ml_1m | ml_10m | ml_25m | synthetic | csv
    path: str | None = None          # folder (MovieLens) or file (csv) to read instead of the bundled/downloaded copy
    cache_dir: str | None = None     # where downloads are kept (MovieLens 100K..25M)
    download: bool = True            # allow the md5-checked GroupLens download when path is not given
    split: str = "random"            # random (80/20 per user) | last_k (each user's last k ratings by time)
    test_fraction: float = 0.2       # test share per user for split=random
    k: int = 3                       # test ratings per user for split=last_k
    max_items: int | None = None     # keep only the most-rated items
    max_users: int | None = None     # keep only the users with most ratings (after max_items)
    age_encoding: str = "bucket"     # ml_100k user ages: bucket (30 features) | raw (84, as the SecEmb paper)
    # synthetic only
    preset: str | None = None        # ml_1m | ml_10m | ml_25m | yelp: sizes of SecEmb Table 7
    n_users: int = 100
    n_items: int = 200
    rank: int = 8                    # rank of the planted rating matrix
    mean_ratings: int = 20           # mean ratings per user (lognormal counts)
    popularity_exponent: float = 1.0  # Zipf-like item popularity (0 = uniform)
    noise: float = 0.3               # std of the rating noise
    n_user_features: int = 0
    n_item_features: int = 0


# ---------------------------------------------------------------- strategies
@dataclass
class StrategyConfig:
    """Base of every protocol's settings."""

    name: str = "plaintext"
    min_users: int = 2  # a secure aggregate over fewer users is refused (it would reveal one user's values)

    def check(self, app: AppConfig) -> None:
        """Protocol invariants, checked before any client is contacted; raises ConfigError naming the key."""
        _require(self.min_users >= 1, "strategy.min_users", f"must be >= 1, got {self.min_users}")


@dataclass
class PlaintextConfig(StrategyConfig):
    name: str = "plaintext"
    m_prime: int | None = None  # pad/truncate each user's rated items to this count (None = use them all)


@dataclass
class DistributedMFConfig(StrategyConfig):
    name: str = "distributed_mf"
    mode: str = "fulltext"        # parttext (rated items) | fulltext (all items) | padded
    lr: float = 0.01              # gamma of FedMF eqs. (3)-(4)
    reg_u: float = 0.001          # lambda
    reg_v: float = 0.001          # mu
    pad_to: int = 0               # padded mode: rated items plus random unrated ones up to this count
    record_uploads: bool = False  # keep the server's view (uploads + V) for the leakage attack


@dataclass
class FedMFConfig(DistributedMFConfig):
    name: str = "fedmf"
    key_bits: int = 2048          # Paillier modulus bits; 1024 reproduces the paper (warns)
    frac_bits: int = 32           # fixed-point fraction bits of the packing codec
    value_bound: float = 64.0     # |value| bound of item-matrix entries and gradients (enforced)
    key_holder_fingerprint: str | None = None  # sha256 hex of the key holder's signing key (trust anchor)


@dataclass
class TwoServerConfig(StrategyConfig):
    ring_bits: int = 32                     # Z_2^k of the DPF outputs and shares
    frac_bits: int = 16                     # fixed-point fraction bits in the ring
    server1_address: str | None = None      # host:port of a server 1 process (python -m twoserver); None = in-process
    server1_fingerprint: str | None = None  # sha256 hex of server 1's X25519 key, the users' trust anchor


@dataclass
class SecEmbConfig(TwoServerConfig):
    name: str = "secemb"
    variant: str = "secemb"       # secemb (row encoding + shared path) | rowenc | init (ablations)
    m_prime: int | None = None    # None: m' = alpha x mean |I_u| from a secure sum (Appendix C)
    alpha: float = 1.0


@dataclass
class SecFedRecConfig(TwoServerConfig):
    name: str = "secfedrec"


STRATEGY_CONFIGS: dict[str, type[StrategyConfig]] = {
    "plaintext": PlaintextConfig,
    "distributed_mf": DistributedMFConfig,
    "fedmf": FedMFConfig,
    "secemb": SecEmbConfig,
    "secfedrec": SecFedRecConfig,
}


# ------------------------------------------------------------------- the app
@dataclass
class AppConfig:
    rounds: int = 20                 # federated rounds (server aggregation steps)
    clients_per_round: int = 100     # users sampled per round (capped at the number of users)
    seed: int = 0                    # drives data split, client sampling and model init only (never secrets)
    output_dir: str | None = None    # results folder; None = the Hydra run dir or the run config's output-dir
    checkpoint_every: int = 0        # rounds between checkpoints in the run folder (0 = none)
    resume: bool = False             # continue the run in hydra.run.dir from its last checkpoint
    train: TrainConfig = field(default_factory=TrainConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    strategy: Any = field(default_factory=PlaintextConfig)  # one of STRATEGY_CONFIGS' classes
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)

    def model_spec(self, n_user_features: int, n_item_features: int) -> ModelSpec:
        return self.model.spec(n_user_features, n_item_features)


def from_dict(values: dict[str, Any]) -> AppConfig:
    """An AppConfig from a plain nested dict (e.g. results.json's config); unknown keys are refused."""

    def build(cls: type, data: dict[str, Any]) -> Any:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(names)
        if unknown:
            raise ConfigError(f"unknown keys for {cls.__name__}: {sorted(unknown)}")
        return cls(**data)

    data = dict(values)
    strategy = dict(data.pop("strategy", {}))
    strategy_cls = STRATEGY_CONFIGS.get(strategy.get("name", "plaintext"))
    if strategy_cls is None:
        raise ConfigError(f"strategy.name={strategy.get('name')!r} is not one of {', '.join(STRATEGY_CONFIGS)}")
    groups = {"train": TrainConfig, "simulation": SimulationConfig, "model": ModelConfig, "dataset": DatasetConfig}
    built = {k: build(cls, dict(data.pop(k, {}))) for k, cls in groups.items()}
    return build(AppConfig, {**data, **built, "strategy": build(strategy_cls, strategy)})


def to_dict(cfg: AppConfig) -> dict[str, Any]:
    """Plain nested dict (for results.json and for shipping to apps)."""
    return dataclasses.asdict(cfg)


def model_spec(cfg: AppConfig, n_user_features: int, n_item_features: int) -> ModelSpec:
    return cfg.model.spec(n_user_features, n_item_features)
