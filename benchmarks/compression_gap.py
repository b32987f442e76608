"""Why the low-rank baselines lose utility (Table 3, ML100K): a diagnostic, not a product feature.

A user's item-embedding gradient under ``model.reg_form=user`` (MF's and NCF's; one gradient at the
downloaded rows, as every protocol here uploads) is the sum of two parts:

* the error term: what the ratings' squared errors contribute. For MF, row i = 2 e_ui / n_u x [u, 1]
  (the user vector and the item bias column), rank 1; for NCF it goes through the MLP, not rank 1;
* the L2 term, 2 reg x V[rated rows]: the user's rated rows of the public table, rank up to ``row_dim``.

SVD and CoLR each project a user's whole update onto a rank-r row space: SVD onto the top-r right
singular vectors of the sum, CoLR onto the round's shared random basis. This script measures what
each projection keeps of each term, through the product's own batched driver, cell, seed and split:

* ``--mode product``: the product's baseline (``strategy.compression=svd|colr``, Table 10's ranks),
  unchanged; the energy split is printed for a few rounds.
* ``--mode exact-l2``: the same run, except that each user's upload is the product codec's encoding
  of the error term alone (decoded by the same codec), plus the exact L2 term. This is not a
  protocol (the server would need each user's rated rows): it is the counterfactual that isolates
  what the projection of the L2 term costs.

Each line per round prints the mean over the round's users of the error term's energy beyond its
first singular value (relative; about 1e-15 for MF confirms rank 1), and the fraction of each term's
energy that the codec's projection of the whole gradient keeps. A second line prints the scale (root
mean square) of the public item table, of the dense parameters and of the private parameters of the
users initialised so far (sampled or evaluated; every user after the first evaluation): where a run
fits what the compressed item update does not carry; and the mean size of the server Adam's normalised
step on the item table (how far the table moves per round). ``--method bit8`` (no projection: energies
skipped, product mode only) gives the reference for that line.

    python -m benchmarks.compression_gap --mode product --mode exact-l2          # MF SVD, 1,886 rounds each
    python -m benchmarks.compression_gap --model ncf --method colr              # NCF CoLR, both modes
    python -m benchmarks.compression_gap --rounds 100 --mode product             # a short look at the energies
    python -m benchmarks.compression_gap --model ncf --method bit8 --mode product   # the scales without projection
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.compressed_protocol import CompressedPlaintextDriver
from engine.model_protocols import RoundBatch
from models.compression import CoLRCodec, SVDCodec, UpdateCodec
from schemas.compressed import encode_update
from simulations.config import compose_config, to_app_config
from simulations.run import simulate_batched
from strategies.base import mean_train_loss

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
STAT_ROUNDS = (1, 10, 100, 500, 1000, 1800)
_PRODUCT_AGGREGATE = CompressedPlaintextDriver.aggregate  # each run's wrapper calls it (not a previous wrapper)


def _svd_projector(m: np.ndarray, r: int) -> np.ndarray:
    """The projector onto m's top-r right singular vectors (what SVD's rank-r truncation keeps of each row)."""
    _, _, vt = np.linalg.svd(m, full_matrices=False)
    return vt[:r].T @ vt[:r]


def _projector(codec: UpdateCodec, update: np.ndarray, rnd: int) -> np.ndarray:
    """[row_dim, row_dim]: the row-space projection the codec applies to this user's whole update."""
    if isinstance(codec, CoLRCodec):
        basis = codec.basis(update.shape[1], rnd)
        return basis.T @ basis * (codec.rank / update.shape[1])  # B^T B = (d / rank) P
    return _svd_projector(update, codec.rank)


def _parts(table: np.ndarray, batch: RoundBatch, b: int, reg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User b's (item ids, error term, L2 term) of its uploaded row gradients; ``table``: the rows it downloaded."""
    items = batch.items[b]
    grads = batch.row_grads[b][batch.row_mask[b]].astype(np.float64)
    l2 = 2.0 * reg * table[items].astype(np.float64)
    return items, grads - l2, l2


def _energies(codec: UpdateCodec, rnd: int, error: np.ndarray, l2: np.ndarray) -> tuple[float, float, float]:
    """(error energy beyond rank 1, error energy kept, L2 energy kept), relative, under the codec's projection."""
    s = np.linalg.svd(error, compute_uv=False)
    proj = _projector(codec, error + l2, rnd)
    return (float((s[1:] ** 2).sum() / max((s ** 2).sum(), 1e-300)),
            float(((error @ proj) ** 2).sum() / (error ** 2).sum()), float(((l2 @ proj) ** 2).sum() / (l2 ** 2).sum()))


def _decoded(codec: UpdateCodec, n_items: int, items: np.ndarray, part: np.ndarray, rnd: int) -> np.ndarray:
    """The product codec's round trip of one user's rows ``part`` (``encode_update``, then ``decompress``)."""
    payload = encode_update(codec, n_items, items, part.astype(np.float32), np.random.default_rng(0), rnd)
    return codec.decompress(payload, (n_items, part.shape[1]), rnd).astype(np.float64)


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) if a.size else 0.0


def _adam_step(model: Any) -> float:
    """Mean over the item table of Adam's normalised step |m_hat| / (sqrt(v_hat) + eps), read from the server's
    torch optimiser (1 where a coordinate's updates all agree, near 0 where they cancel); NaN before a step or
    without Adam."""
    state = model.opt.state.get(model.table, {})
    if not isinstance(model.opt, torch.optim.Adam) or "exp_avg" not in state:
        return float("nan")
    group = model.opt.param_groups[0]
    (beta1, beta2), eps, step = group["betas"], group["eps"], float(state["step"])
    m_hat = state["exp_avg"].double().numpy() / (1 - beta1 ** step)
    v_hat = state["exp_avg_sq"].double().numpy() / (1 - beta2 ** step)
    return float(np.mean(np.abs(m_hat) / (np.sqrt(v_hat) + eps)))


def instrument(mode: str, reg: float) -> None:
    """Wrap the product's batched compressed aggregation: energies on STAT_ROUNDS, and the exact-l2 upload."""

    def aggregate(self: CompressedPlaintextDriver, batch: RoundBatch) -> dict[str, Any]:
        rnd, codec, table = self._rnd, self.strategy.codec, self.strategy.model.table_numpy()
        if rnd in STAT_ROUNDS:
            if isinstance(codec, (SVDCodec, CoLRCodec)):  # a projection: what it keeps of each term
                e = np.array([_energies(codec, rnd, *_parts(table, batch, b, reg)[1:])
                              for b in range(len(batch.items))])
                print(f"round {rnd:5d}: error energy beyond rank 1 {e[:, 0].mean():.1e}; kept by {codec.name} "
                      f"rank {codec.rank}: error {e[:, 1].mean():.4f}, L2 {e[:, 2].mean():.4f}", flush=True)
            model = self.strategy.model
            print(f"round {rnd:5d}: rms of item table {_rms(table):.4f}, dense {_rms(model.dense_numpy()):.4f}, "
                  f"private (users initialised so far) {_rms(self.private.params[self.initialised]):.4f}; "
                  f"item table's Adam step |m|/sqrt(v) {_adam_step(model):.4f}", flush=True)
        if mode == "product":
            return _PRODUCT_AGGREGATE(self, batch)
        total = np.zeros((self.meta.n_items, self.spec.row_dim))
        for b in range(len(batch.items)):
            items, error, l2 = _parts(table, batch, b, reg)
            total += _decoded(codec, self.meta.n_items, items, error, rnd)
            total[items] += l2
        self.strategy.model.step(total, batch.dense_grads.sum(axis=0, dtype=np.float64), len(batch.dense_grads))
        return {"train_loss": mean_train_loss(batch.loss),
                "reduction_ratio": self.strategy.reduction_ratio(rnd)}

    CompressedPlaintextDriver.aggregate = aggregate  # type: ignore[method-assign]


def run(model: str, method: str, mode: str, rounds: int, seed: int, data: str) -> None:
    cfg = to_app_config(compose_config([
        f"+experiment=secemb_ml100k_{model}", f"dataset.path={data}", "strategy=plaintext",
        f"strategy.compression={method}",
        f"seed={seed}", "engine=batched", "train.eval_clients=null", f"rounds={rounds}",
        f"train.eval_every={max(1, rounds // 40)}"]))
    if cfg.model.reg_form != "user":
        raise SystemExit("this diagnostic assumes reg_form=user (MF, NCF: L2 term 2 reg x rows)")
    instrument(mode, float(cfg.model.reg))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        simulate_batched(cfg, out)
        final = json.loads((Path(out) / "results.json").read_text())["final"]
    print(f"{model} {method} {mode:9} seed {seed}: final test RMSE {final['final_test_rmse']:.4f}, "
          f"best {final['best_test_rmse']:.4f} ({rounds} rounds, {time.perf_counter() - start:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["mf", "ncf"], default="mf", help="a model with reg_form=user")
    ap.add_argument("--method", choices=["svd", "colr", "bit8"], default="svd",
                    help="the low-rank baseline (bit8: the reference without projection, product mode only)")
    ap.add_argument("--mode", action="append", choices=["product", "exact-l2"], help="repeatable")
    ap.add_argument("--rounds", type=int, default=1886, help="1,886 = 200 epochs of 100 clients on ml_100k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(ML100K))
    args = ap.parse_args()
    if args.method == "bit8" and args.mode not in (None, ["product"]):
        ap.error("--method bit8 has no projection: only --mode product")
    for mode in args.mode or (["product"] if args.method == "bit8" else ["product", "exact-l2"]):
        run(args.model, args.method, mode, args.rounds, args.seed, args.data)

if __name__ == "__main__":
    main()
