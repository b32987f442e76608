"""FedMF's metrics reach the server only as sums over >= min_users users (DESIGN.md, threat model).

The value audit runs FedMF in a real simulation with a ``RecordingGrid`` (the
server's view) and its plaintext twin ``distributed_mf`` with the same seed,
whose per-user replies give the true values to look for: each user's rated
count, test count, training loss of each round and test error sum. No scalar
of any received MetricRecord/ConfigRecord and no element of any received
float or integer array may equal one of them (ints exactly, floats within
1e-6 relative).

Left out of the value search, each for a stated reason: uint8 arrays
(ciphertexts, public keys, sealed boxes: bytes of uniformly distributed
group elements, every byte value occurs); ``items`` (uploaded item ids, the
protocol's content; PartText's *number* of ids is its documented size leak,
checked in test_server_views); registration replies (the node's partition
id is its identity); booleans (acks). Replies to ``query.fedmf_decrypt`` are
the permitted sums: the audit checks that they cover at least min_users users
and equal the twin's sums instead.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord

from tests.sim_utils import run_sim

BASE = ["+experiment=fedmf_small", "rounds=2", "train.eval_every=1", "train.ranking_negatives=20"]  # 40 items
SECURE = ["strategy=fedmf", "strategy.key_bits=1024"]
SKIPPED_ARRAYS = {"items"}


def _mode(mode: str) -> list[str]:
    return [f"strategy.mode={mode}"] + (["strategy.pad_to=20"] if mode == "padded" else [])


def _values(content) -> list[tuple[str, Any]]:
    """(field, value) for every audited scalar and array element of one received content."""
    out: list[tuple[str, Any]] = []
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            for key in record:
                arr = record[key].numpy()
                if key in SKIPPED_ARRAYS or arr.dtype == np.uint8:
                    continue
                if arr.dtype.kind in "fiu":
                    out.extend((f"{name}.{key}", v) for v in arr.reshape(-1).tolist())
        else:
            for key, value in record.items():
                values = value if isinstance(value, list) else [value]
                out.extend((f"{name}.{key}", v) for v in values
                           if isinstance(v, (int, float)) and not isinstance(v, bool))
    return out


def _matches(value: Any, ints: set[int], floats: list[float]) -> bool:
    if isinstance(value, int) and value in ints:
        return True
    if isinstance(value, float):
        return any(abs(value - t) <= 1e-6 * max(abs(t), 1e-12) for t in floats)
    return False


def _twin_secrets(plain_grid, split) -> tuple[set[int], list[float]]:
    """Per-user true values: rated and test counts (ints), training losses and test SSEs (floats)."""
    ints, floats = set(), []
    for u in range(split.n_users):
        ud = split.user(u)
        ints.update({len(ud.train_items), len(ud.test_items)})
    for t, _n, c in plain_grid.received:
        if t == "train.dmf_update":
            floats.append(float(c["metrics"]["loss"]))
            floats.append(float(c["metrics"]["loss"]) * int(c["metrics"]["n_ratings"]))
        elif t == "evaluate.mf":
            floats.append(float(c["eval"]["sse"]))
            if float(c["eval"]["ndcg"]) not in (0.0, 1.0):  # the ranking case's NDCG (hit/ranked are 0/1)
                floats.append(float(c["eval"]["ndcg"]))
    floats += [float(i) for i in ints]
    return ints, [f for f in floats if f != 0.0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["parttext", "fulltext", "padded"])
def test_fedmf_server_receives_no_per_user_metric_value(tmp_path, mode):
    from recdata.dataset import load_split
    from simulations.config import compose_config, to_app_config

    _, plain = run_sim(tmp_path / "p", BASE + ["strategy=distributed_mf"] + _mode(mode), record=True)
    res, secure = run_sim(tmp_path / "s", BASE + SECURE + _mode(mode), record=True)
    split = load_split(to_app_config(compose_config(BASE + SECURE + _mode(mode))))
    ints, floats = _twin_secrets(plain, split)

    # the audit is sensitive: the plaintext twin's view is full of these values
    twin_hits = [f for t, _n, c in plain.received if t != "query.register" for f, v in _values(c)
                 if _matches(v, ints, floats)]
    assert twin_hits

    leaks = []
    decrypt_replies = []
    for t, node, content in secure.received:
        if t == "query.register":
            continue
        if t == "query.fedmf_decrypt":
            decrypt_replies.append(content)
            continue
        leaks += [(t, f, v) for f, v in _values(content) if _matches(v, ints, floats)]
    assert not leaks, f"the FedMF server received per-user metric values: {leaks[:5]}"

    # the permitted sums: one per round and per evaluation, each over all 7 users, equal to the twin's sums
    assert len(decrypt_replies) == 4
    # training: the users' loss sum alone (no rating count); evaluation: [SSE, count, hit, ndcg, ranked]
    train_sums = [c["sums"] for c in decrypt_replies if len(c["sums"]["values"]) == 1]
    eval_sums = [c["sums"] for c in decrypt_replies if len(c["sums"]["values"]) == 5]
    assert len(train_sums) == len(eval_sums) == 2
    for sums in train_sums + eval_sums:
        assert sums["users"] == 7 >= 2
    n_test = sum(len(split.user(u).test_items) for u in range(split.n_users))
    assert [round(s["values"][1]) for s in eval_sums] == [n_test] * 2
    twin_losses = [r["train_loss"] for r in json.loads((tmp_path / "p" / "results.json").read_text())["records"]]
    for a, b in zip(twin_losses, [r["train_loss"] for r in res["records"]]):
        assert math.isclose(a, b, rel_tol=1e-6), (a, b)


@pytest.mark.slow
def test_fedmf_refuses_sums_over_fewer_than_min_users(tmp_path):
    """min_users above the round's 7 users: no aggregate is decrypted, the records say why."""
    res, grid = run_sim(tmp_path, BASE + SECURE + ["strategy.mode=parttext", "strategy.min_users=8"], record=True)
    assert not [t for t, _n, _c in grid.sent if t == "query.fedmf_decrypt"]
    for r in res["records"]:
        assert r["clients"] == 7 and r["train_loss"] is None and r["test_rmse"] is None
        assert "fewer than strategy.min_users=8" in r["train_metrics_refused"]
        assert "fewer than strategy.min_users=8" in r["eval_refused"]


def _keyed_user(min_users: int = 2):
    """A keyed user's Context and environment with a 1024-bit test key (no simulation needed)."""
    from flwr.app import Context, RecordDict

    from clients.environment import ClientEnv
    from clients.fedmf import PaillierKeyState
    from crypto.paillier import generate_key_bytes
    from schemas.config import AppConfig, FedMFConfig, ModelConfig

    cfg = AppConfig(strategy=FedMFConfig(key_bits=1024, min_users=min_users, mode="parttext"), model=ModelConfig(dim=4),
                    clients_per_round=5)
    env = ClientEnv(cfg=cfg, user=None, n_items=3, item_features=np.zeros((3, 0)), spec=None)
    n, p, q = generate_key_bytes(1024)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    context.state["paillier"] = PaillierKeyState("keyed", "run", n.tobytes(), p.tobytes(), q.tobytes()).to_record()
    return context, env


def _aggregate(context, env, per_user: list[list[float]]):
    from clients.fedmf import PaillierKeyState
    from schemas import fedmf as schema

    scheme = PaillierKeyState.from_record(context, ("keyed",)).crypto(env).scheme
    cts = scheme.encrypt_batch([schema.pack_metrics(v) for v in per_user])
    agg = cts[0]
    for c in cts[1:]:
        agg = scheme.add_encrypted(agg, c)
    return scheme.to_array([agg])


def test_decrypting_user_returns_only_sums_of_enough_users():
    from clients.fedmf import on_decrypt
    from schemas import fedmf as schema
    from schemas.validation import MessageError

    context, env = _keyed_user(min_users=2)
    agg = _aggregate(context, env, [[1.5], [2.25]])  # training: each user's loss alone
    reply = on_decrypt(schema.decrypt_message("train", 1, 2, agg), context, env)
    assert schema.parse_decrypt_reply(reply, "train", 2).tolist() == [3.75]
    single = _aggregate(context, env, [[1.5]])
    with pytest.raises(MessageError, match="fewer than strategy.min_users=2"):
        on_decrypt(schema.decrypt_message("train", 1, 1, single), context, env)
    with pytest.raises(MessageError, match="sums 1 users, the server says 2"):
        on_decrypt(schema.decrypt_message("train", 1, 2, single), context, env)


def test_client_state_checks_the_expected_stage():
    from clients.fedmf import AnnounceState, PaillierKeyState
    from schemas.validation import MessageError

    context, _env = _keyed_user()
    with pytest.raises(MessageError, match="needs one of \\('holder',\\)"):
        PaillierKeyState.from_record(context, ("holder",))
    with pytest.raises(MessageError, match="never announced"):
        AnnounceState.from_record(context)


def test_upload_encryption_takes_obfuscators_precomputed_between_messages():
    """After a refill, a new device object (as after a virtual client restart) encrypts without any r^n."""
    from types import SimpleNamespace

    from clients.fedmf import PaillierKeyState, _attach_pool, _refill_pool, upload_ciphertexts

    context, env = _keyed_user()
    env = type(env)(cfg=env.cfg, user=SimpleNamespace(train_items=np.array([0, 2])), n_items=3,
                    item_features=env.item_features, spec=None)
    key = PaillierKeyState.from_record(context, ("keyed",))
    first = key.crypto(env)
    _refill_pool(context, env, first, key.n)
    need = upload_ciphertexts(env, first.cts_per_row)
    assert need == 2 * first.cts_per_row + 2  # PartText: two rated rows, plus the two metric ciphertexts
    fresh = key.crypto(env)  # nothing survives in Python objects: the pool comes from Context.state
    _attach_pool(context, fresh, key.n)
    fresh.encrypt_gradient_rows(np.zeros((2, 4)))
    assert fresh.scheme.pool.computed_on_demand == 0 and len(fresh.scheme.pool) == 2


def test_key_delivery_fields_are_checked_and_a_non_prime_key_is_refused():
    """The key-distribution handler reads every field through the schema checks (a missing or misshapen
    field, or a float user id, is the message's error, not a KeyError / IndexError / bare ValueError), and a
    delivered (p, q) must be two distinct primes: 15 x 21 = 315 factors n but made PaillierPrivate divide by zero."""
    from clients.fedmf import PaillierKeyState, on_key_delivery
    from crypto.paillier import check_key_bytes
    from schemas import fedmf as schema
    from schemas.validation import MessageError

    holder, env = _keyed_user()
    key = PaillierKeyState.from_record(holder, ("keyed",))
    holder.state["paillier"] = PaillierKeyState("holder", "run", key.n, key.p, key.q).to_record()
    n_b = np.frombuffer(key.n, dtype=np.uint8)
    pubs = np.full((1, 32), 9, np.uint8)
    no_n = schema.key_message("announce", "run", n_b)
    del no_n["data"]["n"]
    bad = {
        "n missing": no_n,
        "n short": schema.key_message("announce", "run", n_b[:100]),
        "users missing": schema.key_message("seal", "run", n_b, pubs=pubs),
        "pubs fewer than users": schema.key_message("seal", "run", n_b, users=np.arange(2), pubs=pubs),
        "users float": schema.key_message("seal", "run", n_b, users=np.array([np.nan]), pubs=pubs),
    }
    for name, msg in bad.items():
        with pytest.raises(MessageError):
            on_key_delivery(msg, holder, env)
    as_bytes = lambda *vs: [np.frombuffer(int(v).to_bytes(2, "big"), dtype=np.uint8) for v in vs]  # noqa: E731
    with pytest.raises(ValueError, match="two distinct primes"):
        check_key_bytes(*as_bytes(315, 15, 21))
    check_key_bytes(*as_bytes(323, 17, 19))
