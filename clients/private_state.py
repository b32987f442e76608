"""User-private parameters and their optimiser state, kept in ``Context.state`` (and on the device's disk).

They never leave the client. Initialisation is deterministic in (seed, user)
so a secure protocol and its plaintext twin start every user identically.

Why a disk copy: Flower keeps ``Context.state`` only for the life of a run.
When a run is resumed from a checkpoint (``resume=true``) Flower starts new
contexts, and without its private embedding and Adam moments a user would
restart from its initial values, so the resumed run would not end as the
uninterrupted one. A device therefore also keeps its private state on its
own storage when it is given a folder for it: the node config's
``device-state-dir`` (real deployment: the SuperNode's own disk) or the app
config's ``simulation.device_state_dir`` (simulation; the entry point points
it at ``<run folder>/devices`` on checkpointing or resumed runs). Each user
writes ``<dir>/user-<id>.npz`` after every update and reads it only when its
``Context.state`` is empty. This file is the device's, never the server's:
no server code reads it, and nothing in it is sent anywhere.

The files are plain numeric ``.npz`` archives (no pickles), written to a
temporary file and renamed so a crash never leaves a half-written state.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context

from clients.environment import ClientEnv
from models import init_private
from recdata.atomic import atomic_savez
from models.spec import ModelSpec

KEY = "private"
NODE_CONFIG_KEY = "device-state-dir"


def device_state_dir(env: ClientEnv, context: Context) -> Path | None:
    """The folder where this device keeps its own state: node config first, then the app config."""
    node = context.node_config.get(NODE_CONFIG_KEY)
    if node:
        return Path(str(node))
    configured = env.cfg.simulation.device_state_dir
    return Path(configured) if configured else None


def _user_file(directory: Path, user_id: int) -> Path:
    return Path(directory) / f"user-{int(user_id)}.npz"


def store_arrays(directory: Path | None, user_id: int, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` under ``key`` into the user's device file (other keys in it are kept).

    Atomic: written to a temporary file in the same folder, then ``os.replace``d.
    """
    if directory is None:
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = _user_file(directory, user_id)
    entries: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path, allow_pickle=False) as old:
            entries = {name: old[name] for name in old.files if not name.startswith(f"{key}.")}
    entries.update({f"{key}.{name}": np.ascontiguousarray(value) for name, value in arrays.items()})
    atomic_savez(path, entries)


def restore_arrays(directory: Path | None, user_id: int, key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under ``key`` in the user's device file, or None when there are none."""
    if directory is None:
        return None
    path = _user_file(Path(directory), user_id)
    if not path.exists():
        return None
    prefix = f"{key}."
    with np.load(path, allow_pickle=False) as data:
        found = {name[len(prefix):]: data[name].copy() for name in data.files if name.startswith(prefix)}
    return found or None


def load_private(context: Context, spec: ModelSpec, user_id: int, seed: int,
                 device_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Private params plus Adam moments (``params``, ``m``, ``v``, ``step``).

    ``Context.state`` first; when it is empty (a new context, e.g. after a
    resume) the device's own file in ``device_dir``; else the seeded init.
    """
    if KEY in context.state:
        rec = context.state[KEY]
        return {k: rec[k].numpy() for k in ("params", "m", "v", "step")}
    stored = restore_arrays(device_dir, user_id, KEY)
    if stored is not None:
        return {k: stored[k] for k in ("params", "m", "v", "step")}
    params = init_private(spec, user_id, seed).astype(np.float32)
    zeros = np.zeros_like(params)
    return {"params": params, "m": zeros, "v": zeros.copy(), "step": np.zeros(1, dtype=np.int64)}


def save_private(context: Context, state: dict[str, np.ndarray], user_id: int | None = None,
                 device_dir: Path | None = None) -> None:
    """Keep the state in ``Context.state`` and, when the device has a state folder, on its disk."""
    context.state[KEY] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
    if device_dir is not None and user_id is not None:
        store_arrays(device_dir, user_id, KEY, state)
