"""Local test evaluation for the model-based protocols.

The server sends the full public model; the user computes the squared error of
its held-out ratings with its private parameters. In ``plaintext`` it reports
its sum and count in the clear (the twin promises nothing). In the two-server
protocols (SecEmb, Secure FedRec) it secret-shares [SSE, count] between the
servers (share 0 in the clear, share 1 sealed for server 1), so server 0
learns only the sums over the evaluated users. Which reply to send is decided
by the user's own config, never by what server 0 asks for.
"""

from __future__ import annotations

import time

from flwr.app import Context, RecordDict

from clients import two_server as ts
from clients.environment import ClientEnv
from clients.local_training import evaluate_locally
from clients.private_state import device_state_dir, load_private
from schemas import common
from schemas import two_server as ts_schema
from schemas.plaintext import parse_model_content

TWO_SERVER_PROTOCOLS = ("secemb", "secfedrec")


def on_evaluate(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    start = time.perf_counter()
    secure = env.cfg.strategy.name in TWO_SERVER_PROTOCOLS
    if secure:
        rnd, pub, run, bits = ts_schema.parse_eval_message(content)
        ts.check_pinned_key(pub, env, context)
    table, dense = parse_model_content(content, env.n_items, env.spec.row_dim, env.spec.dense_size)
    private = load_private(context, env.spec, env.user.user_id, env.seed, device_state_dir(env, context))
    sse, count = evaluate_locally(env.spec, table, dense, private["params"], env.user.test_items,
                                  env.user.test_ratings, env.user.user_features, env.item_features)
    if not secure:
        return common.evaluation_reply(sse, count, time.perf_counter() - start)
    metrics = ts.eval_metric_codec(env, bits).encode(sse, count, "test error")
    share0, box = ts.sealed_metric_shares(pub, run, rnd, env.user.user_id, metrics)
    return ts_schema.secure_eval_reply(share0, box, ts.telemetry_seconds(env, time.perf_counter() - start))


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    common.EVALUATE: on_evaluate,
}
