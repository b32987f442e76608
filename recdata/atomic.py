"""Atomic file writes for what the project keeps on disk: run records, checkpoints, a device's own state.

A crash mid-write must leave either the old file or the new one, never a torn
one (DESIGN "Nothing lost"): write to a temporary file in the same folder,
fsync it, then ``os.replace`` it over the target. It sits in the data package,
the lowest layer that does file I/O, so clients (device storage) and
simulations (run folder) share one implementation.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it and rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz of plain numeric arrays (object arrays would need pickling: refused)."""
    for name, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"array {name!r} is not numeric (object arrays would need pickling)")
    atomic_write(path, lambda fh: np.savez(fh, **{k: np.ascontiguousarray(v) for k, v in arrays.items()}))
