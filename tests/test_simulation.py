"""Two-round Flower simulations of every strategy x model, and bad client replies.

These start Flower's real simulation engine (Ray) with one virtual SuperNode
per user of a small synthetic dataset and check what the run wrote.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, Context, Message

from simulations.results import read_records
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
