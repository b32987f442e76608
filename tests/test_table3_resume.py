"""benchmarks/table3.py --out: a rerun reads finished cells back and refuses folders of other settings.

Table 3 in full is about 12 hours on this machine; without this, a stop or crash loses every cell.
The end-to-end case runs one real cell (MF, Bit8, 2 rounds on ml_100k) through the product's batched
engine, then the same command again: the second prints the same row without training.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from benchmarks import table3
from benchmarks.table3 import CELL_FILE, Cell, StaleCellError, kept_config, plan_cell, stored_cell
from schemas.config import to_dict
from simulations.results import read_records

TWO_ROUNDS = 1.5 / (943 / 100)  # epochs that come to ceil(1.5) = 2 rounds of 100 of ml_100k's 943 users


def _table3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["table3", *args])
    table3.main()
    return capsys.readouterr().out


def _row(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("mf      bit8"))


def test_a_finished_cell_is_read_back_not_rerun(tmp_path, ml100k_path, monkeypatch, capsys):
    args = ("--models", "mf", "--methods", "bit8", "--seeds", "1", "--epochs", str(TWO_ROUNDS),
            "--eval-epochs", str(TWO_ROUNDS), "--data-path", str(ml100k_path), "--out", str(tmp_path))
    first = _table3(monkeypatch, capsys, *args)
    folder = tmp_path / "mf_bit8_seed0"
    record = json.loads((folder / CELL_FILE).read_text())
    assert record["overrides"][-2:] == ["rounds=2", "train.eval_every=2"]
    assert math.isfinite(record["final_rmse"]) and record["reduction_ratio"] > 3
    results = (folder / "results.json").stat().st_mtime_ns

    second = _table3(monkeypatch, capsys, *args)
    assert "# 1 cells finished by an earlier run are read from" in second
    assert _row(second) == _row(first)  # the same RMSE, R.R., bytes and the first run's seconds
    assert (folder / "results.json").stat().st_mtime_ns == results  # nothing ran again

    with pytest.raises(SystemExit, match="other settings"):  # 3 rounds would overwrite the 2-round cell
        _table3(monkeypatch, capsys, *args[:7], str(2.5 / (943 / 100)), *args[8:])
    assert json.loads((folder / CELL_FILE).read_text()) == record


def test_an_unfinished_cell_continues_from_its_checkpoint(tmp_path, ml100k_path, monkeypatch, capsys):
    """A cell that died after its round-2 checkpoint (round 3 ran, no cell.json) resumes and ends as it would have."""
    monkeypatch.setattr(table3, "CHECKPOINT_ROUNDS", 2)
    three = str(2.5 / (943 / 100))
    args = ("--models", "mf", "--methods", "bit8", "--seeds", "1", "--epochs", three, "--eval-epochs", three,
            "--data-path", str(ml100k_path), "--out", str(tmp_path))
    first = _table3(monkeypatch, capsys, *args)
    folder = tmp_path / "mf_bit8_seed0"
    (folder / CELL_FILE).unlink()
    assert [r["round"] for r in read_records(folder)] == [1, 2, 3]

    second = _table3(monkeypatch, capsys, *args)
    assert "# 1 cells continue from the checkpoints of an earlier run" in second
    assert json.loads((folder / CELL_FILE).read_text())["resumed_from_round"] == 2
    assert _row(second).split()[:-1] == _row(first).split()[:-1]  # all but the seconds


def _plan(ml100k_path: Path):
    return plan_cell("mf", "svd", 1, 200, 5, str(ml100k_path))


def _finished(plan) -> dict:
    """A well-formed cell.json of ``plan``."""
    return {"overrides": list(plan.overrides), "final_rmse": 0.95, "best_rmse": 0.94, "reduction_ratio": 5.1,
            "upload_bytes": 1.2e5, "seconds": 300.0}


def test_plan_comes_to_table3s_rounds(ml100k_path):
    assert _plan(ml100k_path).overrides[-2:] == ("rounds=1886", "train.eval_every=46")  # 200 epochs, every 5 (4.9)
    assert _plan(ml100k_path).name == "mf_svd_seed1"


def test_stored_cell_needs_the_same_overrides_and_finite_values(tmp_path, ml100k_path):
    plan = _plan(ml100k_path)
    assert stored_cell(tmp_path, plan) is None  # never finished: run it
    good = _finished(plan)
    (tmp_path / CELL_FILE).write_text(json.dumps(good))
    config = to_dict(kept_config(plan))
    (tmp_path / "results.json").write_text(json.dumps({"config": config}))
    assert stored_cell(tmp_path, plan) == Cell(0.95, 0.94, 5.1, 1.2e5, 300.0)
    bad = [
        "{not json", "[]", "\xff",
        json.dumps({**good, "final_rmse": None}),
        json.dumps({**good, "seconds": True}),
        json.dumps({**good, "best_rmse": "0.9"}),
        json.dumps({k: v for k, v in good.items() if k != "upload_bytes"}),
        json.dumps({**good, "reduction_ratio": float("nan")}),  # Python's json writes NaN and reads it back
        json.dumps({**good, "overrides": list(plan.overrides)[:-1]}),
        json.dumps({**good, "overrides": "rounds=1886"}),
    ]
    for text in bad:
        (tmp_path / CELL_FILE).write_text(text, encoding="latin-1")
        with pytest.raises(StaleCellError):
            stored_cell(tmp_path, plan)


def test_a_stored_cell_of_the_same_overrides_but_another_config_is_stale(tmp_path, ml100k_path):
    """A conf/ default changed since the cell ran (same overrides, another composed config): the cell is not
    reused; nor when its run's results.json, which holds that config, is missing or unreadable."""
    plan = _plan(ml100k_path)
    (tmp_path / CELL_FILE).write_text(json.dumps(_finished(plan)))
    config = to_dict(kept_config(plan))
    (tmp_path / "results.json").write_text(json.dumps({"config": config, "final": {}}))
    assert stored_cell(tmp_path, plan) is not None
    other = json.loads(json.dumps(config))
    other["model"]["reg_dense"] = not other["model"]["reg_dense"]
    for text in (json.dumps({"config": other}), "[]", json.dumps({"final": {}}), "{not json"):
        (tmp_path / "results.json").write_text(text)
        with pytest.raises(StaleCellError, match="model.reg_dense" if text.startswith('{"config"') else "unreadable"):
            stored_cell(tmp_path, plan)
    (tmp_path / "results.json").unlink()
    with pytest.raises(StaleCellError, match="unreadable"):
        stored_cell(tmp_path, plan)
