"""The Flower ClientApp: routes each protocol's message types to its client module.

One ClientApp serves every protocol; the message type (``<category>.<action>``)
selects the handler. ``app`` is what ``flwr run .`` and SuperNodes load (the
config comes from the run config's Hydra overrides); :func:`make_client_app`
binds an already composed config for ``python -m simulations.run``.

Which user a node is. A SuperNode holds its own user: the ``partition-id`` of
its node config, whatever the server says. A virtual node of
``python -m simulations.run`` (a ClientApp bound to a config) instead
simulates the user the server assigns to it in its first message
(:func:`schemas.common.assign_message`), kept in its ``Context.state`` for
the run: Flower's own ``partition-id`` of a virtual node is as arbitrary, and
the server cannot see it without messaging every node.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients import distributed_mf, evaluation, fedmf, plaintext, registration, secemb, secfedrec
from clients import compressed, dp_fedrec, secemb_evaluation
from clients.environment import ClientEnv, client_env
from recdata.dataset import load_split
from schemas import common
from schemas.config import AppConfig
from schemas.validation import MessageError

log = logging.getLogger("secrec.client")

# Each protocol's client module exports HANDLERS keyed by its schema's message types.
PROTOCOL_CLIENTS = (registration, evaluation, plaintext, distributed_mf, fedmf, secemb, secemb_evaluation, secfedrec,
                    dp_fedrec, compressed)
Handler = Callable[[RecordDict, Context, ClientEnv], RecordDict]
ASSIGNED = "assigned_user"  # Context.state key of the user a simulated node was assigned


def simulated_user_mod(cfg: AppConfig) -> Callable[[Message, Context, Callable], Message]:
    """A Flower mod giving a virtual node's handlers (and later mods) the user the server assigned to it.

    The assignment arrives with the node's first message (a registration) and
    is kept in ``Context.state``; a second, different assignment is refused.
    The handlers then see that user as the node config's ``partition-id``;
    before any assignment the context is passed on unchanged.
    """

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        state = context.state
        if msg.metadata.message_type == common.REGISTER and common.is_assignment(msg.content):
            user = common.parse_register_reply(msg.content, load_split(cfg).n_users)
            if ASSIGNED in state and int(state[ASSIGNED]["user"]) != user:
                raise MessageError(f"this node already simulates user {int(state[ASSIGNED]['user'])}, not {user}")
            state[ASSIGNED] = ConfigRecord({"user": user})
        if ASSIGNED in state:  # the state object is shared, so what handlers store in it persists
            context = dataclasses.replace(context, node_config={**context.node_config,
                                                                "partition-id": int(state[ASSIGNED]["user"])})
        return call_next(msg, context)

    return mod


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
    inject faulty replies through Flower's own mechanism). A ClientApp bound
    to ``cfg`` runs virtual nodes that simulate the user the server assigns
    (:func:`simulated_user_mod`, outermost); ``app`` (SuperNodes) keeps its own.
    """
    app = ClientApp(mods=([simulated_user_mod(cfg)] if cfg is not None else []) + list(mods or []))

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
