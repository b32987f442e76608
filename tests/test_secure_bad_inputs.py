"""Bad client messages in the secure protocols: the user is left out, the round goes on, state stays sound.

Faults are injected on chosen users' devices with Flower client mods, one
kind of fault per user, all in one simulation; the server, server 1 and the
other users run unchanged. Each faulty user must be dropped with a reason
naming its problem, and the others must keep training.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array

from tests.sim_utils import SMALL, run_entry_sim, run_sim

pytestmark = pytest.mark.slow


def _edit_array(record: str, key: str, edit):
    def corrupt(msg, context, call_next):
        reply = call_next(msg, context)
        arr = reply.content[record][key].numpy().copy()
        reply.content[record][key] = Array(np.ascontiguousarray(edit(arr)))
        return reply

    return corrupt


def _vanish(msg, context, call_next):
    raise RuntimeError("device went offline between the two phases")


def _faults(table: dict[int, tuple[str, object]]):
    """A client mod applying ``table[user] = (message type, fault)`` on that user's device."""

    def mod(msg, context, call_next):
        entry = table.get(context.node_config.get("partition-id"))
        if entry and msg.metadata.message_type == entry[0]:
            return entry[1](msg, context, call_next)
        return call_next(msg, context)

    return mod


def _flip(a):
    a[-1] ^= 1
    return a


def _duplicate_first(a):
    a[1] = a[0]
    return a


def _zero_first_ciphertext(a):
    a[0, 0] = 0
    return a


SECEMB_FAULTS = {
    0: ("query.secemb_retrieve", _edit_array("keys", "k0_cw_seeds", lambda a: a[:, :-1]), "depth"),
    1: ("query.secemb_retrieve", _edit_array("keys", "box", _flip), "authentication"),
    2: ("train.secemb_upload", _edit_array("upload", "cw", lambda a: a[:-1]), "'cw' has shape"),
    3: ("train.secemb_upload", _edit_array("upload", "dense0", lambda a: a.astype(np.uint64)), "dtype"),
    4: ("train.secemb_upload", _edit_array("upload", "box", _flip), "authentication"),
    5: ("train.secemb_upload", _vanish, "client error"),
}


def test_secemb_leaves_out_each_bad_user_and_trains_the_rest(tmp_path):
    table = {u: (t, f) for u, (t, f, _) in SECEMB_FAULTS.items()}
    overrides = SMALL + ["strategy=secemb", "model=mf", "clients_per_round=12", "strategy.m_prime=6", "rounds=2"]
    res, _ = run_sim(tmp_path, overrides, client_mods=[_faults(table)])
    for r in res["records"]:
        assert r["clients"] == 6 and r["dropped"] == 6
        for user, (_t, _f, needle) in SECEMB_FAULTS.items():
            assert needle in r["dropped_users"][str(user)], (user, r["dropped_users"].get(str(user)))
    assert math.isfinite(res["final"]["final_test_rmse"]) and res["records"][-1]["eval_clients"] == 12


def test_secemb_users_refuse_an_unpinned_server1_key_and_the_round_is_refused(tmp_path):
    """A trust anchor that does not match server 1's key: every user refuses, so no aggregate reaches
    min_users; training and evaluation are refused and logged, the model is not updated, the run ends."""
    overrides = SMALL + ["strategy=secemb", "model=mf", "strategy.m_prime=6", "rounds=1",
                         "strategy.server1_fingerprint=" + "0" * 64]
    res, _ = run_sim(tmp_path, overrides)
    (r,) = res["records"]
    assert r["train_loss"] is None and "min_users" in r["refused"]
    assert r["dropped_users"] and all("trust anchor" in why for why in r["dropped_users"].values())
    assert r["test_rmse"] is None and "min_users" in r["eval_refused"]


def test_a_secure_count_every_user_refuses_stops_the_run_naming_the_users_reason(tmp_path):
    """With m' from the secure count (strategy.m_prime unset) the same wrong trust anchor stops the run before
    round 1, in one line that carries the users' refusal: 'set strategy.m_prime' alone would not fix it."""
    overrides = SMALL + ["strategy=secemb", "model=mf", "rounds=1", "strategy.server1_fingerprint=" + "0" * 64]
    error = run_entry_sim(tmp_path, overrides).get("error", "")
    assert error.startswith("cannot derive m' securely: count sum over 0 users refused"), error
    assert "12 users failed; 12 of them:" in error and "trust anchor" in error, error
    assert not (tmp_path / "records.jsonl").exists() or not (tmp_path / "records.jsonl").read_text()


FEDMF = ["+experiment=fedmf_small", "strategy=fedmf", "strategy.key_bits=1024", "rounds=2", "train.eval_every=1",
         "strategy.mode=fulltext"]
FEDMF_FAULTS = {
    3: ("train.fedmf_update", _edit_array("grad", "cts", _zero_first_ciphertext), "outside Z*"),
    4: ("train.fedmf_update", _edit_array("grad", "cts", lambda a: a[:-1]), "'cts' has shape"),
    5: ("train.fedmf_update", _edit_array("grad", "items", _duplicate_first), "not unique"),
    6: ("train.fedmf_update", _edit_array("metric", "ct", lambda a: a[:, :-1]), "'ct' has shape"),
}


def test_fedmf_bad_uploads_are_left_out_and_the_encrypted_matrix_stays_sound(tmp_path):
    table = {u: (t, f) for u, (t, f, _) in FEDMF_FAULTS.items()}
    res, _ = run_sim(tmp_path, FEDMF, client_mods=[_faults(table)])
    for r in res["records"]:
        assert r["clients"] == 3 and r["dropped"] == 4
        for user, (_t, _f, needle) in FEDMF_FAULTS.items():
            assert needle in r["dropped_users"][str(user)], (user, r["dropped_users"].get(str(user)))
    # every user still decrypts C_V and evaluates: the matrix was not corrupted
    assert res["records"][-1]["eval_clients"] == 7 and math.isfinite(res["final"]["final_test_rmse"])


def test_key_holder_boxes_that_do_not_open_leave_users_out(tmp_path):
    """The key holder answers the seal stage with garbage: nobody else gets the key, training goes on."""
    bad_seal = _edit_array("boxes", "boxes", lambda a: a ^ 0x5A)

    def mod(msg, context, call_next):
        if msg.metadata.message_type == "query.paillier_key" and "paillier" in context.state \
                and msg.content["cfg"]["stage"] == "seal":
            return bad_seal(msg, context, call_next)
        return call_next(msg, context)

    res, _ = run_sim(tmp_path, FEDMF, client_mods=[mod])
    assert res["final"]["keyed_users"] == 1
    for r in res["records"]:
        assert r["clients"] == 1 and r["dropped"] == 6
        assert all("never received the Paillier key" in why for why in r["dropped_users"].values())
