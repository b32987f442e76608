"""Checked reads of received Flower records.

Every array or value taken out of a received message passes through these
functions: dtype, rank, shape, size and range are checked, and a violation
raises :class:`MessageError` naming the field. Nothing received is ever
unpickled: ``Array.numpy()`` is ``np.load(..., allow_pickle=False)``, so an
object array is refused, and the result is checked against the schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

MAX_ARRAY_BYTES = 1 << 31  # gRPC's 2 GiB message ceiling


class MessageError(ValueError):
    """A received message that does not match its schema."""


def require_record(content: RecordDict, name: str, kind: type) -> ArrayRecord | ConfigRecord | MetricRecord:
    """Return ``content[name]`` if it exists and is a record of the expected kind."""
    if name not in content:
        raise MessageError(f"missing record {name!r}")
    record = content[name]
    if not isinstance(record, kind):
        raise MessageError(f"record {name!r} is a {type(record).__name__}, expected {kind.__name__}")
    return record


def get_array(
    record: ArrayRecord,
    key: str,
    dtype: np.dtype | type,
    shape: Sequence[int | None] | None = None,
    *,
    finite: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> np.ndarray:
    """Read ``record[key]`` and check dtype, shape (``None`` = any length) and range.

    ``low``/``high`` bound every element (inclusive low, exclusive high);
    ``finite`` rejects NaN and infinities in float arrays.
    """
    if key not in record:
        raise MessageError(f"missing array {key!r}")
    item = record[key]
    if not isinstance(item, Array):
        raise MessageError(f"{key!r} is not an Array")
    want = np.dtype(dtype)
    if len(item.data) > MAX_ARRAY_BYTES:
        raise MessageError(f"{key!r} is {len(item.data)} bytes, over the {MAX_ARRAY_BYTES} limit")
    try:
        # Array.numpy() is np.load(..., allow_pickle=False): raw bytes only.
        arr = item.numpy()
    except Exception as exc:  # malformed .npy payload or a pickled object array
        raise MessageError(f"{key!r} is not a plain numpy array: {exc}") from exc
    if arr.dtype != want:
        raise MessageError(f"{key!r} has dtype {arr.dtype}, expected {want}")
    if tuple(arr.shape) != tuple(item.shape):
        raise MessageError(f"{key!r} declares shape {tuple(item.shape)} but carries {arr.shape}")
    if shape is not None:
        if arr.ndim != len(shape):
            raise MessageError(f"{key!r} has shape {arr.shape}, expected rank {len(shape)} {tuple(shape)}")
        for axis, (got, exp) in enumerate(zip(arr.shape, shape)):
            if exp is not None and got != exp:
                raise MessageError(f"{key!r} has shape {arr.shape}, expected {tuple(shape)} (axis {axis})")
    if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MessageError(f"{key!r} contains NaN or infinite values")
    if arr.size and low is not None and arr.min() < low:
        raise MessageError(f"{key!r} has a value {arr.min()} below {low}")
    if arr.size and high is not None and arr.max() >= high:
        raise MessageError(f"{key!r} has a value {arr.max()} not below {high}")
    return arr


def get_scalar(record: ConfigRecord | MetricRecord, key: str, kind: type, low: float | None = None,
               high: float | None = None) -> int | float | bytes | str:
    """Read a scalar of the given Python type from a config/metric record, range-checked."""
    if key not in record:
        raise MessageError(f"missing value {key!r}")
    value = record[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MessageError(f"{key!r} is a {type(value).__name__}, expected {kind.__name__}")
    if isinstance(value, float) and not np.isfinite(value):
        raise MessageError(f"{key!r} is not finite")
    if low is not None and value < low:  # type: ignore[operator]
        raise MessageError(f"{key!r}={value!r} is below {low}")
    if high is not None and value > high:  # type: ignore[operator]
        raise MessageError(f"{key!r}={value!r} is above {high}")
    return value


def array_record(**arrays: np.ndarray) -> ArrayRecord:
    """Build an ArrayRecord from numpy arrays (contiguous copies, no pickling)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
