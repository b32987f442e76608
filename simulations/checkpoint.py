"""Checkpoints of a run's server-side state, and resuming from them (DESIGN "Nothing lost").

A checkpoint is two files in ``<run folder>/checkpoint/``:

- ``round-<r>.npz``: the strategy's :meth:`checkpoint_state` arrays (public
  item table and dense parameters, Adam's ``exp_avg``/``exp_avg_sq``/``step``
  as numpy arrays, strategy extras such as SecEmb's m' or distributed MF's V),
  written with ``np.savez`` of plain numeric arrays and read back with
  ``np.load(allow_pickle=False)``: nothing is ever pickled;
- ``round-<r>.json``: the round number and the run's config, which a resume
  compares with its own.

Both are written to temporary files and renamed, the ``.npz`` first, so a
sidecar always names a complete archive. The last :data:`schemas.config.CHECKPOINTS_KEPT` are kept
(devices keep the private states a resume from any of them needs).

What is not in a checkpoint, and why it need not be: the client sampler
(:meth:`strategies.base.RecStrategy.sample_users` is a function of (seed,
round)), and the users' private parameters, which live on the users' devices
(:mod:`clients.private_state`; in simulation ``<run folder>/devices``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from recdata.atomic import atomic_savez, atomic_write_bytes
from schemas.config import CHECKPOINTS_KEPT, AppConfig, to_dict
from simulations.results import RUN_OUTPUTS, read_records, rewrite_records

CHECKPOINT_DIR = "checkpoint"
DEVICES_DIR = "devices"
# Keys a resume may change; everything else must match the checkpointed run.
# Keys a resume may change: what to run next, and how the simulation runs (timeouts, CPUs, the Ray cluster, how
# many nodes simulate the users, how long devices hold replies), none of which changes a result; the devices'
# folder has its own rule (check_resumable).
RESUMABLE_CHANGES = ("resume", "rounds", "simulation.reply_timeout", "simulation.register_timeout",
                     "simulation.num_cpus_per_client", "simulation.ray_address", "simulation.node_pool",
                     "simulation.reply_hold")
# Strategies whose state cannot be checkpointed here (see :func:`check_resumable`).
NOT_RESUMABLE = {
    "fedmf": ("strategy=fedmf cannot be resumed: the server's item matrix is Paillier ciphertext under a key "
              "only the users hold, and a restarted run makes a new key pair, so the checkpointed C_V could not "
              "be decrypted; run it again from round 1"),
}
_NAME = re.compile(r"^round-(\d+)\.json$")
log = logging.getLogger("secrec")
_C = TypeVar("_C", bound="CheckpointHead")


class ResumeError(RuntimeError):
    """A run folder that cannot be resumed as asked; the message says why and what to do."""


@dataclass(frozen=True)
class CheckpointHead:
    """What a checkpoint says about itself: its round and its run's config, with the archive's structure
    checked (every array listed, numeric, no pickles) but no array read. Enough to decide whether and from
    where a run resumes, without loading the arrays the resumed run then loads once."""

    round: int
    config: dict[str, Any]


@dataclass(frozen=True)
class Checkpoint(CheckpointHead):
    arrays: dict[str, np.ndarray]


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def save_checkpoint(out_dir: str | Path, rnd: int, arrays: dict[str, np.ndarray], cfg: AppConfig) -> Path:
    """Write round ``rnd``'s checkpoint atomically; keep only the last ``CHECKPOINTS_KEPT``. Returns the .npz path."""
    folder = checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    npz = folder / f"round-{rnd}.npz"
    atomic_savez(npz, arrays)
    sidecar = {"round": int(rnd), "arrays": sorted(arrays), "config": to_dict(cfg)}
    atomic_write_bytes(folder / f"round-{rnd}.json", json.dumps(sidecar, indent=2).encode())
    for old in _rounds(folder)[:-CHECKPOINTS_KEPT]:
        for suffix in (".json", ".npz"):
            (folder / f"round-{old}{suffix}").unlink(missing_ok=True)
    return npz


def _rounds(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))


def load_latest_checkpoint(out_dir: str | Path) -> Checkpoint:
    """The newest checkpoint in the run folder that reads back whole; :class:`ResumeError` when there is none.

    Writes are atomic, so a half-written file never carries a checkpoint's name; a file damaged later (a
    copy cut short, a disk error) is skipped with a warning for the one before it (``CHECKPOINTS_KEPT`` are kept),
    and when none reads, the error names each file and what is wrong with it, rather than a traceback."""
    return _newest(out_dir, _read_checkpoint)


def latest_checkpoint_head(out_dir: str | Path) -> CheckpointHead:
    """The round and config of the checkpoint :func:`load_latest_checkpoint` would load, read without its
    arrays, for the checks made before a run starts. The two pick the same checkpoint unless an archive's
    array data (not its structure) is damaged, which only reading it finds; the full load then falls back
    with its warning, and :func:`open_run_folder` checks the checkpoint it actually loaded."""
    return _newest(out_dir, _read_head)


def _newest(out_dir: str | Path, read: Callable[[Path, int], _C]) -> _C:
    folder = checkpoint_dir(out_dir)
    rounds = _rounds(folder)
    if not rounds:
        raise ResumeError(f"resume=true but {folder} holds no checkpoint; the first run needs "
                          "checkpoint_every=K (K > 0), and hydra.run.dir must name its folder")
    problems = []
    for rnd in reversed(rounds):
        try:
            return read(folder, rnd)
        except UnreadableCheckpoint as err:
            problems.append(str(err))
            log.warning("skipping an unreadable checkpoint: %s", err)
    raise ResumeError(f"no checkpoint in {folder} can be read: " + "; ".join(problems))


class UnreadableCheckpoint(Exception):
    """One checkpoint's files are missing, damaged or inconsistent."""


_ARRAY_HEADER = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_head(folder: Path, rnd: int) -> CheckpointHead:
    """Round ``rnd``'s sidecar and archive structure, every field checked: the sidecar names this round, holds
    a config and lists exactly the archive's arrays; the archive is a zip of ``.npy`` members whose headers
    declare numeric arrays (object arrays would need pickles). Reads the zip directory and each member's
    header, not the array data."""
    where = f"round-{rnd}"
    try:
        sidecar = json.loads((folder / f"{where}.json").read_text())
        with zipfile.ZipFile(folder / f"{where}.npz") as archive:
            members = archive.namelist()
            dtypes = {}
            for member in members:
                with archive.open(member) as f:
                    header = _ARRAY_HEADER.get(np.lib.format.read_magic(f))
                    if header is None:
                        raise ValueError(f"{member} is not a .npy array of format 1.0 or 2.0")
                    dtypes[member] = header(f)[2]
    except (OSError, UnicodeDecodeError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            RuntimeError) as err:  # the last two: a member compressed by an unknown method, or encrypted
        raise UnreadableCheckpoint(f"{where}: {type(err).__name__}: {err}") from err
    if not isinstance(sidecar, dict) or sidecar.get("round") != rnd or not isinstance(sidecar.get("config"), dict):
        raise UnreadableCheckpoint(f"{where}.json does not describe round {rnd} with its run's config")
    names = sorted(m.removesuffix(".npy") for m in members)
    if any(not m.endswith(".npy") for m in members) or sidecar.get("arrays") != names:
        raise UnreadableCheckpoint(f"{where}.npz holds {sorted(members)}, its sidecar lists {sidecar.get('arrays')}")
    if any(not (np.issubdtype(d, np.number) or d == np.bool_) for d in dtypes.values()):
        raise UnreadableCheckpoint(f"{where}.npz holds a non-numeric array")
    return CheckpointHead(round=rnd, config=sidecar["config"])


def _read_checkpoint(folder: Path, rnd: int) -> Checkpoint:
    """Round ``rnd``'s checkpoint: :func:`_read_head`'s checks, then the arrays (``allow_pickle=False``; the
    zip's CRCs catch damaged array data)."""
    head = _read_head(folder, rnd)
    try:
        with np.load(folder / f"round-{rnd}.npz", allow_pickle=False) as data:
            arrays = {name: data[name].copy() for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise UnreadableCheckpoint(f"round-{rnd}.npz: {type(err).__name__}: {err}") from err
    return Checkpoint(round=rnd, config=head.config, arrays=arrays)


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "",
                       defaults: dict[str, Any] | None = None) -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (allowed changes excluded).

    A key the saved config lacks is no difference while the current value is the key's default: a field
    added to the config since the run was saved, whose default keeps what runs did before it (the rule for
    adding one), so an earlier run or checkpoint stays usable."""
    if defaults is None:
        defaults = to_dict(AppConfig())
    out: list[str] = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        default = defaults.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_differences(a, b, f"{dotted}.", default if isinstance(default, dict) else {}))
        elif key not in saved and b == default:
            continue
        elif a != b:
            out.append(f"{dotted} (run: {a!r}, now: {b!r})")
    return out


def check_resumable(cfg: AppConfig, ckpt: CheckpointHead) -> None:
    """Refuse a resume whose config differs from the checkpointed run's in anything but RESUMABLE_CHANGES.

    The devices' folder may differ when both are a run folder's own ``devices`` (prepare_simulation's choice):
    a run folder moved or copied whole takes its devices along, so it can be resumed where it now is.
    """
    saved = ckpt.config
    then, now = (saved.get("simulation") or {}).get("device_state_dir"), cfg.simulation.device_state_dir
    if then and now and Path(then).name == Path(now).name == DEVICES_DIR:
        saved = {**saved, "simulation": {**saved["simulation"], "device_state_dir": now}}
    diffs = config_differences(saved, to_dict(cfg))
    if diffs:
        raise ResumeError("resume=true needs the same overrides as the run being resumed (only rounds may "
                          "change); differs in: " + "; ".join(diffs))
    dp = cfg.dp
    if dp.enabled and dp.noise_multiplier is None and int(cfg.rounds) != int(ckpt.config["rounds"]):
        raise ResumeError(f"a dp.target_epsilon run cannot change rounds on resume (run: {ckpt.config['rounds']}, "
                          f"now: {cfg.rounds}): its noise multiplier is solved from rounds, so the rounds already "
                          "run used another one and accounting them at the new one would misstate epsilon; "
                          "resume with the run's rounds")
    if int(cfg.rounds) <= ckpt.round:
        raise ResumeError(f"nothing to resume: the last checkpoint is round {ckpt.round} and rounds={cfg.rounds}; "
                          "pass a larger rounds= to continue training")


@dataclass(frozen=True)
class Resume:
    """Where a ``resume=true`` run continues: its last checkpoint, the records of rounds 1..that round, and the
    records of the rounds that ran after it (redone, and dropped from records.jsonl)."""

    checkpoint: Checkpoint
    prior: list[dict[str, Any]]
    redone: list[dict[str, Any]]

    @property
    def lost(self) -> list[int]:
        """The rounds that ran after the checkpoint and are redone."""
        return [int(r["round"]) for r in self.redone]

    @property
    def released(self) -> list[dict[str, Any]]:
        """The records of every round that already ran, redone ones included: what DP accounts on resume.

        Why the redone rounds too: their noised aggregates reached the servers before the stop, and the redone
        rounds release fresh ones, so both count (a round in flight at the stop, with no record, is not seen).
        """
        return [*self.prior, *self.redone]


def open_run_folder(cfg: AppConfig, out_dir: str | Path) -> Resume | None:
    """Make the run folder ready, for both engines: a fresh run clears an earlier run's checkpoints and records
    (None); ``resume=true`` loads the last checkpoint, checks it against ``cfg`` and rewrites ``records.jsonl``
    to the checkpointed rounds (:class:`ResumeError` when the folder's records do not hold them all)."""
    if not cfg.resume:
        earlier = _rounds(checkpoint_dir(out_dir))
        if earlier:  # the folder holds a run that could have been resumed: say so before it is gone
            log.warning("%s held an earlier run's checkpoints (last: round %d); this run starts afresh and clears "
                        "them, with its records and results (resume=true continues a run)", out_dir, max(earlier))
        clear_checkpoints(out_dir)
        rewrite_records(out_dir, [])
        for stale in RUN_OUTPUTS:  # an earlier run's results would be read as this run's until it writes its own
            (Path(out_dir) / stale).unlink(missing_ok=True)
        return None
    ckpt = load_latest_checkpoint(out_dir)
    check_resumable(cfg, ckpt)
    appended = read_records(out_dir)
    prior = [r for r in appended if int(r["round"]) <= ckpt.round]
    redone = [r for r in appended if int(r["round"]) > ckpt.round]
    if [int(r["round"]) for r in prior] != list(range(1, ckpt.round + 1)):
        raise ResumeError(f"{out_dir}/records.jsonl does not hold rounds 1..{ckpt.round} of the checkpointed run")
    rewrite_records(out_dir, prior)
    return Resume(ckpt, prior, redone)


def refuse_unsupported(cfg: AppConfig) -> None:
    """Strategies that cannot resume say so before anything starts."""
    reason = NOT_RESUMABLE.get(cfg.strategy.name)
    if cfg.resume and reason:
        raise ResumeError(reason)


def prepare_simulation(cfg: AppConfig, out_dir: str | Path) -> AppConfig:
    """Point the simulated devices at ``<run folder>/devices`` on checkpointing or resumed runs.

    Simulated devices have no disk of their own, so the run folder lends them
    one; the server side never reads it. A fresh run clears it, so users do not
    start from a previous run's private state.
    """
    refuse_unsupported(cfg)
    sim = cfg.simulation
    if sim.device_state_dir is None and (cfg.checkpoint_every or cfg.resume):
        sim.device_state_dir = str(Path(out_dir).resolve() / DEVICES_DIR)
    if not cfg.resume and sim.device_state_dir is not None:
        devices = Path(sim.device_state_dir)
        if devices.is_dir() and devices.resolve() == (Path(out_dir).resolve() / DEVICES_DIR):
            shutil.rmtree(devices)
    return cfg


def clear_checkpoints(out_dir: str | Path) -> None:
    """A fresh run in a used folder must not leave the old run's checkpoints to be resumed by mistake."""
    folder = checkpoint_dir(out_dir)
    for rnd in _rounds(folder):
        for suffix in (".json", ".npz"):
            (folder / f"round-{rnd}{suffix}").unlink(missing_ok=True)
