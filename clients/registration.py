"""Registration: a node tells the server which user (partition) it holds."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from clients.environment import ClientEnv
from schemas import common


def on_register(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    return common.register_reply(env.user.user_id)


HANDLERS = {common.REGISTER: on_register}
