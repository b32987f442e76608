"""Client of ``secfedrec``: full download, local training, two-server additive sharing of the full gradient."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, RecordDict

from clients.environment import ClientEnv
from clients.plaintext import local_step
from clients.secemb import clip_to_bound, ring_codec
from crypto.sealed import seal
from crypto.secret_sharing import share
from schemas import plaintext as plain_schema
from schemas import secemb as secemb_schema
from schemas import secfedrec as schema


def on_update(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    start = time.perf_counter()
    rnd, _bits = schema.parse_round(content)
    pub, run, _ = secemb_schema.parse_server_info(content)
    table, dense = plain_schema.parse_model_content(content, env.n_items, env.spec.row_dim, env.spec.dense_size)
    items = np.unique(env.user.train_items)
    result = local_step(env, context, items, table[items], dense)
    full = np.zeros((env.n_items, env.spec.row_dim), dtype=np.float64)
    full[items] = result.row_grads
    flat = np.concatenate([full.reshape(-1), result.dense_grad.astype(np.float64)])
    codec, ring = ring_codec(env)
    s0, s1 = share(codec.to_ring(clip_to_bound(flat, codec, "gradient"), ring))
    box = seal(pub, schema.sealed_share_bytes(s1), secemb_schema.context(run, rnd, env.user.user_id, "secfedrec"))
    return schema.update_reply(s0, box, result.loss, result.n_ratings, time.perf_counter() - start)


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.UPDATE: on_update,
}
