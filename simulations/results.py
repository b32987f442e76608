"""Write a run's results: ``results.json`` (config + per-round records + final) and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from schemas.config import AppConfig, to_dict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def final_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    evaluated = [r for r in records if r.get("test_rmse") is not None]
    last = records[-1] if records else {}
    return {
        "rounds": len(records),
        "final_test_rmse": evaluated[-1]["test_rmse"] if evaluated else None,
        "best_test_rmse": min((r["test_rmse"] for r in evaluated), default=None),
        "final_train_loss": last.get("train_loss"),
        "mean_bytes_up_per_client": _mean(records, "bytes_up_per_client"),
        "mean_bytes_down_per_client": _mean(records, "bytes_down_per_client"),
        "mean_client_seconds": _mean(records, "client_seconds_mean"),
        "mean_server_seconds": _mean(records, "server_seconds"),
    }


def _mean(records: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in records if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


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
    path = out / "results.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default, allow_nan=True))
    plot_results(records, out / "rmse_bytes.png", title=f"{config['strategy']['name']} / {config['model']['name']}"
                 f" / {config['dataset']['name']}")
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def plot_results(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test RMSE (evaluated rounds) and bytes per client per round, side by side."""
    fig, (ax_rmse, ax_bytes) = plt.subplots(1, 2, figsize=(10, 4))
    ev = [r for r in records if r.get("test_rmse") is not None and not math.isnan(r["test_rmse"])]
    ax_rmse.plot([r["round"] for r in ev], [r["test_rmse"] for r in ev], marker="o")
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
