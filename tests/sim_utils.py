"""Run real Flower simulations from tests, optionally recording what the server receives.

``RecordingGrid`` wraps the Grid Flower hands to the ServerApp and keeps every
reply content the server gets: that is the server's view, which the audit
tests inspect. Client-side faults are injected with Flower client mods (a
real Flower mechanism), never by replacing the code under test.

All simulations of a pytest session share one local Ray instance. Flower's
Ray backend starts Ray when none is running and shuts it down at the end of
every run; starting and stopping it costs ~6 s here, about half of a small
simulation. So ``run_sim`` starts Ray once (with what Flower's backend would
pass: 2 CPUs, no dashboard, the driver's ``sys.path`` as the workers'
PYTHONPATH) and keeps Flower's end-of-run ``ray.shutdown()`` from stopping
it; Flower still creates and kills its own actor pool in every run, so no
client state crosses simulations. Sharing a cluster across tests is what
Ray's own testing guide recommends ("Tips for testing Ray programs", tip 2).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from unittest import mock

import ray
from flwr.app import Message
from flwr.serverapp import Grid, ServerApp
from omegaconf import OmegaConf

from simulations.client_app import make_client_app
from simulations.config import compose_config, to_app_config
from recdata.dataset import dataset_meta
from simulations.server_app import run_server
from strategies.base import simulated_node_count

SMALL = ["dataset=synthetic", "dataset.n_users=12", "dataset.n_items=40", "dataset.mean_ratings=8",
         "clients_per_round=6", "rounds=2", "train.eval_every=1", "model.dim=8"]


_RUNS: dict[str, dict] = {}


def cached_run(tmp_path_factory, overrides: list[str]) -> dict:
    """``run_sim`` once per distinct composed configuration in this pytest session; its results.

    Keyed on the composed config (not the override strings, whose order and spelling vary), here in a
    module every test file imports under the same name, so tests in different files share their runs.
    """
    key = json.dumps(OmegaConf.to_container(compose_config(list(overrides)), resolve=True), sort_keys=True)
    if key not in _RUNS:
        _RUNS[key] = run_sim(tmp_path_factory.mktemp("run"), list(overrides))[0]
    return _RUNS[key]


class RecordingGrid(Grid):
    """Delegates to Flower's grid and records (message type, reply content) pairs."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.received: list[tuple[str, int, Any]] = []
        self.sent: list[tuple[str, int, Any]] = []
        # (message type, instruction's created_at and ttl, its reply's created_at and ttl): the metadata's clock
        self.stamps: list[tuple[str, float, float, float, float]] = []

    def set_run(self, run):  # pragma: no cover - delegated
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, *args, **kwargs):  # pragma: no cover - delegated
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages):  # pragma: no cover - delegated
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids):  # pragma: no cover - delegated
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages = list(messages)
        for m in messages:
            self.sent.append((m.metadata.message_type, m.metadata.dst_node_id, m.content))
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        types = {m.metadata.dst_node_id: m.metadata.message_type for m in messages}
        sent = {m.metadata.message_id: m.metadata for m in messages}  # ids Flower set while sending them
        for r in replies:
            if not r.has_error():
                self.received.append((types.get(r.metadata.src_node_id, "?"), r.metadata.src_node_id, r.content))
                ins = sent[r.metadata.reply_to_message_id]
                self.stamps.append((ins.message_type, ins.created_at, ins.ttl, r.metadata.created_at, r.metadata.ttl))
        return replies


RAY_INIT_ARGS = {"num_cpus": 2, "include_dashboard": False}  # what every run's backend_config asks Ray for
_ray_shutdown = ray.shutdown


def _shared_ray() -> None:
    """Start this session's Ray once; it is stopped when the test process exits."""
    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join([*sys.path, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(**RAY_INIT_ARGS, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    atexit.register(_ray_shutdown)


def run_sim(tmp_path: Path, overrides: list[str], client_mods: list | None = None,
            record: bool = False) -> tuple[dict[str, Any], RecordingGrid | None]:
    """Run one simulation; return results.json and, if asked, the recording grid."""
    from flwr.simulation import run_simulation

    cfg = to_app_config(compose_config(overrides))
    meta = dataset_meta(cfg)
    holder: dict[str, RecordingGrid] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context) -> None:
        if record:
            grid = holder.setdefault("grid", RecordingGrid(grid))
        run_server(grid, cfg, str(tmp_path))

    client = make_client_app(cfg, mods=client_mods)
    _shared_ray()
    with warnings.catch_warnings(), mock.patch.object(ray, "shutdown", lambda *a, **k: None):
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=server, client_app=client,
                       num_supernodes=simulated_node_count(cfg, meta.n_users),
                       backend_config={"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
                                       "init_args": RAY_INIT_ARGS})
    path = tmp_path / "results.json"
    if not path.exists():
        raise AssertionError("the simulation wrote no results.json (the ServerApp failed; see the log)")
    return json.loads(path.read_text()), holder.get("grid")


def run_entry_sim(tmp_path: Path, overrides: list[str]) -> dict[str, Any]:
    """Run one simulation through the entry point's own ServerApp (``make_server_app``); return its outcome
    (``error``: a user error's one line, or ``stopped``), which ``python -m simulations.run`` reports."""
    from flwr.simulation import run_simulation

    from simulations.server_app import make_server_app

    cfg = to_app_config(compose_config(overrides))
    outcome: dict[str, Any] = {}
    _shared_ray()
    with warnings.catch_warnings(), mock.patch.object(ray, "shutdown", lambda *a, **k: None):
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=make_server_app(cfg, str(tmp_path), outcome), client_app=make_client_app(cfg),
                       num_supernodes=simulated_node_count(cfg, dataset_meta(cfg).n_users),
                       backend_config={"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
                                       "init_args": RAY_INIT_ARGS})
    return outcome
