"""Privacy accounting for SecEmb with differential privacy (Appendix G), on Flower's own RDP accountant.

What is accounted: record-level DP (one rating added or removed). Each round,
every sampled user clips each per-rating gradient to L2 norm ``clip``
(:func:`models.dp_training.clipped_public_gradients`), so one rating moves the round's aggregate
by at most ``clip``; each of the two servers adds Gaussian noise of std
``noise_multiplier * clip`` to its share of the aggregate.

Why one server's noise: a server knows the noise it added itself and can
subtract it, so its view of the reconstructed aggregate carries only the
*other* server's noise. The guarantee against either server is therefore the
sampled Gaussian mechanism with that one noise multiplier, not with the
``sqrt(2)`` larger total. The DP-FedRec baseline (local DP: every user noises
its own upload with the same std) is accounted with the same event, since the
server then sees each upload with exactly one user's noise on it.

Sampling amplification: the round's users are a sample of rate
``clients_per_round / n_users``. ``sampling="poisson"`` accounts a Poisson
sample of that rate (the usual approximation); ``"without_replacement"`` is
the exact model of the fixed-size sample ``RecStrategy.sample_users`` draws
(and changes the neighbouring relation to replacing one record, as Flower
requires; replacing a rating moves a clipped sum by up to ``2 clip``, so the
event's noise multiplier, std over that sensitivity, is half the configured one:
:func:`accounted_multiplier`); ``"none"`` gives no amplification, e.g. when the adversary is a
server that knows which users took part. All three are Flower's
``flwr.serverapp.RdpAccountant`` (``flwr[dp]``, Google's dp-accounting); no
accounting is written here. The only computation of our own is the search for
the noise multiplier meeting a target epsilon, which is dp-accounting's
``calibrate_dp_mechanism`` over the same events.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import dp_accounting
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    RdpAccountant,
    SamplingMethod,
)

SAMPLING_METHODS: dict[str, tuple[SamplingMethod, NeighboringRelation]] = {
    "poisson": (SamplingMethod.POISSON, NeighboringRelation.ADD_OR_REMOVE_ONE),
    "without_replacement": (SamplingMethod.WITHOUT_REPLACEMENT, NeighboringRelation.REPLACE_ONE),
    "none": (SamplingMethod.NO_AMPLIFICATION, NeighboringRelation.ADD_OR_REMOVE_ONE),
}

log = logging.getLogger("secrec.privacy")


def accounted_multiplier(noise_multiplier: float, sampling: str) -> float:
    """The Gaussian event's noise multiplier: the noise std over the L2 sensitivity under the sampling's
    neighbouring relation (dp-accounting's definition). Adding or removing one rating moves the aggregate
    of per-rating gradients clipped to ``clip`` by at most ``clip``; replacing one moves it by up to
    ``2 clip``, so under replace-one the std ``noise_multiplier x clip`` is ``noise_multiplier / 2`` of it."""
    _method, relation = _sampling(sampling)
    return noise_multiplier / 2 if relation is NeighboringRelation.REPLACE_ONE else noise_multiplier


def _sampling(name: str) -> tuple[SamplingMethod, NeighboringRelation]:
    try:
        return SAMPLING_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown sampling {name!r}; choose one of {', '.join(SAMPLING_METHODS)}") from None


@dataclass
class PrivacyLedger:
    """Per-run ledger: one sampled Gaussian release per round, epsilon on demand.

    ``noise_multiplier`` is ONE server's noise std divided by the clip norm (see
    the module docstring); ``population_size`` the number of users;
    ``delta`` the delta at which epsilon is reported.

    Consecutive rounds with the same sample size are composed in one call
    (``compose(event, count)``): composing the same sampled Gaussian ``k``
    times costs dp-accounting one RDP evaluation instead of ``k``, and each
    evaluation takes a noticeable fraction of a second.
    """

    noise_multiplier: float
    population_size: int
    delta: float
    sampling: str = "poisson"

    def __post_init__(self) -> None:
        method, relation = _sampling(self.sampling)
        self._accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=self.delta,
                population_size=self.population_size,
                neighboring_relation=relation,
                sampling_method=method,
            )
        )
        self._pending: list[int] = [0, 0]  # [sample size, rounds] not yet handed to the accountant
        self._event_multiplier = accounted_multiplier(float(self.noise_multiplier), self.sampling)

    def record_round(self, sampled_users: int, count: int = 1) -> None:
        """Account ``count`` rounds that each released an aggregate over ``sampled_users`` users."""
        # Validate now, not at the deferred compose: Flower's event checks sizes and the noise multiplier.
        GaussianPrivacyEvent(self._event_multiplier, int(sampled_users), self.population_size)
        if not isinstance(count, int) or count <= 0:
            raise ValueError("count must be a positive integer")
        if self._pending[1] and self._pending[0] != sampled_users:
            self._flush()
        self._pending = [int(sampled_users), self._pending[1] + count]

    def _flush(self) -> None:
        size, count = self._pending
        if count:
            event = GaussianPrivacyEvent(self._event_multiplier, size, self.population_size)
            self._accountant.compose(event, count)
        self._pending = [0, 0]

    @property
    def rounds(self) -> int:
        """Rounds accounted so far."""
        return self._accountant.num_releases + self._pending[1]

    def epsilon(self, delta: float | None = None) -> float:
        """Cumulative epsilon at ``delta`` (the configured delta if None); 0 before any round."""
        if self.rounds == 0:
            return 0.0
        self._flush()
        return self._accountant.get_epsilon(self.delta if delta is None else delta)

    def spent(self) -> PrivacySpent:
        """Flower's summary (epsilon, delta, releases, optimal RDP order) at the configured delta."""
        self._flush()
        return self._accountant.get_privacy_spent()

    def state_dict(self) -> dict[str, object]:
        """JSON-serialisable state, for checkpoints (Flower's format)."""
        self._flush()
        return self._accountant.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what :meth:`state_dict` returned (same configuration required)."""
        self._accountant.load_state_dict(state)
        self._pending = [0, 0]


def noise_multiplier_for_epsilon(
    target_epsilon: float,
    delta: float,
    sampled_users: int,
    population_size: int,
    rounds: int,
    sampling: str = "poisson",
) -> float:
    """Smallest noise multiplier whose ``rounds`` releases cost at most ``target_epsilon`` at ``delta``.

    dp-accounting's Brent search (``calibrate_dp_mechanism``) over its RDP
    accountant with the events Flower's ``RdpAccountant`` composes; the result
    is then checked with a :class:`PrivacyLedger` and nudged up by the search
    tolerance if the search landed a hair on the wrong side of the target,
    so the returned value always satisfies Flower's own accounting.
    """
    if not target_epsilon > 0 or rounds <= 0:
        raise ValueError("target_epsilon and rounds must be positive")
    method, relation = _sampling(sampling)
    rdp_relation = getattr(dp_accounting.NeighboringRelation, relation.name)

    def make_event(z: float) -> dp_accounting.DpEvent:
        # The event Flower's RdpAccountant composes for one round, self-composed over the run.
        gaussian = dp_accounting.GaussianDpEvent(accounted_multiplier(float(z), sampling))
        if method is SamplingMethod.POISSON:
            one: dp_accounting.DpEvent = dp_accounting.PoissonSampledDpEvent(sampled_users / population_size, gaussian)
        elif method is SamplingMethod.WITHOUT_REPLACEMENT:
            one = dp_accounting.SampledWithoutReplacementDpEvent(population_size, sampled_users, gaussian)
        else:
            one = gaussian
        return dp_accounting.SelfComposedDpEvent(one, int(rounds))

    tol = 1e-5
    z = float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: dp_accounting.rdp.RdpAccountant(neighboring_relation=rdp_relation),
            make_event,
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-2, 1.0),
            tol=tol,
        )
    )
    for _ in range(10):
        check = PrivacyLedger(z, population_size, delta, sampling)
        check.record_round(sampled_users, rounds)
        if check.epsilon() <= target_epsilon:
            return z
        z += tol
    raise RuntimeError(f"noise calibration did not meet epsilon={target_epsilon} (method {method.value})")


@dataclass
class DPRun:
    """One run's differential privacy: the resolved noise multiplier, the clip, and the ledger.

    Built once per run from ``cfg.dp`` by :func:`dp_run_of` (``target_epsilon`` is turned into
    the noise multiplier that spends it over ``cfg.rounds`` rounds of ``clients_per_round``
    users, and logged); both engines call :meth:`account` once per round that released an
    aggregate and put its fields in the round's record.
    """

    noise_multiplier: float
    clip: float
    delta: float
    sampling: str
    mode: str
    ledger: PrivacyLedger

    @property
    def std(self) -> float:
        """Std of the Gaussian noise each noising party (a server, or a DP-FedRec user) adds."""
        return self.noise_multiplier * self.clip

    def account(self, sampled_users: int, released: bool = True) -> dict[str, float]:
        """Account a round over ``sampled_users`` (if it released an aggregate); the record's DP fields."""
        if self.noise_multiplier == 0:  # no noise: clipping only, no guarantee (Flower's events need sigma > 0)
            return {"epsilon": math.inf, "noise_multiplier": 0.0}
        if released and sampled_users > 0:
            self.ledger.record_round(int(sampled_users))
        return {"epsilon": self.ledger.epsilon(), "noise_multiplier": self.noise_multiplier}

    def summary(self) -> dict[str, object]:
        """What results.json carries: final epsilon, delta, noise multiplier, clip, sampling, mode."""
        eps = math.inf if self.noise_multiplier == 0 else self.ledger.epsilon()
        return {"dp": {"epsilon": eps, "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                       "clip": self.clip, "sampling": self.sampling, "mode": self.mode,
                       "rounds_accounted": self.ledger.rounds}}


def dp_run_of(cfg: Any, n_users: int) -> DPRun | None:
    """The run's :class:`DPRun` from an AppConfig, or None when ``dp.enabled`` is false."""
    dp = cfg.dp
    if not dp.enabled:
        return None
    sampled = min(int(cfg.clients_per_round), int(n_users))
    if dp.noise_multiplier is not None:
        z = float(dp.noise_multiplier)
    else:
        z = noise_multiplier_for_epsilon(float(dp.target_epsilon), float(dp.delta), sampled, int(n_users),
                                         int(cfg.rounds), str(dp.sampling))
        log.info("dp: noise multiplier %.4f spends epsilon=%g at delta=%g over %d rounds of %d/%d users (%s)",
                 z, dp.target_epsilon, dp.delta, cfg.rounds, sampled, n_users, dp.sampling)
    return DPRun(noise_multiplier=z, clip=float(dp.clip), delta=float(dp.delta), sampling=str(dp.sampling),
                 mode=str(dp.mode), ledger=PrivacyLedger(z, int(n_users), float(dp.delta), str(dp.sampling)))
