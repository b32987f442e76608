"""engine=batched against engine=flower: same seed and config, same numbers; computed bytes = measured bytes.

The Flower runs use the same small configurations as tests/test_secure_protocols.py
and share its cache, so in one session each Flower simulation runs once for both
modules. The batched runs take about a second each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine.model_protocols as protocols
from engine.loop import run_batched
from engine.registry import DRIVERS, get_driver
from recdata.dataset import dataset_meta, load_split
from schemas.config import ConfigError
from simulations.config import compose_config, to_app_config
from simulations.run import simulate_batched
from tests.conftest import ML100K, ROOT
from tests.sim_utils import SMALL, run_sim
from tests.test_secure_protocols import FEATURES, _run as flower_run

BASE = tuple(SMALL + FEATURES)
MF20 = ("model=mf", "rounds=20", "train.eval_every=5", "train.ranking_negatives=20")  # 40 items: 20 negatives fit


def _cfg(overrides):
    return to_app_config(compose_config(list(overrides)))


def batched_run(tmp_path: Path, *overrides: str, base: tuple[str, ...] = BASE) -> dict:
    """engine=batched through the entry point's writer: results.json as the Flower path writes it."""
    simulate_batched(_cfg([*base, *overrides, "engine=batched"]), str(tmp_path))
    return json.loads((tmp_path / "results.json").read_text())


def _rmses(res: dict) -> list[float]:
    return [r["test_rmse"] for r in res["records"] if r["test_rmse"] is not None]


def assert_same_run(flower: dict, batched: dict, tol: float) -> float:
    """Same users per round, same evaluated rounds, test RMSE within ``tol``; returns the largest gap."""
    assert [r["clients"] for r in batched["records"]] == [r["clients"] for r in flower["records"]]
    assert [r["round"] for r in batched["records"] if r["test_rmse"] is not None] == \
        [r["round"] for r in flower["records"] if r["test_rmse"] is not None]
    gaps = [abs(a - b) for a, b in zip(_rmses(flower), _rmses(batched))]
    assert max(gaps) <= tol, (_rmses(flower), _rmses(batched))
    for a, b in zip(flower["records"], batched["records"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
    evaluated = [(a, b) for a, b in zip(flower["records"], batched["records"]) if a["test_rmse"] is not None]
    for a, b in evaluated:  # HR@10 / NDCG@10: same candidates, same scoring, same (fixed-point) sums
        assert a.get("ranked_users") == b.get("ranked_users")
        for key in ("hr@10", "ndcg@10"):
            assert (a.get(key) is None) == (b.get(key) is None), key
            if a.get(key) is not None:
                assert a[key] == pytest.approx(b[key], abs=1e-6), key
    print(f"largest test-RMSE gap {max(gaps):.3g}")
    return max(gaps)


def assert_bytes_match(flower: dict, batched: dict) -> None:
    """Round 1's computed bytes per client within 1% of what the Flower path's meter measured."""
    measured, computed = flower["records"][0], batched["records"][0]
    assert computed["bytes_source"] == "computed" and computed["engine"] == "batched"
    for key in ("bytes_down_per_client", "bytes_up_per_client"):
        assert computed[key] == pytest.approx(measured[key], rel=0.01), key


# ------------------------------------------------------------------ MF, 20 rounds
MF_CASES = [
    ("strategy=plaintext", "strategy.m_prime=6"),
    ("strategy=secemb", "strategy.m_prime=6"),
    ("strategy=secemb", "strategy.m_prime=6", "strategy.variant=rowenc"),
    ("strategy=secemb", "strategy.m_prime=6", "strategy.variant=init"),
    ("strategy=secfedrec",),
]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", MF_CASES, ids=["plaintext", "secemb", "rowenc", "init", "secfedrec"])
def test_mf_batched_equals_flower_and_bytes_are_the_measured_ones(tmp_path_factory, strategy):
    flower = flower_run(tmp_path_factory, *strategy, *MF20)
    batched = batched_run(tmp_path_factory.mktemp("batched"), *strategy, *MF20)
    assert_same_run(flower, batched, 1e-5)
    assert_bytes_match(flower, batched)
    assert all(r["ranked_users"] > 0 for r in flower["records"] if r["test_rmse"] is not None)
    if "strategy=secemb" in strategy:
        assert batched["final"]["m_prime"] == flower["final"]["m_prime"] == 6


# ------------------------------------------------- NCF, FM, DeepFM on plaintext and SecEmb
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["plaintext", "secemb"])
@pytest.mark.parametrize("model,rounds", [("ncf", 2), ("fm", 2), ("deepfm", 20)])
def test_other_models_batched_equal_flower(tmp_path_factory, strategy, model, rounds):
    common = [f"model={model}", f"rounds={rounds}", "train.eval_every=5" if rounds > 5 else "train.eval_every=1",
              "train.ranking_negatives=20"]
    flower = flower_run(tmp_path_factory, f"strategy={strategy}", "strategy.m_prime=6", *common)
    batched = batched_run(tmp_path_factory.mktemp("batched"), f"strategy={strategy}", "strategy.m_prime=6", *common)
    assert_same_run(flower, batched, 1e-4)


@pytest.mark.slow
def test_secemb_m_prime_from_the_mean_count_matches_flower(tmp_path_factory):
    """m' = ceil(alpha x mean distinct rated items), which Flower computes by a secure sum, here over a
    seeded sample of 8 of the 12 users (strategy.count_users): both engines count the same users."""
    sample = ("strategy=secemb", "model=mf", "strategy.alpha=1.0", "strategy.count_users=8")
    flower = flower_run(tmp_path_factory, *sample)
    batched = batched_run(tmp_path_factory.mktemp("batched"), *sample)
    everyone = batched_run(tmp_path_factory.mktemp("everyone"), *sample[:-1], "strategy.count_users=null")
    assert batched["final"]["m_prime"] == flower["final"]["m_prime"]
    assert batched["final"]["m_prime"] != everyone["final"]["m_prime"]  # the sample is not the population
    assert_same_run(flower, batched, 1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not (ML100K / "u.data").exists(), reason="ml-100k is not in ../shared/data")
def test_mf_on_ml_100k_batched_equals_flower(tmp_path_factory):
    common = ["dataset=ml_100k", f"dataset.path={ML100K}", "model=mf", "model.dim=16", "rounds=20",
              "clients_per_round=10", "train.eval_every=10", "train.eval_clients=60"]
    flower = run_sim(tmp_path_factory.mktemp("flower"), common)[0]
    batched = batched_run(tmp_path_factory.mktemp("batched"), *common, base=())
    assert_same_run(flower, batched, 1e-5)
    assert_bytes_match(flower, batched)


# ------------------------------------------------------------ the entry point
@pytest.mark.slow
def test_multirun_over_the_batched_engine_writes_each_run(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run", "--multirun", "engine=batched", *SMALL, "seed=0,1",
         f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    finals = []
    for job in ("0", "1"):
        res = json.loads((sweep / job / "results.json").read_text())
        lines = (sweep / job / "records.jsonl").read_text().splitlines()
        assert len(lines) == 2 and all(json.loads(line)["engine"] == "batched" for line in lines)
        assert (sweep / job / "rmse_bytes.png").exists()
        assert res["config"]["engine"] == "batched" and res["config"]["seed"] == int(job)
        finals.append(res["final"]["final_test_rmse"])
    assert finals[0] != finals[1]  # the seed reached the run


# ------------------------------------------------------------- fast checks
def test_every_model_strategy_has_a_driver():
    for name in ("plaintext", "secemb", "secfedrec"):
        assert name in DRIVERS and issubclass(get_driver(name), protocols.ModelDriver)
    with pytest.raises(KeyError, match="no driver"):
        get_driver("nope")


def test_engine_choice_is_validated():
    assert _cfg(BASE).engine == "flower"
    with pytest.raises(ConfigError, match="engine"):
        _cfg([*BASE, "engine=turbo"])


def test_sub_batching_changes_nothing(monkeypatch):
    """Users are independent: one batch per round or many small ones train the same model."""
    cfg = _cfg([*BASE, "engine=batched", "strategy=secemb", "strategy.m_prime=6", "model=deepfm", "rounds=3"])
    split, meta = load_split(cfg), dataset_meta(cfg)
    whole = run_batched(cfg, split, meta)
    monkeypatch.setattr(protocols, "CHUNK_ELEMENTS", 1)  # every user its own sub-batch
    monkeypatch.setattr(protocols, "ENCODE_CHUNK_ELEMENTS", 1)  # and its own ring-encoding chunk
    single = run_batched(cfg, split, meta)
    assert [r["train_loss"] for r in single["records"]] == pytest.approx([r["train_loss"] for r in whole["records"]],
                                                                         rel=1e-6)
    assert _rmses(single) == pytest.approx(_rmses(whole), abs=1e-6)


def test_private_state_starts_as_each_client_starts_it():
    """Users are initialised lazily, on first sampling, with the client's seeded init; unsampled users untouched."""
    from models import init_private

    cfg = _cfg([*BASE, "engine=batched", "rounds=1"])
    split, meta = load_split(cfg), dataset_meta(cfg)
    driver = get_driver("plaintext")(cfg, split, meta)
    users = np.asarray(driver.sampler().sample_users(1))
    driver.ensure_initialised(users)
    for u in range(meta.n_users):
        expected = init_private(driver.spec, u, cfg.seed) if u in users else np.zeros(driver.spec.private_size)
        np.testing.assert_array_equal(driver.private.params[u], expected)
    driver.train_round(1, users)
    assert (driver.private.step[users] == cfg.train.local_user_steps).all()
    assert (driver.private.step[np.setdiff1d(np.arange(meta.n_users), users)] == 0).all()


def test_groups_cover_each_user_once_and_keep_padding_small():
    sizes = np.array([5, 400, 7, 6, 390, 5000, 8, 410])
    parts = protocols.groups(sizes, fixed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(sizes)))
    for g in parts:
        assert len(g) * sizes[g].max() <= 1.25 * sizes[g].sum() + protocols.PAD_ALLOWANCE or len(g) == 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint32, np.uint64])
def test_scatter_rows_is_np_add_at(dtype):
    """The aggregation's row sum against its definition: out[i] += row for each (i, row) in order
    (np.add.at), bit for bit, repeated items and wrapping ring sums included."""
    from strategies.plaintext import scatter_rows

    rng = np.random.default_rng(3)
    for t in (0, 1, 7, 5000):
        items = rng.integers(0, 50, t)
        rows = (rng.normal(size=(t, 9)) if np.dtype(dtype).kind == "f"
                else rng.integers(0, np.iinfo(dtype).max, size=(t, 9), dtype=np.uint64)).astype(dtype)
        expected = np.zeros((50, 9), dtype=dtype)
        np.add.at(expected, items, rows)
        got = scatter_rows(50, items, rows, dtype)
        assert got.dtype == dtype and np.array_equal(got, expected)


@pytest.mark.slow
def test_secemb_evaluates_the_same_sampled_test_ratings_on_both_engines(tmp_path_factory):
    """An evaluation m' below some users' test items (m' = 1, no ranking case): each such user retrieves
    and evaluates a seeded sample of them (clients.item_selection.evaluation_items), the same ratings on
    both engines."""
    case = ("strategy=secemb", "model=mf", "strategy.m_prime=1", "train.ranking=false", "rounds=3")
    flower = flower_run(tmp_path_factory, *case)
    batched = batched_run(tmp_path_factory.mktemp("batched"), *case)
    assert_same_run(flower, batched, 1e-5)
    cfg = _cfg([*BASE, *case, "engine=batched"])
    driver = get_driver(cfg.protocol)(cfg, load_split(cfg), dataset_meta(cfg))
    evaluated = driver.evaluated_test_ratings(np.arange(driver.meta.n_users))
    assert evaluated is not None and 0 < evaluated.sum() < len(evaluated)  # some test ratings were left out


def test_the_batched_engine_runs_numpy_blas_on_one_thread(tmp_path):
    """Like torch's intra-op pool, numpy's BLAS threads spin against a second job on the same cores
    (``benchmarks.table3 --jobs 2``); the engine sets one BLAS thread for its process."""
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    controller.limit(limits=2, user_api="blas")
    batched_run(tmp_path, "model=mf", "rounds=1", "train.eval_every=0")
    blas = [lib for lib in ThreadpoolController().info() if lib["user_api"] == "blas"]
    assert blas and all(lib["num_threads"] == 1 for lib in blas)
