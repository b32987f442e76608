"""Private metrics of the two-server protocols: encoding, no wrap-around, clipping; server 1 key pinning."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from crypto.secret_sharing import share
from crypto.sealed import fingerprint
from schemas.two_server import METRIC_BOUND, MetricCodec, check_pinned
from schemas.validation import MessageError


@pytest.mark.parametrize("bits,n", [(32, 100), (32, 943), (64, 6040)])
def test_metric_sums_reconstruct_and_cannot_wrap(bits, n):
    codec = MetricCodec(bits, n)
    rng = np.random.default_rng(0)
    losses = rng.uniform(0, METRIC_BOUND, n)
    losses[:3] = METRIC_BOUND  # worst case: every summand at the bound
    counts = rng.integers(0, 1000, n)
    counts[0] = codec.count_bound
    enc = [codec.encode(v, c, "test") for v, c in zip(losses, counts)]
    shares = [share(e) for e in enc]
    total = sum((s0 for s0, _ in shares), np.zeros(2, codec.ring)) + sum((s1 for _, s1 in shares),
                                                                          np.zeros(2, codec.ring))
    value_sum, count_sum = codec.decode(total)
    assert count_sum == int(counts.sum())  # counts are exact
    assert abs(value_sum - losses.sum()) <= n * 2.0 ** -(codec.frac_bits + 1) + 1e-9
    # even n summands at the bound stay below 2^(k-1): no wrap
    assert n * METRIC_BOUND * 2.0 ** codec.frac_bits < 2.0 ** (bits - 1)


def test_out_of_range_metric_is_clipped_not_wrapped(caplog):
    codec = MetricCodec(32, 100)
    value, count = codec.decode(codec.encode(10 * METRIC_BOUND, codec.count_bound + 5, "loss"))
    assert value == METRIC_BOUND and count == codec.count_bound
    assert "clipped" in caplog.text


def test_one_user_share_reveals_nothing_alone():
    codec = MetricCodec(32, 12)
    s0a, _ = share(codec.encode(3.25, 7, "a"))
    s0b, _ = share(codec.encode(3.25, 7, "a"))
    assert not np.array_equal(s0a, s0b)  # fresh randomness every time


def test_fingerprint_pinning():
    key = bytes(range(32))
    assert fingerprint(key) == hashlib.sha256(key).hexdigest()
    check_pinned(key, None)  # no anchor: proceed (honest-but-curious server 0 only)
    check_pinned(key, fingerprint(key).upper())
    with pytest.raises(MessageError, match="does not match this user's trust anchor"):
        check_pinned(key, fingerprint(b"\x00" * 32))


@pytest.mark.slow
def test_secure_run_reports_client_seconds_only_with_telemetry(tmp_path):
    """simulation.telemetry=true: users report compute seconds (a per-user value they opted in to send)."""
    from tests.sim_utils import SMALL, run_sim

    res, _ = run_sim(tmp_path, SMALL + ["strategy=secemb", "model=mf", "strategy.m_prime=6", "rounds=1",
                                        "simulation.telemetry=true"])
    (r,) = res["records"]
    assert r["client_seconds_mean"] > 0 and r["eval_client_seconds_max"] > 0
    assert r["train_loss"] > 0 and r["test_rmse"] > 0
