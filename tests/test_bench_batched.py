"""benchmarks/bench_batched.py's harness: the round count of an epoch budget, and one real entry-point run
measured end to end (a tiny synthetic batched run, a few seconds)."""

from __future__ import annotations

import pytest

from benchmarks.bench_batched import RunResult, epoch_rounds, run_entry

TINY = ["dataset=synthetic", "dataset.n_users=12", "dataset.n_items=40", "dataset.mean_ratings=8", "model.dim=8",
        "clients_per_round=6", "strategy=secemb", "engine=batched", "train.eval_every=2"]


def test_epoch_rounds_is_epochs_times_users_over_clients_per_round():
    assert epoch_rounds(TINY, 200) == 400   # 200 x 12 / 6
    assert epoch_rounds(TINY, 2.5) == 5
    assert epoch_rounds([*TINY, "clients_per_round=50"], 3) == 3  # capped at the 12 users: one round an epoch


def test_a_stopped_run_projects_its_rate_over_all_rounds():
    records = [{"round": r, "round_seconds": s, "test_rmse": None} for r, s in ((1, 9.0), (2, 1.0), (3, 3.0))]
    run = RunResult(name="x", overrides=[], records=records, rounds_planned=30, process_seconds=6.0,
                    run_seconds=None, peak_tree_bytes=0, hwm_bytes=0, load_before=(0, 0, 0), load_after=(0, 0, 0),
                    stopped="time limit")
    assert run.round_seconds().tolist() == [1.0, 3.0]          # round 1 is the warm-up
    assert run.round_seconds(skip_first=False).tolist() == [9.0, 1.0, 3.0]
    assert run.projected_seconds() == pytest.approx(60.0)      # 6 s for 3 rounds -> 30 rounds
    finished = RunResult(**{**run.__dict__, "stopped": None, "run_seconds": 7.5})
    assert finished.projected_seconds() == 7.5


def test_run_entry_runs_the_entry_point_and_reads_its_records(tmp_path):
    run = run_entry("tiny", TINY, tmp_path / "run", rounds=4)
    assert [r["round"] for r in run.records] == [1, 2, 3, 4]
    assert all(r["engine"] == "batched" for r in run.records)
    assert [n for n, _ in run.curve()] == [2, 4]
    assert run.stopped is None and run.run_seconds is not None and run.run_seconds <= run.process_seconds
    assert run.hwm_bytes > 0 and run.extra["m_prime"] >= 1
    assert (tmp_path / "run" / "results.json").exists()
