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
writes ``<dir>/user-<id>.npz`` after every update and reads it when its
``Context.state`` holds no state from before the round at hand. This file is
the device's, never the server's: no server code reads it, and nothing in it
is sent anywhere.

Why versions: a run resumes from its last checkpoint, so rounds that ran after
it are redone, and a user who took part in them had already moved its state on.
Each state is therefore kept under the round that produced it, and a round t
starts from the newest state of a round before t (evaluation after round t: of
t or before). A write for round t drops the states of rounds t and later (a
timeline the resume abandoned) and those older than the newest one a resume
could need: the server keeps the last :data:`schemas.config.CHECKPOINTS_KEPT`
checkpoints, every ``checkpoint_every`` rounds (public run config), so no
resume can go back beyond the older of those before t. The redone rounds then
equal the lost ones (tests/test_resume.py).

The files are plain numeric ``.npz`` archives (no pickles), written to a
temporary file and renamed so a crash never leaves a half-written state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context

from clients.environment import ClientEnv
from models import init_private
from recdata.atomic import atomic_savez
from models.spec import ModelSpec
from schemas.config import CHECKPOINTS_KEPT

KEY = "private"
ROUND = "round"  # the round that produced a state kept in Context.state
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


def oldest_needed(rnd: int, every: int) -> int:
    """The earliest round a resume of a run now in round ``rnd`` can continue after: the older of the last
    ``CHECKPOINTS_KEPT`` checkpoint rounds (multiples of ``every``) before ``rnd``; ``rnd`` without checkpoints."""
    if every <= 0:
        return rnd
    return max(0, ((rnd - 1) // every - (CHECKPOINTS_KEPT - 1)) * every)


def _versions(names: list[str], key: str) -> dict[int, list[str]]:
    """The stored rounds of ``key`` (entries ``<key>@<round>.<name>``) and each one's entry names."""
    prefix = f"{key}@"
    found: dict[int, list[str]] = {}
    for name in names:
        if name.startswith(prefix):
            tag, _, _field = name[len(prefix):].partition(".")
            if tag.isdigit():
                found.setdefault(int(tag), []).append(name)
    return found


def store_arrays(directory: Path | None, user_id: int, key: str, arrays: dict[str, np.ndarray], rnd: int,
                 keep_from: int) -> None:
    """Write ``arrays`` as round ``rnd``'s version of ``key`` in the user's device file (other keys kept).

    Dropped: ``key``'s versions of round ``rnd`` and later (an abandoned timeline's), and those older than the
    newest version of a round <= ``keep_from`` (:func:`oldest_needed`). Atomic: written to a temporary file in
    the same folder, then ``os.replace``d.
    """
    if directory is None:
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = _user_file(directory, user_id)
    entries: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path, allow_pickle=False) as old:
            versions = _versions(old.files, key)
            floor = max((r for r in [*versions, rnd] if r <= min(keep_from, rnd)), default=0)
            dropped = {n for r, names in versions.items() if r >= rnd or r < floor for n in names}
            entries = {name: old[name] for name in old.files if name not in dropped}
    entries.update({f"{key}@{int(rnd)}.{name}": np.ascontiguousarray(value) for name, value in arrays.items()})
    atomic_savez(path, entries)


def restore_arrays(directory: Path | None, user_id: int, key: str,
                   before: int | None = None) -> tuple[int, dict[str, np.ndarray]] | None:
    """The newest version of ``key`` in the user's device file of a round < ``before`` (any round: None), as
    (round, arrays); None when there is none."""
    if directory is None:
        return None
    path = _user_file(Path(directory), user_id)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        versions = {r: names for r, names in _versions(data.files, key).items() if before is None or r < before}
        if not versions:
            return None
        rnd = max(versions)
        prefix = f"{key}@{rnd}."
        return rnd, {name[len(prefix):]: data[name].copy() for name in versions[rnd]}


def in_context(context: Context, key: str, before: int | None) -> dict[str, np.ndarray] | None:
    """``key``'s state in ``Context.state`` if it is of a round < ``before`` (any: None), without its round."""
    if key not in context.state:
        return None
    rec = context.state[key]
    if before is not None and int(rec[ROUND].numpy()[0]) >= before:
        return None
    return {k: rec[k].numpy() for k in rec.keys() if k != ROUND}


def load_version(context: Context, directory: Path | None, user_id: int, key: str,
                 before: int | None) -> dict[str, np.ndarray] | None:
    """``key``'s state as of the newest round < ``before`` (None: the newest): ``Context.state`` first, else the
    device's own file (a new context after a resume, or a round redone after one); None when neither has one."""
    found = in_context(context, key, before)
    if found is None:
        stored = restore_arrays(directory, user_id, key, before)
        found = stored[1] if stored is not None else None
    return found


def keep_in_context(context: Context, key: str, arrays: dict[str, np.ndarray], rnd: int) -> None:
    """Keep round ``rnd``'s state of ``key`` in ``Context.state`` (the newest one; the disk keeps older ones)."""
    context.state[key] = ArrayRecord({**{k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()},
                                      ROUND: Array(np.array([int(rnd)], dtype=np.int64))})


def load_private(context: Context, spec: ModelSpec, user_id: int, seed: int, device_dir: Path | None = None,
                 before: int | None = None) -> dict[str, np.ndarray]:
    """Private params plus Adam moments (``params``, ``m``, ``v``, ``step``) as of the newest round < ``before``
    (training round t: before=t; evaluation after it: t + 1; None: the newest).

    :func:`load_version`, else the seeded init.
    """
    found = load_version(context, device_dir, user_id, KEY, before)
    if found is not None:
        return {k: found[k] for k in ("params", "m", "v", "step")}
    params = init_private(spec, user_id, seed).astype(np.float32)
    zeros = np.zeros_like(params)
    return {"params": params, "m": zeros, "v": zeros.copy(), "step": np.zeros(1, dtype=np.int64)}


def save_private(context: Context, state: dict[str, np.ndarray], rnd: int, every: int, user_id: int | None = None,
                 device_dir: Path | None = None) -> None:
    """Keep round ``rnd``'s state in ``Context.state`` and, when the device has a state folder, on its disk
    (``every``: the run's ``checkpoint_every``, which bounds the versions kept)."""
    keep_in_context(context, KEY, state, rnd)
    if device_dir is not None and user_id is not None:
        store_arrays(device_dir, user_id, KEY, state, rnd, oldest_needed(rnd, every))
