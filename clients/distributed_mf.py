"""Client of ``distributed_mf``: FedMF Algorithm 1 with plaintext gradient uploads."""

from __future__ import annotations

import time

from flwr.app import Context, RecordDict

from clients.environment import ClientEnv
from clients.fedmf_common import (hyper, load_user_vector, rated_items, save_user_vector, scatter_rows,
                                  upload_items)
from models.fedmf_mf import squared_error, user_step
from schemas import common
from schemas import distributed_mf as schema


def on_update(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    start = time.perf_counter()
    dim = int(env.cfg.model.dim)
    _rnd, V = schema.parse_update_message(content, env.n_items, dim)
    items_r, ratings = rated_items(env)
    u_new, grads, loss = user_step(load_user_vector(context, env), V[items_r], ratings, hyper(env))
    save_user_vector(context, u_new)
    s = env.cfg.strategy
    items = upload_items(s.mode, items_r, env.n_items, int(s.pad_to or 0))
    rows = scatter_rows(items, items_r, grads)
    return schema.update_reply(items, rows, loss, len(ratings), time.perf_counter() - start)


def on_evaluate(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    start = time.perf_counter()
    V = schema.parse_evaluate_message(content, env.n_items, int(env.cfg.model.dim))
    u = load_user_vector(context, env)
    sse, count = squared_error(u, V[env.user.test_items], env.user.test_ratings.astype(float))
    return common.evaluation_reply(sse, count, time.perf_counter() - start)


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.UPDATE: on_update,
    schema.EVALUATE: on_evaluate,
}
