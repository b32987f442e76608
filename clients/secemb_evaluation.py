"""Client side of SecEmb's evaluation: the rows a user evaluates with come through the private retrieval.

A user evaluating with the full public model downloads every item's row (16 MB at ML-25M's 62,423
items, d = 64); naming its test items instead would tell server 0 items it rated. So, as in training,
the user pads the items it needs (its test items and ranking case, :func:`evaluation_items`) to the
evaluation m' with random unrated items and sends one DPF key pair per item (party 1's sealed to
server 1). The servers evaluate the keys over the table and return shares of the rows; the user
rebuilds them, computes its test error and ranking case, and secret-shares the metrics as every
two-server evaluation does. Server 0 sees DPF keys and sums, as in a training round.

Between the two messages the padded item list and the one-round X25519 key stay in ``Context.state``
under :data:`STATE` (a training retrieval's :class:`clients.secemb.UploadState`, at its own stage);
they never leave the device.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, RecordDict

from clients import two_server as ts
from clients.environment import ClientEnv
from clients.evaluation import ranking_case, reply_with_rows, secure_header
from clients.item_selection import evaluation_items
from clients.secemb import UploadState, request_rows
from crypto.ring import ring_dtype
from crypto.sealed import open_sealed, private_key_from_bytes
from schemas import secemb as schema
from schemas.validation import MessageError

STATE, STAGE = "secemb_eval", "evaluate"  # Context.state key; UploadState stage of an evaluation retrieval


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
    reply, state = request_rows(real, m_eval, ring, env, pub, run, rnd, schema.EVAL_BOX, start, stage=STAGE)
    context.state[STATE] = state.to_record()
    return reply


def on_evaluate_shares(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Rebuild the retrieved rows, evaluate on the test ratings of the retrieved items, secret-share the sums."""
    start = time.perf_counter()
    _refuse_unless_secemb(env)
    if STATE not in context.state:
        raise MessageError("evaluation shares without an evaluation retrieval")
    saved = UploadState.from_record(context.state[STATE], STAGE)
    del context.state[STATE]
    secure = secure_header(content, context, env)
    assert secure is not None  # secemb is a two-server protocol
    rnd, _pub, run, _metric_bits = secure  # the metrics' evaluation ring; the rows' ring is checked below
    codec, ring = ts.ring_codec(env)
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
    return reply_with_rows(env, context, secure, rows, dense, items, start - saved.seconds, rnd,
                           test=(env.user.test_items[kept], env.user.test_ratings[kept]))


# This module's message types (spelled once, in schemas/secemb.py) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.EVAL_RETRIEVE: on_eval_retrieve,
    schema.EVALUATE_SHARES: on_evaluate_shares,
}
