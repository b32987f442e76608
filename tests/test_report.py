"""``python -m simulations.report``: the table and plots of real runs, checked against the runs' own files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulations.report import Run, group_runs, main, markdown, metric_columns, run_metrics, table_rows, varying_keys
from simulations.config import compose_config, to_app_config
from simulations.run import simulate_batched
from tests.sim_utils import SMALL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory) -> Path:
    """Four real runs: a Hydra multirun of two seeds (model.dim=8) and two more seeds with model.dim=4.

    On the batched engine: the report reads the same files either engine writes (results.json,
    records.jsonl, Hydra's config), and these runs take seconds instead of four Flower start-ups.

    The multirun's job 1 then loses its results.json, as a run that died before its
    first checkpoint would: the report must read it from records.jsonl and .hydra/config.yaml.
    """
    root = tmp_path_factory.mktemp("report")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "simulations.run", "--multirun", *SMALL, "seed=0,1", "engine=batched",
           f"hydra.sweep.dir={root / 'sweep'}"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"multirun failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    for seed in (0, 1):
        cfg = to_app_config(compose_config([*SMALL, "model.dim=4", f"seed={seed}", "engine=batched"]))
        simulate_batched(cfg, str(root / "dim4" / f"seed{seed}"))
    job1 = root / "sweep" / "1"
    shutil.copy(job1 / "results.json", root / "job1_results.json")  # kept outside every run folder
    (job1 / "results.json").unlink()
    return root


def _results(root: Path) -> dict[str, list[dict]]:
    """The runs' own results.json, by model.dim."""
    files = [root / "sweep" / "0" / "results.json", root / "job1_results.json",
             root / "dim4" / "seed0" / "results.json", root / "dim4" / "seed1" / "results.json"]
    by_dim: dict[str, list[dict]] = {}
    for f in files:
        res = json.loads(f.read_text())
        by_dim.setdefault(str(res["config"]["model"]["dim"]), []).append(res)
    return by_dim


@pytest.mark.slow
def test_report_of_real_runs_groups_by_the_varying_key_with_mean_and_std(runs_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(runs_folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model.dim"] for r in rows] == ["4", "8"]  # the one key that varies (seed is not grouped by)
    assert {r["strategy.name"] for r in rows} == {"plaintext"} and {r["dataset.name"] for r in rows} == {"synthetic"}
    expected = _results(runs_folder)
    for row in rows:
        runs = expected[row["model.dim"]]
        assert row["n"] == "2" and row["seeds"] == "0 1"
        for column, key in [("test_rmse", "final_test_rmse"), ("bytes_up_per_client", "mean_bytes_up_per_client"),
                            ("bytes_down_per_client", "mean_bytes_down_per_client"), ("rounds", "rounds")]:
            values = np.array([r["final"][key] for r in runs], dtype=float)
            assert float(row[f"{column}_mean"]) == pytest.approx(values.mean(), rel=1e-12)
            assert float(row[f"{column}_std"]) == pytest.approx(values.std(ddof=1), rel=1e-9, abs=1e-12)
        # the run without results.json has no wall time; the other one's is its own
        if row["model.dim"] == "8":
            assert float(row["wall_seconds_mean"]) == pytest.approx(runs[0]["final"]["wall_seconds"])
    assert "hr@10_mean" not in rows[0]  # no run reported ranking metrics
    md = (out / "report.md").read_text()
    assert md.splitlines()[0].startswith("| strategy.name | model.name | dataset.name | model.dim | n | seeds |")
    assert len(md.splitlines()) == 4 and md in printed
    for png in ("rmse_vs_round.png", "utility_vs_bytes.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "hr_vs_round.png").exists()


@pytest.mark.slow
def test_a_run_with_only_records_is_read_from_records_and_hydra_config(runs_folder):
    from simulations.report import read_run

    job1 = read_run(runs_folder / "sweep" / "1")
    own = json.loads((runs_folder / "job1_results.json").read_text())
    assert job1.config["model.dim"] == 8 and job1.config["seed"] == 1
    assert job1.metrics["test_rmse"] == own["final"]["final_test_rmse"]
    assert job1.metrics["bytes_up_per_client"] == pytest.approx(own["final"]["mean_bytes_up_per_client"])
    assert job1.metrics["wall_seconds"] is None
    # Hydra's config.yaml and results.json's config flatten to the same keys, so the run groups with its twin
    twin = read_run(runs_folder / "sweep" / "0")
    assert set(job1.config) == set(twin.config)


def test_ranking_metrics_epsilon_and_missing_keys():
    """Pure parts on hand-written records: the last reported HR/NDCG/epsilon, and a key only some runs have."""
    records = [{"round": 1, "hr@10": 0.2, "ndcg@10": 0.1, "epsilon": 0.5},
               {"round": 2, "hr@10": 0.4, "ndcg@10": None, "epsilon": 0.9}, {"round": 3}]
    m = run_metrics({"final_test_rmse": 1.0, "rounds": 3}, records)
    assert (m["hr@10"], m["ndcg@10"], m["epsilon"], m["test_rmse"]) == (0.4, 0.1, 0.9, 1.0)

    def run(seed: int, hr: float, **cfg) -> Run:
        return Run(Path("."), {"seed": seed, "model.name": "mf", **cfg}, [], {"test_rmse": 1.0, "hr@10": hr})

    runs = [run(0, 0.2, **{"model.dim": 8}), run(1, 0.4, **{"model.dim": 8}), run(0, 0.6)]  # an older run: no dim
    assert varying_keys(runs) == ["model.dim"]
    keys, groups = group_runs(runs, varying_keys(runs))
    assert keys == ["model.name", "model.dim"]
    rows = table_rows(keys, groups, metric_columns(runs))
    assert [(r["model.dim"], r["n"], r["hr@10_mean"]) for r in rows] == [(None, 1, 0.6), (8, 2, pytest.approx(0.3))]
    assert rows[0]["hr@10_std"] is None and rows[1]["hr@10_std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert "| mf |  | 1 | 0 | 1 | 0.6 |" in markdown(keys, rows, metric_columns(runs))


def test_an_empty_folder_is_one_error_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: no run folders (results.json or records.jsonl) under {tmp_path}"
