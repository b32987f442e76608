"""Two-round Flower simulations of every strategy x model, and bad client replies.

These start Flower's real simulation engine (Ray) with one virtual SuperNode
per user of a small synthetic dataset and check what the run wrote.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message

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


def _corrupt_user_zero(kind: str):
    """A Flower client mod that corrupts user 0's training replies."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        if context.node_config.get("partition-id") != 0 or not msg.metadata.message_type.startswith("train"):
            return reply
        for name, record in reply.content.items():
            if isinstance(record, ArrayRecord):
                key = next(iter(record))
                arr = record[key].numpy().copy()
                if kind == "nan" and arr.dtype.kind == "f":
                    arr.reshape(-1)[0] = np.nan
                    record[key] = Array(arr)
                elif kind == "shape":
                    record[key] = Array(arr.reshape(-1)[:-1].copy())
                elif kind == "dtype":
                    record[key] = Array(arr.astype(np.float16) if arr.dtype.kind == "f" else arr.astype(np.int8))
                return reply
        return reply

    return mod


@pytest.mark.parametrize("kind", ["nan", "shape", "dtype"])
def test_bad_client_reply_is_dropped_and_round_goes_on(tmp_path, kind):
    overrides = SMALL + ["clients_per_round=12", "strategy=plaintext", "model=mf"]
    res, _ = run_sim(tmp_path, overrides, client_mods=[_corrupt_user_zero(kind)])
    for r in res["records"]:
        assert r["dropped"] == 1 and r["clients"] == 11
    assert math.isfinite(res["final"]["final_test_rmse"])
