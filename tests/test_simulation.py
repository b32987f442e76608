"""Two-round Flower simulations of every strategy x model, and bad client replies.

These start Flower's real simulation engine (Ray) with one virtual SuperNode
per user of a small synthetic dataset and check what the run wrote.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, Context, Message

from recdata.split import FederatedSplit
from simulations.results import global_mean_reference, plot_results, read_records
from tests.sim_utils import SMALL, run_sim

pytestmark = pytest.mark.slow

CASES = [("plaintext", m) for m in ("mf", "ncf", "fm", "deepfm")] + [("distributed_mf", "mf")]
FEATURES = ["dataset.n_user_features=5", "dataset.n_item_features=4"]


def _check_results(res: dict, rounds: int = 2) -> None:
    recs = res["records"]
    assert [r["round"] for r in recs] == list(range(1, rounds + 1))
    for r in recs:
        assert r["clients"] > 0 and r["bytes_up_per_client"] > 0 and r["bytes_down_per_client"] > 0
        assert math.isfinite(r["train_loss"]) and r["server_seconds"] >= 0 and r["client_seconds_mean"] > 0
    assert math.isfinite(res["final"]["final_test_rmse"]) and 0 < res["final"]["final_test_rmse"] < 5


@pytest.mark.parametrize("strategy,model", CASES)
def test_two_round_simulation(tmp_path, strategy, model):
    res, _ = run_sim(tmp_path, SMALL + FEATURES + [f"strategy={strategy}", f"model={model}"])
    _check_results(res)
    assert (tmp_path / "rmse_bytes.png").stat().st_size > 1000
    # Every round was also appended to records.jsonl as it ended (what a crashed run leaves behind).
    appended = read_records(tmp_path)
    assert [r["round"] for r in appended] == [1, 2]
    assert [r["test_rmse"] for r in appended] == [r["test_rmse"] for r in res["records"]]


def _corrupt(kinds: dict[int, str]):
    """A Flower client mod corrupting the training reply of each user in ``kinds`` (one fault per user)."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        kind = kinds.get(context.node_config.get("partition-id"))
        if kind is None or not msg.metadata.message_type.startswith("train"):
            return reply
        record = reply.content["grads"]
        arr = record["rows"].numpy().copy()
        if kind == "nan":
            arr.reshape(-1)[0] = np.nan
        elif kind == "shape":
            arr = arr[:-1]
        elif kind == "dtype":
            arr = arr.astype(np.float64)
        record["rows"] = Array(np.ascontiguousarray(arr))
        return reply

    return mod


def test_bad_client_replies_are_dropped_and_the_round_goes_on(tmp_path):
    kinds = {0: "nan", 1: "shape", 2: "dtype"}
    overrides = SMALL + ["clients_per_round=12", "strategy=plaintext", "model=mf"]
    res, _ = run_sim(tmp_path, overrides, client_mods=[_corrupt(kinds)])
    needles = {"nan": "NaN", "shape": "has shape", "dtype": "dtype"}
    for r in res["records"]:
        assert r["dropped"] == 3 and r["clients"] == 9
        for user, kind in kinds.items():
            assert needles[kind] in r["dropped_users"][str(user)]
    assert math.isfinite(res["final"]["final_test_rmse"])


def test_global_mean_reference_by_hand(tmp_path):
    """Train ratings 1, 3, 5 (mean 3); users 0 and 2 hold test ratings 4, 1 and 3: RMSE sqrt((1 + 4 + 0) / 3)."""
    split = FederatedSplit(
        n_users=3, n_items=4, train_ptr=np.array([0, 1, 2, 3]), train_item=np.array([0, 1, 2]),
        train_rating=np.array([1.0, 3.0, 5.0]), test_ptr=np.array([0, 2, 3, 4]), test_item=np.array([1, 2, 0, 3]),
        test_rating=np.array([4.0, 1.0, 5.0, 3.0]), user_features=np.zeros((3, 0)), item_features=np.zeros((4, 0)),
        name="hand")
    ref = global_mean_reference(split, [0, 2])
    assert ref["predicted_rating"] == 3.0 and ref["test_ratings"] == 3 and ref["users"] == 2
    assert ref["test_rmse"] == pytest.approx(math.sqrt(5 / 3))
    records = [{"round": 1, "test_rmse": 1.2, "bytes_up_per_client": 10, "bytes_down_per_client": 20}]
    plot_results(records, tmp_path / "p.png", "hand", reference=ref["test_rmse"])
    assert (tmp_path / "p.png").stat().st_size > 1000
