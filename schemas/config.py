"""The app's typed configuration: every key the code reads, declared once with its type and meaning.

Hydra composes ``conf/`` against these dataclasses (registered in a
ConfigStore by :mod:`simulations.config`), so a wrong type or an unknown key
is refused at composition. Clients and strategies receive an
:class:`AppConfig` instance and read it by attribute. Each dataclass checks
its own values in ``__post_init__`` (so ``OmegaConf.to_object`` after
composition and :func:`from_dict` both refuse a bad value, raising
:class:`ConfigError` naming the key). Each strategy config
checks its protocol invariants in :meth:`StrategyConfig.check`, which the
strategy calls at construction, before any client is contacted (as Flower's
``_check_init_params`` does).

The dataclasses live here, below ``clients/`` and ``strategies/`` and above
``crypto/`` and ``models/``, because both sides of every protocol read them.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from crypto.sealed import canonical_fingerprint
from models.spec import REG_FORMS, ModelSpec


MAX_REPLY_HOLD_S = 3600.0  # the longest a device may hold a reply (clients.reply_hold): an hour is no round's time


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _fingerprint_or_none(value: Any, key: str, what: str) -> None:
    """A trust anchor is unset or a fingerprint the users' check (crypto.sealed.canonical_fingerprint) accepts."""
    if value is None:
        return
    try:
        canonical_fingerprint(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: must be {what}; {exc}") from None


# Value checks used by the dataclasses' __post_init__: they run whenever a
# config object is built (OmegaConf.to_object after Hydra composition, or
# from_dict), so a bad value is refused before any data is loaded.
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any, key: str) -> None:
    _require(_is_int(value) and value > 0, key, f"must be a positive integer, got {value!r}")


def _non_negative_int(value: Any, key: str) -> None:
    _require(_is_int(value) and value >= 0, key, f"must be an integer >= 0, got {value!r}")


def _optional_positive_int(value: Any, key: str) -> None:
    if value is not None:
        _positive_int(value, key)


def _positive_float(value: Any, key: str) -> None:
    _require(_is_number(value) and value > 0, key, f"must be a positive number, got {value!r}")


def _non_negative_float(value: Any, key: str) -> None:
    _require(_is_number(value) and value >= 0, key, f"must be a non-negative number, got {value!r}")


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) as (host, port); ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"server 1 address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _one_of(value: Any, key: str, options: tuple[Any, ...]) -> None:
    _require(value in options, key, f"{value!r} is not one of {', '.join(map(str, options))}")


STRATEGIES = ("plaintext", "distributed_mf", "fedmf", "secemb", "secfedrec")
MODELS = ("mf", "ncf", "fm", "deepfm")
DATASETS = ("ml_latest_small", "ml_100k", "ml_1m", "ml_10m", "ml_25m", "synthetic", "csv")
SYNTHETIC_PRESETS = ("ml_1m", "ml_10m", "ml_25m", "yelp")
ENGINES = ("flower", "batched")  # how a run executes: Flower messages, or the batched engine (engine/)
MF_ONLY_STRATEGIES = ("distributed_mf", "fedmf")
COMPRESSIONS = ("none", "bit8", "tern", "svd", "colr")  # SecEmb's lossy baselines (Section 5.3, Appendix J)
DP_MODES = ("central", "local")
DP_SAMPLINGS = ("poisson", "without_replacement", "none")
PAILLIER_KEY_BITS = (1024, 2048, 3072, 4096)
CHECKPOINTS_KEPT = 2  # a run folder keeps its last 2 checkpoints (a damaged newest falls back to the one before)


# ------------------------------------------------------------------- groups
@dataclass
class TrainConfig:
    local_user_steps: int = 5        # optimiser steps on the user-private parameters per participation
    eval_every: int = 5              # rounds between test evaluations (0 = only after the last round)
    eval_clients: int | None = None  # None = every user; an int evaluates a fixed seeded sample of users
    server_optimizer: str = "adam"   # adam (SecEmb Appendix I) or sgd
    server_adam_eps: float = 1e-8    # the server Adam's eps (torch's default); DeepFM with 1e-3: finals ~0.004 lower, its jumps remain (README, Table 3)
    ranking: bool = True             # HR@k / NDCG@k beside RMSE: each evaluated user's latest test rating ranked against sampled unrated items
    ranking_k: int = 10              # the k of HR@k and NDCG@k
    ranking_negatives: int = 99      # sampled items the user did not rate, ranked with the positive (NCF / PFedRec protocol)
    release_loss: bool = True        # secure protocols: users put their training loss in the secure sum (server 0
                                     # learns each round's sum); false: they put nothing and train_loss is null

    def releases_loss(self, dp_enabled: bool) -> bool:
        """Whether a secure protocol's users put their training loss in the round's secure sum: never under DP
        (each server noises only its gradient shares; an exact loss sum would be a release outside the ledger),
        else as ``release_loss`` says. Users and servers of both engines ask this one question."""
        return bool(self.release_loss) and not dp_enabled

    def __post_init__(self) -> None:
        _positive_int(self.local_user_steps, "train.local_user_steps")
        _positive_int(self.ranking_k, "train.ranking_k")
        _positive_int(self.ranking_negatives, "train.ranking_negatives")
        _non_negative_int(self.eval_every, "train.eval_every")
        _optional_positive_int(self.eval_clients, "train.eval_clients")
        _one_of(self.server_optimizer, "train.server_optimizer", ("adam", "sgd"))
        _positive_float(self.server_adam_eps, "train.server_adam_eps")
        _require(isinstance(self.release_loss, bool), "train.release_loss",
                 f"must be true or false, got {self.release_loss!r}")


@dataclass
class SimulationConfig:
    num_cpus_per_client: float = 1.0  # Ray resources per virtual client
    backend: str = "ray"              # Flower simulation backend
    reply_timeout: float = 600.0      # seconds a phase waits for replies before leaving clients out
    register_timeout: float = 300.0   # seconds to wait for all nodes to connect before round 1
    telemetry: bool = False           # users report their compute seconds (reveals per-user timing; see README)
    reply_hold: float = 0.0           # seconds each device holds a reply after its work began (README; a node's
                                      # reply-hold-seconds overrides it); 0 = replies leave when done
    device_state_dir: str | None = None  # each device also keeps its private state here (set on checkpointing/resumed runs)
    ray_address: str | None = None    # existing Ray cluster to run on ("host:port" or "auto"); null = $RAY_ADDRESS, else a local Ray
    node_pool: int | None = None      # virtual nodes of python -m simulations.run: null = one per user; fewer = users share nodes

    def __post_init__(self) -> None:
        _positive_float(self.num_cpus_per_client, "simulation.num_cpus_per_client")
        _require(isinstance(self.backend, str) and bool(self.backend), "simulation.backend", "must be a backend name")
        _positive_float(self.reply_timeout, "simulation.reply_timeout")
        _positive_float(self.register_timeout, "simulation.register_timeout")
        _require(_is_number(self.reply_hold) and 0 <= self.reply_hold <= MAX_REPLY_HOLD_S
                 and self.reply_hold < self.reply_timeout, "simulation.reply_hold",
                 f"must be 0..{MAX_REPLY_HOLD_S:g} seconds and below simulation.reply_timeout, got {self.reply_hold!r}")
        _optional_positive_int(self.node_pool, "simulation.node_pool")
        _require(self.ray_address is None or (isinstance(self.ray_address, str) and bool(self.ray_address.strip())),
                 "simulation.ray_address", "must be a Ray cluster address such as 127.0.0.1:6379 (or null)")


@dataclass
class DPConfig:
    """Record-level differential privacy (SecEmb Appendix G); accounted by strategies/privacy.py (Flower's RdpAccountant)."""

    enabled: bool = False                  # off: no clipping, no noise, no accounting
    mode: str = "central"                  # central: each of the two servers noises its aggregated share (secemb, secfedrec)
                                           # local: each user noises its own upload, no secure aggregation (DP-FedRec; plaintext)
    clip: float = 1.0                      # Delta_2: L2 bound of each rating's gradient (one record)
    noise_multiplier: float | None = None  # sigma: noise std = sigma x clip, per server (central) or per user (local)
    target_epsilon: float | None = None    # instead of noise_multiplier: the sigma that spends this epsilon over the run
    delta: float = 1e-5                    # the delta of (epsilon, delta)-DP
    sampling: str = "poisson"              # poisson | without_replacement | none: the sampling amplification accounted

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "dp.enabled", f"must be true or false, got {self.enabled!r}")
        _one_of(self.mode, "dp.mode", DP_MODES)
        _positive_float(self.clip, "dp.clip")
        if self.noise_multiplier is not None:
            _non_negative_float(self.noise_multiplier, "dp.noise_multiplier")
        if self.target_epsilon is not None:
            _positive_float(self.target_epsilon, "dp.target_epsilon")
        _require(_is_number(self.delta) and 0 < self.delta < 1, "dp.delta", f"must be in (0, 1), got {self.delta!r}")
        _one_of(self.sampling, "dp.sampling", DP_SAMPLINGS)
        if self.enabled:
            _require((self.noise_multiplier is None) != (self.target_epsilon is None), "dp.noise_multiplier",
                     "set exactly one of dp.noise_multiplier and dp.target_epsilon when dp.enabled")

    def check(self, app: AppConfig) -> None:
        """Which protocols each mode applies to (a config that would silently ignore DP is refused)."""
        if not self.enabled:
            return
        allowed = ("secemb", "secfedrec") if self.mode == "central" else ("plaintext",)
        _require(app.strategy.name in allowed, "dp.mode",
                 f"dp.mode={self.mode} applies to strategy {' or '.join(allowed)}, got strategy={app.strategy.name}")
        _require(getattr(app.strategy, "compression", "none") == "none", "strategy.compression",
                 "DP runs upload uncompressed gradients; set strategy.compression=none")


@dataclass
class ModelConfig:
    name: str = "mf"        # mf | ncf | fm | deepfm
    dim: int = 64           # embedding dimension d
    lr: float = 0.025       # server Adam learning rate (and the clients' private-parameter rate)
    reg: float = 0.01       # L2 regularisation weight
    init_std: float = 0.1   # std of the normal initial embeddings
    reg_form: str = "user"  # user (reg x sum of the user's row squares) | rating (that sum / its rating count)
    reg_dense: bool = False  # the L2 term also covers every dense parameter (MLP weights, biases, norms)

    def __post_init__(self) -> None:
        _one_of(self.name, "model.name", MODELS)
        _positive_int(self.dim, "model.dim")
        _positive_float(self.lr, "model.lr")
        _non_negative_float(self.reg, "model.reg")
        _positive_float(self.init_std, "model.init_std")
        _one_of(self.reg_form, "model.reg_form", REG_FORMS)
        _require(isinstance(self.reg_dense, bool), "model.reg_dense", f"must be true or false, got {self.reg_dense!r}")
        # NCF's MLP tower halves the width twice (2d -> d -> d/2).
        _require(self.name != "ncf" or self.dim % 2 == 0, "model.dim",
                 f"must be even for ncf (MLP 2d -> d -> d/2), got {self.dim}")

    def spec(self, n_user_features: int, n_item_features: int) -> ModelSpec:
        return ModelSpec(name=self.name, dim=int(self.dim), n_user_features=n_user_features,
                         n_item_features=n_item_features, init_std=float(self.init_std),
                         reg_form=self.reg_form, reg_dense=self.reg_dense)


@dataclass
class DatasetConfig:
    name: str = "ml_latest_small"    # ml_latest_small | ml_100k | ml_1m | ml_10m | ml_25m | synthetic | csv
    path: str | None = None          # folder (MovieLens) or file (csv) to read instead of the bundled/downloaded copy
    cache_dir: str | None = None     # where downloads are kept (MovieLens 100K..25M)
    download: bool = True            # allow the md5-checked GroupLens download when path is not given
    split: str = "random"            # random (80/20 per user) | last_k (each user's last k ratings by time) | loo (latest one: HR/NDCG ranking)
    test_fraction: float = 0.2       # test share per user for split=random
    k: int = 3                       # test ratings per user for split=last_k
    max_items: int | None = None     # keep only the most-rated items
    max_users: int | None = None     # keep only the users with most ratings (after max_items)
    age_encoding: str = "bucket"     # ml_100k user ages: bucket (30 features) | raw (84, as the SecEmb paper)
    # synthetic only
    preset: str | None = None        # ml_1m | ml_10m | ml_25m | yelp: sizes of SecEmb Table 7
    n_users: int = 100               # users of the planted matrix
    n_items: int = 200               # items of the planted matrix
    rank: int = 8                    # rank of the planted rating matrix
    mean_ratings: int = 20           # mean ratings per user (lognormal counts)
    popularity_exponent: float = 0.0  # Zipf-like item popularity exponent (0 = uniform; the paper-size presets use 1.0)
    noise: float = 0.3               # std of the rating noise
    n_user_features: int = 0         # random binary user features (FM/DeepFM inputs)
    n_item_features: int = 0         # random binary item features (FM/DeepFM inputs)

    def __post_init__(self) -> None:
        _one_of(self.name, "dataset.name", DATASETS)
        _require(self.name != "csv" or bool(self.path), "dataset.path", "is required for dataset=csv")
        _one_of(self.split, "dataset.split", ("random", "last_k", "loo"))
        _require(_is_number(self.test_fraction) and 0 < self.test_fraction < 1, "dataset.test_fraction",
                 f"must be in (0, 1), got {self.test_fraction!r}")
        _positive_int(self.k, "dataset.k")
        _optional_positive_int(self.max_items, "dataset.max_items")
        _optional_positive_int(self.max_users, "dataset.max_users")
        _one_of(self.age_encoding, "dataset.age_encoding", ("bucket", "raw"))
        if self.name == "synthetic":
            _one_of(self.preset, "dataset.preset", (None, *SYNTHETIC_PRESETS))
            for key in ("n_users", "n_items", "rank", "mean_ratings"):
                _positive_int(getattr(self, key), f"dataset.{key}")
            _non_negative_float(self.popularity_exponent, "dataset.popularity_exponent")
            _non_negative_float(self.noise, "dataset.noise")
            _non_negative_int(self.n_user_features, "dataset.n_user_features")
            _non_negative_int(self.n_item_features, "dataset.n_item_features")


def _paillier_codec_module() -> Any:
    """The module holding FedMF's PackingCodec and FixedPointCodec (crypto.paillier_codec, or
    crypto.paillier before the codec moved there); imported lazily, as the other strategies never need it."""
    try:
        return importlib.import_module("crypto.paillier_codec")
    except ModuleNotFoundError:
        return importlib.import_module("crypto.paillier")


# ---------------------------------------------------------------- strategies
@dataclass
class StrategyConfig:
    """Base of every protocol's settings."""

    name: str = "plaintext"  # the protocol: a key of STRATEGY_CONFIGS (set by the conf/strategy/ file chosen)
    min_users: int = 2  # a secure aggregate over fewer users is refused (it would reveal one user's values)

    def __post_init__(self) -> None:
        # Single-key value checks; cross-key invariants need the whole app and live in check().
        _one_of(self.name, "strategy.name", STRATEGIES)
        _positive_int(self.min_users, "strategy.min_users")

    def check(self, app: AppConfig) -> None:
        """Protocol invariants, checked before any client is contacted; raises ConfigError naming the key.

        Called by every strategy at construction and by ``simulations.config.to_app_config``,
        so a config that cannot work fails at composition, not rounds into a run.
        """
        self.__post_init__()
        expected = STRATEGY_CONFIGS.get(self.name)
        _require(expected is None or isinstance(self, expected), "strategy.name",
                 f"{self.name!r} needs a {expected.__name__ if expected else '?'}, got {type(self).__name__}")


@dataclass
class PlaintextConfig(StrategyConfig):
    name: str = "plaintext"     # plaintext federated training (the twin of secemb)
    m_prime: int | None = None  # pad/truncate each user's rated items to this count (None = use them all)
    compression: str = "none"   # none | bit8 | tern | svd | colr: lossy upload of the item-embedding update
                                # (SecEmb's baselines); anything but none downloads the full model, as the paper compares them
    compression_rank: int | None = None  # svd / colr rank; None = SecEmb Table 10's for the model and dataset
    compression_seed: int = 0   # CoLR's public basis seed (users and server draw the same basis each round)
    tern_clip_factor: float | None = 2.5  # TernGrad clipping at this many standard deviations (None = none)

    def __post_init__(self) -> None:
        super().__post_init__()
        _optional_positive_int(self.m_prime, "strategy.m_prime")
        _one_of(self.compression, "strategy.compression", COMPRESSIONS)
        _optional_positive_int(self.compression_rank, "strategy.compression_rank")
        _non_negative_int(self.compression_seed, "strategy.compression_seed")
        if self.tern_clip_factor is not None:
            _positive_float(self.tern_clip_factor, "strategy.tern_clip_factor")

    def check(self, app: AppConfig) -> None:
        super().check(app)
        if self.compression == "none":
            return
        _require(self.m_prime is None, "strategy.m_prime",
                 f"compression={self.compression} downloads the full model and trains on every rated item; "
                 "leave m_prime null")
        if self.compression in ("svd", "colr") and self.compression_rank is None:
            from models.compression import table10_rank

            name = app.dataset.name if app.dataset.name != "synthetic" else f"synthetic_{app.dataset.preset}"
            try:
                table10_rank(app.model.name, name)
            except KeyError:
                raise ConfigError(f"strategy.compression_rank: SecEmb Table 10 has no {self.compression} rank for "
                                  f"model={app.model.name} on dataset={name}; set it") from None

    def rank(self, app: AppConfig) -> int | None:
        """The SVD / CoLR rank this run uses (the configured one, else SecEmb Table 10's)."""
        if self.compression not in ("svd", "colr"):
            return None
        if self.compression_rank is not None:
            return int(self.compression_rank)
        from models.compression import table10_rank

        name = app.dataset.name if app.dataset.name != "synthetic" else f"synthetic_{app.dataset.preset}"
        return table10_rank(app.model.name, name)


@dataclass
class DistributedMFConfig(StrategyConfig):
    name: str = "distributed_mf"  # FedMF Algorithm 1 with plaintext gradients (the twin of fedmf)
    mode: str = "fulltext"        # parttext (rated items) | fulltext (all items) | padded
    lr: float = 0.01              # gamma of FedMF eqs. (3)-(4)
    reg_u: float = 0.001          # lambda
    reg_v: float = 0.001          # mu
    pad_to: int = 0               # padded mode: rated items plus random unrated ones up to this count
    record_uploads: bool = False  # keep the server's view (uploads + V) for the leakage attack

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self.mode, "strategy.mode", ("parttext", "fulltext", "padded"))
        _positive_float(self.lr, "strategy.lr")
        _non_negative_float(self.reg_u, "strategy.reg_u")
        _non_negative_float(self.reg_v, "strategy.reg_v")
        _non_negative_int(self.pad_to, "strategy.pad_to")
        _require(self.mode != "padded" or self.pad_to > 0, "strategy.pad_to",
                 f"must be a positive integer in padded mode, got {self.pad_to!r}")

    def check(self, app: AppConfig) -> None:
        super().check(app)
        # FedMF Algorithm 1 factorises the rating matrix: only biased MF has the U V^T form it updates.
        _require(app.model.name == "mf", "model",
                 f"strategy={self.name} trains matrix factorisation only; got model={app.model.name}")


@dataclass
class FedMFConfig(DistributedMFConfig):
    name: str = "fedmf"           # FedMF: Paillier-encrypted item matrix
    key_bits: int = 2048          # Paillier modulus bits; 1024 reproduces the paper (warns)
    frac_bits: int = 32           # fixed-point fraction bits of the packing codec
    value_bound: float = 64.0     # |value| bound of item-matrix entries and gradients (enforced)
    key_holder_fingerprint: str | None = None  # sha256 hex of the key holder's signing key (trust anchor)
    precompute_obfuscators: bool = True  # users keep r^n values for their next upload in Context.state
    key_holder: int | None = None  # user id that must generate the Paillier key (the one holding the signing key)
    key_holder_key_file: str | None = None  # PEM Ed25519 private key of that user (simulation; deployments: node config)
    key_delivery: str = "lazy"    # lazy: sealed key to a user when first sampled / evaluated; eager: to all at set-up (FedMF)

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self.key_delivery, "strategy.key_delivery", ("eager", "lazy"))
        _require(self.key_bits in PAILLIER_KEY_BITS, "strategy.key_bits",
                 f"must be 1024, 2048, 3072 or 4096, got {self.key_bits!r}")
        _positive_int(self.frac_bits, "strategy.frac_bits")
        _positive_float(self.value_bound, "strategy.value_bound")
        _fingerprint_or_none(self.key_holder_fingerprint, "strategy.key_holder_fingerprint",
                             "the sha256 of the key holder's Ed25519 public key")
        _require(self.key_holder is None or (_is_int(self.key_holder) and self.key_holder >= 0),
                 "strategy.key_holder", f"must be a user id (an integer >= 0) or null, got {self.key_holder!r}")

    def check(self, app: AppConfig) -> None:
        """Also build the packing codec the protocol will use, so a codec that cannot fit fails here,
        in microseconds, instead of after a multi-second Paillier key generation."""
        super().check(app)
        from crypto.fixed_point import FixedPointCodec

        codec_module = _paillier_codec_module()
        try:
            fixed = FixedPointCodec(int(self.frac_bits), float(self.value_bound))
            codec_module.PackingCodec(fixed, max_summands=int(app.clients_per_round), key_bits=int(self.key_bits))
        except ValueError as exc:
            raise ConfigError(
                f"strategy.frac_bits={self.frac_bits} with strategy.value_bound={self.value_bound}, "
                f"clients_per_round={app.clients_per_round} and strategy.key_bits={self.key_bits}: {exc}; "
                "lower frac_bits, value_bound or clients_per_round") from None


@dataclass
class TwoServerConfig(StrategyConfig):
    ring_bits: int = 32                     # Z_2^k of the DPF outputs and shares
    frac_bits: int = 16                     # fixed-point fraction bits in the ring
    server1_address: str | None = None      # host:port of a server 1 process (python -m twoserver); None = in-process
    server1_fingerprint: str | None = None  # sha256 hex of server 1's X25519 key, the users' trust anchor
    server1_tls_dir: str | None = None      # folder of `python -m twoserver.certs` (ca.pem, server0.pem/.key); None = plain TCP, loopback only

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.ring_bits in (32, 64), "strategy.ring_bits", f"must be 32 or 64, got {self.ring_bits!r}")
        _positive_int(self.frac_bits, "strategy.frac_bits")
        _require(self.frac_bits < self.ring_bits - 2, "strategy.frac_bits",
                 f"must leave integer bits in the ring (frac_bits < ring_bits - 2), got {self.frac_bits} "
                 f"with ring_bits={self.ring_bits}")
        if self.server1_address is not None:
            try:
                split_address(str(self.server1_address))
            except ValueError as exc:
                _require(False, "strategy.server1_address", f"{exc} (e.g. 127.0.0.1:9400)")
        _fingerprint_or_none(self.server1_fingerprint, "strategy.server1_fingerprint",
                             "the fingerprint server 1 prints at start")

    def per_user_bound(self, clients_per_round: int) -> float:
        """R_u = (2^(k-1-f) - 1) / n_p (SecEmb Lemma L.2): each user's clip bound, so n_p sums never wrap."""
        return (2.0 ** (self.ring_bits - 1 - self.frac_bits) - 1.0) / max(int(clients_per_round), 1)

    def check(self, app: AppConfig) -> None:
        super().check(app)
        bound = self.per_user_bound(app.clients_per_round)
        _require(bound >= 1.0, "strategy.frac_bits",
                 f"frac_bits={self.frac_bits} in a {self.ring_bits}-bit ring leaves each of "
                 f"clients_per_round={app.clients_per_round} users a value bound R_u={bound:.3g} < 1, so every "
                 "gradient would be clipped; lower frac_bits or clients_per_round, or use ring_bits=64")


@dataclass
class SecEmbConfig(TwoServerConfig):
    name: str = "secemb"          # SecEmb: two servers, DPF retrieval and row-wise DPF aggregation
    variant: str = "secemb"       # secemb (row encoding + shared path) | rowenc | init (ablations)
    m_prime: int | None = None    # None: m' = alpha x mean |I_u| from a secure sum (Appendix C)
    alpha: float = 1.0            # m' multiplier of the secure mean count (m_prime=None only)
    path_cache_mib: int = 2048    # each server's cache of DPF tree paths per round; beyond it paths are recomputed (same bits)
    count_users: int | None = 1000  # m_prime=None: the secure mean count over this seeded sample of users (None = all;
                                    # a sample keeps start-up independent of the population)

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self.variant, "strategy.variant", ("secemb", "rowenc", "init"))
        _non_negative_int(self.path_cache_mib, "strategy.path_cache_mib")
        _optional_positive_int(self.count_users, "strategy.count_users")
        _optional_positive_int(self.m_prime, "strategy.m_prime")
        _positive_float(self.alpha, "strategy.alpha")


@dataclass
class SecFedRecConfig(TwoServerConfig):
    name: str = "secfedrec"  # the SecEmb paper's Secure FedRec baseline (full model, additive shares)


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
    engine: str = "flower"           # flower (messages + cryptography) | batched (one process, one torch batch per round; same model, same numbers)
    train: TrainConfig = field(default_factory=TrainConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    strategy: Any = field(default_factory=PlaintextConfig)  # one of STRATEGY_CONFIGS' classes
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    dp: DPConfig = field(default_factory=DPConfig)

    def __post_init__(self) -> None:
        _positive_int(self.rounds, "rounds")
        _positive_int(self.clients_per_round, "clients_per_round")
        _non_negative_int(self.seed, "seed")
        _non_negative_int(self.checkpoint_every, "checkpoint_every")
        _one_of(self.engine, "engine", ENGINES)
        _require(isinstance(self.strategy, StrategyConfig), "strategy",
                 f"must be one of {', '.join(STRATEGY_CONFIGS)}, got {type(self.strategy).__name__}")

    def check(self) -> None:
        """Every value and protocol invariant of this config (what a strategy checks at construction)."""
        self.strategy.check(self)
        self.dp.check(self)

    def model_spec(self, n_user_features: int, n_item_features: int) -> ModelSpec:
        return self.model.spec(n_user_features, n_item_features)

    @property
    def protocol(self) -> str:
        """The protocol this config runs: the one key both engines' registries resolve.

        The strategy's name, except two baselines that run on ``strategy=plaintext``: ``dp_fedrec``
        (local DP, SecEmb Figure 7) and ``compressed`` (a codec, SecEmb Table 3). ``dp.check`` refuses
        DP with compression, so at most one applies.
        """
        if self.strategy.name == "plaintext":
            if self.dp.enabled and self.dp.mode == "local":
                return "dp_fedrec"
            if self.strategy.compression != "none":
                return "compressed"
        return str(self.strategy.name)


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
    groups = {"train": TrainConfig, "simulation": SimulationConfig, "model": ModelConfig, "dataset": DatasetConfig,
              "dp": DPConfig}
    built = {k: build(cls, dict(data.pop(k, {}))) for k, cls in groups.items()}
    return build(AppConfig, {**data, **built, "strategy": build(strategy_cls, strategy)})


def to_dict(cfg: AppConfig) -> dict[str, Any]:
    """Plain nested dict (for results.json and for shipping to apps)."""
    return dataclasses.asdict(cfg)


def model_spec(cfg: AppConfig, n_user_features: int, n_item_features: int) -> ModelSpec:
    return cfg.model.spec(n_user_features, n_item_features)
