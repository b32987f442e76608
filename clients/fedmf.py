"""Client side of ``fedmf``: key distribution roles and the encrypted FedMF step.

The key holder (chosen by the server) generates the Paillier key pair and
seals the secret primes to every other user under that user's X25519 key;
the server only relays. A user keeps the key in ``Context.state`` (its own
device) and never sends it anywhere else. Each round it decrypts C_V,
runs the same FedMF step as ``distributed_mf``, and encrypts its negated
gradient rows, packed many values per ciphertext, and its metrics
[loss sum, rating count, 1] in one more ciphertext; when asked it decrypts
an aggregate of at least ``strategy.min_users`` users' metric ciphertexts.

State between messages is typed (:class:`PaillierKeyState`,
:class:`AnnounceState`): each is stored as a record carrying its stage, and
reading it back checks the stage the handler expects, so a message arriving
out of order is refused with a clear error instead of misusing key material.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flwr.app import ConfigRecord, Context, RecordDict

from clients.environment import ClientEnv
from clients.evaluation import mf_ranking
from clients.fedmf_common import compute_user_upload, load_user_vector
from models.fedmf_mf import squared_error
from crypto.packed_matrix import PackedMatrixPrivate
from crypto.paillier import ObfuscatorPool, bytes_to_int, check_key_bytes, generate_key_bytes
from crypto.sealed import (fingerprint, generate_keypair, open_sealed, private_key_bytes, private_key_from_bytes,
                           seal)
from schemas import fedmf as schema
from schemas.distributed_mf import upload_rows
from schemas.validation import MessageError, array_record, get_array, get_scalar, pinned_anchor

KEY_STATE = "paillier"
X25519_STATE = "fedmf_x25519"
POOL_STATE = "fedmf_obfuscators"


def _bytes(rec: ConfigRecord, key: str) -> bytes:
    return bytes(get_scalar(rec, key, bytes))


def _state_at(context: Context, key: str, expected_stage: tuple[str, ...], missing: str
              ) -> tuple[ConfigRecord, str]:
    """The kept state record ``key`` and its stage, which must be one of ``expected_stage``."""
    if key not in context.state:
        raise MessageError(missing)
    rec = context.state[key]
    stage = str(get_scalar(rec, "stage", str))
    if stage not in expected_stage:
        raise MessageError(f"{key} state is {stage!r}, this message needs one of {expected_stage}")
    return rec, stage


@dataclass
class PaillierKeyState:
    """The Paillier key on this device: ``holder`` generated it, ``keyed`` received it sealed."""

    stage: str  # "holder" | "keyed"
    run: str
    n: bytes
    p: bytes
    q: bytes

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({"stage": self.stage, "run": self.run, "n": self.n, "p": self.p, "q": self.q})

    @classmethod
    def from_record(cls, context: Context, expected_stage: tuple[str, ...]) -> PaillierKeyState:
        rec, stage = _state_at(context, KEY_STATE, expected_stage, "this user has not received the Paillier key")
        return cls(stage, str(get_scalar(rec, "run", str)), _bytes(rec, "n"), _bytes(rec, "p"), _bytes(rec, "q"))

    def crypto(self, env: ClientEnv) -> PackedMatrixPrivate:
        as_arr = lambda b: np.frombuffer(b, dtype=np.uint8)  # noqa: E731
        return schema.matrix_crypto(env.cfg, env.n_items, as_arr(self.n), as_arr(self.p), as_arr(self.q))


@dataclass
class AnnounceState:
    """A user that announced an X25519 key and waits for its sealed Paillier key."""

    run: str
    sk: bytes
    stage: str = "announced"

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({"stage": self.stage, "run": self.run, "sk": self.sk})

    @classmethod
    def from_record(cls, context: Context, expected_stage: tuple[str, ...] = ("announced",)) -> AnnounceState:
        rec, stage = _state_at(context, X25519_STATE, expected_stage,
                               "key delivered to a user that never announced an X25519 key")
        return cls(str(get_scalar(rec, "run", str)), _bytes(rec, "sk"), stage)


# ------------------------------------------------------------------ trust anchor
SIGNER_FINGERPRINT_NODE_KEY = "fedmf-signer-fingerprint"
SIGNING_KEY_NODE_KEY = "fedmf-signing-key-file"


def pinned_fingerprint(context: Context, env: ClientEnv) -> str | None:
    """The key holder's fingerprint from this node's config, else the run config; never from server 0."""
    value = context.node_config.get(SIGNER_FINGERPRINT_NODE_KEY) or env.cfg.strategy.key_holder_fingerprint
    if not value:
        return None
    return pinned_anchor(value, "the key holder")


def _signing_key(context: Context, env: ClientEnv) -> Ed25519PrivateKey | None:
    """The key holder's Ed25519 signing key: a PEM file named in its node config, or in the run config
    (``strategy.key_holder_key_file``) for the user that ``strategy.key_holder`` designates."""
    s = env.cfg.strategy
    path = context.node_config.get(SIGNING_KEY_NODE_KEY)
    if not path and s.key_holder is not None and int(s.key_holder) == env.user.user_id:
        path = s.key_holder_key_file
    if not path:
        return None
    key = serialization.load_pem_private_key(Path(str(path)).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise MessageError(f"signing key file {path} does not hold an Ed25519 private key")
    return key


def _check_signed_key(data, context: Context, env: ClientEnv, run: str, n_b: np.ndarray, announce_pub: bytes) -> None:
    """With a pinned fingerprint, the delivered key must carry the holder's signature over
    (run, n, this user, this user's announce key); without one, nothing is checked (README: then the
    protocol is secure against an honest-but-curious server only)."""
    anchor = pinned_fingerprint(context, env)
    if anchor is None:
        return
    if "sig" not in data or "signer" not in data:
        raise MessageError("Paillier key refused: it is unsigned, but this user pins the key holder's "
                           f"fingerprint {anchor[:16]}...")
    signer = get_array(data, "signer", np.uint8, (schema.SIGNER_KEY_BYTES,)).tobytes()
    sig = get_array(data, "sig", np.uint8, (schema.SIGNATURE_BYTES,)).tobytes()
    if fingerprint(signer) != anchor:
        raise MessageError("Paillier key refused: signed by a key whose fingerprint "
                           f"{fingerprint(signer)[:16]}... is not the pinned key holder's {anchor[:16]}...")
    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(
            sig, schema.signed_key_statement(run, n_b.tobytes(), env.user.user_id, announce_pub))
    except InvalidSignature as exc:
        raise MessageError("Paillier key refused: the key holder's signature does not verify over "
                           "(run, n, this user's announce key)") from exc


# ------------------------------------------------------------------ obfuscator pool
def upload_ciphertexts(env: ClientEnv, cts_per_row: int) -> int:
    """Obfuscators one participation needs: its upload rows x ciphertexts per row, plus two metric ciphertexts."""
    s = env.cfg.strategy
    rated = len(np.unique(env.user.train_items))
    rows = int(upload_rows(s.mode, np.array([rated]), env.n_items, int(s.pad_to or 0))[0])
    return rows * cts_per_row + 2


def _attach_pool(context: Context, crypto: PackedMatrixPrivate, n: bytes) -> None:
    """Give ``crypto`` this device's precomputed r^n values (kept in Context.state between messages)."""
    if POOL_STATE in context.state and context.state[POOL_STATE]["n"].numpy().tobytes() == n:
        crypto.scheme.pool = ObfuscatorPool.from_export(bytes_to_int(np.frombuffer(n, dtype=np.uint8)),
                                                        context.state[POOL_STATE]["rn"].numpy())


def _refill_pool(context: Context, env: ClientEnv, crypto: PackedMatrixPrivate, n: bytes) -> None:
    """Top the pool up for the next participation, after this message's result is computed.

    Each r^n costs one modular exponentiation (about 13 ms at 2048 bits);
    doing them here keeps them off the next upload's critical path.
    ``strategy.precompute_obfuscators=false`` turns this off (for measuring).
    """
    if not getattr(env.cfg.strategy, "precompute_obfuscators", True):
        return
    pool = crypto.scheme.pool
    pool.fill(max(upload_ciphertexts(env, crypto.cts_per_row) - len(pool), 0))
    context.state[POOL_STATE] = array_record(n=np.frombuffer(n, dtype=np.uint8), rn=pool.export())


def _metric_ciphertext(crypto: PackedMatrixPrivate, values: list[float]) -> np.ndarray:
    """Enc(pack([values..., 1])) as uint8 [1, width]: what the server may sum, never read."""
    return crypto.scheme.to_array(crypto.scheme.encrypt_batch([schema.pack_metrics(values)]))


def _telemetry(env: ClientEnv, start: float) -> float | None:
    return time.perf_counter() - start if env.cfg.simulation.telemetry else None


def on_key_setup(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Key holder: generate the Paillier key pair; answer with the public modulus only."""
    bits, run = schema.parse_setup_message(content)
    n_b, p_b, q_b = generate_key_bytes(bits)
    key = PaillierKeyState("holder", run, n_b.tobytes(), p_b.tobytes(), q_b.tobytes())
    context.state[KEY_STATE] = key.to_record()
    _refill_pool(context, env, key.crypto(env), key.n)
    return schema.public_key_reply(n_b)


def on_key_delivery(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    stage, run, data = schema.parse_key_message(content)
    n_b = get_array(data, "n", np.uint8, (schema.modulus_bytes(int(env.cfg.strategy.key_bits)),))
    if stage == "announce":  # any user: an X25519 key pair to receive the secret key
        private, public = generate_keypair()
        raw = private_key_bytes(private)
        context.state[X25519_STATE] = AnnounceState(run, raw).to_record()
        return schema.announce_reply(public)
    if stage == "seal":  # key holder: one sealed box of (p, q) per announced user
        key = PaillierKeyState.from_record(context, ("holder",))
        if key.n != n_b.tobytes():
            raise MessageError("asked to seal a key this user does not hold")
        users = get_array(data, "users", np.int64, (None,), low=0, high=2 ** 31)
        pubs = get_array(data, "pubs", np.uint8, (len(users), schema.X25519_BYTES))
        boxes = [seal(pubs[i].tobytes(), key.p + key.q, schema.key_context(run, int(users[i])))
                 for i in range(len(users))]
        box_arr = np.stack([np.frombuffer(b, dtype=np.uint8) for b in boxes])
        signing = _signing_key(context, env)
        if signing is None:
            return schema.seal_reply(box_arr)
        sigs = np.stack([np.frombuffer(signing.sign(schema.signed_key_statement(
            run, key.n, int(users[i]), pubs[i].tobytes())), dtype=np.uint8) for i in range(len(users))])
        signer = signing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return schema.seal_reply(box_arr, sigs, np.frombuffer(signer, dtype=np.uint8))
    # deliver: open the box with our X25519 key, check it matches n, keep it
    announced = AnnounceState.from_record(context)
    if announced.run != run:
        raise MessageError("key delivered for a different run than the announced X25519 key")
    private = private_key_from_bytes(announced.sk)
    own_pub = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    _check_signed_key(data, context, env, run, n_b, own_pub)
    box = get_array(data, "box", np.uint8, (None,)).tobytes()
    secret = open_sealed(private, box, schema.key_context(run, env.user.user_id))
    half = len(secret) // 2
    p_b, q_b = np.frombuffer(secret[:half], dtype=np.uint8), np.frombuffer(secret[half:], dtype=np.uint8)
    try:
        check_key_bytes(n_b, p_b, q_b)
    except ValueError as exc:
        raise MessageError(str(exc)) from exc
    key = PaillierKeyState("keyed", run, n_b.tobytes(), p_b.tobytes(), q_b.tobytes())
    context.state[KEY_STATE] = key.to_record()
    del context.state[X25519_STATE]
    _refill_pool(context, env, key.crypto(env), key.n)
    return schema.ack_reply()


def on_update(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Decrypt C_V, take the FedMF step, upload encrypted negated gradient rows and encrypted metrics."""
    start = time.perf_counter()
    key = PaillierKeyState.from_record(context, ("holder", "keyed"))
    crypto = key.crypto(env)
    _attach_pool(context, crypto, key.n)
    cv = schema.parse_model_message(content, env.n_items, crypto.cts_per_row, crypto.key_bits)
    up = compute_user_upload(crypto.decrypt_matrix(cv), context, env, schema.parse_round(content))
    cts = crypto.encrypt_gradient_rows(up.rows)
    released = env.cfg.train.releases_loss(env.cfg.dp.enabled)
    metric = _metric_ciphertext(crypto, [up.loss if released else 0.0])  # same ciphertext either way
    reply = schema.update_reply(up.items, cts, metric, _telemetry(env, start))  # the critical path ends here
    _refill_pool(context, env, crypto, key.n)
    return reply


def on_evaluate(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Decrypt C_V locally; answer only Enc([test error sum, test count, hit, ndcg, ranked, 1])."""
    start = time.perf_counter()
    key = PaillierKeyState.from_record(context, ("holder", "keyed"))
    crypto = key.crypto(env)
    _attach_pool(context, crypto, key.n)
    V = crypto.decrypt_matrix(schema.parse_model_message(content, env.n_items, crypto.cts_per_row, crypto.key_bits))
    u = load_user_vector(context, env)  # the newest: FedMF cannot be resumed, so no round is ever redone
    sse, count = squared_error(u, V[env.user.test_items], env.user.test_ratings.astype(float))
    hit, ndcg, ranked = schema.clip_ranking(mf_ranking(env, u, V)).tolist()
    reply = schema.evaluation_reply(_metric_ciphertext(crypto, [sse, count, hit, ndcg, ranked]), _telemetry(env, start))
    _refill_pool(context, env, crypto, key.n)
    return reply


def on_decrypt(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Decrypt an aggregate of metric ciphertexts, only if it sums at least ``min_users`` users.

    The counter slot (each user's ciphertext adds 1) says how many users the
    aggregate covers; it must equal what the server declares and reach
    ``strategy.min_users``. An honest-but-curious server thus cannot get one
    user's metrics decrypted by sending that user's ciphertext alone.
    """
    kind, _rnd, users, ct = schema.parse_decrypt_message(content, int(env.cfg.strategy.key_bits))
    crypto = PaillierKeyState.from_record(context, ("holder", "keyed")).crypto(env)
    try:
        parsed = crypto.scheme.from_array(ct)
    except ValueError as exc:
        raise MessageError(f"aggregate ciphertext: {exc}") from exc
    values, counted = schema.unpack_metrics(crypto.scheme.decrypt_batch(parsed)[0], len(schema.METRIC_KINDS[kind]))
    min_users = int(env.cfg.strategy.min_users)
    if counted != users:
        raise MessageError(f"refusing to decrypt: the aggregate sums {counted} users, the server says {users}")
    if counted < min_users:
        raise MessageError(f"refusing to decrypt an aggregate of {counted} user(s): fewer than "
                           f"strategy.min_users={min_users}")
    return schema.decrypt_reply(values, counted)


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.SETUP: on_key_setup,
    schema.KEY: on_key_delivery,
    schema.UPDATE: on_update,
    schema.EVALUATE: on_evaluate,
    schema.DECRYPT: on_decrypt,
}
