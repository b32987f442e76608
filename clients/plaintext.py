"""Client side of the ``plaintext`` protocol (see :mod:`schemas.plaintext`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Context, RecordDict

from clients.environment import ClientEnv
from clients.item_selection import ratings_of, truncate_items
from clients.local_training import train_locally
from clients.private_state import device_state_dir, load_private, save_private
from schemas import plaintext as schema
from schemas.validation import MessageError, array_record

STATE = "plain_round"


@dataclass
class UpdateState:
    """What the request leaves for the update of the same round; checks the stage it is read at."""

    items: np.ndarray
    round: int
    stage: str = "update"

    def to_record(self) -> ArrayRecord:
        return array_record(stage=np.frombuffer(self.stage.encode(), dtype=np.uint8), items=self.items,
                            round=np.array([self.round], dtype=np.int64))

    @classmethod
    def from_record(cls, record: ArrayRecord, expected_stage: str) -> UpdateState:
        stage = record["stage"].numpy().tobytes().decode()
        if stage != expected_stage:
            raise MessageError(f"client state is at stage {stage!r}, this message needs {expected_stage!r}")
        return cls(items=record["items"].numpy(), round=int(record["round"].numpy()[0]), stage=stage)


def on_request(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Phase 1: name the items whose rows this user needs (truncated to m')."""
    rnd, m_prime = schema.parse_request_message(content)
    items = truncate_items(env.user.train_items, m_prime, env.seed, rnd, env.user.user_id)
    context.state[STATE] = UpdateState(items=items, round=rnd).to_record()
    return schema.request_reply(items)


def on_update(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    """Phase 2: train on the received rows, upload the public gradients."""
    start = time.perf_counter()
    rnd, rows, dense = schema.parse_update_message(content, env.spec.row_dim, env.spec.dense_size)
    if STATE not in context.state:
        raise MessageError("update received before this user's item request")
    saved = UpdateState.from_record(context.state[STATE], "update")
    items = saved.items
    if saved.round != rnd or rows.shape[0] != len(items):
        raise MessageError(f"update for round {rnd} with {rows.shape[0]} rows does not match the request")
    result = local_step(env, context, items, rows, dense, rnd)
    del context.state[STATE]
    return schema.update_reply(result.row_grads, result.dense_grad, result.loss, result.n_ratings,
                               time.perf_counter() - start)


def local_step(env: ClientEnv, context: Context, items: np.ndarray, rows: np.ndarray, dense: np.ndarray, rnd: int):
    """Train round ``rnd`` on the ratings of ``items`` given their rows, from the private state before that
    round; keep the new state as round ``rnd``'s (clients.private_state: a redone round starts where it did)."""
    local, ratings = ratings_of(items, env.user.train_items, env.user.train_ratings)
    device_dir = device_state_dir(env, context)
    private = load_private(context, env.spec, env.user.user_id, env.seed, device_dir, before=rnd)
    m = env.cfg.model
    result = train_locally(env.spec, rows, dense, private, local, ratings, env.user.user_features,
                           env.item_features[items[local]], float(m.lr), float(m.reg),
                           int(env.cfg.train.local_user_steps),
                           clip=float(env.cfg.dp.clip) if env.cfg.dp.enabled else None)
    save_private(context, result.private, rnd, int(env.cfg.checkpoint_every), env.user.user_id, device_dir)
    return result


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.REQUEST: on_request,
    schema.UPDATE: on_update,
}
