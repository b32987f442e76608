"""Client side of ``secemb`` (SecEmb Algorithm 3, user part).

Round state that must survive between the retrieval and the upload message
(the padded item list, the DPF generation state t_1^(n), s_0^(n), s_1^(n), the
one-round X25519 key) is the :class:`UploadState` dataclass, kept in
``Context.state``: these are the user's secrets and never leave the device.

The upload carries no per-user metric in the clear: the loss and a 1
are two extra ring elements of the secret-shared dense vector
(:mod:`clients.two_server`), and compute seconds travel only with
``simulation.telemetry``. Server 1's relayed key is checked against the
user's own trust anchor when it has one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Context, RecordDict

from clients import two_server as ts
from clients.environment import ClientEnv
from clients.item_selection import pad_items, truncate_items
from clients.plaintext import local_step
from crypto.dpf_gen import gen as dpf_gen
from crypto.dpf_keys import GenState
from crypto.ring import ring_dtype
from crypto.sealed import generate_keypair, open_sealed, private_key_bytes, private_key_from_bytes, seal
from crypto.secret_sharing import share
from schemas import secemb as schema
from schemas.validation import MessageError, array_record
from twoserver.variants import variant_of

log = logging.getLogger("secrec.client.secemb")
STATE = "secemb_round"
# kept importable for older callers; the shared versions live in clients/two_server.py
ring_codec = ts.ring_codec


@dataclass
class UploadState:
    """What the retrieval leaves for the upload of the same round (never leaves the device).

    Stored in ``Context.state`` under ``STATE`` with the stage name, so an
    upload message that does not follow this round's retrieval is refused.
    """

    items: np.ndarray          # padded item list (m')
    n_real: int                # real items among them
    round: int
    user_private: bytes        # one-round X25519 key (server 1 seals the embedding shares to it)
    seconds: float             # compute time of the retrieval stage
    gen_state: GenState    # t_1^(n), s_0^(n), s_1^(n) for the final correction words
    stage: str = "upload"

    def to_record(self) -> ArrayRecord:
        return array_record(
            stage=np.frombuffer(self.stage.encode(), dtype=np.uint8), items=self.items,
            n_real=np.array([self.n_real], dtype=np.int64), round=np.array([self.round], dtype=np.int64),
            user_private=np.frombuffer(self.user_private, dtype=np.uint8),
            seconds=np.array([self.seconds], dtype=np.float64),
            **{f"gen_{k}": v for k, v in self.gen_state.to_arrays().items()})

    @classmethod
    def from_record(cls, record: ArrayRecord, expected_stage: str) -> UploadState:
        saved = {k: record[k].numpy() for k in record}
        stage = saved["stage"].tobytes().decode()
        if stage != expected_stage:
            raise MessageError(f"client state is at stage {stage!r}, this message needs {expected_stage!r}")
        return cls(items=saved["items"], n_real=int(saved["n_real"][0]), round=int(saved["round"][0]),
                   user_private=saved["user_private"].tobytes(), seconds=float(saved["seconds"][0]),
                   gen_state=GenState.from_arrays({k[4:]: v for k, v in saved.items() if k.startswith("gen_")}),
                   stage=stage)


def on_count(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Appendix C: secret-share |I_u| so the servers learn only the sum over users."""
    pub, run, _ = ts.accept_server_info(content, context, env)
    count = np.array([len(np.unique(env.user.train_items))], dtype=np.uint64)
    s0, s1 = share(count)
    box = seal(pub, schema.count_share_bytes(s1), schema.context(run, 0, env.user.user_id, "count"))
    return schema.count_reply(s0, box)


def on_retrieve(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Phase 1: PadOrTruncIdx, then one DPF key pair per item (beta = 1)."""
    start = time.perf_counter()
    rnd, m_prime, pub, run, bits, variant = schema.parse_retrieve_message(content, env.n_items)
    ts.check_pinned_key(pub, env, context)
    ring = ring_dtype(bits)
    ts.remember_server(context, pub, run)
    real = truncate_items(env.user.train_items, m_prime, env.seed, rnd, env.user.user_id)
    reply, state = request_rows(real, m_prime, ring, env, pub, run, rnd, "retrieve", start)
    context.state[STATE] = state.to_record()
    return reply


def request_rows(real: np.ndarray, m_prime: int, ring: type, env: ClientEnv, pub: bytes, run: str, rnd: int,
                 purpose: str, start: float, stage: str = "upload") -> tuple[RecordDict, UploadState]:
    """PadOrTruncIdx's padding and one DPF key pair per item (beta = 1): the retrieval reply (party 0's keys,
    party 1's sealed to server 1 under ``purpose`` with a fresh one-round key) and what the device keeps
    for the message that brings the rows (at ``stage``). Training and evaluation retrievals both use it."""
    items = pad_items(real, m_prime, env.n_items)
    keys0, keys1, gen_state = dpf_gen(items, np.ones((m_prime, 1), dtype=ring), env.n_items, domain=0)
    user_private, user_public = generate_keypair()
    box = seal(pub, schema.sealed_retrieval_bytes(keys1, user_public),
               schema.context(run, rnd, env.user.user_id, purpose))
    state = UploadState(items=items, n_real=len(real), round=rnd, user_private=private_key_bytes(user_private),
                        seconds=time.perf_counter() - start, gen_state=gen_state, stage=stage)
    return schema.retrieve_reply(keys0, box), state


def on_upload(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Phase 2: rebuild the rows, train, and upload CW^(n+1) per row plus shares of [dense, metrics]."""
    start = time.perf_counter()
    if STATE not in context.state:
        raise MessageError("upload request without a retrieval in this round")
    saved = UploadState.from_record(context.state[STATE], "upload")
    del context.state[STATE]
    codec, ring = ts.ring_codec(env)
    items, n_real = saved.items, saved.n_real
    m_prime = len(items)
    rnd, shares0, box, dense = schema.parse_upload_message(content, m_prime, env.spec.row_dim,
                                                           env.spec.dense_size, ring)
    if rnd != saved.round:
        raise MessageError(f"upload for round {rnd} but retrieval was for round {saved.round}")
    run, uid = ts.run_of(context), env.user.user_id
    user_private = private_key_from_bytes(saved.user_private)
    raw = open_sealed(user_private, box.tobytes(), schema.context(run, rnd, uid, "shares"))
    shares1 = schema.parse_share_bytes(raw, (m_prime, env.spec.row_dim), ring)
    rows = codec.from_ring(shares0 + shares1).astype(np.float32)
    result = local_step(env, context, items[:n_real], rows[:n_real], dense, rnd)
    grads = np.zeros((m_prime, env.spec.row_dim), dtype=np.float64)  # Algorithm 2: zero rows for padding
    grads[:n_real] = result.row_grads
    loss = ts.released_loss(env.cfg, result.loss)
    betas, dense_metrics = ts.encode_upload(grads, result.dense_grad, loss, codec, ring, ts.train_metric_codec(env))
    d0, d1 = share(dense_metrics)
    variant = variant_of(env.cfg.strategy.variant)
    payload, inner = variant.client_payload(saved.gen_state, items, betas, env.n_items, d1)
    sealed = seal(ts.server1_public(context), inner, schema.context(run, rnd, uid, variant.box_purpose))
    seconds = time.perf_counter() - start + saved.seconds
    return schema.upload_reply(payload, d0, sealed, ts.telemetry_seconds(env, seconds))


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.COUNT: on_count,
    schema.RETRIEVE: on_retrieve,
    schema.UPLOAD: on_upload,
}
