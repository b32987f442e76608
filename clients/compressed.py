"""Client side of the compressed plaintext protocol (see :mod:`schemas.compressed`).

The user downloads the full model, trains on every rated item exactly as the
plaintext client (:func:`clients.plaintext.local_step`), and uploads its
item-embedding update through the run's codec plus the uncompressed dense gradient.
"""

from __future__ import annotations

import secrets
import time

import numpy as np
from flwr.app import Context, RecordDict

from clients.environment import ClientEnv
from clients.item_selection import truncate_items
from clients.plaintext import local_step
from schemas import compressed as schema


def on_update(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    start = time.perf_counter()
    rnd, table, dense = schema.parse_update_message(content, env.n_items, env.spec.row_dim, env.spec.dense_size)
    items = truncate_items(env.user.train_items, None, env.seed, rnd, env.user.user_id)  # all rated, as plaintext orders them
    result = local_step(env, context, items, table[items], dense, rnd)
    codec, _rank = schema.codec_for(env.cfg)
    rng = np.random.default_rng(secrets.randbits(128))  # TernGrad's stochastic rounding; unused by the others
    payload = schema.encode_update(codec, env.n_items, items, result.row_grads, rng, rnd)
    return schema.update_reply(payload, result.dense_grad, result.loss, result.n_ratings,
                               time.perf_counter() - start)


HANDLERS = {schema.UPDATE: on_update}
