"""Local test evaluation for the model-based protocols.

The server sends the full public model; the user computes the squared error of
its held-out ratings with its private parameters and reports only the sum and
the count. (The server learns each user's test error sum: a documented leak of
evaluation, not of training; FedMF's client evaluates the same way.)
"""

from __future__ import annotations

import time

from flwr.app import Context, RecordDict

from clients.environment import ClientEnv
from clients.local_training import evaluate_locally
from clients.private_state import load_private
from schemas import common
from schemas.plaintext import parse_model_content


def on_evaluate(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    start = time.perf_counter()
    table, dense = parse_model_content(content, env.n_items, env.spec.row_dim, env.spec.dense_size)
    private = load_private(context, env.spec, env.user.user_id, env.seed)
    sse, count = evaluate_locally(env.spec, table, dense, private["params"], env.user.test_items,
                                  env.user.test_ratings, env.user.user_features, env.item_features)
    return common.evaluation_reply(sse, count, time.perf_counter() - start)


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    common.EVALUATE: on_evaluate,
}
