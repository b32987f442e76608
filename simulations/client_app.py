"""The Flower ClientApp: routes each protocol's message types to its client module.

One ClientApp serves every protocol; the message type (``<category>.<action>``)
selects the handler. ``app`` is what ``flwr run .`` and SuperNodes load (the
config comes from the run config's Hydra overrides); :func:`make_client_app`
binds an already composed config for ``python -m simulations.run``.

Which user a node is. A SuperNode holds its own user: the ``partition-id`` of
its node config, whatever the server says. A virtual node of
``python -m simulations.run`` (a ClientApp bound to a config) instead
simulates the users the server assigns to it (:func:`schemas.common.assign_message`),
one per node by default, several with ``simulation.node_pool``. Each message
names its user (:func:`schemas.common.addressed`); the node runs the handlers
as that user, on that user's own part of ``Context.state``. Flower's own
``partition-id`` of a virtual node is as arbitrary, and the server cannot see
it without messaging every node.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients import distributed_mf, evaluation, fedmf, plaintext, registration, secemb, secfedrec
from clients import compressed, dp_fedrec, secemb_evaluation
from clients.environment import ClientEnv, client_env
from clients.reply_hold import held, reply_hold_seconds
from recdata.dataset import load_split
from schemas import common
from schemas.config import AppConfig
from schemas.validation import MessageError

log = logging.getLogger("secrec.client")

# Each protocol's client module exports HANDLERS keyed by its schema's message types.
PROTOCOL_CLIENTS = (registration, evaluation, plaintext, distributed_mf, fedmf, secemb, secemb_evaluation, secfedrec,
                    dp_fedrec, compressed)
Handler = Callable[[RecordDict, Context, ClientEnv], RecordDict]
ASSIGNED = "assigned_user"  # Context.state key (within a user's part) marking a user the server assigned here


def user_part(user: int) -> str:
    """The prefix of ``Context.state`` keys that belong to simulated user ``user`` on a shared node."""
    return f"user-{int(user)}/"


def simulated_user_mod(cfg: AppConfig) -> Callable[[Message, Context, Callable], Message]:
    """A Flower mod running a virtual node's handlers as the simulated user a message is for.

    A registration that assigns a user marks it in ``Context.state``; any
    other message must name (:func:`schemas.common.parse_addressee`) a user
    assigned earlier, or it is refused. The handlers then see that user as the
    node config's ``partition-id`` and, as ``Context.state``, only that user's
    entries (kept under :func:`user_part`, written back after the handler,
    also when it fails, as in-place changes would be). A message naming no
    user is passed on unchanged. The addressee record is removed first, so
    handlers see the protocol's content only.
    """

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        n_users = load_split(cfg).n_users
        user = common.parse_addressee(msg.content, n_users)
        if user is not None:
            del msg.content[common.SIMULATED_USER]
        state = context.state
        if msg.metadata.message_type == common.REGISTER and common.is_assignment(msg.content):
            assigned = common.parse_register_reply(msg.content, n_users)
            if user is not None and user != assigned:
                raise MessageError(f"a message for user {user} assigns user {assigned}")
            user = assigned
            state[user_part(user) + ASSIGNED] = ConfigRecord({"user": user})
        if user is None:
            return call_next(msg, context)
        prefix = user_part(user)
        if prefix + ASSIGNED not in state:
            raise MessageError(f"this node was not assigned user {user}")
        own = RecordDict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        try:
            return call_next(msg, dataclasses.replace(context, state=own,
                                                      node_config={**context.node_config, "partition-id": user}))
        finally:
            for key in [k for k in state.keys() if k.startswith(prefix)]:
                del state[key]
            for key, value in own.items():
                state[prefix + key] = value

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


def untimed_reply(content: RecordDict, msg: Message) -> Message:
    """The reply to ``msg``, stamped with ``msg``'s own creation time and time-to-live.

    Why: Flower stamps a reply with the moment it is made (``created_at``) and the instruction's time left
    then (``ttl``), so either tells server 0 how long this user worked, and a user's work grows with its
    rating count; DESIGN: timings reach a server only as sums. With the instruction's stamps the reply expires
    when Flower's would, and the SuperLink's check (a reply's created_at + ttl within its instruction's)
    holds with equality. What remains is when a reply arrives, which a network shows unless the device holds it
    (:mod:`clients.reply_hold`; see the README).
    """
    reply = Message(content, reply_to=msg)
    reply.metadata.created_at = msg.metadata.created_at
    reply.metadata.ttl = msg.metadata.ttl
    return reply


def make_client_app(cfg: AppConfig | None = None, mods: list | None = None) -> ClientApp:
    """A ClientApp using ``cfg``, or composing it from the run config when ``None``.

    ``mods`` are Flower client mods applied to every handler (tests use them to
    inject faulty replies through Flower's own mechanism). A ClientApp bound
    to ``cfg`` runs virtual nodes that simulate the user the server assigns
    (:func:`simulated_user_mod`, outermost); ``app`` (SuperNodes) keeps its own.
    """
    app = ClientApp(mods=([simulated_user_mod(cfg)] if cfg is not None else []) + list(mods or []))

    def config_of(context: Context) -> AppConfig:
        if cfg is not None:
            return cfg
        from simulations.server_app import cfg_from_run_config

        return cfg_from_run_config(dict(context.run_config))

    def bind(target: Handler) -> Callable[[Message, Context], Message]:
        def handler(msg: Message, context: Context) -> Message:
            run_cfg = config_of(context)
            with held(reply_hold_seconds(context.node_config, run_cfg), msg.metadata.message_type):
                content = target(msg.content, context, client_env(run_cfg, context))
            return untimed_reply(content, msg)

        return handler

    decorators = {"query": app.query, "train": app.train, "evaluate": app.evaluate}
    for message_type, target in all_handlers().items():
        category, _, action = message_type.partition(".")
        decorators[category](action or "default")(bind(target))
    return app


app = make_client_app()
