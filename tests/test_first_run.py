"""The README's first run must look right to a newcomer: it beats the global-mean predictor.

The public model's global bias starts at the rating scale's midpoint (public
knowledge of the service, ``DatasetMeta.rating_scale``); from 0 it spent the
whole default run climbing to the scale and ended at RMSE 1.81 against the
reference's 1.03. The default config is run on the batched engine, which the
equality tests tie to the Flower path, so this costs seconds.
"""

from __future__ import annotations

import numpy as np

from models import ModelSpec, dense_layout, init_dense
from recdata.dataset import dataset_meta
from simulations.config import compose_config, to_app_config
from simulations.run import simulate_batched
from strategies.plaintext import PlaintextStrategy


def test_global_bias_starts_at_the_rating_scale_midpoint():
    cfg = to_app_config(compose_config([]))
    meta = dataset_meta(cfg)
    assert meta.rating_scale == (0.5, 5.0)  # MovieLens latest-small's half-star scale
    dense = PlaintextStrategy(cfg, meta).model.dense_numpy()
    assert dense.shape == (1,) and dense[0] == np.float32(2.75)
    # Every other dense entry keeps its seeded init; only the global bias moves.
    spec = ModelSpec(name="fm", dim=8, n_user_features=3, n_item_features=2, init_std=0.1)
    plain, shifted = init_dense(spec, 0), init_dense(spec, 0, global_bias=3.0)
    names = [n for n, shape in dense_layout(spec) for _ in range(int(np.prod(shape)))]
    moved = [n for n, a, b in zip(names, plain, shifted) if a != b]
    assert moved == ["global_bias"] and shifted[names.index("global_bias")] == 3.0


def test_default_run_beats_the_global_mean_reference(tmp_path, caplog):
    """...and its closing log lines say both, as the Flower path's do (4 decimals each)."""
    cfg = to_app_config(compose_config(["engine=batched"]))
    with caplog.at_level("INFO", logger="secrec"):
        run = simulate_batched(cfg, str(tmp_path))
    final = [r["test_rmse"] for r in run["records"] if r["test_rmse"] is not None][-1]
    reference = run["reference_global_mean"]["test_rmse"]
    assert final < reference - 0.05, (final, reference)
    assert f"final test RMSE {final:.4f} after 20 rounds" in caplog.text
    assert f"scores test RMSE {reference:.4f} on the same 100 users'" in caplog.text
