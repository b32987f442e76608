"""Client of ``secfedrec``: full download, local training, two-server additive sharing of the full gradient.

The shared vector is [all m rows' gradients, dense gradient, loss, 1]: the metrics reach
the servers only inside the shares, so server 0 learns their sum over the round's users and
nothing per user.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, RecordDict

from clients import two_server as ts
from clients.environment import ClientEnv
from clients.plaintext import local_step
from crypto.sealed import seal
from crypto.secret_sharing import share
from schemas import plaintext as plain_schema
from schemas import secfedrec as schema
from schemas.two_server import context as box_context


def on_update(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    start = time.perf_counter()
    rnd, _bits = schema.parse_round(content)
    pub, run, _ = ts.accept_server_info(content, context, env)
    table, dense = plain_schema.parse_model_content(content, env.n_items, env.spec.row_dim, env.spec.dense_size)
    items = np.unique(env.user.train_items)
    result = local_step(env, context, items, table[items], dense, rnd)
    full = np.zeros((env.n_items, env.spec.row_dim), dtype=np.float64)
    full[items] = result.row_grads
    codec, ring = ts.ring_codec(env)
    loss = ts.released_loss(env.cfg, result.loss)
    rows_ring, dense_metrics = ts.encode_upload(full, result.dense_grad, loss, codec, ring, ts.train_metric_codec(env))
    s0, s1 = share(np.concatenate([rows_ring.reshape(-1), dense_metrics]))
    box = seal(pub, schema.sealed_share_bytes(s1), box_context(run, rnd, env.user.user_id, "secfedrec"))
    return schema.update_reply(s0, box, ts.telemetry_seconds(env, time.perf_counter() - start))


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.UPDATE: on_update,
}
