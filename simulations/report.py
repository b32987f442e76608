"""``python -m simulations.report FOLDER [--out DIR]``: many runs -> one table (CSV, markdown) and plots.

FOLDER is a Hydra multirun folder, an ``outputs/`` tree or a single run: every
folder under it holding ``results.json`` and/or ``records.jsonl`` (written by
:mod:`simulations.results`) is one run. A run's config is its results.json
``config`` or, for a run that never wrote results.json (it died before its
first checkpoint), Hydra's ``.hydra/config.yaml``; its rounds are the longer
of results.json's records and records.jsonl (a run that died after a
checkpoint has more rounds in records.jsonl), summarised with the same
:func:`simulations.results.final_summary` as results.json.

Runs are grouped by the flattened config keys (``model.dim``, ...) whose values
differ between runs, ignoring ``seed`` and the keys that only name where a run
lives (:data:`NOT_EXPERIMENT_KEYS`); a key missing from some runs' configs is
a value of its own (shown empty), so older runs still group. Each group gets
the count of runs, their seeds and, per metric, the mean and the sample
standard deviation (ddof=1; empty for a single run) over its runs:

- ``test_rmse``: the last evaluated round's test RMSE; ``best_test_rmse``;
- ``hr@K`` / ``ndcg@K`` (any K): the last round that reports them (record keys ``hr@10``, ``ndcg@10``);
- bytes up/down per client, client and server seconds: means over rounds;
- ``wall_seconds``, ``rounds`` and ``epsilon`` (the last reported one) when present.

Written into DIR (default FOLDER): ``report.csv``, ``report.md`` and the plots
``rmse_vs_round.png``, ``hr_vs_round.png`` (when some run reports HR@10) and
``utility_vs_bytes.png`` (final RMSE, and HR@10 when reported, against the mean
upload bytes per client; one point per group, error bars one std).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.ticker import MaxNLocator

from simulations.results import RECORDS_FILE, final_summary, plt, read_records

RESULTS_FILE = "results.json"
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
# Keys that differ between runs of one experiment without defining it: never grouped by.
NOT_EXPERIMENT_KEYS = frozenset({"seed", "output_dir", "resume", "simulation.device_state_dir"})
IDENTITY_KEYS = ("strategy.name", "model.name", "dataset.name")  # always shown, so a table says what ran
RANKING_KEY = re.compile(r"^(hr|ndcg)@\d+$")
HR_PLOT_KEY = "hr@10"
# Table column -> key of results.json's "final" (final_summary, plus what the run reported).
FINAL_METRICS = {
    "rounds": "rounds",
    "test_rmse": "final_test_rmse",
    "best_test_rmse": "best_test_rmse",
    "bytes_up_per_client": "mean_bytes_up_per_client",
    "bytes_down_per_client": "mean_bytes_down_per_client",
    "client_seconds": "mean_client_seconds",
    "server_seconds": "mean_server_seconds",
    "wall_seconds": "wall_seconds",
}


class ReportError(ValueError):
    """Nothing to report on (no run folders), or a folder that cannot be read."""


@dataclass(frozen=True)
class Run:
    folder: Path
    config: dict[str, Any]                # flattened: {"model.dim": 8, ...}
    records: list[dict[str, Any]]         # one per round
    metrics: dict[str, float | None]      # table column -> final value


@dataclass(frozen=True)
class Group:
    label: dict[str, Any]                 # the grouping keys' values
    runs: list[Run]

    def values(self, metric: str) -> np.ndarray:
        """The metric of each run that has it (float; NaN kept: a diverged run shows as NaN)."""
        return np.array([r.metrics[metric] for r in self.runs if r.metrics.get(metric) is not None], dtype=float)

    def mean_std(self, metric: str) -> tuple[float | None, float | None]:
        v = self.values(metric)
        if v.size == 0:
            return None, None
        return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)

    def name(self, keys: list[str]) -> str:
        """Legend text: the keys' values (``key=value, ...``)."""
        return ", ".join(f"{k}={_cell(self.label.get(k))}" for k in keys)


# ---------------------------------------------------------------- reading runs
def find_runs(folder: str | Path) -> list[Run]:
    """Every run under ``folder`` (itself included), in path order."""
    root = Path(folder)
    if not root.is_dir():
        raise ReportError(f"{root} is not a folder")
    dirs = sorted({p.parent for name in (RESULTS_FILE, RECORDS_FILE) for p in root.rglob(name)})
    return [read_run(d) for d in dirs]


def read_run(folder: Path) -> Run:
    results: dict[str, Any] = {}
    if (folder / RESULTS_FILE).exists():
        try:
            results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ReportError(f"{folder / RESULTS_FILE} is not JSON: {exc}") from exc
    records = results.get("records") or []
    appended = read_records(folder)
    final = dict(results.get("final") or {})
    if len(appended) > len(records):  # died after its last results.json: summarise what was appended
        records, final = appended, {**final_summary(appended), "wall_seconds": None}
    config = results.get("config")
    if config is None and (folder / HYDRA_CONFIG).exists():
        config = yaml.safe_load((folder / HYDRA_CONFIG).read_text(encoding="utf-8"))
    return Run(folder, flatten(config or {}), records, run_metrics(final, records))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"dim": 8}} -> {"model.dim": 8}; lists become JSON text (hashable, printable)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


def run_metrics(final: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, float | None]:
    metrics = {column: final.get(key) for column, key in FINAL_METRICS.items()}
    for key in sorted({k for r in records for k in r if RANKING_KEY.match(k)}, key=_ranking_order):
        metrics[key] = _last(records, key)
    eps = final.get("epsilon", _last(records, "epsilon"))
    if eps is not None:
        metrics["epsilon"] = eps
    return metrics


def _last(records: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(records) if r.get(key) is not None), None)


def _ranking_order(key: str) -> tuple[int, str]:
    name, k = key.split("@")
    return int(k), name


# ---------------------------------------------------------------- grouping
def varying_keys(runs: list[Run]) -> list[str]:
    """Config keys whose value differs between runs (a key missing from some runs counts), minus seed and paths."""
    keys = sorted({k for r in runs for k in r.config} - NOT_EXPERIMENT_KEYS)
    missing = object()
    return [k for k in keys if len({_hashable(r.config.get(k, missing)) for r in runs}) > 1]


def group_runs(runs: list[Run], varying: list[str]) -> tuple[list[str], list[Group]]:
    """(label keys, groups) for the ``varying`` keys: identity keys first, then those; groups in label order."""
    label_keys = [k for k in IDENTITY_KEYS if any(k in r.config for r in runs) and k not in varying] + varying
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(_hashable(run.config.get(k)) for k in label_keys), []).append(run)
    ordered = sorted(groups.items(), key=lambda kv: [_cell(v) for v in kv[0]])
    return label_keys, [Group(dict(zip(label_keys, key)), members) for key, members in ordered]


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def metric_columns(runs: list[Run]) -> list[str]:
    """Metrics that at least one run has, in table order."""
    seen = {m for r in runs for m, v in r.metrics.items() if v is not None}
    ordered = list(FINAL_METRICS) + sorted({m for m in seen if RANKING_KEY.match(m)}, key=_ranking_order) + ["epsilon"]
    return [m for m in ordered if m in seen]


# ---------------------------------------------------------------- table
def table_rows(label_keys: list[str], groups: list[Group], metrics: list[str]) -> list[dict[str, Any]]:
    """One dict per group: its label, n, seeds, and <metric>_mean / <metric>_std."""
    rows = []
    for g in groups:
        row: dict[str, Any] = {k: g.label.get(k) for k in label_keys}
        row["n"] = len(g.runs)
        row["seeds"] = " ".join(_cell(r.config.get("seed")) for r in g.runs)
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_std"] = g.mean_std(m)
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])


def markdown(label_keys: list[str], rows: list[dict[str, Any]], metrics: list[str]) -> str:
    """A GitHub markdown table: label columns, n, seeds, then "mean ± std" per metric."""
    header = [*label_keys, "n", "seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_cell(row[k]) for k in label_keys] + [str(row["n"]), row["seeds"]]
        cells += [_mean_pm_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_pm_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return _number(mean) if std is None else f"{_number(mean)} ± {_number(std, 2)}"


def _number(x: float, digits: int = 4) -> str:
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


# ---------------------------------------------------------------- plots
def round_series(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, mean, std) of ``key`` over the runs reporting it at each round (NaN values skipped)."""
    by_round: dict[int, list[float]] = {}
    for run in runs:
        for r in run.records:
            v = r.get(key)
            if v is not None and not math.isnan(v):
                by_round.setdefault(int(r["round"]), []).append(float(v))
    rounds = np.array(sorted(by_round), dtype=int)
    mean = np.array([np.mean(by_round[x]) for x in rounds])
    std = np.array([np.std(by_round[x], ddof=1) if len(by_round[x]) > 1 else 0.0 for x in rounds])
    return rounds, mean, std


def plot_vs_round(path: Path, groups: list[Group], names: list[str], key: str, ylabel: str) -> bool:
    """One line (mean over the group's runs, band one std) per group reporting ``key``; False if none does."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for g, name in zip(groups, names):
        rounds, mean, std = round_series(g.runs, key)
        if rounds.size:
            ax.plot(rounds, mean, marker="o", markersize=3, label=name)
            ax.fill_between(rounds, mean - std, mean + std, alpha=0.2)
            drawn = True
    if drawn:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def plot_utility_vs_bytes(path: Path, groups: list[Group], names: list[str]) -> bool:
    """Final RMSE (and HR@10 when reported) against mean upload bytes per client, one point per group."""
    utilities = [m for m in ("test_rmse", HR_PLOT_KEY) if any(g.values(m).size for g in groups)]
    if not utilities or not any(g.values("bytes_up_per_client").size for g in groups):
        return False
    fig, axes = plt.subplots(1, len(utilities), figsize=(6 * len(utilities), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], utilities):
        xs = []
        for g, name in zip(groups, names):
            (x, _), (y, y_std) = g.mean_std("bytes_up_per_client"), g.mean_std(metric)
            if x is None or y is None:
                continue
            ax.errorbar([x], [y], yerr=None if y_std is None else [y_std], fmt="o", capsize=3, label=name)
            xs.append(x)
        if xs and min(xs) > 0 and max(xs) / min(xs) > 100:
            ax.set_xscale("log")
        ax.set_xlabel("upload bytes per client per round (mean)")
        ax.set_ylabel("final test RMSE" if metric == "test_rmse" else f"final {metric.upper()}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- command
def report(folder: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write the table and plots of the runs under ``folder`` into ``out`` (default ``folder``); return what was written."""
    runs = find_runs(folder)
    if not runs:
        raise ReportError(f"no run folders ({RESULTS_FILE} or {RECORDS_FILE}) under {folder}")
    out_dir = Path(folder if out is None else out)
    out_dir.mkdir(parents=True, exist_ok=True)
    varying = varying_keys(runs)
    label_keys, groups = group_runs(runs, varying)
    metrics = metric_columns(runs)
    rows = table_rows(label_keys, groups, metrics)
    written = {"report.csv": out_dir / "report.csv", "report.md": out_dir / "report.md"}
    write_csv(written["report.csv"], rows)
    written["report.md"].write_text(markdown(label_keys, rows, metrics), encoding="utf-8")
    names = [g.name(varying or label_keys) for g in groups]
    plots = {
        "rmse_vs_round.png": lambda p: plot_vs_round(p, groups, names, "test_rmse", "test RMSE"),
        "hr_vs_round.png": lambda p: plot_vs_round(p, groups, names, HR_PLOT_KEY, "HR@10"),
        "utility_vs_bytes.png": lambda p: plot_utility_vs_bytes(p, groups, names),
    }
    for name, draw in plots.items():
        if draw(out_dir / name):
            written[name] = out_dir / name
    return written


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.report", description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a multirun or outputs folder (every folder under it with results.json "
                                       "or records.jsonl is a run)")
    parser.add_argument("--out", default=None, help="where to write report.csv, report.md and the plots "
                                                    "(default: FOLDER)")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        written = report(args.folder, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(written["report.md"].read_text(encoding="utf-8"), end="")
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
