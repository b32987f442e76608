"""Why the SVD baseline loses utility on MF (Table 3, ML100K): a diagnostic, not a product feature.

An MF user's item-embedding gradient (one gradient at the downloaded rows, as every protocol here
uploads) is the sum of two parts:

* the error term, row i = 2 e_ui / n_u x [u, 1] (the user vector and the item bias column): rank 1;
* the L2 term of ``reg_form=user``, 2 reg x V[rated rows]: the user's rated rows of the public
  table, rank up to ``row_dim``.

A rank-r SVD of the sum keeps the rank-1 error term almost whole and truncates the L2 term. This
script measures both, through the product's own batched driver, MF cell, seed and split:

* ``--mode product``: the product's SVD baseline (``strategy.compression=svd``, Table 10's rank 12),
  unchanged; the energy split is printed for a few rounds.
* ``--mode exact-l2``: the same run, except that each user's upload is the rank-r SVD of the error
  term plus the exact L2 term. This is not a protocol: it is the counterfactual that isolates what
  the truncation of the L2 term costs.

Each line per round prints the mean over the round's users of the error term's energy beyond its
first singular value (relative; about 1e-15 confirms rank 1), and the fraction of each term's energy
that the rank-r truncation of the whole gradient keeps.

    python -m benchmarks.svd_gap --mode product --mode exact-l2     # 1,886 rounds each, ~5 min each idle
    python -m benchmarks.svd_gap --rounds 100 --mode product          # a short look at the energies
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.compressed_protocol import CompressedPlaintextDriver
from engine.model_protocols import LossCount, RoundBatch
from simulations.config import compose_config, to_app_config
from simulations.run import simulate_batched
from strategies.base import weighted_train_loss

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
STAT_ROUNDS = (1, 10, 100, 500, 1000, 1800)
_PRODUCT_AGGREGATE = CompressedPlaintextDriver.aggregate  # each run's wrapper calls it (not a previous wrapper)


def _truncate(m: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(best rank-r approximation of m, the projector onto its top-r right singular vectors)."""
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r], vt[:r].T @ vt[:r]


def _parts(table: np.ndarray, batch: RoundBatch, b: int, reg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User b's (item ids, error term, L2 term) of its uploaded row gradients; ``table``: the rows it downloaded."""
    items = batch.items[b]
    grads = batch.row_grads[b][batch.row_mask[b]].astype(np.float64)
    l2 = 2.0 * reg * table[items].astype(np.float64)
    return items, grads - l2, l2


def _energies(error: np.ndarray, l2: np.ndarray, r: int) -> tuple[float, float, float]:
    """(error energy beyond rank 1, error energy kept, L2 energy kept), relative, under rank-r of the sum."""
    s = np.linalg.svd(error, compute_uv=False)
    _, proj = _truncate(error + l2, r)
    return (float((s[1:] ** 2).sum() / max((s ** 2).sum(), 1e-300)),
            float(((error @ proj) ** 2).sum() / (error ** 2).sum()), float(((l2 @ proj) ** 2).sum() / (l2 ** 2).sum()))


def instrument(mode: str, reg: float) -> None:
    """Wrap the product's batched compressed aggregation: energies on STAT_ROUNDS, and the exact-l2 upload."""

    def aggregate(self: CompressedPlaintextDriver, batch: RoundBatch) -> dict[str, Any]:
        rnd, rank, table = self._rnd, self.strategy.codec.rank, self.strategy.model.table_numpy()
        if rnd in STAT_ROUNDS:
            e = np.array([_energies(*_parts(table, batch, b, reg)[1:], rank) for b in range(len(batch.items))])
            print(f"round {rnd:5d}: error energy beyond rank 1 {e[:, 0].mean():.1e}; kept by rank {rank}: "
                  f"error {e[:, 1].mean():.4f}, L2 {e[:, 2].mean():.4f}", flush=True)
        if mode == "product":
            return _PRODUCT_AGGREGATE(self, batch)
        total = np.zeros((self.meta.n_items, self.spec.row_dim))
        for b in range(len(batch.items)):
            items, error, l2 = _parts(table, batch, b, reg)
            total[items] += _truncate(error, rank)[0] + l2
        self.strategy.model.step(total, batch.dense_grads.sum(axis=0, dtype=np.float64), len(batch.dense_grads))
        return {"train_loss": weighted_train_loss(map(LossCount._make, zip(batch.loss, batch.n_ratings))),
                "reduction_ratio": self.strategy.reduction_ratio(rnd)}

    CompressedPlaintextDriver.aggregate = aggregate  # type: ignore[method-assign]


def run(mode: str, rounds: int, seed: int, data: str) -> None:
    cfg = to_app_config(compose_config([
        "+experiment=secemb_ml100k_mf", f"dataset.path={data}", "strategy=plaintext", "strategy.compression=svd",
        f"seed={seed}", "engine=batched", "train.eval_clients=null", f"rounds={rounds}",
        f"train.eval_every={max(1, rounds // 40)}"]))
    if cfg.model.reg_form != "user":
        raise SystemExit("this diagnostic assumes MF's reg_form=user (L2 term 2 reg x rows)")
    instrument(mode, float(cfg.model.reg))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        simulate_batched(cfg, out)
        final = json.loads((Path(out) / "results.json").read_text())["final"]
    print(f"{mode:9} seed {seed}: final test RMSE {final['final_test_rmse']:.4f}, best {final['best_test_rmse']:.4f} "
          f"({rounds} rounds, {time.perf_counter() - start:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", action="append", choices=["product", "exact-l2"], help="repeatable")
    ap.add_argument("--rounds", type=int, default=1886, help="1,886 = 200 epochs of 100 clients on ml_100k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(ML100K))
    args = ap.parse_args()
    for mode in args.mode or ["product", "exact-l2"]:
        run(mode, args.rounds, args.seed, args.data)

if __name__ == "__main__":
    main()
