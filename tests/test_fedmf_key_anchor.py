"""Keys users can trust: with a pinned key-holder fingerprint, users refuse a Paillier key server 0 substituted.

Server 0 relays the Paillier key. The attack is a strategy method swapped in
the server process (the ServerApp runs in-process): for every user it seals
a key pair of its own making under that user's announce key and sends that
modulus, forwarding the key holder's genuine signature. Users that pin the
holder's Ed25519 fingerprint (run config here; node config
``fedmf-signer-fingerprint`` in a deployment) refuse it and say why; users
without an anchor accept it, as before (the README's honest-but-curious
caveat). An honest run with the anchor keys everyone and trains.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.sim_utils import run_sim

pytestmark = pytest.mark.slow
BASE = ["+experiment=fedmf_small", "strategy=fedmf", "strategy.key_bits=1024", "strategy.mode=parttext",
        "rounds=1", "train.eval_every=1"]


def _anchor(tmp_path) -> list[str]:
    """A signing key for user 0 and the overrides that designate and pin it."""
    from crypto.sealed import fingerprint as signer_fingerprint

    key = Ed25519PrivateKey.generate()
    path = tmp_path / "holder_ed25519.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    fp = signer_fingerprint(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw))
    return ["strategy.key_holder=0", f"strategy.key_holder_key_file='{path}'",
            f"strategy.key_holder_fingerprint='{fp}'"]


def _substitute_keys(monkeypatch):
    """Server 0 replaces every delivered key by one it generated (it then knows the users' secret key)."""
    from crypto.paillier import generate_key_bytes
    from crypto.sealed import seal
    from schemas import fedmf as schema
    from strategies.fedmf import FedMFStrategy

    n, p, q = generate_key_bytes(1024)

    def evil(self, user, index, sealed, announce_pub):
        box = np.frombuffer(seal(announce_pub, p.tobytes() + q.tobytes(), schema.key_context(self.run_id, user)),
                            dtype=np.uint8)
        extra = {} if sealed.sigs is None else {"sig": sealed.sigs[index], "signer": sealed.signer}
        return schema.key_message("deliver", self.run_id, n, box=box, **extra)

    monkeypatch.setattr(FedMFStrategy, "delivery_message", evil)


def test_anchored_users_accept_the_signed_key_and_train(tmp_path):
    res, _ = run_sim(tmp_path, BASE + _anchor(tmp_path))
    assert res["final"]["key_holder"] == 0 and res["final"]["keyed_users"] == 7
    assert res["records"][0]["clients"] == 7 and math.isfinite(res["records"][0]["test_rmse"])


def test_anchored_users_refuse_a_substituted_key(tmp_path, monkeypatch):
    _substitute_keys(monkeypatch)
    res, _ = run_sim(tmp_path, BASE + _anchor(tmp_path))
    assert res["final"]["keyed_users"] == 1  # the key holder only
    why = res["records"][0]["dropped_users"]
    assert len(why) == 6
    assert all("Paillier key refused" in w and "signature does not verify" in w for w in why.values()), why


def test_without_anchor_a_substituted_key_is_accepted_as_before(tmp_path, monkeypatch):
    """No anchor: behaviour unchanged, users cannot tell (secure against an honest-but-curious server only)."""
    _substitute_keys(monkeypatch)
    res, _ = run_sim(tmp_path, BASE)
    assert res["final"]["keyed_users"] == 7


def test_lazy_delivery_keys_only_the_users_a_run_samples(tmp_path):
    """Lazy (the default): the sealed key reaches the holder, the round's users and the evaluated sample,
    not the whole population before round 1; eager (FedMF's procedure) keys all 7 users up front."""
    few = ["clients_per_round=2", "train.eval_clients=2"]
    lazy, _ = run_sim(tmp_path / "lazy", BASE + few)
    assert 2 <= lazy["final"]["keyed_users"] <= 1 + 2 + 2  # holder, the round's 2, the evaluated 2
    assert lazy["records"][0]["clients"] == 2 and lazy["records"][0]["eval_clients"] == 2
    eager, _ = run_sim(tmp_path / "eager", BASE + few + ["strategy.key_delivery=eager"])
    assert eager["final"]["keyed_users"] == 7
    assert lazy["final"]["final_test_rmse"] == pytest.approx(eager["final"]["final_test_rmse"], abs=1e-9)
