"""User-side pieces SecEmb and Secure FedRec share: ring codec with R_u, server 1's pinned identity, private metrics.

Neither protocol's client imports the other's; both import this module.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Context, RecordDict

from clients.environment import ClientEnv
from crypto.fixed_point import BoundExceededError, FixedPointCodec
from crypto.ring import ring_dtype
from crypto.sealed import seal
from crypto.secret_sharing import share
from schemas import two_server
from schemas.config import AppConfig
from schemas.validation import array_record

log = logging.getLogger("secrec.client.two_server")
SERVER_INFO = "two_server_info"


def ring_codec(env: ClientEnv) -> tuple[FixedPointCodec, np.dtype]:
    """Fixed-point codec in Z_2^k with each user's range bound R_u = (R - 1) / n_p (SecEmb L.2)."""
    return user_ring_codec(env.cfg)


def user_ring_codec(cfg: AppConfig) -> tuple[FixedPointCodec, np.dtype]:
    """:func:`ring_codec` from the app config alone (the batched engine encodes as every user does)."""
    s = cfg.strategy
    bound = s.per_user_bound(int(cfg.clients_per_round))
    return FixedPointCodec(frac_bits=int(s.frac_bits), value_bound=bound), ring_dtype(int(s.ring_bits))


def clip_to_bound(values: np.ndarray, codec: FixedPointCodec, what: str) -> np.ndarray:
    """Enforce R_u on this user's contribution so the sum over n_p users cannot wrap the ring.

    Reached through :func:`to_ring_clipped` only after the codec refused a finite value beyond R_u: NaN and
    inf raise a plain ValueError there, so they are refused, never clipped into range."""
    values = np.asarray(values, dtype=np.float64)  # clipped in float64: a float32 bound could round above R_u
    over = np.abs(values) > codec.value_bound
    if over.any():
        log.warning("%s: clipping %d values to the per-user bound %.3g", what, int(over.sum()), codec.value_bound)
        values = np.clip(values, -codec.value_bound, codec.value_bound)
    return values


def to_ring_clipped(values: np.ndarray, codec: FixedPointCodec, ring: np.dtype, what: str,
                    out: np.ndarray | None = None) -> np.ndarray:
    """``codec.to_ring`` of the values clipped to R_u (:func:`clip_to_bound`, logged). The codec's own check
    is the common case's only read of the array's extremes: it refuses before writing anything, and only then
    is the array clipped and encoded again (a DeepFM round's 87M dense values were checked twice before)."""
    try:
        return codec.to_ring(values, ring, out=out)
    except BoundExceededError:
        return codec.to_ring(clip_to_bound(values, codec, what), ring, out=out)


def encode_upload(row_grads: np.ndarray, dense_grads: np.ndarray, loss: np.ndarray | float | None,
                  codec: FixedPointCodec, ring: np.dtype,
                  metrics: two_server.MetricCodec) -> tuple[np.ndarray, np.ndarray]:
    """A training contribution in Z_2^k: (row gradients, [dense gradient, loss, 1]).

    Every value is clipped to R_u (and logged) and fixed-point encoded; the metrics use their
    own codec. This is the user-side arithmetic of both two-server protocols, what the servers'
    sum then adds up: SecEmb's and Secure FedRec's clients secret-share these two arrays, and the
    batched engine (engine/) sums them directly. Works on one user (``row_grads`` [k, r],
    ``dense_grads`` [D], scalar loss) or a batch (leading user axis on all three).

    The metric slots carry the user's own training loss and a 1, so their sum is the round's
    loss sum and its number of users, which server 0 knows anyway. Not the rating count: a
    count's sums over many rounds of different users would solve for every user's count.
    ``loss`` None (:func:`released_loss` under central DP) puts 0 in the loss slot.
    """
    # float32 gradients are checked and scaled as they are (exactly as their float64 widening would be)
    rows = to_ring_clipped(np.asarray(row_grads), codec, ring, "row gradients")
    dense = np.asarray(dense_grads)
    size = dense.shape[-1]
    upload = np.empty(dense.shape[:-1] + (size + two_server.TRAIN_METRICS,), dtype=ring)
    to_ring_clipped(dense, codec, ring, "dense gradient", out=upload[..., :size])
    users = dense.shape[:-1]
    loss_a = np.zeros(users) if loss is None else np.broadcast_to(np.asarray(loss, dtype=np.float64), users)
    encoded = [metrics.encode(float(lo), 1, "training loss") for lo in loss_a.reshape(-1)]
    upload[..., size:] = np.stack(encoded).reshape(*users, two_server.TRAIN_METRICS).astype(ring)
    return rows, upload


def released_loss(cfg: AppConfig, loss: np.ndarray | float) -> np.ndarray | float | None:
    """The training loss a user puts in its upload: None (nothing) under central DP or with
    ``train.release_loss=false`` (:meth:`schemas.config.TrainConfig.releases_loss`).

    Why: each server noises only its share of the gradient sums, not the metric slots, so an exact
    loss sum would be a release the privacy ledger does not cover (one rating moves it). Local DP's
    users send no loss either (schemas/dp_fedrec.py). Without DP, per-round sums over the users server 0
    picks approximately solve for each user's average loss (README, "Sums over rounds").
    """
    return loss if cfg.train.releases_loss(cfg.dp.enabled) else None


def train_metric_codec(env: ClientEnv) -> two_server.MetricCodec:
    """Metric elements of a training upload: summed over at most ``clients_per_round`` users."""
    return two_server.MetricCodec.for_training(int(env.cfg.strategy.ring_bits), int(env.cfg.clients_per_round))


def eval_metric_codec(env: ClientEnv) -> two_server.MetricCodec:
    """Metric elements of an evaluation reply: summed over at most the evaluated users (evaluation ring)."""
    return two_server.MetricCodec.for_evaluation(two_server.eval_summands(env.cfg.train.eval_clients, env.n_users))


def trust_anchor(env: ClientEnv, context: Context) -> str | None:
    """The user's own anchor for server 1's key: its node config first, then the run config."""
    node = context.node_config.get("server1-fingerprint")
    return str(node) if node else env.cfg.strategy.server1_fingerprint


def accept_server_info(content: RecordDict, context: Context, env: ClientEnv) -> tuple[bytes, str, dict]:
    """Parse server 1's key and the run id relayed by server 0, check the pin, remember them for the round."""
    pub, run, rec = two_server.parse_server_info(content)
    check_pinned_key(pub, env, context)
    remember_server(context, pub, run)
    return pub, run, rec


def check_pinned_key(pub: bytes, env: ClientEnv, context: Context) -> None:
    """MessageError unless server 1's relayed key matches the user's anchor (when it has one)."""
    two_server.check_pinned(pub, trust_anchor(env, context))


def remember_server(context: Context, pub: bytes, run: str) -> None:
    context.state[SERVER_INFO] = array_record(pub=np.frombuffer(pub, dtype=np.uint8),
                                              run=np.frombuffer(run.encode(), dtype=np.uint8))


def server1_public(context: Context) -> bytes:
    return context.state[SERVER_INFO]["pub"].numpy().tobytes()


def run_of(context: Context) -> str:
    return context.state[SERVER_INFO]["run"].numpy().tobytes().decode()


def telemetry_seconds(env: ClientEnv, seconds: float) -> float | None:
    """Compute seconds travel only when the run opted in to telemetry (they are a per-user value)."""
    return float(seconds) if env.cfg.simulation.telemetry else None


def share_with_metrics(values_ring: np.ndarray, metrics_ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Additive shares of [values, metrics]: the metrics ride inside the protocol's own shared vector."""
    return share(np.concatenate([values_ring, metrics_ring.astype(values_ring.dtype)]))


def sealed_metric_shares(pub: bytes, run: str, rnd: int, user: int, metrics_ring: np.ndarray
                         ) -> tuple[np.ndarray, bytes]:
    """Share 0 in the clear for server 0, share 1 sealed for server 1 (evaluation sums)."""
    s0, s1 = share(metrics_ring)
    return s0, seal(pub, two_server.ring_vector_bytes(s1, "metrics"), two_server.context(run, rnd, user, "eval"))
