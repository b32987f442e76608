"""Differential privacy on both engines (SecEmb Appendix G; DP-FedRec for Figure 7).

One Flower SecEmb run with central DP checks the per-round epsilon against a
PrivacyLedger fed the same events; batched-engine runs (about a second each)
check that noise is really added (fresh CSPRNG noise: same seed, different
runs) and that sigma = 0 leaves the clipped run deterministic; the DP-FedRec
client's upload is checked to cover every item row.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from clients import dp_fedrec as dp_client
from clients.environment import client_env
from schemas import dp_fedrec as dp_schema
from schemas.validation import MessageError
from simulations.config import compose_config, to_app_config
from simulations.run import simulate_batched
from strategies.privacy import PrivacyLedger
from tests.sim_utils import SMALL, run_sim
from tests.test_secure_protocols import FEATURES

BASE = [*SMALL, *FEATURES]
CENTRAL = ["strategy=secemb", "dp.enabled=true", "dp.clip=0.5"]
LOCAL = ["strategy=plaintext", "dp.enabled=true", "dp.mode=local", "dp.noise_multiplier=1.0"]


def _cfg(overrides):
    return to_app_config(compose_config([*BASE, *overrides]))


def _batched(tmp_path: Path, *overrides: str) -> dict:
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    simulate_batched(_cfg([*overrides, "engine=batched"]), str(out))
    return json.loads((out / "results.json").read_text())


def _curve(res: dict) -> list[tuple[float | None, float | None]]:
    """(train loss, test RMSE) per round; DP-FedRec's server gets no loss, so its curves differ in RMSE."""
    return [(r["train_loss"], r["test_rmse"]) for r in res["records"]]


def test_flower_secemb_epsilon_per_round_is_the_ledgers(tmp_path):
    res, _ = run_sim(tmp_path, [*BASE, *CENTRAL, "dp.noise_multiplier=1.2", "dp.sampling=without_replacement"])
    cfg = _cfg([*CENTRAL, "dp.noise_multiplier=1.2", "dp.sampling=without_replacement"])
    ledger = PrivacyLedger(1.2, 12, cfg.dp.delta, "without_replacement")
    for rec in res["records"]:
        ledger.record_round(cfg.clients_per_round)
        assert rec["epsilon"] == pytest.approx(ledger.epsilon(), rel=1e-12)
        assert rec["noise_multiplier"] == 1.2
        assert math.isfinite(rec["test_rmse"])
    assert res["records"][1]["epsilon"] > res["records"][0]["epsilon"] > 0
    assert res["final"]["dp"]["epsilon"] == res["records"][-1]["epsilon"]
    assert res["final"]["dp"]["mode"] == "central" and res["final"]["dp"]["rounds_accounted"] == 2


@pytest.mark.parametrize("protocol", [CENTRAL, ["strategy=secfedrec", *CENTRAL[1:]], LOCAL],
                         ids=["secemb", "secfedrec", "dp_fedrec"])
def test_batched_noise_is_fresh_and_sigma_zero_is_deterministic(tmp_path, protocol):
    noisy = [_batched(tmp_path, *protocol, "dp.noise_multiplier=1.0") for _ in range(2)]
    assert _curve(noisy[0]) != _curve(noisy[1])  # same seed: only the CSPRNG noise differs
    quiet = [_batched(tmp_path, *protocol, "dp.noise_multiplier=0.0") for _ in range(2)]
    assert _curve(quiet[0]) == _curve(quiet[1])  # sigma = 0: clipping only, exactly reproducible
    assert quiet[0]["records"][0]["epsilon"] == math.inf
    assert noisy[0]["final"]["dp"]["epsilon"] > 0 and all(math.isfinite(r) for _, r in _curve(noisy[0]) if r)


def test_sigma_zero_central_run_trains_with_the_clipped_step(tmp_path):
    """sigma = 0 secemb (clipped, no noise) departs from the non-DP run: the upload is the clipped one (the
    clipped step itself is checked against its definition in test_dp_training.py). Central DP runs record no
    train loss: the users release none (the servers' noise does not cover the metric slots)."""
    quiet = _batched(tmp_path, *CENTRAL, "dp.clip=0.01", "dp.noise_multiplier=0.0")
    plain = _batched(tmp_path, "strategy=secemb")
    assert all(loss is None for loss, _ in _curve(quiet)) and all(loss > 0 for loss, _ in _curve(plain))
    assert [rmse for _, rmse in _curve(quiet)] != [rmse for _, rmse in _curve(plain)]


def test_dp_fedrec_upload_covers_every_item_row():
    cfg = _cfg([*LOCAL, "dp.noise_multiplier=0.5"])
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 3}, state=RecordDict(), run_config={})
    env = client_env(cfg, context)
    table = np.zeros((env.n_items, env.spec.row_dim), np.float32)
    dense = np.zeros(env.spec.dense_size, np.float32)
    reply = dp_client.on_update(dp_schema.update_message(1, table, dense, 0.5), context, env)
    update = dp_schema.parse_update_reply(reply, env.n_items, env.spec.row_dim, env.spec.dense_size)
    assert update.row_grads.shape == (env.n_items, env.spec.row_dim)
    assert (np.abs(update.row_grads).sum(1) > 0).all()  # noise on every row, rated or not
    rated = np.unique(env.user.train_items)
    with pytest.raises(MessageError):  # a reply with only the rated rows is refused
        sparse = dp_schema.update_reply(update.row_grads[rated], update.dense_grad, None)
        dp_schema.parse_update_reply(sparse, env.n_items, env.spec.row_dim, env.spec.dense_size)
    # nothing per-user beside the noised gradients: no loss, no rating count, no seconds without telemetry
    assert set(reply.keys()) == {"grads"} and set(reply["grads"].keys()) == {"rows", "dense"}
    assert update.seconds is None
    # a server offering less noise than the user's own dp.noise_multiplier does not lower it
    assert dp_client.noise_multiplier_of(env, 0.0) == 0.5


def test_each_server_noises_its_gradient_share_not_the_metric_slots():
    from twoserver.dp_noise import add_noise_share
    from twoserver.operations import Server1
    sparse, dense = np.zeros((5, 3), np.uint64), np.zeros(6, np.uint64)  # dense: 4 gradients + 2 metric slots
    out = Server1()._noised({"noise_std": 2.0, "frac_bits": 16, "dense_size": 6}, sparse, dense)
    signed = out["dense"].view(np.int64) / 2.0 ** 16
    assert (out["sparse"] != 0).all() and (signed[:4] != 0).all() and (out["dense"][4:] == 0).all()
    assert np.abs(signed[:4]).max() < 2.0 * 8  # ring-encoded Gaussian of std 2, two's complement
    same = Server1()._noised({"dense_size": 6}, sparse, dense)  # no DP requested: unchanged
    assert not same["sparse"].any() and not same["dense"].any()
    a, b = add_noise_share(sparse, 1.0, 16), add_noise_share(sparse, 1.0, 16)
    assert not np.array_equal(a, b)  # fresh CSPRNG noise every call


def test_server1_noise_floor_is_its_own():
    """Server 1's operator sets the least noise it adds: server 0 asking for less (or for none) does not lower it."""
    from schemas.wire import WireError, decode_frame, encode_frame
    from twoserver.operations import Server1
    sparse, dense = np.zeros((400, 5), np.uint64), np.zeros(6, np.uint64)
    floored = Server1(min_noise_std=3.0)
    assert floored.noise_std({"noise_std": 0.5, "frac_bits": 16}) == 3.0
    assert floored.noise_std({"noise_std": 5.0, "frac_bits": 16}) == 5.0
    out = floored._noised({"noise_std": 0.5, "frac_bits": 16, "dense_size": 6}, sparse, dense)
    std = (out["sparse"].view(np.int64) / 2.0 ** 16).std()
    assert 2.7 < std < 3.3  # 2,000 draws of the floor's N(0, 9), not of the requested N(0, 0.25)
    for meta in ({}, {"noise_std": 1.0}, {"frac_bits": 16}):
        with pytest.raises(WireError, match="DP noise"):
            floored.noise_std(meta)
    # the scale is the operator's too: frac_bits 0 would encode the same std 2^16 times smaller in the ring
    with pytest.raises(WireError, match="fraction bits"):
        floored.noise_std({"noise_std": 1.0, "frac_bits": 0})
    # and which entries are metric slots server 1 works out itself (a dp_slots of 0 from server 0 meant no noise)
    from crypto.sealed import seal
    from schemas import secfedrec as sfr
    from schemas.two_server import context as box_context
    boxes = {f"box_{u}": np.frombuffer(seal(floored.public_key, sfr.sealed_share_bytes(np.zeros(6, np.uint64)),
                                            box_context("q", 1, u, "secfedrec")), np.uint8) for u in (1, 2)}
    frame = encode_frame("sum_shares", {"run": "q", "round": 1, "users": [1, 2], "shape": [6], "ring_bits": 64,
                                        "noise_std": 0.5, "frac_bits": 16, "dp_slots": 0}, boxes)
    op, meta, arrays = decode_frame(floored.handle(frame))
    assert op == "ok" and meta["users"] == [1, 2]
    assert (arrays["sum"][:4] != 0).all() and (arrays["sum"][4:] == 0).all()
    # through the service's dispatch: a sum without DP parameters is answered with an error frame
    frame = encode_frame("sum_shares", {"run": "r", "round": 1, "users": [1, 2], "shape": [2], "ring_bits": 64},
                         {"box_1": np.zeros(200, np.uint8), "box_2": np.zeros(200, np.uint8)})
    op, meta, _ = decode_frame(floored.handle(frame))
    assert op == "error" and "DP noise" in meta["reason"]
    assert Server1().noise_std({}) == 0.0  # no floor, no DP asked: none added
    with pytest.raises(ValueError):
        Server1(min_noise_std=float("nan"))


def test_dp_figures_keeps_runs_of_different_lengths_apart(tmp_path, capsys):
    """Figure 6 pools runs from several folders; runs of one model and clients per round but different
    rounds are different curves (and their loss is against the no-DP run of the same length)."""
    from benchmarks import dp_figures

    def run(rounds, eps, seed, rmse):
        return {"model": "ncf", "protocol": "secemb", "clients": 500, "target_epsilon": eps, "seed": seed,
                "rounds": rounds, "epsilon": eps, "noise_multiplier": 1.0, "test_rmse": rmse, "seconds": 1.0}

    inf = float("inf")
    runs = [run(378, inf, 0, 1.0), run(378, 8.0, 0, 1.2), run(943, inf, 0, 0.9), run(943, 8.0, 0, 0.99),
            run(943, 8.0, 1, 1.01)]
    dp_figures.report(runs, 500, "6", tmp_path)
    points = {(p["rounds"], p["target_epsilon"]): p for p in dp_figures._mean_by(runs, dp_figures.POINT_KEYS)}
    assert points[(943, 8.0)]["test_rmse"] == pytest.approx(1.0) and points[(943, 8.0)]["seeds"] == 2
    assert points[(378, 8.0)]["test_rmse"] == pytest.approx(1.2)
    table = capsys.readouterr().out
    assert "+20.00%" in table and "+11.11%" in table  # 1.2 / 1.0 and 1.0 / 0.9
    assert (tmp_path / "fig6_dp_secemb.png").stat().st_size > 0
    assert dp_figures._curve_label({"model": "ncf", "clients": 500, "rounds": 943}) == "500 clients/round, 943 rounds"
    with pytest.raises(ValueError, match="seed 1 appears twice"):  # one run pooled from two folders
        dp_figures.report([*runs, run(943, 8.0, 1, 1.01)], 500, "6", tmp_path)
    with pytest.raises(SystemExit):  # refused before any training, not after it
        dp_figures.main(["--seeds", "0", "0", "--out", str(tmp_path)])
    assert "--seeds must be distinct" in capsys.readouterr().err
