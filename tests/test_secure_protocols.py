"""SecEmb, Secure FedRec and FedMF against their plaintext twins, in real Flower simulations.

Same seed, same data split, same sampled users: the secure protocol must
train the same model up to fixed-point rounding.
"""

from __future__ import annotations

import math

import pytest

from tests.sim_utils import SMALL, cached_run, run_sim

pytestmark = pytest.mark.slow
FEATURES = ["dataset.n_user_features=5", "dataset.n_item_features=4"]


# 40 items: 20 ranking negatives fit (the default 99 do not). tests/test_batched_engine.py uses the same runs.
TWIN = ("train.ranking_negatives=20",)


def _run(tmp_path_factory, *overrides: str, base: tuple[str, ...] = tuple(SMALL + FEATURES)) -> dict:
    """Run ``base`` + ``overrides`` once per distinct composed configuration (see ``cached_run``): the twins
    here and the engine-equality runs of tests/test_batched_engine.py share the Flower runs they have in common."""
    return cached_run(tmp_path_factory, [*base, *overrides])


def _rmses(res: dict) -> list[float]:
    return [r["test_rmse"] for r in res["records"] if r["test_rmse"] is not None]


def _assert_twins(plain: dict, secure: dict) -> None:
    """Same users sampled every round, and test RMSE equal within 1e-4 (fixed-point rounding)."""
    assert [r["clients"] for r in secure["records"]] == [r["clients"] for r in plain["records"]]
    for a, b in zip(_rmses(plain), _rmses(secure)):
        assert abs(a - b) <= 1e-4, (a, b)


@pytest.mark.parametrize("model,rounds", [("mf", 20), ("deepfm", 20), ("ncf", 2), ("fm", 2)])
def test_secemb_is_lossless_against_plaintext(tmp_path_factory, model, rounds):
    common = [f"model={model}", f"rounds={rounds}", "train.eval_every=5" if rounds > 5 else "train.eval_every=1", *TWIN]
    plain = _run(tmp_path_factory, "strategy=plaintext", "strategy.m_prime=6", *common)
    secure = _run(tmp_path_factory, "strategy=secemb", "strategy.m_prime=6", *common)
    _assert_twins(plain, secure)
    assert rounds <= 2 or _rmses(secure)[-1] < _rmses(secure)[0]
    assert all(math.isfinite(r["train_loss"]) for r in secure["records"])


def test_secemb_m_prime_comes_from_the_secure_count_sum(tmp_path_factory):
    res = _run(tmp_path_factory, "strategy=secemb", "model=mf", "strategy.alpha=1.0")
    from simulations.config import compose_config, to_app_config
    from recdata.dataset import load_split

    split = load_split(to_app_config(compose_config(SMALL + FEATURES)))
    counts = [len(set(split.user(u).train_items.tolist())) for u in range(split.n_users)]
    assert res["final"]["m_prime"] == math.ceil(sum(counts) / len(counts))
    # set-up is timed apart from the rounds, with the count phase's wait for the users' replies inside it
    assert 0 < res["final"]["setup_wait_seconds"] < res["final"]["setup_seconds"]


@pytest.mark.parametrize("model", ["mf", "deepfm"])
def test_secfedrec_is_lossless_against_plaintext(tmp_path_factory, model):
    """20 rounds for MF and DeepFM, as for SecEmb. The protocol shares one flat vector (full row
    gradients, then the dense ones) for every model, so NCF and FM would change only its length."""
    common = [f"model={model}", "rounds=20", "train.eval_every=5", *TWIN]
    plain = _run(tmp_path_factory, "strategy=plaintext", *common)
    secure = _run(tmp_path_factory, "strategy=secfedrec", *common)
    _assert_twins(plain, secure)
    assert _rmses(secure)[-1] < _rmses(secure)[0]
    # full-size shares: one in the clear for server 0 and one sealed for server 1, each 40 items x 9 ring
    # words (MF and DeepFM rows alike: the 8-dim embedding and its bias)
    assert secure["records"][0]["bytes_up_per_client"] > 2 * 40 * 9 * 4


@pytest.mark.parametrize("variant", ["rowenc", "init"])
def test_ablation_variants_train_the_same_model(tmp_path_factory, variant):
    base = ["model=mf", "rounds=20", "train.eval_every=5", "strategy.m_prime=6", *TWIN]  # the MF twin's runs
    full = _run(tmp_path_factory, "strategy=secemb", *base)
    ablation = _run(tmp_path_factory, "strategy=secemb", f"strategy.variant={variant}", *base)
    for a, b in zip(_rmses(full), _rmses(ablation)):
        assert abs(a - b) <= 1e-4
    assert ablation["records"][0]["bytes_up_per_client"] > full["records"][0]["bytes_up_per_client"]


FEDMF = ("+experiment=fedmf_small", "rounds=4", "train.eval_every=2")  # the paper's 7 users, 40 items
KEY = "strategy.key_bits=1024"


@pytest.mark.parametrize("mode", ["parttext", "fulltext", "padded"])
def test_fedmf_is_lossless_against_distributed_mf_small_setting(tmp_path_factory, mode):
    extra = ["strategy.pad_to=20"] if mode == "padded" else []
    plain = _run(tmp_path_factory, f"strategy.mode={mode}", *extra, base=FEDMF)
    secure = _run(tmp_path_factory, "strategy=fedmf", KEY, f"strategy.mode={mode}", *extra, base=FEDMF)
    assert secure["records"][-1]["clients"] == 7
    for a, b in zip(_rmses(plain), _rmses(secure)):
        assert abs(a - b) <= 1e-6, (a, b)
    if mode == "parttext":
        fulltext = _run(tmp_path_factory, "strategy=fedmf", KEY, "strategy.mode=fulltext", base=FEDMF)
        assert secure["records"][0]["bytes_up_per_client"] < fulltext["records"][0]["bytes_up_per_client"]


def test_fedmf_is_lossless_on_ml_latest_small_with_2048_bit_keys(tmp_path_factory):
    common = ["dataset=ml_latest_small", "dataset.max_items=60", "dataset.max_users=20", "dataset.split=last_k",
              "model=mf", "model.dim=10", "clients_per_round=10", "rounds=2", "train.eval_every=1"]
    plain = run_sim(tmp_path_factory.mktemp("dmf"), common + ["strategy=distributed_mf", "strategy.mode=parttext"])[0]
    secure = run_sim(tmp_path_factory.mktemp("fedmf"), common + ["strategy=fedmf", "strategy.mode=parttext",
                                                                 "strategy.key_bits=2048"])[0]
    assert secure["final"]["key_bits"] == 2048 and secure["final"]["keyed_users"] == 20
    for a, b in zip(_rmses(plain), _rmses(secure)):
        assert abs(a - b) <= 1e-6, (a, b)
