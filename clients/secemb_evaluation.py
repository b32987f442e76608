"""Client side of SecEmb's evaluation: the rows a user evaluates with come through the private retrieval.

A user evaluating with the full public model downloads every item's row (16 MB at ML-25M's 62,423
items, d = 64); naming its test items instead would tell server 0 items it rated. So, as in training,
the user pads the items it needs (its test items and ranking case, :func:`evaluation_items`) to the
evaluation m' with random unrated items and sends one DPF key pair per item (party 1's sealed to
server 1). The servers evaluate the keys over the table and return shares of the rows; the user
rebuilds them, computes its test error and ranking case, and secret-shares the metrics as every
two-server evaluation does. Server 0 sees DPF keys and sums, as in a training round.

Between the two messages the padded item list and the one-round X25519 key stay in ``Context.state``
under :data:`STATE`; they never leave the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Context, RecordDict

from clients import two_server as ts
from clients.environment import ClientEnv
from clients.evaluation import ranking_case, reply_with_rows, secure_header
from clients.item_selection import evaluation_items, pad_items
from crypto.dpf_gen import gen as dpf_gen
from crypto.ring import ring_dtype
from crypto.sealed import generate_keypair, open_sealed, private_key_bytes, private_key_from_bytes, seal
from schemas import secemb as schema
from schemas.validation import MessageError, array_record

STATE = "secemb_eval"


@dataclass
class EvalRetrieval:
    """What the evaluation retrieval leaves for the evaluation message of the same round."""

    items: np.ndarray   # padded item list (m'_eval): the real items first, sorted
    n_real: int
    round: int
    user_private: bytes  # one-round X25519 key (server 1 seals the row shares to it)
    seconds: float

    def to_record(self) -> ArrayRecord:
        return array_record(items=self.items, n_real=np.array([self.n_real], np.int64),
                            round=np.array([self.round], np.int64),
                            user_private=np.frombuffer(self.user_private, dtype=np.uint8),
                            seconds=np.array([self.seconds], np.float64))

    @classmethod
    def from_record(cls, record: ArrayRecord) -> EvalRetrieval:
        saved = {k: record[k].numpy() for k in record}
        return cls(items=saved["items"], n_real=int(saved["n_real"][0]), round=int(saved["round"][0]),
                   user_private=saved["user_private"].tobytes(), seconds=float(saved["seconds"][0]))


def _refuse_unless_secemb(env: ClientEnv) -> None:
    if env.cfg.strategy.name != "secemb":
        raise MessageError(f"{env.cfg.strategy.name} users do not evaluate through SecEmb's retrieval")


def on_eval_retrieve(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Pad the items to evaluate to m'_eval and send one DPF key pair per item (party 1's sealed)."""
    start = time.perf_counter()
    _refuse_unless_secemb(env)
    rnd, m_eval, pub, run, bits, _variant = schema.parse_retrieve_message(content, env.n_items)
    ts.check_pinned_key(pub, env, context)
    ring, uid = ring_dtype(bits), env.user.user_id
    try:
        real = evaluation_items(env.user.test_items, ranking_case(env), m_eval, env.seed, uid)
    except ValueError as exc:
        raise MessageError(str(exc)) from exc
    items = pad_items(real, m_eval, env.n_items)
    keys0, keys1, _gen_state = dpf_gen(items, np.ones((m_eval, 1), dtype=ring), env.n_items, domain=0)
    user_private, user_public = generate_keypair()
    box = seal(pub, schema.sealed_retrieval_bytes(keys1, user_public), schema.context(run, rnd, uid, schema.EVAL_BOX))
    context.state[STATE] = EvalRetrieval(items=items, n_real=len(real), round=rnd,
                                         user_private=private_key_bytes(user_private),
                                         seconds=time.perf_counter() - start).to_record()
    return schema.retrieve_reply(keys0, box)


def on_evaluate_shares(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Rebuild the retrieved rows, evaluate on the test ratings of the retrieved items, secret-share the sums."""
    start = time.perf_counter()
    _refuse_unless_secemb(env)
    if STATE not in context.state:
        raise MessageError("evaluation shares without an evaluation retrieval")
    saved = EvalRetrieval.from_record(context.state[STATE])
    del context.state[STATE]
    secure = secure_header(content, context, env)
    assert secure is not None  # secemb is a two-server protocol
    rnd, _pub, run, bits = secure
    codec, ring = ts.ring_codec(env)
    if bits != np.dtype(ring).itemsize * 8:
        raise MessageError(f"evaluation in a {bits}-bit ring, this user's config has {np.dtype(ring).itemsize * 8}")
    m_eval = len(saved.items)
    msg_round, shares0, box, dense = schema.parse_upload_message(content, m_eval, env.spec.row_dim,
                                                                 env.spec.dense_size, ring)
    if rnd != saved.round or msg_round != saved.round:
        raise MessageError(f"evaluation for round {rnd} but the retrieval was for round {saved.round}")
    raw = open_sealed(private_key_from_bytes(saved.user_private), box.tobytes(),
                      schema.context(run, rnd, env.user.user_id, schema.EVAL_SHARES_BOX))
    shares1 = schema.parse_share_bytes(raw, (m_eval, env.spec.row_dim), ring)
    items = saved.items[:saved.n_real]
    rows = codec.from_ring(shares0 + shares1).astype(np.float32)[:saved.n_real]
    kept = np.isin(env.user.test_items, items)
    return reply_with_rows(env, context, secure, rows, dense, items, start - saved.seconds,
                           test=(env.user.test_items[kept], env.user.test_ratings[kept]))


# This module's message types (spelled once, in schemas/secemb.py) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.EVAL_RETRIEVE: on_eval_retrieve,
    schema.EVALUATE_SHARES: on_evaluate_shares,
}
