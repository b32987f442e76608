"""Bad client messages in the secure protocols: the user is left out, the round goes on, state stays sound.

Faults are injected on user 0's device with Flower client mods; everything
else (server, server 1, other users) runs unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array

from tests.sim_utils import SMALL, run_sim

pytestmark = pytest.mark.slow


def _on_user(user: int, msg_type: str, corrupt):
    def mod(msg, context, call_next):
        if context.node_config.get("partition-id") == user and msg.metadata.message_type == msg_type:
            return corrupt(msg, context, call_next)
        return call_next(msg, context)

    return mod


def _edit_array(record: str, key: str, edit):
    def corrupt(msg, context, call_next):
        reply = call_next(msg, context)
        arr = reply.content[record][key].numpy().copy()
        reply.content[record][key] = Array(np.ascontiguousarray(edit(arr)))
        return reply

    return corrupt


def _vanish(msg, context, call_next):
    raise RuntimeError("device went offline between the two phases")


SECEMB = SMALL + ["strategy=secemb", "model=mf", "clients_per_round=12", "strategy.m_prime=6", "rounds=2"]


def _flip(a):
    a[-1] ^= 1
    return a


@pytest.mark.parametrize("msg_type,fault", [
    ("query.secemb_retrieve", _edit_array("keys", "k0_cw_seeds", lambda a: a[:, :-1])),   # wrong tree depth
    ("query.secemb_retrieve", _edit_array("keys", "box", _flip)),                          # sealed box tampered
    ("train.secemb_upload", _edit_array("upload", "cw", lambda a: a[:-1])),                # wrong CW count
    ("train.secemb_upload", _edit_array("upload", "dense0", lambda a: a.astype(np.uint64))),  # wrong dtype
    ("train.secemb_upload", _edit_array("upload", "box", _flip)),                          # dense share box tampered
    ("train.secemb_upload", _vanish),                                                      # answers phase 1 only
], ids=["depth", "retrieve-box", "cw-shape", "share-dtype", "upload-box", "dropout"])
def test_secemb_leaves_out_the_bad_user(tmp_path, msg_type, fault):
    res, _ = run_sim(tmp_path, SECEMB, client_mods=[_on_user(0, msg_type, fault)])
    sampled_user0 = [r for r in res["records"] if r["dropped"]]
    assert sampled_user0, "user 0 should have been sampled and dropped"
    for r in res["records"]:
        assert r["clients"] + r["dropped"] == 12 and r["dropped"] <= 1
    assert math.isfinite(res["final"]["final_test_rmse"])


FEDMF = ["+experiment=fedmf_small", "strategy=fedmf", "strategy.key_bits=1024", "rounds=2", "train.eval_every=1",
         "strategy.mode=fulltext"]


def _zero_first_ciphertext(a):
    a[0, 0] = 0
    return a


@pytest.mark.parametrize("fault", [
    _edit_array("grad", "cts", _zero_first_ciphertext),       # ciphertext outside [1, n^2)
    _edit_array("grad", "cts", lambda a: a[:-1]),              # wrong count for FullText
    _edit_array("grad", "items", lambda a: a[:-1]),            # items and ciphertexts disagree
], ids=["range", "count", "shape"])
def test_fedmf_bad_uploads_do_not_corrupt_the_encrypted_matrix(tmp_path, fault):
    res, _ = run_sim(tmp_path, FEDMF, client_mods=[_on_user(3, "train.fedmf_update", fault)])
    for r in res["records"]:
        assert r["clients"] == 6 and r["dropped"] == 1
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
        assert r["clients"] == 1 and r["dropped"] == 6  # "never received the Paillier key"
