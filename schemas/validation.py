"""Checked reads of received Flower records.

Why this module exists: a received message is written by someone else (a user
device, or a relaying server), so every value in it is untrusted. The server
loop drops a user whose reply raises ``ValueError`` and carries on with the
round (DESIGN, "Errors"); any *other* exception (``TypeError`` from a
non-numpy ``Array``, ``OverflowError`` from a huge number, ``MemoryError``
from a huge declared shape, ``AttributeError`` from a zip archive posing as an
array...) would escape that handler and stop the whole ServerApp. So every
array or value taken out of a message passes through these functions, and
they turn *any* malformed input into :class:`MessageError` (a ``ValueError``)
naming the field: dtype, rank, shape, size and range are checked before the
value is used.

Nothing received is ever unpickled or evaluated: an array's ``.npy`` header
is matched against what ``np.save`` writes and checked (a plain dtype from
the schema's whitelist, the declared shape, the exact byte count) before any
byte of data is read; the bytes are then read with ``np.frombuffer`` as that
dtype, a path with no pickle support at all (stricter still than
``Array.numpy()``, i.e. ``np.load(..., allow_pickle=False)``, which would
also open a zip archive). Sizes are checked before anything is allocated, so
a header that declares 2**40 elements is refused, not allocated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from crypto.sealed import SealedMessageError, canonical_fingerprint, check_public_key

MAX_ARRAY_BYTES = 1 << 31  # gRPC's 2 GiB message ceiling: no single array can legitimately be larger
MAX_RANK = 8               # no schema uses more than 3 axes
MAX_DTYPE_NAME = 32        # "float64", "uint8", ...: anything longer is not a dtype we accept
NUMPY_STYPE = "numpy.ndarray"  # flwr's SType.NUMPY: the only serialisation we read
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # what a record's integer can carry on the wire (sint64)
# The largest |value| a received plaintext gradient may hold. Why: a server sums and averages the users' float
# gradients and steps Adam, whose second moment squares the mean: a finite float32 near 3.4e38 from one user
# would make the model inf or NaN for everyone. With every value within 2**40, a sum over any realistic number of
# users stays finite in float32, and its square (2**80 per user) stays far below float32's 2**128. No honest
# gradient comes near (ratings are 1..5); a model that diverged that far is lost anyway. The secure protocols are
# bounded by their ring instead (a decoded value is below 2**(ring_bits - 1 - frac_bits)).
MAX_GRADIENT = float(1 << 40)
# The largest value a plaintext per-user metric (a training loss, a test error sum, compute seconds) may hold:
# the server sums them in float64, and a finite 1e308 from one user made the round's sum inf. 2**100 summed over
# 2**30 users is still finite many times over; no honest metric comes near.
MAX_METRIC = float(2 ** 100)


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


# ------------------------------------------------------------------ arrays
def _declared_shape(item: Array, key: str) -> tuple[int, ...]:
    """The ``Array.shape`` field as a tuple of non-negative ints of bounded rank.

    Why: ``shape`` is sender-written metadata; it is compared with the payload
    and must not be trusted to be a tuple of small ints.
    """
    shape = item.shape
    if not isinstance(shape, (tuple, list)) or len(shape) > MAX_RANK:
        raise MessageError(f"{key!r} declares a shape that is not a tuple of at most {MAX_RANK} ints")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_ARRAY_BYTES for s in shape):
        raise MessageError(f"{key!r} declares shape {tuple(shape)!r} with a negative, huge or non-integer axis")
    return tuple(shape)


# What ``np.save`` writes (format 1.0/2.0) for a plain dtype, and nothing else: the header is matched,
# never evaluated. The padding to a 64-byte boundary is spaces and a final newline.
_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=]?[a-zA-Z]\d{0,2})', 'fortran_order': (True|False), "
                         rb"'shape': \(((?:\d{1,19}, )*(?:\d{1,19},?)?)\), \} *\n")
_NPY_MAX_HEADER = 4096


def _npy_header(data: bytes, key: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse the ``.npy`` header of ``data``: (shape, fortran_order, dtype, offset of the array bytes).

    Why not ``np.load``: it allocates what the header declares before reading
    the bytes, evaluates the header with ``literal_eval``, and treats a zip
    archive as an ``.npz`` (returning an object that is not an array). Here
    the header must be exactly what ``np.save`` writes for a plain dtype, so
    every size can be checked against the bytes present before anything else.
    """
    if not data.startswith(_NPY_MAGIC) or len(data) < 10:
        raise MessageError(f"{key!r} is not a .npy payload")
    major = data[6:8]
    if major == b"\x01\x00":
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    elif major == b"\x02\x00" and len(data) >= 12:
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise MessageError(f"{key!r} uses .npy format version {tuple(data[6:8])}, expected 1.0 or 2.0")
    if hlen > _NPY_MAX_HEADER or start + hlen > len(data):
        raise MessageError(f"{key!r} has a .npy header of {hlen} bytes that is too long or truncated")
    match = _NPY_HEADER.fullmatch(data[start:start + hlen])
    if match is None:
        raise MessageError(f"{key!r} has a .npy header that is not a plain array's")
    try:
        dtype = np.dtype(match[1].decode("ascii"))
    except (TypeError, ValueError) as exc:  # a type code numpy does not know
        raise MessageError(f"{key!r} has an unknown dtype {match[1]!r}") from exc
    shape = tuple(int(dim) for dim in match[3].replace(b",", b" ").split())
    return shape, match[2] == b"True", dtype, start + hlen


def _read_array(item: object, key: str, allowed: Sequence[np.dtype]) -> np.ndarray:
    """Every structural check of one received ``Array``, then a plain read of its bytes.

    ``allowed`` are the dtypes the schema accepts here; anything else is
    refused from the header, before a byte of the payload is touched.
    """
    if not isinstance(item, Array):
        raise MessageError(f"{key!r} is not an Array")
    if item.stype != NUMPY_STYPE:
        raise MessageError(f"{key!r} is serialised as {str(item.stype)[:40]!r}, expected {NUMPY_STYPE!r}")
    data = item.data
    if not isinstance(data, bytes):
        raise MessageError(f"{key!r} carries {type(data).__name__} data, expected bytes")
    if len(data) > MAX_ARRAY_BYTES:
        raise MessageError(f"{key!r} is {len(data)} bytes, over the {MAX_ARRAY_BYTES} limit")
    names = ", ".join(str(d) for d in allowed)
    if not isinstance(item.dtype, str) or len(item.dtype) > MAX_DTYPE_NAME:
        raise MessageError(f"{key!r} declares a dtype that is not a short string, expected one of {names}")
    declared = _declared_shape(item, key)
    shape, fortran, dtype, offset = _npy_header(data, key)
    if dtype not in allowed or str(dtype) != item.dtype:
        raise MessageError(f"{key!r} has dtype {dtype} (declared {item.dtype!r}), expected one of {names}")
    if shape != declared:
        raise MessageError(f"{key!r} declares shape {declared} but carries {shape}")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, nothing allocated
    if expected != len(data) - offset:
        raise MessageError(f"{key!r} declares {expected} bytes of data but carries {len(data) - offset}")
    # The bytes after the checked header are exactly the array: read them as the allowed plain dtype
    # (no pickle path exists here at all) and copy, so the result is writable and owns its memory.
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="C")


def _check_values(arr: np.ndarray, key: str, finite: bool, low: float | None, high: float | None) -> None:
    """Range checks: ``finite`` rejects NaN/inf in floats; ``low`` inclusive, ``high`` exclusive."""
    if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MessageError(f"{key!r} contains NaN or infinite values")
    if arr.size and low is not None and arr.min() < low:
        raise MessageError(f"{key!r} has a value {arr.min()} below {low}")
    if arr.size and high is not None and arr.max() >= high:
        raise MessageError(f"{key!r} has a value {arr.max()} not below {high}")


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
    ``finite`` rejects NaN and infinities in float arrays. Any malformed
    ``Array`` (wrong ``stype``, garbage bytes, a declared shape or dtype that
    disagrees with the payload, a huge declared shape) raises
    :class:`MessageError`.
    """
    if key not in record:
        raise MessageError(f"missing array {key!r}")
    arr = _read_array(record[key], key, (np.dtype(dtype),))
    if shape is not None:
        if arr.ndim != len(shape):
            raise MessageError(f"{key!r} has shape {arr.shape}, expected rank {len(shape)} {tuple(shape)}")
        for axis, (got, exp) in enumerate(zip(arr.shape, shape)):
            if exp is not None and got != exp:
                raise MessageError(f"{key!r} has shape {arr.shape}, expected {tuple(shape)} (axis {axis})")
    _check_values(arr, key, finite, low, high)
    return arr


def check_gradient(arr: np.ndarray, key: str) -> np.ndarray:
    """``arr`` if every value is finite and within +-:data:`MAX_GRADIENT`, else :class:`MessageError`."""
    _check_values(arr, key, finite=True, low=None, high=None)  # NaN passes any comparison: refused here first
    if arr.size and float(np.abs(arr).max()) > MAX_GRADIENT:
        raise MessageError(f"{key!r} has a value of magnitude {float(np.abs(arr).max()):.3g}, above the "
                           f"{MAX_GRADIENT:.3g} a gradient may hold")
    return arr


def get_gradient(record: ArrayRecord, key: str, dtype: np.dtype | type, shape: Sequence[int | None]) -> np.ndarray:
    """A received plaintext gradient: :func:`get_array`'s checks, then :func:`check_gradient`'s bound."""
    return check_gradient(get_array(record, key, dtype, shape), key)


def get_arrays_with_prefix(record: ArrayRecord, prefix: str, dtypes: Iterable[np.dtype | type]
                           ) -> dict[str, np.ndarray]:
    """All arrays whose key starts with ``prefix`` (full keys), each checked like :func:`get_array`.

    Why: a schema that reads a variable set of arrays (a DPF key batch's
    fields) must not call ``Array.numpy()`` itself, which raises
    ``TypeError`` for a non-numpy ``stype``; here every array goes through
    the same structural checks and must have one of ``dtypes``. Shapes are
    left to the caller, which knows how the arrays relate.
    """
    allowed = tuple(np.dtype(d) for d in dtypes)
    return {key: _read_array(record[key], key, allowed) for key in record if key.startswith(prefix)}


# ----------------------------------------------------------------- scalars
_SCALAR_KINDS = (int, float, bytes, str, bool)


def get_scalar(record: ConfigRecord | MetricRecord, key: str, kind: type, low: float | None = None,
               high: float | None = None) -> int | float | bytes | str:
    """Read a scalar of the given Python type from a config/metric record, range-checked.

    Why each rule: a ``bool`` is not accepted as an ``int`` (``True`` is not a
    count); an ``int`` is accepted for a ``float`` field; lists, NaN and
    infinities are refused; integers outside int64 (all a record carries on
    the wire) are refused so that a later ``float()`` or numpy cast cannot
    overflow. ``low``/``high`` are inclusive bounds for numeric kinds.
    """
    if kind not in _SCALAR_KINDS:
        raise TypeError(f"get_scalar reads {_SCALAR_KINDS}, not {kind!r}")  # a bug in the caller, not the input
    if (low is not None or high is not None) and kind not in (int, float):
        raise TypeError(f"bounds only apply to int or float values, not {kind.__name__}")
    if key not in record:
        raise MessageError(f"missing value {key!r}")
    value = record[key]
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise MessageError(f"{key!r} is an integer outside the int64 range")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # exact for |value| <= 2**53, never overflows within int64
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise MessageError(f"{key!r} is a {type(value).__name__}, expected {kind.__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise MessageError(f"{key!r} is not finite")
    if low is not None and value < low:  # type: ignore[operator]
        raise MessageError(f"{key!r}={value!r} is below {low}")
    if high is not None and value > high:  # type: ignore[operator]
        raise MessageError(f"{key!r}={value!r} is above {high}")
    return value


def get_float_list(record: ConfigRecord | MetricRecord, key: str, length: int | None = None,
                   max_length: int = 1 << 16) -> np.ndarray:
    """Read a list of numbers as float64, checked element by element.

    Why: ``np.array(values, dtype=np.float64)`` raises ``OverflowError`` on an
    integer too large for a float and ``TypeError`` on a string; here every
    element must be a finite float or an int64 (not a bool), and the list must
    have ``length`` elements (or at most ``max_length``).
    """
    if key not in record:
        raise MessageError(f"missing list {key!r}")
    values = record[key]
    if not isinstance(values, list):
        raise MessageError(f"{key!r} is a {type(values).__name__}, expected a list of numbers")
    if length is not None and len(values) != length:
        raise MessageError(f"{key!r} has {len(values)} elements, expected {length}")
    if len(values) > max_length:
        raise MessageError(f"{key!r} has {len(values)} elements, more than {max_length}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MessageError(f"{key!r} holds a {type(v).__name__}, expected numbers")
        if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
            raise MessageError(f"{key!r} holds an integer outside the int64 range")
        if isinstance(v, float) and not math.isfinite(v):
            raise MessageError(f"{key!r} holds NaN or an infinity")
    return np.array(values, dtype=np.float64)


def pinned_anchor(value: object, what: str) -> str:
    """A user's trust anchor (``what`` names whose key it pins) as the canonical fingerprint its check compares;
    a value that is no fingerprint is this user's :class:`MessageError`, so the message it came with is refused."""
    try:
        return canonical_fingerprint(value)
    except ValueError as exc:
        raise MessageError(f"this user's trust anchor for {what} is not a fingerprint: {exc}") from None


def usable_key(raw: bytes, what: str) -> bytes:
    """A received X25519 public key one can seal to (:func:`crypto.sealed.check_public_key`), else MessageError."""
    try:
        return check_public_key(bytes(raw))
    except SealedMessageError as exc:
        raise MessageError(f"{what}: {exc}") from exc


def array_record(**arrays: np.ndarray) -> ArrayRecord:
    """Build an ArrayRecord from numpy arrays (contiguous copies, no pickling)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
