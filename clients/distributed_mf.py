"""Client of ``distributed_mf``: FedMF Algorithm 1 with plaintext gradient uploads.

The plaintext twin promises no privacy and keeps its per-user metrics (loss,
rating count, seconds) beside the upload; the step itself is
:func:`clients.fedmf_common.compute_upload`, shared with ``fedmf`` and the
leakage attack.
"""

from __future__ import annotations

import time

from flwr.app import Context, RecordDict

from clients.environment import ClientEnv
from clients.evaluation import mf_ranking
from clients.fedmf_common import compute_user_upload, load_user_vector
from models.fedmf_mf import squared_error
from schemas import common
from schemas import distributed_mf as schema


def on_update(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    start = time.perf_counter()
    dim = int(env.cfg.model.dim)
    rnd, V = schema.parse_update_message(content, env.n_items, dim)
    up = compute_user_upload(V, context, env, rnd)
    return schema.update_reply(up.items, up.rows, up.loss, up.n_ratings, time.perf_counter() - start)


def on_evaluate(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    start = time.perf_counter()
    rnd, V = schema.parse_evaluate_message(content, env.n_items, int(env.cfg.model.dim))
    u = load_user_vector(context, env, before=rnd + 1)
    sse, count = squared_error(u, V[env.user.test_items], env.user.test_ratings.astype(float))
    return common.evaluation_reply(sse, count, time.perf_counter() - start, mf_ranking(env, u, V))


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.UPDATE: on_update,
    schema.EVALUATE: on_evaluate,
}
