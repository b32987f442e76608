"""Local test evaluation for the model-based protocols.

``plaintext`` evaluates by item request: the user names its test items
(:data:`schemas.common.EVAL_REQUEST`) and then receives only their rows and
the dense parameters (:data:`schemas.common.EVALUATE_ROWS`), so its download
is O(its test items). ``secemb`` and ``secfedrec`` send the full public model
(:data:`schemas.common.EVALUATE`): naming the items would tell server 0 items
the user rated, which both hide, so their users refuse the item request
(decided by the user's own config, whatever server 0 asks). Either way the
user computes the squared error of its
held-out ratings with its private parameters. In ``plaintext`` it reports
its sum and count in the clear (the twin promises nothing). In the two-server
protocols (SecEmb, Secure FedRec) it secret-shares [SSE, count] between the
servers (share 0 in the clear, share 1 sealed for server 1), so server 0
learns only the sums over the evaluated users. Which reply to send is decided
by the user's own config, never by what server 0 asks for.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, RecordDict

from clients import two_server as ts
from clients.environment import ClientEnv
from clients.local_training import evaluate_locally
from clients.private_state import device_state_dir, load_private
from schemas import common
from schemas import two_server as ts_schema
from schemas.plaintext import parse_model_content, parse_update_message, request_reply
from schemas.validation import MessageError

TWO_SERVER_PROTOCOLS = ("secemb", "secfedrec")


def named_test_items(env: ClientEnv) -> np.ndarray:
    """The distinct items of this user's test ratings, sorted: what it names and the order rows arrive in."""
    return np.unique(env.user.test_items)


def refuse_if_items_are_private(env: ClientEnv) -> None:
    """The two-server protocols hide which items a user rated: their users never name them, nor count them."""
    if env.cfg.strategy.name in TWO_SERVER_PROTOCOLS:
        raise MessageError(f"{env.cfg.strategy.name} users do not name their test items; it evaluates "
                           "with the full model")


def on_eval_request(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Name this user's test items (none is a valid answer: the user then reports an empty sum)."""
    refuse_if_items_are_private(env)
    return request_reply(named_test_items(env))


def on_evaluate(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Evaluate with the full public model (``secemb``, ``secfedrec``)."""
    start = time.perf_counter()
    secure = _secure_header(content, context, env)
    table, dense = parse_model_content(content, env.n_items, env.spec.row_dim, env.spec.dense_size)
    return _reply(env, context, secure, table, dense, env.user.test_items, env.item_features, start)


def on_evaluate_rows(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Evaluate with the rows of the test items this user named (``plaintext``)."""
    start = time.perf_counter()
    refuse_if_items_are_private(env)
    _rnd, rows, dense = parse_update_message(content, env.spec.row_dim, env.spec.dense_size)
    items = named_test_items(env)
    if rows.shape[0] != len(items):
        raise MessageError(f"evaluation sent {rows.shape[0]} rows for {len(items)} test items")
    local = np.searchsorted(items, env.user.test_items)  # each test rating's row among the received ones
    return _reply(env, context, None, rows, dense, local, env.item_features[items], start)


def _secure_header(content: RecordDict, context: Context, env: ClientEnv) -> tuple[int, bytes, str, int] | None:
    """(round, server 1's key, run, ring bits) in the two-server protocols (the key checked against the pin)."""
    if env.cfg.strategy.name not in TWO_SERVER_PROTOCOLS:
        return None
    header = ts_schema.parse_eval_message(content)
    ts.check_pinned_key(header[1], env, context)
    return header


def _reply(env: ClientEnv, context: Context, secure: tuple[int, bytes, str, int] | None, table: np.ndarray,
           dense: np.ndarray, items: np.ndarray, item_features: np.ndarray, start: float) -> RecordDict:
    """Test SSE and count with rows ``table`` (indexed by ``items``), in the clear or secret-shared."""
    private = load_private(context, env.spec, env.user.user_id, env.seed, device_state_dir(env, context))
    sse, count = evaluate_locally(env.spec, table, dense, private["params"], items, env.user.test_ratings,
                                  env.user.user_features, item_features)
    if secure is None:
        return common.evaluation_reply(sse, count, time.perf_counter() - start)
    rnd, pub, run, bits = secure
    metrics = ts.eval_metric_codec(env, bits).encode(sse, count, "test error")
    share0, box = ts.sealed_metric_shares(pub, run, rnd, env.user.user_id, metrics)
    return ts_schema.secure_eval_reply(share0, box, ts.telemetry_seconds(env, time.perf_counter() - start))


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    common.EVAL_REQUEST: on_eval_request,
    common.EVALUATE: on_evaluate,
    common.EVALUATE_ROWS: on_evaluate_rows,
}
