"""The Flower ClientApp: routes each protocol's message types to its client module.

One ClientApp serves every protocol; the message type (``<category>.<action>``)
selects the handler. ``app`` is what ``flwr run .`` and SuperNodes load (the
config comes from the run config's Hydra overrides); :func:`make_client_app`
binds an already composed config for ``python -m simulations.run``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients import distributed_mf, evaluation, fedmf, plaintext, registration, secemb, secfedrec
from clients.environment import ClientEnv, client_env
from schemas.config import AppConfig

log = logging.getLogger("secrec.client")

# Each protocol's client module exports HANDLERS keyed by its schema's message types.
PROTOCOL_CLIENTS = (registration, evaluation, plaintext, distributed_mf, fedmf, secemb, secfedrec)
Handler = Callable[[RecordDict, Context, ClientEnv], RecordDict]


def all_handlers() -> dict[str, Handler]:
    """message type -> handler, over every protocol; a type claimed twice is a programming error."""
    table: dict[str, Handler] = {}
    for module in PROTOCOL_CLIENTS:
        for message_type, handler in module.HANDLERS.items():
            if message_type in table:
                raise RuntimeError(f"message type {message_type!r} has two handlers")
            table[message_type] = handler
    return table


def make_client_app(cfg: AppConfig | None = None, mods: list | None = None) -> ClientApp:
    """A ClientApp using ``cfg``, or composing it from the run config when ``None``.

    ``mods`` are Flower client mods applied to every handler (tests use them to
    inject faulty replies through Flower's own mechanism).
    """
    app = ClientApp(mods=mods or [])

    def config_of(context: Context) -> dict[str, Any]:
        if cfg is not None:
            return cfg
        from simulations.server_app import cfg_from_run_config

        return cfg_from_run_config(dict(context.run_config))

    def bind(target: Handler) -> Callable[[Message, Context], Message]:
        def handler(msg: Message, context: Context) -> Message:
            env = client_env(config_of(context), context)
            return Message(target(msg.content, context, env), reply_to=msg)

        return handler

    decorators = {"query": app.query, "train": app.train, "evaluate": app.evaluate}
    for message_type, target in all_handlers().items():
        category, _, action = message_type.partition(".")
        decorators[category](action or "default")(bind(target))
    return app


app = make_client_app()
