"""A device holds each reply until a fixed time after its work began (clients.reply_hold).

Why it matters: the reply's arrival time is what server 0's host sees of a
user's work, and the work grows with the user's rating count.
"""

from __future__ import annotations

import logging
import math

import pytest

from benchmarks.bench_reply_hold import timing_mod
from clients.reply_hold import REPLY_HOLD_NODE_KEY, held, reply_hold_seconds
from schemas.config import ConfigError
from simulations.config import compose_config, to_app_config
from tests.sim_utils import SMALL, run_sim


class FakeClock:
    def __init__(self) -> None:
        self.now, self.slept = 100.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("work,slept", [(0.3, [0.7]), (1.0, []), (1.5, [])])
def test_a_held_block_ends_at_the_hold_and_an_overrun_is_logged_on_the_device(work, slept, caplog):
    clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="secrec.client"):
        with held(1.0, "train.x", clock, clock.sleep):
            clock.now += work
    assert clock.slept == pytest.approx(slept) and clock.now == pytest.approx(100.0 + max(work, 1.0))
    assert ("reply hold" in caplog.text) == (work > 1.0)


def test_a_failing_block_is_held_too_and_its_error_passes_on():
    clock = FakeClock()
    with pytest.raises(RuntimeError, match="device"):
        with held(2.0, "train.x", clock, clock.sleep):
            clock.now += 0.5
            raise RuntimeError("device error")
    assert clock.slept == pytest.approx([1.5])


def test_no_hold_never_sleeps_or_warns(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="secrec.client"), held(0.0, "train.x", clock, clock.sleep):
        clock.now += 3.0
    assert clock.slept == [] and caplog.text == ""


def test_the_device_node_config_wins_over_the_run_config_and_bad_values_are_refused():
    cfg = to_app_config(compose_config(["simulation.reply_hold=2.5"]))
    assert reply_hold_seconds({}, cfg) == 2.5
    assert reply_hold_seconds({REPLY_HOLD_NODE_KEY: 0.75}, cfg) == 0.75
    assert reply_hold_seconds({REPLY_HOLD_NODE_KEY: "4"}, cfg) == 4.0
    assert reply_hold_seconds({REPLY_HOLD_NODE_KEY: 0}, cfg) == 0.0  # a device may opt out
    for bad in (-1, "soon", float("nan"), float("inf"), 1e9, True, b"1"):
        with pytest.raises(ValueError, match=REPLY_HOLD_NODE_KEY):
            reply_hold_seconds({REPLY_HOLD_NODE_KEY: bad}, cfg)
    for bad in ("-1", "7200", "600"):  # 600: not below the default reply_timeout, every reply would time out
        with pytest.raises(ConfigError, match="simulation.reply_hold"):
            to_app_config(compose_config([f"simulation.reply_hold={bad}"]))


@pytest.mark.slow
def test_every_reply_of_a_held_run_leaves_no_earlier_than_the_hold(tmp_path):
    """A Flower run with ``simulation.reply_hold``: every handler, whatever its user's work, takes at least the
    hold (timed on the device by the benchmark's mod around the handlers), and the run trains."""
    log = tmp_path / "durations.txt"
    hold = 0.25
    overrides = SMALL + ["strategy=secemb", "model=mf", "strategy.m_prime=6", "rounds=1", f"simulation.reply_hold={hold}"]
    res, _ = run_sim(tmp_path, overrides, client_mods=[timing_mod(str(log))])
    seen = [line.split() for line in log.read_text().splitlines()]
    kinds = {kind for kind, _user, _sec in seen}
    assert {"query.secemb_retrieve", "train.secemb_upload"} <= kinds, kinds
    assert min(float(sec) for _kind, _user, sec in seen) >= hold, sorted(seen, key=lambda s: float(s[2]))[:3]
    assert math.isfinite(res["final"]["final_test_rmse"])
