"""``engine=batched`` for FedMF's protocols (``distributed_mf``, ``fedmf``) against ``engine=flower``.

The batched engine trains a round's users in one call of the step a Flower
client runs as a batch of one, and applies each protocol's server arithmetic
with the functions its Flower path uses. Checked here: the batched step and the
server update on hand-computable cases; that the plaintext image the engine
keeps for ``fedmf`` (fixed-point integers, summed) is exactly what real Paillier
ciphertexts decrypt to; and, on tiny synthetic data, that an 8-round run gives
the Flower path's test RMSE and its measured bytes per client.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from crypto.paillier import generate_keypair
from engine.mf_protocols import entries_of
from models.fedmf_mf import MFHyper, apply_gradient_sum, squared_error, squared_error_batch, user_step, user_step_batch
from simulations.config import compose_config, to_app_config
from simulations.run import simulate
from tests.sim_utils import SMALL, run_sim

HP = MFHyper(lr=0.1, reg_u=0.5, reg_v=0.25)


def test_user_step_batch_by_hand_and_a_user_without_ratings():
    U = np.array([[1.0, 0.0], [0.5, -0.5]])
    U_new, grads, loss = user_step_batch(U, np.array([[1.0, 2.0]]), np.array([0]), np.array([3.0]), HP)
    # user 0: e = 3 - 1 = 2; grad_u = -2 v e + 2 (0.5) u = [-3, -8]; grad_v = -2 u e + 2 (0.25) v = [-3.5, 1]
    assert np.allclose(U_new[0], [1.3, 0.8]) and np.allclose(grads, [[-0.35, 0.1]]) and loss[0] == 4.0
    # user 1 has no ratings: only the regulariser moves u, and its loss is 0 (not NaN)
    assert np.allclose(U_new[1], 0.9 * U[1]) and loss[1] == 0.0


def test_a_user_in_a_batch_gets_what_it_gets_alone():
    rng = np.random.default_rng(3)
    counts = np.array([3, 1, 4])
    U, seg = rng.normal(size=(3, 5)), np.repeat(np.arange(3), counts)
    v_rows, ratings = rng.normal(size=(counts.sum(), 5)), rng.uniform(1, 5, counts.sum())
    U_new, grads, loss = user_step_batch(U, v_rows, seg, ratings, HP)
    sse, count = squared_error_batch(U, v_rows, seg, ratings)
    for b in range(3):
        mine = seg == b
        u_b, g_b, l_b = user_step(U[b], v_rows[mine], ratings[mine], HP)
        assert np.array_equal(u_b, U_new[b]) and np.array_equal(g_b, grads[mine]) and l_b == loss[b]
        assert squared_error(U[b], v_rows[mine], ratings[mine]) == (sse[b], count[b])


def test_entries_of_gathers_users_in_the_given_order():
    ptr = np.array([0, 2, 2, 5])  # user 0: entries 0,1; user 1: none; user 2: 2,3,4
    idx, seg = entries_of(ptr, np.array([2, 1, 0]))
    assert idx.tolist() == [2, 3, 4, 0, 1] and seg.tolist() == [0, 0, 0, 2, 2]


def test_apply_gradient_sum_subtracts_each_items_summed_rows():
    items, rows = np.array([2, 0, 2]), np.array([[1, 1], [2, 2], [3, 3]])
    assert apply_gradient_sum(np.zeros((3, 2), dtype=np.int64), items, rows).tolist() == [[-2, -2], [0, 0], [-4, -4]]
    assert np.allclose(apply_gradient_sum(np.ones((3, 2)), items, rows * 0.5), [[0, 0], [1, 1], [-1, -1]])


def test_the_engines_fedmf_integers_are_what_the_ciphertexts_decrypt_to():
    """Encrypt V, apply three users' encrypted uploads (one FullText-style with zero rows) with the server's
    homomorphic update, decrypt; the engine's arithmetic on the codec's integers gives the same floats."""
    from crypto.packed_matrix import PackedMatrixPrivate, PackedMatrixPublic

    pub, priv = generate_keypair(512, allow_insecure_test_key=True)
    params = dict(dim=6, n_rows=5, frac_bits=32, value_bound=64.0, max_summands=3)
    server, user = PackedMatrixPublic(pub.n, **params), PackedMatrixPrivate(pub.n, priv.p, priv.q, **params)
    codec = server.codec
    assert codec.encode_entries(np.zeros(4)).tolist() == [0, 0, 0, 0]  # zero rows change no sum
    rng = np.random.default_rng(7)
    V = rng.normal(0, 0.1, size=(5, 6))
    uploads = [(np.array([0, 3]), rng.normal(0, 0.01, size=(2, 6))), (np.array([3]), rng.normal(0, 0.01, size=(1, 6))),
               (np.arange(5), np.vstack([np.zeros((4, 6)), rng.normal(0, 0.01, size=(1, 6))]))]
    cv = server.encrypt_matrix(V)
    cv = server.apply_updates(cv, [(it, server.from_bytes(user.encrypt_gradient_rows(g))) for it, g in uploads])
    flower = user.decrypt_matrix(server.to_bytes(cv))
    items = np.concatenate([it for it, _ in uploads])
    encoded = np.concatenate([codec.encode_entries(g) for _, g in uploads])
    engine = codec.decode_entries(apply_gradient_sum(codec.encode_entries(V), items, encoded))
    assert np.array_equal(flower, engine)
    plain = apply_gradient_sum(V, items, np.concatenate([g for _, g in uploads]))
    assert np.allclose(engine, plain, atol=1e-8) and not np.allclose(engine, V)


# ---------------------------------------------------------------- twins: batched vs Flower
BASE = [o for o in SMALL if not o.startswith(("rounds=", "train.eval_every="))] + \
    ["model=mf", "rounds=8", "train.eval_every=4"]
FEDMF = ["strategy=fedmf", "strategy.key_bits=1024"]  # the smallest key the config allows
CASES = {
    "distributed_mf-parttext": ["strategy=distributed_mf", "strategy.mode=parttext"],
    "distributed_mf-padded": ["strategy=distributed_mf", "strategy.mode=padded", "strategy.pad_to=12"],
    "fedmf-parttext": [*FEDMF, "strategy.mode=parttext"],
    "fedmf-fulltext": [*FEDMF, "strategy.mode=fulltext"],
    # padded trains as parttext (its extra rows are zeros); a short run checks its sizes and numbers
    "fedmf-padded": [*FEDMF, "strategy.mode=padded", "strategy.pad_to=12", "rounds=4", "train.eval_every=2"],
    # no training-loss sum: both engines report none, and neither meters a decryption of it
    "fedmf-no-loss": [*FEDMF, "strategy.mode=parttext", "train.release_loss=false", "rounds=4", "train.eval_every=2"],
}


def _batched(tmp_path, overrides: list[str]) -> dict:
    cfg = to_app_config(compose_config([*overrides, "engine=batched"]))
    return simulate(cfg, str(tmp_path))


@pytest.mark.parametrize("case", list(CASES))
def test_batched_engine_reproduces_the_flower_run(tmp_path, case):
    """Same seed and config: the same test RMSE at every evaluation (8 rounds; fedmf-padded 4) and, for
    round 1 (no evaluation in it), the computed bytes per client within 1% of those Flower's meter measured."""
    overrides = BASE + CASES[case]
    cfg = to_app_config(compose_config(overrides))
    flower = run_sim(tmp_path / "flower", overrides)[0]["records"]
    batched = _batched(tmp_path / "batched", overrides)["records"]
    assert [r["round"] for r in batched] == [r["round"] for r in flower] == list(range(1, cfg.rounds + 1))
    rmse_f = [r["test_rmse"] for r in flower if r["test_rmse"] is not None]
    rmse_b = [r["test_rmse"] for r in batched if r["test_rmse"] is not None]
    assert len(rmse_f) == len(rmse_b) == 2 and all(math.isfinite(x) for x in rmse_b)
    gaps = [abs(a - b) for a, b in zip(rmse_f, rmse_b)]
    print(f"{case}: RMSE flower {rmse_f} batched {rmse_b} gaps {gaps}")
    assert max(gaps) <= 1e-5
    if "train.release_loss=false" in overrides:
        assert all(a["train_loss"] is None and b["train_loss"] is None for a, b in zip(flower, batched))
    else:
        assert all(abs(a["train_loss"] - b["train_loss"]) <= 1e-6 * max(1.0, abs(a["train_loss"]))
                   for a, b in zip(flower, batched))
    f1, b1 = flower[0], batched[0]
    assert b1["bytes_source"] == "computed" and b1["engine"] == "batched"
    for key in ("bytes_up_per_client", "bytes_down_per_client"):
        assert abs(b1[key] - f1[key]) <= 0.01 * f1[key], (key, f1[key], b1[key])
