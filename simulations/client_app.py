"""The Flower ClientApp: routes each protocol's message types to its client module.

One ClientApp serves every protocol; the message type (``<category>.<action>``)
selects the handler. ``app`` is what ``flwr run .`` and SuperNodes load (the
config comes from the run config's Hydra overrides); :func:`make_client_app`
binds an already composed config for ``python -m simulations.run``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients.environment import ClientEnv, client_env
from schemas import common

log = logging.getLogger("secrec.client")

# (category, action) -> "module:function"; each handler is f(content, context, env) -> RecordDict
HANDLERS: dict[tuple[str, str], str] = {
    ("query", "register"): "simulations.client_app:_on_register",
    ("evaluate", "default"): "clients.evaluation:on_evaluate",
    ("query", "plain_request"): "clients.plaintext:on_request",
    ("train", "plain_update"): "clients.plaintext:on_update",
    ("train", "dmf_update"): "clients.distributed_mf:on_update",
    ("evaluate", "mf"): "clients.distributed_mf:on_evaluate",
    ("query", "paillier_setup"): "clients.fedmf:on_key_setup",
    ("query", "paillier_key"): "clients.fedmf:on_key_delivery",
    ("train", "fedmf_update"): "clients.fedmf:on_update",
    ("evaluate", "fedmf"): "clients.fedmf:on_evaluate",
    ("query", "secemb_count"): "clients.secemb:on_count",
    ("query", "secemb_retrieve"): "clients.secemb:on_retrieve",
    ("train", "secemb_upload"): "clients.secemb:on_upload",
    ("train", "secfedrec_update"): "clients.secfedrec:on_update",
}


def _on_register(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    return common.register_reply(env.user.user_id)


def _resolve(target: str) -> Callable[[RecordDict, Context, ClientEnv], RecordDict]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def make_client_app(cfg: dict[str, Any] | None = None, mods: list | None = None) -> ClientApp:
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

    def bind(target: str) -> Callable[[Message, Context], Message]:
        def handler(msg: Message, context: Context) -> Message:
            env = client_env(config_of(context), context)
            return Message(_resolve(target)(msg.content, context, env), reply_to=msg)

        return handler

    decorators = {"query": app.query, "train": app.train, "evaluate": app.evaluate}
    for (category, action), target in HANDLERS.items():
        decorators[category](action)(bind(target))
    return app


app = make_client_app()
