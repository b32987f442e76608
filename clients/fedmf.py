"""Client side of ``fedmf``: key distribution roles and the encrypted FedMF step.

The key holder (chosen by the server) generates the Paillier key pair and
seals the secret primes to every other user under that user's X25519 key;
the server only relays. A user keeps the key in ``Context.state`` (its own
device) and never sends it anywhere else. Each round it decrypts C_V,
runs the same FedMF step as ``distributed_mf``, and encrypts its negated
gradient rows, packed many values per ciphertext.
"""

from __future__ import annotations

import time

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import Context, RecordDict

from clients.environment import ClientEnv
from clients.fedmf_common import (hyper, load_user_vector, rated_items, save_user_vector, scatter_rows,
                                  upload_items)
from models.fedmf_mf import squared_error, user_step
from crypto.sealed import generate_keypair, open_sealed, seal
from schemas import common
from schemas import fedmf as schema
from schemas.validation import MessageError, array_record
from crypto.packed_matrix import PackedMatrixCrypto as FedMFCrypto

KEY_STATE = "paillier"
X25519_STATE = "fedmf_x25519"


def _crypto_of(context: Context, env: ClientEnv) -> FedMFCrypto:
    if KEY_STATE not in context.state:
        raise MessageError("this user has not received the Paillier key")
    rec = context.state[KEY_STATE]
    return FedMFCrypto.from_config(env.cfg, env.n_items, n_bytes=rec["n"].numpy(), p_bytes=rec["p"].numpy(),
                                   q_bytes=rec["q"].numpy())


def on_key_setup(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Key holder: generate the Paillier key pair; answer with the public modulus only."""
    bits, _run = schema.parse_setup_message(content)
    n_b, p_b, q_b = FedMFCrypto.generate_key_bytes(bits)
    context.state[KEY_STATE] = array_record(n=n_b, p=p_b, q=q_b)
    return schema.public_key_reply(n_b)


def on_key_delivery(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    stage, run, data = schema.parse_key_message(content)
    n_b = data["n"].numpy()
    if stage == "announce":  # any user: an X25519 key pair to receive the secret key
        private, public = generate_keypair()
        raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        context.state[X25519_STATE] = array_record(sk=np.frombuffer(raw, dtype=np.uint8))
        return schema.announce_reply(public)
    if stage == "seal":  # key holder: one sealed box of (p, q) per announced user
        if KEY_STATE not in context.state or not np.array_equal(context.state[KEY_STATE]["n"].numpy(), n_b):
            raise MessageError("asked to seal a key this user does not hold")
        rec = context.state[KEY_STATE]
        secret = rec["p"].numpy().tobytes() + rec["q"].numpy().tobytes()
        users, pubs = data["users"].numpy(), data["pubs"].numpy()
        boxes = [seal(pubs[i].tobytes(), secret, schema.key_context(run, int(users[i]))) for i in range(len(users))]
        return schema.seal_reply(np.stack([np.frombuffer(b, dtype=np.uint8) for b in boxes]))
    # deliver: open the box with our X25519 key, check it matches n, keep it
    if X25519_STATE not in context.state:
        raise MessageError("key delivered to a user that never announced an X25519 key")
    private = X25519PrivateKey.from_private_bytes(context.state[X25519_STATE]["sk"].numpy().tobytes())
    secret = open_sealed(private, data["box"].numpy().tobytes(), schema.key_context(run, env.user.user_id))
    half = len(secret) // 2
    p_b, q_b = np.frombuffer(secret[:half], dtype=np.uint8), np.frombuffer(secret[half:], dtype=np.uint8)
    FedMFCrypto.check_key(n_b, p_b, q_b)
    context.state[KEY_STATE] = array_record(n=n_b, p=p_b, q=q_b)
    del context.state[X25519_STATE]
    return schema.ack_reply()


def on_update(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Decrypt C_V, take the FedMF step, upload encrypted negated gradient rows."""
    start = time.perf_counter()
    crypto = _crypto_of(context, env)
    cv = schema.parse_model_message(content, env.n_items, crypto.cts_per_row, crypto.key_bits)
    V = crypto.decrypt_matrix(cv)
    items_r, ratings = rated_items(env)
    u_new, grads, loss = user_step(load_user_vector(context, env), V[items_r], ratings, hyper(env))
    save_user_vector(context, u_new)
    s = env.cfg.strategy
    items = upload_items(s.mode, items_r, env.n_items, int(s.pad_to or 0))
    cts = crypto.encrypt_gradient_rows(scatter_rows(items, items_r, grads))
    return schema.update_reply(items, cts, loss, len(ratings), time.perf_counter() - start)


def on_evaluate(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Decrypt C_V locally and report this user's test error sum (the server never decrypts)."""
    start = time.perf_counter()
    crypto = _crypto_of(context, env)
    V = crypto.decrypt_matrix(schema.parse_model_message(content, env.n_items, crypto.cts_per_row, crypto.key_bits))
    sse, count = squared_error(load_user_vector(context, env), V[env.user.test_items],
                               env.user.test_ratings.astype(float))
    return common.evaluation_reply(sse, count, time.perf_counter() - start)


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.SETUP: on_key_setup,
    schema.KEY: on_key_delivery,
    schema.UPDATE: on_update,
    schema.EVALUATE: on_evaluate,
}
