"""Private metrics of the two-server protocols: encoding, no wrap-around, clipping; server 1 key pinning."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from crypto.secret_sharing import share
from crypto.sealed import fingerprint
from schemas.two_server import EVAL_RING_BITS, TRAIN_METRIC_BOUND, MetricCodec, check_pinned
from schemas.validation import MessageError


@pytest.mark.parametrize("codec", [MetricCodec.for_training(32, 100), MetricCodec.for_training(32, 1000),
                                   MetricCodec.for_training(64, 6040), MetricCodec.for_evaluation(943),
                                   MetricCodec.for_evaluation(162_541)])
def test_metric_sums_reconstruct_and_cannot_wrap(codec):
    n, bits, bound = codec.n_users, codec.ring_bits, codec.value_bound
    rng = np.random.default_rng(0)
    losses = rng.uniform(0, bound, n)
    losses[:3] = bound  # worst case: every summand at the bound
    counts = rng.integers(0, 1000, n)
    counts[0] = codec.count_bound
    enc = [codec.encode(v, c, "test") for v, c in zip(losses, counts)]
    shares = [share(e) for e in enc]
    total = sum((s0 for s0, _ in shares), np.zeros(2, codec.ring)) + sum((s1 for _, s1 in shares),
                                                                          np.zeros(2, codec.ring))
    value_sum, count_sum = codec.decode(total)
    assert count_sum == int(counts.sum())  # counts are exact
    assert abs(value_sum - losses.sum()) <= n * 2.0 ** -(codec.frac_bits + 1) + 1e-12 * abs(losses.sum())
    # even n summands at the bound stay below 2^(k-1): no wrap
    assert n * bound * 2.0 ** codec.frac_bits < 2.0 ** (bits - 1)
    assert codec.frac_bits >= 5  # still a useful resolution at every size above


def test_out_of_range_metric_is_clipped_not_wrapped(caplog):
    codec = MetricCodec.for_training(32, 100)
    value, count = codec.decode(codec.encode(10 * TRAIN_METRIC_BOUND, codec.count_bound + 5, "loss"))
    assert value == TRAIN_METRIC_BOUND and count == codec.count_bound
    assert "clipped" in caplog.text


def test_train_bound_holds_a_deepfm_first_round_user(caplog):
    """DeepFM's largest first-rounds upload on ml_100k (9,256 = loss x ratings) passes unclipped, exactly
    up to the fixed-point step."""
    codec = MetricCodec.for_training(32, 100)
    value, count = codec.decode(codec.encode(9256.37, 590, "loss"))
    assert value == pytest.approx(9256.37, abs=2.0 ** -codec.frac_bits) and count == 590
    assert "clipped" not in caplog.text


def test_evaluation_sums_use_their_own_ring_and_refuse_others():
    """Evaluation metrics travel in the 64-bit evaluation ring whatever the training ring; a 32-bit
    evaluation header is the parser's error, and a population-wide ML-25M sum keeps 24 fraction bits."""
    from flwr.app import RecordDict

    from schemas.two_server import eval_message, parse_eval_message, server_info_record
    from schemas.validation import MessageError

    assert MetricCodec.for_evaluation(162_541).ring_bits == EVAL_RING_BITS == 64
    assert MetricCodec.for_evaluation(162_541).frac_bits == 24
    key = bytes(range(32))
    assert parse_eval_message(eval_message(RecordDict({}), 3, key, "run1"))[3] == EVAL_RING_BITS
    bad = RecordDict({"cfg": server_info_record(key, "run1", round=3, ring_bits=32)})
    with pytest.raises(MessageError, match="evaluation ring_bits must be 64"):
        parse_eval_message(bad)


def test_metric_codec_refuses_a_bound_that_does_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        MetricCodec.for_training(32, 1 << 16)
    with pytest.raises(ValueError, match="metric bound"):
        MetricCodec(32, 10, float("nan"))


def test_one_user_share_reveals_nothing_alone():
    codec = MetricCodec.for_training(32, 12)
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
