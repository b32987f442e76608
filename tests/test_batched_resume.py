"""engine=batched: checkpoints every K rounds, and ``resume=true`` ends as the uninterrupted run (DESIGN point 8).

Each case runs 6 rounds in one go, and in another folder 5 rounds with checkpoints every 2 (the last
checkpoint is round 4, so round 5 ran after it, as when a run dies between checkpoints), then
``resume=true rounds=6``. On this engine the users' private state is in the checkpoint, so the redone
and the new rounds must equal the uninterrupted run's exactly, not within a tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.registry import DRIVERS, get_driver
from simulations.checkpoint import ResumeError, load_latest_checkpoint, save_checkpoint
from simulations.config import compose_config, to_app_config
from simulations.results import read_records
from strategies.privacy import PrivacyLedger
from simulations.run import simulate_batched
from tests.sim_utils import SMALL
from tests.test_secure_protocols import FEATURES

BASE = [*SMALL, *FEATURES, "engine=batched", "train.eval_every=1", "train.ranking_negatives=20"]
# What a round's record says about learning (timings excluded: they are the only fields that may differ).
LEARNED = ("round", "clients", "train_loss", "test_rmse", "hr@10", "ndcg@10", "bytes_up_per_client",
           "bytes_down_per_client", "m_prime", "epsilon")


def _run(folder: Path, *overrides: str) -> dict:
    simulate_batched(to_app_config(compose_config([*BASE, *overrides])), str(folder))
    return json.loads((folder / "results.json").read_text())


def _learned(res: dict) -> list[tuple]:
    return [tuple(r.get(k) for k in LEARNED) for r in res["records"]]


def _stop_and_resume(tmp_path: Path, *protocol: str) -> tuple[dict, dict]:
    whole = _run(tmp_path / "whole", *protocol, "rounds=6")
    parted = tmp_path / "parted"
    first = _run(parted, *protocol, "rounds=5", "checkpoint_every=2")
    assert [r["round"] for r in first["records"]] == [1, 2, 3, 4, 5]
    assert load_latest_checkpoint(parted).round == 4  # round 5 ran after the last checkpoint
    resumed = _run(parted, *protocol, "rounds=6", "checkpoint_every=2", "resume=true")
    assert resumed["final"]["resumed_from_round"] == 4
    assert [r["round"] for r in read_records(parted)] == list(range(1, 7))
    return whole, resumed


@pytest.mark.parametrize("protocol", [
    ("strategy=plaintext", "model=ncf"),                                   # private parameters and their Adam
    ("strategy=secemb", "model=deepfm", "strategy.m_prime=null"),          # m' from the count, ring arithmetic
    ("strategy=distributed_mf",),                                          # the MF family's V and private u
    # the compressed driver (Table 3's baselines continue from checkpoints): SVD on DeepFM, CoLR's round basis
    ("strategy.compression=svd", "model=deepfm", "strategy=plaintext", "strategy.compression_rank=4"),
    ("strategy.compression=colr", "model=ncf", "strategy=plaintext", "strategy.compression_rank=4"),
], ids=lambda p: "-".join(o.split("=")[1] for o in p[:2]))
def test_a_resumed_run_equals_the_uninterrupted_run(tmp_path, protocol):
    whole, resumed = _stop_and_resume(tmp_path, *protocol)
    assert _learned(resumed) == _learned(whole)
    for key in ("final_test_rmse", "best_test_rmse"):
        assert resumed["final"][key] == whole["final"][key]


def test_dp_epsilon_continues_across_a_resume_and_counts_the_redone_rounds_twice(tmp_path):
    """DP noise comes from ``secrets`` (not replayable). The accountant counts rounds 1-4 again, and round 5,
    which ran after the last checkpoint, twice: its first noised aggregate reached the servers before the stop
    and the redone round releases another (before, the resumed run reported the uninterrupted run's epsilon)."""
    whole, resumed = _stop_and_resume(tmp_path, "strategy=secemb", "dp.enabled=true", "dp.clip=0.5",
                                      "dp.noise_multiplier=1.0")
    eps = [r["epsilon"] for r in resumed["records"]]
    assert eps[:4] == [r["epsilon"] for r in whole["records"]][:4] and eps == sorted(eps) and eps[0] > 0
    assert resumed["final"]["dp"]["rounds_accounted"] == 7 and whole["final"]["dp"]["rounds_accounted"] == 6
    cfg = to_app_config(compose_config([*BASE, "strategy=secemb", "dp.enabled=true", "dp.clip=0.5",
                                        "dp.noise_multiplier=1.0", "rounds=6"]))
    ledger = PrivacyLedger(1.0, cfg.dataset.n_users, cfg.dp.delta, cfg.dp.sampling)
    ledger.record_round(cfg.clients_per_round, 7)
    assert resumed["final"]["dp"]["epsilon"] == pytest.approx(ledger.epsilon(), rel=1e-12)
    assert resumed["final"]["dp"]["epsilon"] > whole["final"]["dp"]["epsilon"]


def test_a_target_epsilon_run_cannot_change_its_rounds_on_resume(tmp_path):
    """Its noise multiplier is solved from ``rounds``: more rounds, more noise; the rounds already run had less,
    and re-accounting them at the new multiplier would understate epsilon (both engines share this check)."""
    run = ("strategy=secemb", "dp.enabled=true", "dp.clip=0.5", "dp.target_epsilon=8", "checkpoint_every=2")
    _run(tmp_path, *run, "rounds=4")
    with pytest.raises(ResumeError, match="target_epsilon"):
        _run(tmp_path, *run, "rounds=6", "resume=true")


def test_every_checkpointable_driver_round_trips_and_others_say_so():
    assert {n for n in DRIVERS if get_driver(n).checkpointable} == set(DRIVERS) - {"fedmf"}


def test_resume_without_checkpoint_or_of_another_shape_is_refused_in_one_line(tmp_path):
    with pytest.raises(ResumeError, match="no checkpoint"):
        _run(tmp_path, "strategy=plaintext", "rounds=3", "resume=true")
    _run(tmp_path, "strategy=plaintext", "rounds=2", "checkpoint_every=2")
    ckpt = load_latest_checkpoint(tmp_path)
    cfg = to_app_config(compose_config([*BASE, "strategy=plaintext", "rounds=2", "checkpoint_every=2"]))
    broken = dict(ckpt.arrays, **{"private.params": np.zeros((3, 1), np.float32)})
    save_checkpoint(tmp_path, 2, broken, cfg)
    with pytest.raises(ResumeError, match="private.params"):
        _run(tmp_path, "strategy=plaintext", "rounds=3", "checkpoint_every=2", "resume=true")
    with pytest.raises(ResumeError, match="strategy.name"):  # another protocol's checkpoint
        _run(tmp_path, "strategy=secemb", "rounds=3", "checkpoint_every=2", "resume=true")
    with pytest.raises(ResumeError, match="fedmf cannot be resumed"):
        _run(tmp_path, "strategy=fedmf", "rounds=3", "resume=true")
