"""Plaintext gradients and metrics a server receives are bounded (schemas.validation), not only finite.

A float32 gradient near 3.4e38 is finite, yet one such user made the server's
float32 sum inf and its Adam step NaN for every user. The bound is checked where
a reply is parsed (plaintext, DP-FedRec, FedMF's plaintext twin), and for the
compressed baselines on the decoded update, whose fields can each be small and
their product overflow. A user beyond it is left out with the reason; the rest
train on. Per-user metrics (loss, test error sum, seconds) are summed in float64, where one finite 1e308
made a round's sum inf: they are bounded by MAX_METRIC.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.compression import make_codec
from schemas import common, compressed, distributed_mf, dp_fedrec, plaintext, two_server
from schemas.validation import MAX_GRADIENT, MAX_METRIC, MessageError
from tests.sim_utils import SMALL, run_sim
from tests.test_secure_bad_inputs import _edit_array, _faults

ABOVE = float(np.nextafter(np.float32(MAX_GRADIENT), np.float32(np.inf)))  # the next float32 above the bound


def _plain_reply(rows: np.ndarray, dense: np.ndarray):
    return plaintext.update_reply(rows, dense, 1.0, len(rows), 0.1)


@pytest.mark.parametrize("field", ["rows", "dense"])
def test_plaintext_gradient_at_the_bound_parses_and_above_it_is_refused(field):
    rows, dense = np.ones((3, 4), np.float32), np.ones(5, np.float32)
    at = {"rows": rows.copy(), "dense": dense.copy()}
    at[field].flat[1] = -MAX_GRADIENT
    up = plaintext.parse_update_reply(_plain_reply(at["rows"], at["dense"]), 3, 4, 5)
    assert np.abs(getattr(up, "row_grads" if field == "rows" else "dense_grad")).max() == MAX_GRADIENT
    above = {"rows": rows.copy(), "dense": dense.copy()}
    above[field].flat[1] = ABOVE
    with pytest.raises(MessageError, match=f"'{field}' has a value of magnitude"):
        plaintext.parse_update_reply(_plain_reply(above["rows"], above["dense"]), 3, 4, 5)
    with pytest.raises(MessageError, match="infinite"):  # NaN passes a comparison, so it is checked apart
        plaintext.parse_update_reply(_plain_reply(rows, np.full(5, np.nan, np.float32)), 3, 4, 5)


def test_dp_fedrec_and_distributed_mf_uploads_are_bounded():
    table, dense = np.ones((6, 4), np.float32), np.ones(5, np.float32)
    table[2, 3] = 3e38  # finite in float32
    with pytest.raises(MessageError, match="magnitude"):
        dp_fedrec.parse_update_reply(dp_fedrec.update_reply(table, dense, None), 6, 4, 5)
    grads = np.ones((2, 4))
    ok = distributed_mf.parse_update_reply(distributed_mf.update_reply(np.array([1, 3]), grads, 1.0, 2, 0.1), 6, 4, 2)
    assert np.array_equal(ok.grads, grads)
    grads[1, 0] = 1e300
    with pytest.raises(MessageError, match="magnitude"):
        distributed_mf.parse_update_reply(distributed_mf.update_reply(np.array([1, 3]), grads, 1.0, 2, 0.1), 6, 4, 2)


SHAPE = (30, 6)


@pytest.mark.parametrize("codec_name,rank,field,value", [
    ("bit8", None, "scale", 4 * MAX_GRADIENT),  # the decoded update is codebook values (|c| <= 1) times the scale
    ("tern", None, "scale", 4 * MAX_GRADIENT),
    ("svd", 2, "us", 2.0 ** 30),                # each factor far below the bound, their product (2**60) above it
    ("colr", 2, "coef", 4 * MAX_GRADIENT),
])
def test_a_compressed_update_is_bounded_after_decoding(codec_name, rank, field, value):
    codec = make_codec(codec_name, rank, 3)
    rows = np.random.default_rng(0).standard_normal((4, SHAPE[1])).astype(np.float32)
    payload = compressed.encode_update(codec, SHAPE[0], np.array([1, 5, 7, 29]), rows, np.random.default_rng(1), 2)
    good = compressed.decoded_update(codec, payload, SHAPE, 2)
    assert np.array_equal(good, codec.decompress(payload, SHAPE, 2))  # what the server sums is the codec's decode
    payload[field] = np.full_like(payload[field], value)
    if codec_name == "svd":
        payload["vt"] = np.full_like(payload["vt"], value)
    parsed = compressed.parse_update_reply(compressed.update_reply(payload, np.ones(3, np.float32), 1.0, 4, 0.1),
                                           codec_name, rank, SHAPE[0], SHAPE[1], 3)  # every field is fine alone
    with pytest.raises(MessageError, match=f"{codec_name} update' has a value of magnitude"):
        compressed.decoded_update(codec, parsed.payload, SHAPE, 2)


def _times(factor: float):
    return lambda a: (a.astype(np.float64) * factor).astype(a.dtype)


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "svd"])
def test_a_huge_finite_gradient_leaves_its_user_out_and_the_model_stays_finite(tmp_path, compression):
    """One user scales its upload by 1e30 (finite float32): it is dropped naming the bound, the other eleven
    train, and the model evaluates to a finite RMSE (before the bound it was summed: Adam's second moment of
    the coordinates it touched went to inf in float32, freezing them for the rest of the run)."""
    if compression == "none":
        table = {0: ("train.plain_update", _edit_array("grads", "rows", _times(1e30)))}
    else:
        table = {0: ("train.compressed_update", _edit_array("payload", "us", _times(1e30)))}
    overrides = SMALL + ["strategy=plaintext", "model=mf", f"strategy.compression={compression}",
                         "strategy.compression_rank=2", "rounds=1", "clients_per_round=12"]
    res, _ = run_sim(tmp_path, overrides, client_mods=[_faults(table)])
    (r,) = res["records"]
    assert r["clients"] == 11 and r["dropped"] == 1 and "magnitude" in r["dropped_users"]["0"], r["dropped_users"]
    assert math.isfinite(res["final"]["final_test_rmse"])


def test_per_user_metrics_are_bounded_so_their_float64_sums_stay_finite():
    assert common.parse_train_metrics(plaintext.update_reply(np.ones((1, 2)), np.ones(1), MAX_METRIC, 3, 0.1))[0] \
        == MAX_METRIC
    with pytest.raises(MessageError, match="'loss'=1e\\+300 is above"):
        common.parse_train_metrics(plaintext.update_reply(np.ones((1, 2)), np.ones(1), 1e300, 3, 0.1))
    with pytest.raises(MessageError, match="client_seconds"):
        common.parse_train_metrics(plaintext.update_reply(np.ones((1, 2)), np.ones(1), 1.0, 3, 1e300))
    assert math.isinf(sum([1e308, 1e308]))  # what a round's sum of two such values was
    with pytest.raises(MessageError, match="'sse'"):
        common.parse_evaluation_reply(common.evaluation_reply(1e300, 4, 0.1))
    with pytest.raises(MessageError, match="client_seconds"):
        two_server.parse_telemetry(_telemetry(1e300))


def _telemetry(seconds: float):
    from flwr.app import RecordDict

    return RecordDict({"telemetry": two_server.telemetry_record(seconds)})
