"""Write a run's results: ``records.jsonl`` as rounds end, ``results.json`` (config + records + final) and a plot.

``records.jsonl`` gets one JSON object per round, appended, flushed and
fsynced when the round ends, so a run that dies at round 290 still has rounds
1..289 on disk (DESIGN "Nothing lost"). ``results.json`` and the plot are
rewritten atomically (temporary file + ``os.replace``) at every checkpoint
and at the end, so a reader never sees a half-written file.

A simulation's results also carry a yardstick a newcomer can judge the test
RMSE by: the global-mean predictor's test RMSE on the same evaluated users
(:func:`global_mean_reference`). It is computed from the dataset on the
machine that runs the simulation, outside the protocol: no server of the
protocol sees test ratings.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from recdata.atomic import atomic_write_bytes
from recdata.split import FederatedSplit
from schemas.config import AppConfig, to_dict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger("secrec")


def final_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    evaluated = [r for r in records if r.get("test_rmse") is not None]
    last = records[-1] if records else {}
    return {
        "rounds": len(records),
        "final_test_rmse": evaluated[-1]["test_rmse"] if evaluated else None,
        "best_test_rmse": min((r["test_rmse"] for r in evaluated), default=None),
        **{f"final_{k}": v for k, v in (evaluated[-1] if evaluated else {}).items() if k.startswith(("hr@", "ndcg@"))},
        "final_train_loss": last.get("train_loss"),
        "mean_bytes_up_per_client": _mean(records, "bytes_up_per_client"),
        "mean_bytes_down_per_client": _mean(records, "bytes_down_per_client"),
        "mean_client_seconds": _mean(records, "client_seconds_mean"),
        "mean_server_seconds": _mean(records, "server_seconds"),
    }


REFERENCE_NOTE = ("global-mean predictor: every test rating of the evaluated users predicted by the mean training "
                  "rating over all users; computed from the local dataset outside the protocol")


def log_final(run: dict[str, Any], wall_seconds: float, path: Path) -> None:
    """The run's closing log lines, the same on both engines: the final test RMSE (4 decimals), then the
    global-mean yardstick of the same users' test ratings when the run has it."""
    summary = final_summary(run["records"])
    log.info("final test RMSE %s after %d rounds, %.1f s; results in %s", _four(summary["final_test_rmse"]),
             summary["rounds"], wall_seconds, path)
    reference = run.get("reference_global_mean")
    if reference:
        log.info("reference: the global-mean predictor (mean training rating %.3f) scores test RMSE %s on the "
                 "same %d users' %d test ratings (computed from the local dataset, outside the protocol)",
                 reference["predicted_rating"], _four(reference["test_rmse"]), reference["users"],
                 reference["test_ratings"])


def _four(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def global_mean_reference(split: FederatedSplit, users: list[int]) -> dict[str, Any]:
    """The test RMSE of predicting the mean training rating, over the test ratings of ``users``.

    What a model that learned nothing per user or item would score on the
    same test ratings; a trained model's test RMSE should end below it.
    """
    mean = float(np.mean(split.train_rating)) if len(split.train_rating) else float("nan")
    chosen = np.zeros(split.n_users, dtype=bool)
    chosen[np.asarray(users, dtype=np.int64)] = True
    owner = np.repeat(np.arange(split.n_users), np.diff(split.test_ptr))  # user of each test rating
    ratings = np.asarray(split.test_rating, dtype=np.float64)[chosen[owner]]
    rmse = float(np.sqrt(np.mean((ratings - mean) ** 2))) if len(ratings) else float("nan")
    return {"test_rmse": rmse, "predicted_rating": mean, "test_ratings": int(len(ratings)),
            "users": int(chosen.sum()), "note": REFERENCE_NOTE}


def _mean(records: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in records if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None

RESULTS_JSON, PLOT_PNG = "results.json", "rmse_bytes.png"
RUN_OUTPUTS = (RESULTS_JSON, PLOT_PNG)  # what write_results leaves in a run folder (a fresh run removes them)


def write_results(out_dir: str | Path, cfg: AppConfig, run: dict[str, Any], wall_seconds: float) -> Path:
    """Write results.json and rmse_bytes.png into ``out_dir``; return the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = run["records"]
    config = to_dict(cfg)
    payload = {
        "config": config,
        "records": records,
        "final": {**final_summary(records), "wall_seconds": wall_seconds,
                  **{k: v for k, v in run.items() if k != "records"}},
    }
    path = out / RESULTS_JSON
    atomic_write_bytes(path, json.dumps(payload, indent=2, default=_json_default, allow_nan=True).encode())
    tmp_png = out / ".rmse_bytes.tmp.png"
    reference = run.get("reference_global_mean")
    plot_results(records, tmp_png, title=f"{config['strategy']['name']} / {config['model']['name']}"
                 f" / {config['dataset']['name']}", reference=reference["test_rmse"] if reference else None)
    os.replace(tmp_png, out / PLOT_PNG)
    return path


RECORDS_FILE = "records.jsonl"


def record_line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=_json_default, allow_nan=True) + "\n"


def append_record(out_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one round's record to ``records.jsonl`` and make it durable (flush + fsync) before returning."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / RECORDS_FILE, "a", encoding="utf-8") as fh:
        fh.write(record_line(record))
        fh.flush()
        os.fsync(fh.fileno())


def read_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """The rounds in ``records.jsonl`` (a torn last line, from a crash mid-write, is ignored)."""
    path = Path(out_dir) / RECORDS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def rewrite_records(out_dir: str | Path, records: list[dict[str, Any]]) -> None:
    """Replace ``records.jsonl`` with ``records`` (a fresh run: none; a resume: the checkpointed rounds)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / RECORDS_FILE, "".join(record_line(r) for r in records).encode())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def plot_results(records: list[dict[str, Any]], path: Path, title: str, reference: float | None = None) -> None:
    """Test RMSE (evaluated rounds) and bytes per client per round, side by side.

    ``reference``: the global-mean predictor's test RMSE, drawn as a dashed horizontal line.
    """
    fig, (ax_rmse, ax_bytes) = plt.subplots(1, 2, figsize=(10, 4))
    ev = [r for r in records if r.get("test_rmse") is not None and not math.isnan(r["test_rmse"])]
    ax_rmse.plot([r["round"] for r in ev], [r["test_rmse"] for r in ev], marker="o", label="model")
    if reference is not None and not math.isnan(reference):
        ax_rmse.axhline(reference, color="gray", linestyle="--", label=f"global mean ({reference:.3f})")
        ax_rmse.legend()
    ax_rmse.set_xlabel("round")
    ax_rmse.set_ylabel("test RMSE")
    ax_rmse.grid(True, alpha=0.3)
    rounds = [r["round"] for r in records]
    ax_bytes.plot(rounds, [r["bytes_up_per_client"] / 1024 for r in records], label="up")
    ax_bytes.plot(rounds, [r["bytes_down_per_client"] / 1024 for r in records], label="down")
    ax_bytes.set_xlabel("round")
    ax_bytes.set_ylabel("KiB per client")
    ax_bytes.legend()
    ax_bytes.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
