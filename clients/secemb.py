"""Client side of ``secemb`` (SecEmb Algorithm 3, user part).

Round state that must survive between the retrieval and the upload message
(the padded item list, the DPF generation state t_1^(n), s_0^(n), s_1^(n), the
one-round X25519 key) is kept in ``Context.state``: these are the user's
secrets and never leave the device.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import Context, RecordDict

from clients.environment import ClientEnv
from clients.item_selection import pad_items, truncate_items
from clients.plaintext import local_step
from crypto import dpf
from crypto.fixed_point import FixedPointCodec
from crypto.sealed import generate_keypair, open_sealed, seal
from crypto.secret_sharing import share
from schemas import secemb as schema
from schemas.validation import MessageError, array_record

log = logging.getLogger("secrec.client.secemb")
STATE = "secemb_round"


def ring_codec(env: ClientEnv) -> tuple[FixedPointCodec, type]:
    """Fixed-point codec in Z_2^k with each user's range bound R_u = (R - 1) / n_p (SecEmb L.2)."""
    s = env.cfg.strategy
    bits, frac = int(s.ring_bits), int(s.frac_bits)
    n_p = max(int(env.cfg.clients_per_round), 1)
    bound = (2.0 ** (bits - 1 - frac) - 1.0) / n_p
    return FixedPointCodec(frac_bits=frac, value_bound=bound), schema.ring_of(bits)


def clip_to_bound(values: np.ndarray, codec: FixedPointCodec, what: str) -> np.ndarray:
    """Enforce R_u on this user's contribution so the sum over n_p users cannot wrap the ring."""
    over = np.abs(values) > codec.value_bound
    if over.any():
        log.warning("%s: clipping %d values to the per-user bound %.3g", what, int(over.sum()), codec.value_bound)
        values = np.clip(values, -codec.value_bound, codec.value_bound)
    return values


def on_count(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Appendix C: secret-share |I_u| so the servers learn only the sum over users."""
    pub, run, _ = schema.parse_server_info(content)
    count = np.array([len(np.unique(env.user.train_items))], dtype=np.uint64)
    s0, s1 = share(count)
    box = seal(pub, schema.count_share_bytes(s1), schema.context(run, 0, env.user.user_id, "count"))
    return schema.count_reply(s0, box)


def on_retrieve(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Phase 1: PadOrTruncIdx, then one DPF key pair per item (beta = 1)."""
    start = time.perf_counter()
    rnd, m_prime, pub, run, bits, variant = schema.parse_retrieve_message(content, env.n_items)
    ring = schema.ring_of(bits)
    remember_server(context, pub, run)
    real = truncate_items(env.user.train_items, m_prime, env.seed, rnd, env.user.user_id)
    items = pad_items(real, m_prime, env.n_items)
    keys0, keys1, gen_state = dpf.gen(items, np.ones((m_prime, 1), dtype=ring), env.n_items, domain=0)
    user_private, user_public = generate_keypair()
    box = seal(pub, schema.sealed_retrieval_bytes(keys1, user_public),
               schema.context(run, rnd, env.user.user_id, "retrieve"))
    raw_private = user_private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption())
    context.state[STATE] = array_record(
        items=items, n_real=np.array([len(real)], dtype=np.int64), round=np.array([rnd], dtype=np.int64),
        user_private=np.frombuffer(raw_private, dtype=np.uint8), seconds=np.array([time.perf_counter() - start]),
        **{f"gen_{k}": v for k, v in gen_state.to_arrays().items()})
    return schema.retrieve_reply(keys0, box)


def on_upload(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Phase 2: rebuild the rows, train, and upload CW^(n+1) per row plus dense shares."""
    start = time.perf_counter()
    if STATE not in context.state:
        raise MessageError("upload request without a retrieval in this round")
    saved = {k: context.state[STATE][k].numpy() for k in context.state[STATE]}
    del context.state[STATE]
    codec, ring = ring_codec(env)
    s = env.cfg.strategy
    items, n_real = saved["items"], int(saved["n_real"][0])
    m_prime = len(items)
    rnd, shares0, box, dense = schema.parse_upload_message(content, m_prime, env.spec.row_dim,
                                                           env.spec.dense_size, ring)
    if rnd != int(saved["round"][0]):
        raise MessageError(f"upload for round {rnd} but retrieval was for round {int(saved['round'][0])}")
    user_private = X25519PrivateKey.from_private_bytes(saved["user_private"].tobytes())
    raw = open_sealed(user_private, box.tobytes(), schema.context(_run_of(context), rnd, env.user.user_id, "shares"))
    shares1 = schema.parse_share_bytes(raw, (m_prime, env.spec.row_dim), ring)
    rows = codec.from_ring(shares0 + shares1).astype(np.float32)
    real_items = items[:n_real]
    result = local_step(env, context, real_items, rows[:n_real], dense)
    grads = np.zeros((m_prime, env.spec.row_dim), dtype=np.float64)  # Algorithm 2: zero rows for padding
    grads[:n_real] = result.row_grads
    betas = codec.to_ring(clip_to_bound(grads, codec, "row gradients"), ring)
    dense_ring = codec.to_ring(clip_to_bound(result.dense_grad.astype(np.float64), codec, "dense gradient"), ring)
    d0, d1 = share(dense_ring)
    gen_state = dpf.GenState.from_arrays({k[4:]: v for k, v in saved.items() if k.startswith("gen_")})
    variant = s.variant
    uid = env.user.user_id
    if variant == "secemb":
        payload = dpf.convert_gen(gen_state, betas, domain=1)
        sealed = seal(_server1_public(context), schema.sealed_dense_bytes(d1), schema.context(_run_of(context), rnd, uid, "dense"))
    else:
        payload, keys1 = _fresh_keys(variant, items, betas, env.n_items)
        sealed = seal(_server1_public(context), schema.sealed_fresh_upload_bytes(keys1, d1),
                      schema.context(_run_of(context), rnd, uid, "upload"))
    seconds = time.perf_counter() - start + float(saved["seconds"][0])
    return schema.upload_reply(payload, d0, sealed, result.loss, result.n_ratings, seconds)


def _fresh_keys(variant: str, items: np.ndarray, betas: np.ndarray, n_items: int):
    """Ablations: a full new key per row (rowenc) or per element (init)."""
    if variant == "rowenc":
        keys0, keys1, _ = dpf.gen(items, betas, n_items, domain=1)
    else:
        width = betas.shape[1]
        keys0, keys1, _ = dpf.gen(np.repeat(items, width), betas.reshape(-1, 1), n_items, domain=1)
    return keys0, keys1


SERVER_INFO = "secemb_server"


def remember_server(context: Context, pub: bytes, run: str) -> None:
    context.state[SERVER_INFO] = array_record(pub=np.frombuffer(pub, dtype=np.uint8),
                                              run=np.frombuffer(run.encode(), dtype=np.uint8))


def _server1_public(context: Context) -> bytes:
    return context.state[SERVER_INFO]["pub"].numpy().tobytes()


def _run_of(context: Context) -> str:
    return context.state[SERVER_INFO]["run"].numpy().tobytes().decode()


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.COUNT: on_count,
    schema.RETRIEVE: on_retrieve,
    schema.UPLOAD: on_upload,
}
