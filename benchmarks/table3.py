"""SecEmb Table 3, ML100K column: RMSE and upload reduction ratio of SecEmb and the compression baselines.

Every cell runs through the product's entry point on the batched engine
(:func:`simulations.run.simulate_batched`, tied to the Flower path by
tests/test_compressed_strategy.py and tests/test_batched_engine.py) with the
``conf/experiment/secemb_ml100k_<model>`` settings. Rounds = ceil(epochs *
n_users / clients_per_round). The measured R.R. is the full-model plaintext
upload (float32 [n_items, row_dim] update + dense gradient, in the same message
framing, :func:`full_upload_bytes`) over the run's ``bytes_up_per_client`` for the
compression baselines; for SecEmb it is Secure FedRec's upload over SecEmb's
(:func:`secfedrec_upload_bytes`), as the paper's Tables 2 and 3 define it (its
SecEmb R.R. column equals Table 2's SecFedRec / SecEmb ratio).

Each run evaluates every ``--eval-epochs`` epochs. The table prints the final
test RMSE (what the paper's text implies: 200 epochs, then test) and, labelled
apart, the best test RMSE over those evaluations: a selection on the test set,
printed only because the paper does not say which one it reports and some
models overfit before epoch 200. Per-seed values follow each row, and each row
says whether it meets the reproduction's targets (SecEmb's final RMSE within
0.01 of the paper's mean, a baseline's within 0.015, R.R. within 10%);
``--markdown FILE`` also writes the table as markdown (the README's rows).

    python -m benchmarks.table3                                   # 4 models x 5 methods x 4 seeds x 200 epochs
    python -m benchmarks.table3 --epochs 2 --seeds 1              # smoke
    python -m benchmarks.table3 --models mf --methods bit8,svd --seeds 1
    python -m benchmarks.table3 --models deepfm --methods secemb --jobs 2   # cells in 2 processes, 1 thread each
    python -m benchmarks.table3 --models deepfm --methods secemb --first-seed 2 --seeds 2   # seeds 2 and 3 only
    python -m benchmarks.table3 --rr-presets ml_1m,ml_10m,ml_25m,yelp   # R.R. columns only (no training)
    python -m benchmarks.table3 --models mf --seeds 2 --out outputs/table3   # keep each cell's run folder,
    python -m simulations.report outputs/table3                          # then tabulate and plot the curves

With ``--out``, each cell checkpoints every 100 rounds, and a cell that finishes writes ``cell.json`` (its
outcome and the overrides it ran with) into its folder. The same command run again reads finished cells
back and continues unfinished ones from their last checkpoint (ending as an uninterrupted run would), so the
whole table (about 7 hours with ``--jobs 2`` on 2 cores, most of it DeepFM's 20 cells of about 35 minutes)
survives a stop or a crash, losing at most 100 rounds of each running cell. A folder whose cell ran with
other settings (``--epochs``, data, or a conf/ default changed since: its results.json's config is compared)
stops the command before anything runs.

``--rr-presets`` prints Table 3's R.R. for the other datasets, on synthetic data at their sizes
(SecEmb Table 7: users, items, features; Table 8's embedding sizes; the real files are not on this
machine). Nothing trains:
each upload comes from the same per-protocol message-size functions the batched engine reports
(:func:`schemas.compressed.round_bytes`, :func:`schemas.secemb.round_bytes`, tested within 1% of the
Flower path's measured bytes), with SecEmb's m' of Appendix I (300, 300, 500, 500) and SVD/CoLR
ranks of Table 10. Their RMSE columns need the real files (``simulations.run engine=batched
dataset=ml_1m dataset.path=<folder>`` with that column's Table 8 settings).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from recdata.atomic import atomic_write_bytes
from recdata.dataset import dataset_meta
from engine.model_protocols import secemb_round_bytes
from schemas import compressed, secfedrec, sizes
from schemas.config import AppConfig, model_spec, to_dict
from simulations.config import compose_config, to_app_config
from simulations.checkpoint import ResumeError, check_resumable, config_differences, latest_checkpoint_head
from simulations.results import read_records
from simulations.run import simulate_batched

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
METHODS: dict[str, list[str]] = {
    "secemb": ["strategy=secemb", "strategy.m_prime=200"],
    **{c: ["strategy=plaintext", f"strategy.compression={c}"] for c in ("bit8", "tern", "svd", "colr")},
}
# SecEmb paper (ICML 2025), Table 3, ML100K column: (RMSE mean, RMSE std, R.R.) per model and method.
PAPER: dict[str, dict[str, tuple[float, float, float]]] = {
    "mf": {"bit8": (0.948, 0.004, 4.00), "tern": (0.951, 0.002, 8.00), "svd": (0.952, 0.006, 5.22),
           "colr": (0.951, 0.001, 5.42), "secemb": (0.944, 0.003, 4.99)},
    "ncf": {"bit8": (0.950, 0.011, 3.86), "tern": (0.951, 0.005, 7.37), "svd": (0.952, 0.006, 3.15),
            "colr": (0.947, 0.005, 3.21), "secemb": (0.949, 0.014, 3.44)},
    "fm": {"bit8": (0.945, 0.001, 3.41), "tern": (0.948, 0.002, 5.70), "svd": (0.946, 0.001, 4.21),
           "colr": (0.944, 0.004, 4.33), "secemb": (0.937, 0.004, 5.05)},
    "deepfm": {"bit8": (0.947, 0.007, 1.05), "tern": (0.949, 0.004, 1.06), "svd": (0.954, 0.005, 1.05),
               "colr": (0.952, 0.001, 1.05), "secemb": (0.939, 0.006, 1.05)},
}

# Table 3's R.R. for the other columns: dataset -> model -> (bit8, tern, svd, colr, secemb).
PAPER_RR: dict[str, dict[str, tuple[float, ...]]] = {
    "ml_1m": {"mf": (4.00, 8.00, 6.39, 6.50, 7.35), "ncf": (3.94, 7.71, 4.02, 4.06, 5.02),
              "fm": (3.86, 7.37, 6.00, 6.10, 7.22), "deepfm": (1.21, 1.25, 1.24, 1.24, 1.24)},
    "ml_10m": {"mf": (4.00, 8.00, 16.15, 16.25, 19.22), "ncf": (3.97, 7.84, 11.81, 11.87, 15.93),
               "fm": (3.98, 7.90, 15.71, 15.81, 18.76), "deepfm": (1.92, 2.26, 2.48, 2.49, 2.50)},
    "ml_25m": {"mf": (4.00, 8.00, 16.23, 16.25, 62.07), "ncf": (3.99, 7.97, 12.17, 12.18, 51.80),
               "fm": (4.00, 7.98, 16.16, 16.17, 60.87), "deepfm": (3.16, 4.94, 6.90, 6.90, 9.54)},
    "yelp": {"mf": (4.00, 8.00, 16.24, 16.25, 91.22), "ncf": (4.00, 7.98, 10.22, 10.22, 68.46),
             "fm": (4.00, 7.99, 16.20, 16.21, 91.05), "deepfm": (3.47, 5.88, 9.09, 9.10, 15.98)},
}
M_PRIME = {"ml_1m": 300, "ml_10m": 300, "ml_25m": 500, "yelp": 500}  # SecEmb Appendix I
NCF_DIM = {"ml_1m": 16, "ml_10m": 24, "ml_25m": 24, "yelp": 20}  # Table 8 (MF, FM, DeepFM: 64 everywhere)
RR_METHODS = ("bit8", "tern", "svd", "colr", "secemb")


def full_upload_bytes(cfg: AppConfig) -> int:
    """Bytes of an uncompressed full-model upload (Table 3's "before"), framed as the compressed reply."""
    meta = dataset_meta(cfg)
    spec = model_spec(cfg, meta.n_user_features, meta.n_item_features)
    table = sizes.filler((meta.n_items, spec.row_dim), np.float32)
    return sizes.content_nbytes(compressed.update_reply({"table": table}, sizes.filler(spec.dense_size, np.float32),
                                                        1.0, 100, 1.0))


def secfedrec_upload_bytes(cfg: AppConfig, rnd: int) -> int:
    """Secure FedRec's upload per user for ``cfg``'s model and ring (the "before" of SecEmb's R.R.)."""
    meta = dataset_meta(cfg)
    spec = model_spec(cfg, meta.n_user_features, meta.n_item_features)
    return secfedrec.round_bytes(rnd, meta.n_items, spec.row_dim, spec.dense_size, cfg.strategy.ring_bits,
                                 bool(cfg.simulation.telemetry))[1]


def rr_config(preset: str, model: str, method: str) -> AppConfig:
    """One cell's config at ``preset``'s sizes with that column's Table 8 dim (NCF) and m' (SecEmb)."""
    over = [f"dataset=synthetic_{preset}", f"model={model}", *METHODS[method]]
    if model == "ncf":
        over.append(f"model.dim={NCF_DIM[preset]}")
    if method == "secemb":
        over.append(f"strategy.m_prime={M_PRIME[preset]}")  # the later override wins over METHODS' 200
    return to_app_config(compose_config(over))


def computed_reduction_ratio(preset: str, model: str, method: str) -> float:
    """R.R. of one cell on synthetic data at ``preset``'s sizes, from the protocols' message-size functions."""
    cfg = rr_config(preset, model, method)
    meta = dataset_meta(cfg)
    spec = model_spec(cfg, meta.n_user_features, meta.n_item_features)
    if method == "secemb":
        up = secemb_round_bytes(cfg, 1, int(cfg.strategy.m_prime), meta.n_items, spec)[1]
        return secfedrec_upload_bytes(cfg, 1) / up
    up = compressed.round_bytes(1, method, cfg.strategy.rank(cfg), meta.n_items, spec.row_dim, spec.dense_size,
                                100)[1]
    return full_upload_bytes(cfg) / up


def print_reduction_ratios(presets: list[str], models: list[str]) -> None:
    """The R.R. columns of Table 3 for ``presets``, ours beside the paper's."""
    print(f"{'dataset':8} {'model':7} " + " ".join(f"{m:>15}" for m in RR_METHODS) + "   (ours / paper)")
    for preset in presets:
        for model in models:
            cells = [f"{computed_reduction_ratio(preset, model, m):6.2f} / {p:6.2f}"
                     for m, p in zip(RR_METHODS, PAPER_RR[preset][model])]
            print(f"{preset:8} {model:7} " + " ".join(f"{c:>15}" for c in cells), flush=True)


@dataclass(frozen=True)
class Cell:
    """One run's outcome."""

    final_rmse: float
    best_rmse: float
    reduction_ratio: float
    upload_bytes: float
    seconds: float


CELL_FILE = "cell.json"  # a kept cell folder's finished outcome and the overrides it ran with
CHECKPOINT_ROUNDS = 100  # a kept cell checkpoints this often (a DeepFM round is about 2 s)
# The reproduction issue's targets: SecEmb within 0.01 of the paper's mean RMSE, a baseline within 0.015, the
# measured R.R. within 10% of the paper's.
RMSE_TARGET = {"secemb": 0.01}
BASELINE_RMSE_TARGET = 0.015
RR_TARGET = 0.10


@dataclass(frozen=True)
class Row:
    """One (model, method) row: its seeds' cells against the paper's value, and whether it meets the targets."""

    model: str
    method: str
    cells: tuple[Cell, ...]

    @property
    def paper(self) -> tuple[float, float, float]:
        return PAPER[self.model][self.method]

    @property
    def final(self) -> float:
        return statistics.mean(c.final_rmse for c in self.cells)

    @property
    def reduction_ratio(self) -> float:
        return statistics.mean(c.reduction_ratio for c in self.cells)

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.cells)

    @property
    def upload_mb(self) -> float:
        return statistics.mean(c.upload_bytes for c in self.cells) / 1e6

    @property
    def final_text(self) -> str:
        """Final test RMSE over the seeds, ``mean +- std``."""
        return _mean_std([c.final_rmse for c in self.cells])

    @property
    def best_text(self) -> str:
        """Best-on-test RMSE over the seeds, ``mean +- std``."""
        return _mean_std([c.best_rmse for c in self.cells])

    def rmse_within(self) -> bool:
        return abs(self.final - self.paper[0]) <= RMSE_TARGET.get(self.method, BASELINE_RMSE_TARGET)

    def rr_within(self) -> bool:
        return abs(self.reduction_ratio / self.paper[2] - 1) <= RR_TARGET

    def targets(self) -> str:
        """``RMSE ok|off, R.R. ok|off`` against :data:`RMSE_TARGET` / :data:`BASELINE_RMSE_TARGET` and :data:`RR_TARGET`."""
        return (f"RMSE {'ok' if self.rmse_within() else 'off'}, "
                f"R.R. {'ok' if self.rr_within() else 'off'}")


@dataclass(frozen=True)
class CellPlan:
    """One cell to run: its name (the run folder's) and the product overrides that define it."""

    model: str
    method: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.model}_{self.method}_seed{self.seed}"


def plan_cell(model: str, method: str, seed: int, epochs: float, eval_epochs: float, data_path: str) -> CellPlan:
    """The overrides of one cell: its experiment, method and seed, every user evaluated, and the rounds and
    evaluation interval that ``epochs`` and ``eval_epochs`` come to on the dataset."""
    base = [f"+experiment=secemb_ml100k_{model}", f"dataset.path={data_path}", *METHODS[method], f"seed={seed}",
            "engine=batched", "train.eval_clients=null"]  # every user's test ratings, not the default sample
    cfg = to_app_config(compose_config(base))
    per_epoch = dataset_meta(cfg).n_users / cfg.clients_per_round
    rounds = math.ceil(epochs * per_epoch)
    every = max(1, min(rounds, math.ceil(eval_epochs * per_epoch)))
    while rounds % every:  # the last round must be evaluated
        every -= 1
    return CellPlan(model, method, seed, (*base, f"rounds={rounds}", f"train.eval_every={every}"))


def run_cell(plan: CellPlan, keep: str | None = None) -> Cell:
    """Train one cell on the batched engine; ``keep``: a folder under which its run folder
    (``<model>_<method>_seed<seed>``: results.json, records.jsonl, plot, checkpoints every
    :data:`CHECKPOINT_ROUNDS` rounds, and :data:`CELL_FILE` once it has finished) stays, else a temporary one.
    A kept folder holding a checkpoint of this cell continues from it (the batched engine's resume ends as
    the uninterrupted run would); its seconds are then the earlier rounds' recorded seconds plus this run's."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(keep) / plan.name if keep else Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        (out / CELL_FILE).unlink(missing_ok=True)  # a rerun invalidates what the folder held before it
        resume = bool(keep) and resumable_round(out, plan) is not None
        cfg = kept_config(plan, resume=resume) if keep else to_app_config(compose_config(list(plan.overrides)))
        simulate_batched(cfg, str(out))
        res = json.loads((out / "results.json").read_text())
        resumed_from = res["final"].get("resumed_from_round") or 0
        earlier = sum(  # what the rounds the run resumed after took in the earlier run
            r["round_seconds"] + (r.get("eval_seconds") or 0.0) for r in read_records(out) if r["round"] <= resumed_from)
        seconds = earlier + time.perf_counter() - start
        up = res["final"]["mean_bytes_up_per_client"]
        before = secfedrec_upload_bytes(cfg, cfg.rounds) if plan.method == "secemb" else full_upload_bytes(cfg)
        cell = Cell(res["final"]["final_test_rmse"], res["final"]["best_test_rmse"], before / up, up, seconds)
        if keep:
            record = {"overrides": list(plan.overrides), **asdict(cell), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "resumed_from_round": res["final"].get("resumed_from_round")}
            atomic_write_bytes(out / CELL_FILE, json.dumps(record, indent=1).encode())
    return cell


def kept_config(plan: CellPlan, resume: bool = False) -> AppConfig:
    """A kept cell's config: the plan's, checkpointing every :data:`CHECKPOINT_ROUNDS` rounds (which changes no
    result: tests/test_batched_resume.py), and resuming when asked."""
    extra = [f"checkpoint_every={CHECKPOINT_ROUNDS}", *(["resume=true"] if resume else [])]
    return to_app_config(compose_config([*plan.overrides, *extra]))


def resumable_round(folder: Path, plan: CellPlan) -> int | None:
    """The round of the checkpoint an unfinished run of this cell left in ``folder``; None when there is none
    (or it is of the last round, whose results were not written: the cell reruns). :class:`StaleCellError`
    when the checkpoint is of other settings."""
    try:
        ckpt = latest_checkpoint_head(folder)
    except ResumeError:
        return None
    cfg = kept_config(plan, resume=True)
    if ckpt.round >= cfg.rounds:
        return None
    try:
        check_resumable(cfg, ckpt)
    except ResumeError as err:
        raise StaleCellError(f"{folder}: {err}; use another --out or remove the folder") from err
    return ckpt.round


class StaleCellError(Exception):
    """A kept cell folder holds a finished cell or a checkpoint of other settings (or an unreadable record)."""


def stored_cell(folder: Path, plan: CellPlan) -> Cell | None:
    """The cell an earlier ``--out`` run finished in ``folder`` with exactly ``plan``'s overrides, so a stopped
    or crashed Table 3 run continues where it stopped; None when the folder holds no finished cell (never run,
    or stopped mid-run: then :func:`resumable_round` says where it continues).

    Raises :class:`StaleCellError` when it holds one of other settings (a different ``--epochs``, data path
    or experiment, or a config file changed since: its results.json's config differs), which a rerun would
    overwrite."""
    path = folder / CELL_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        overrides = record.get("overrides")
        values = [record.get(f.name) for f in fields(Cell)]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError("a cell value is missing or not a finite number")
    except (OSError, UnicodeDecodeError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise StaleCellError(f"{path}: unreadable ({err}); remove it to rerun the cell") from err
    if overrides != list(plan.overrides):
        raise StaleCellError(f"{path} was run with other settings ({overrides}, now {list(plan.overrides)}); "
                             "use another --out or remove the folder")
    diffs = config_differences(_run_config(folder), to_dict(kept_config(plan)))
    if diffs:  # same overrides, other defaults: a conf/ file changed since the cell ran
        raise StaleCellError(f"{folder} ran with the same overrides but another config ({'; '.join(diffs)}); "
                             "use another --out or remove the folder to rerun it")
    return Cell(*(float(v) for v in values))


def _run_config(folder: Path) -> dict:
    """The composed config a finished cell's run wrote into its results.json (:class:`StaleCellError` when it
    cannot be read): a cell is only reused if it ran with today's config, not only today's overrides."""
    path = folder / "results.json"
    try:
        results = json.loads(path.read_text())
        config = results.get("config") if isinstance(results, dict) else None
        if not isinstance(config, dict):
            raise ValueError("no config object")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise StaleCellError(f"{path}: unreadable ({err}); remove the folder to rerun the cell") from err
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mf,ncf,fm,deepfm")
    parser.add_argument("--methods", default="secemb,bit8,tern,svd,colr")
    parser.add_argument("--seeds", type=int, default=4, help="how many seeds per cell")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run are first-seed .. first-seed + seeds - 1 (to add seeds to a row run before)")
    parser.add_argument("--epochs", type=float, default=200)
    parser.add_argument("--eval-epochs", type=float, default=5.0, help="evaluate every this many epochs")
    parser.add_argument("--data-path", default=str(ML100K))
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells run in this many processes at once, one torch thread each (1: in this process)")
    parser.add_argument("--out", default=None,
                        help="keep each cell's run folder under this folder (curves; input of simulations.report); "
                             "cells a run with the same --out finished are read back, unfinished ones continue "
                             "from their last checkpoint")
    parser.add_argument("--markdown", default=None,
                        help="also write the table as markdown to this file (the README's Table 3 rows)")
    parser.add_argument("--rr-presets", default=None,
                        help="comma-separated ml_1m,ml_10m,ml_25m,yelp: print only their computed R.R. columns")
    args = parser.parse_args()
    if args.rr_presets:
        print_reduction_ratios(args.rr_presets.split(","), args.models.split(","))
        return
    total = time.perf_counter()
    models, methods = args.models.split(","), args.methods.split(",")
    plans = {(model, method): [plan_cell(model, method, s, args.epochs, args.eval_epochs, args.data_path)
                               for s in range(args.first_seed, args.first_seed + args.seeds)]
             for model in models for method in methods}
    # Cells an earlier run with the same --out finished are read back, not rerun; checked before anything runs.
    stored: dict[CellPlan, Cell] = {}
    if args.out:
        try:
            stored = {plan: cell for row in plans.values() for plan in row
                      if (cell := stored_cell(Path(args.out) / plan.name, plan)) is not None}
            resuming = sum(resumable_round(Path(args.out) / plan.name, plan) is not None
                           for row in plans.values() for plan in row if plan not in stored)
        except StaleCellError as err:
            raise SystemExit(f"table3: {err}") from None
        if stored:
            print(f"# {len(stored)} cells finished by an earlier run are read from {args.out}", flush=True)
        if resuming:
            print(f"# {resuming} cells continue from the checkpoints of an earlier run in {args.out}", flush=True)
    print(f"{'model':7} {'method':7} {'final RMSE':>16} {'paper RMSE':>16} {'best-on-test':>16} {'R.R.':>6} "
          f"{'paper':>6} {'up MB':>7} {'ours-paper':>10} {'targets':>18} {'wall s':>8}", flush=True)
    pool = _pool(args.jobs)
    # Every cell is submitted up front so the pool stays busy; rows print in table order as they complete.
    futures: dict[tuple[str, str], list] = {
        key: [_Done(stored[plan]) if plan in stored else pool.submit(run_cell, plan, args.out) for plan in row]
        for key, row in plans.items()}
    rows = []
    for (model, method), row in futures.items():
        cells = [f.result() for f in row]
        rows.append(summary := Row(model, method, tuple(cells)))
        p = summary.paper
        print(f"{model:7} {method:7} {summary.final_text} {p[0]:9.3f} +- {p[1]:.3f} "
              f"{summary.best_text} {summary.reduction_ratio:6.2f} {p[2]:6.2f} {summary.upload_mb:7.3f} "
              f"{summary.final - p[0]:+10.4f} {summary.targets():>18} {summary.seconds:8.1f}", flush=True)
        print(f"{'':15} per seed final: {' '.join(f'{c.final_rmse:.4f}' for c in cells)}; "
              f"best: {' '.join(f'{c.best_rmse:.4f}' for c in cells)}", flush=True)
    pool.shutdown()
    print(f"total wall {time.perf_counter() - total:.1f} s"
          + (f" (this run; the wall s column includes the {len(stored)} cells read back)" if stored else ""))
    print(f"cells' seconds {sum(r.seconds for r in rows):.1f} (the sum of the wall s column: the cells' own "
          f"seconds, wherever and in however many lanes they ran)")
    if args.markdown:
        atomic_write_bytes(Path(args.markdown), markdown_table(rows).encode())
        print(f"markdown table written to {args.markdown}")


def markdown_table(rows: list[Row]) -> str:
    """The rows as a markdown table (the README's Table 3): ours against the paper's, targets met in bold."""
    lines = ["| model | method | final RMSE, mean +- std (per seed) | paper | best-on-test | R.R. ours / paper "
             "| upload MB | ours - paper | targets | cells' seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = " ".join(f"{c.final_rmse:.4f}" for c in r.cells)
        bold = "**" if r.rmse_within() else ""
        lines.append(
            f"| {r.model} | {r.method} | {bold}{r.final_text.strip()}{bold} ({per_seed}) "
            f"| {r.paper[0]:.3f} +- {r.paper[1]:.3f} | {r.best_text.strip()} "
            f"| {r.reduction_ratio:.2f} / {r.paper[2]:.2f} | {r.upload_mb:.3f} | {r.final - r.paper[0]:+.4f} "
            f"| {r.targets()} | {r.seconds:,.0f} |")
    return "\n".join(lines) + "\n"


class _Done:
    """A cell read back from its kept folder, shaped like a future."""

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    def result(self) -> Cell:
        return self._cell


class _Deferred:
    """``--jobs 1``: a cell that runs in this process when its result is asked for, so rows print as they finish."""

    def __init__(self, fn: Callable[..., Cell], *args: object) -> None:
        self._fn, self._args = fn, args

    def result(self) -> Cell:
        return self._fn(*self._args)


class _InProcess:
    def submit(self, fn: Callable[..., Cell], *args: object) -> _Deferred:
        return _Deferred(fn, *args)

    def shutdown(self) -> None:
        pass


def _pool(jobs: int) -> Executor | _InProcess:
    """Cells in ``jobs`` spawned processes with one torch thread each, so they do not contend for cores."""
    if jobs < 1:
        raise SystemExit("--jobs must be >= 1")
    if jobs == 1:
        return _InProcess()
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_cell_worker, initargs=(os.getpid(),))


def _cell_worker(parent: int) -> None:
    """A cell process: one torch thread, and it ends when the table's process does.

    Why the watch: a pool's workers outlive a parent stopped by SIGTERM or SIGKILL (nothing runs in the
    parent to stop them), and two orphaned cells kept both cores busy for an hour here. A cell stopped
    mid-run loses nothing its checkpoints hold (they are written whole, then renamed), and the same command
    continues it.
    """
    torch.set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):9.4f} +- {std:.3f}"


if __name__ == "__main__":
    main()
