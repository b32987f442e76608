"""SecEmb Appendix G building blocks: per-record clipping, CSPRNG Gaussian noise, Flower-backed accounting."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
import torch

from models.dp import add_gaussian_noise, clip_factors, gaussian_noise, noise_std
from strategies.privacy import PrivacyLedger, noise_multiplier_for_epsilon


def test_clip_factors_by_hand():
    # squared norms 25, 0.25, 0 with clip 1: factors 1/5, 1 (inside the ball), 1 (no gradient)
    factors = clip_factors(torch.tensor([25.0, 0.25, 0.0]), clip=1.0)
    torch.testing.assert_close(factors, torch.tensor([0.2, 1.0, 1.0]))
    with pytest.raises(ValueError):
        clip_factors(torch.ones(2), clip=0.0)


def test_clip_factors_bound_every_record_and_keep_its_direction():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(500, 7, generator=gen) * torch.logspace(-2, 1, 500)[:, None]  # norms from ~0.03 to ~30
    c = g * clip_factors((g ** 2).sum(1), clip=0.5)[:, None]
    assert torch.all(c.norm(dim=1) <= 0.5 + 1e-6)
    inside = g.norm(dim=1) <= 0.5
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(c[inside], g[inside])
    torch.testing.assert_close(c[~inside].norm(dim=1), torch.full((int((~inside).sum()),), 0.5))
    cos = torch.nn.functional.cosine_similarity(c, g, dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos))  # direction kept


def test_gaussian_noise_has_the_per_server_std_and_is_not_seeded_by_the_run():
    assert noise_std(1.5, 0.2) == pytest.approx(0.3)
    n = 200_000
    draws = gaussian_noise((n,), noise_multiplier=1.5, clip=0.2)
    # std of the sample std is sigma / sqrt(2n): 1% is ~6 standard errors
    assert draws.std() == pytest.approx(0.3, rel=0.01)
    assert abs(draws.mean()) < 5 * 0.3 / np.sqrt(n)
    np.random.seed(0)
    torch.manual_seed(0)
    first = gaussian_noise((8,), 1.0, 1.0)
    np.random.seed(0)
    torch.manual_seed(0)
    assert not np.array_equal(first, gaussian_noise((8,), 1.0, 1.0))
    share = np.ones((4, 3), np.float32)
    noisy = add_gaussian_noise(share, 1.0, 0.1)
    assert noisy.dtype == np.float32 and noisy.shape == share.shape and not np.array_equal(noisy, share)
    np.testing.assert_array_equal(add_gaussian_noise(share, 0.0, 0.1), share)


def _independent_epsilon(q: float, sigma: float, rounds: int, delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), rounds)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("sampled,users,sigma,rounds,delta", [
    (100, 943, 1.0, 50, 1e-5),     # ML100K, 100 clients a round
    (100, 6040, 0.8, 300, 1e-6),   # ML1M
    (20, 100, 2.0, 20, 1e-5),      # small federation, large sampling rate
])
def test_ledger_epsilon_matches_dp_accounting(sampled, users, sigma, rounds, delta):
    ledger = PrivacyLedger(noise_multiplier=sigma, population_size=users, delta=delta)
    assert ledger.epsilon() == 0.0
    for _ in range(rounds):
        ledger.record_round(sampled)
    assert ledger.rounds == rounds
    expected = _independent_epsilon(sampled / users, sigma, rounds, delta)
    assert ledger.epsilon() == pytest.approx(expected, rel=0.01)
    assert ledger.spent().epsilon == pytest.approx(expected, rel=0.01)


def test_without_replacement_and_no_amplification_match_dp_accounting():
    exact = PrivacyLedger(1.0, 943, 1e-5, sampling="without_replacement")
    exact.record_round(100, count=30)
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    # replace-one: a rating replaced moves the clipped sum by up to 2 clip, so std clip is a multiplier of 1/2
    acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(943, 100, dp_accounting.GaussianDpEvent(0.5)), 30)
    assert exact.epsilon() == pytest.approx(acc.get_epsilon(1e-5), rel=0.01)
    plain = PrivacyLedger(1.0, 943, 1e-5, sampling="none")
    plain.record_round(100, count=30)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(1.0), 30)
    assert plain.epsilon() == pytest.approx(acc.get_epsilon(1e-5), rel=0.01)
    assert plain.epsilon() > exact.epsilon()  # sampling amplifies
    with pytest.raises(ValueError, match="sampling"):
        PrivacyLedger(1.0, 943, 1e-5, sampling="shuffle")


def test_ledger_composes_rounds_of_different_sample_sizes_in_order():
    ledger = PrivacyLedger(1.1, 500, 1e-5)
    sizes = [50, 50, 20, 50, 50, 50]
    acc = dp_accounting.rdp.RdpAccountant()
    for size in sizes:
        ledger.record_round(size)
        acc.compose(dp_accounting.PoissonSampledDpEvent(size / 500, dp_accounting.GaussianDpEvent(1.1)))
    assert ledger.rounds == len(sizes) and ledger.state_dict()["compositions"][1]["count"] == 1
    assert ledger.epsilon() == pytest.approx(acc.get_epsilon(1e-5), rel=0.01)
    with pytest.raises(ValueError):
        ledger.record_round(501)


def test_ledger_state_round_trips():
    ledger = PrivacyLedger(1.2, 943, 1e-5)
    ledger.record_round(100, count=7)
    restored = PrivacyLedger(1.2, 943, 1e-5)
    restored.load_state_dict(ledger.state_dict())
    assert restored.rounds == 7 and restored.epsilon() == ledger.epsilon()


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_noise_multiplier_for_target_epsilon(target):
    z = noise_multiplier_for_epsilon(target, 1e-5, sampled_users=100, population_size=943, rounds=40)
    at = PrivacyLedger(z, 943, 1e-5)
    at.record_round(100, count=40)
    below = PrivacyLedger(z * 0.99, 943, 1e-5)
    below.record_round(100, count=40)
    assert at.epsilon() <= target < below.epsilon()
    assert at.epsilon() == pytest.approx(target, rel=0.01)
