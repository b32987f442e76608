"""A framed binary format for the bytes-in/bytes-out link between server 0 and server 1.

Frame: 4-byte big-endian header length, a UTF-8 JSON header
``{"op": str, "meta": {...}, "arrays": [[name, dtype, shape, nbytes], ...]}``,
then the raw little-endian array bytes in order. Only plain numeric dtypes are
accepted and every declared size is checked against the bytes present, so
nothing is ever unpickled or evaluated. Sealed boxes travel as uint8 arrays,
and a user's sealed box is itself a frame: so the decoder sees bytes written
by users, and any malformed frame must raise :class:`WireError` (a
``ValueError``) and nothing else, or server 1's request handler would die.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

ALLOWED_DTYPES = {"uint8", "uint32", "uint64", "int64", "float32", "float64"}
# One cap for every frame on the link, used by the codec and by the TCP reader: gRPC's 2 GiB message
# ceiling. Nothing a user sends through Flower can be larger, and server 1 never buffers more than this.
MAX_FRAME = 1 << 31
MAX_HEADER = 1 << 24  # 16 MiB of JSON: meta lists at most a round's users; headers are KBs in practice
MAX_NAME = 256        # array names are "box_<user>", "k1_cw_seeds", ...
MAX_OP = 64
MAX_RANK = 8
_LEN = struct.Struct(">I")


class WireError(ValueError):
    """A frame that is malformed, oversized or carries a forbidden dtype."""


def _wire_dtype(name: str) -> np.dtype:
    """The on-wire (little-endian) dtype of an allowed dtype name."""
    return np.dtype(name).newbyteorder("<")


def _check_name(name: object, names: set[str]) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        raise WireError(f"array name {str(name)[:40]!r} is not a string of 1..{MAX_NAME} characters")
    if name in names:
        raise WireError(f"array {name!r} appears twice in the frame")
    return name


def encode_frame(op: str, meta: dict[str, Any] | None = None, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """Serialise one request or reply; refuses what :func:`decode_frame` would refuse."""
    if not isinstance(op, str) or not 1 <= len(op) <= MAX_OP:
        raise WireError(f"operation {str(op)[:40]!r} is not a string of 1..{MAX_OP} characters")
    if meta is not None and not isinstance(meta, dict):
        raise WireError(f"meta is a {type(meta).__name__}, expected a dict")
    specs, blobs, names, total = [], [], set(), 0
    for name, arr in (arrays or {}).items():
        _check_name(name, names)
        names.add(name)
        arr = np.asarray(arr)
        if arr.dtype.name not in ALLOWED_DTYPES or arr.ndim > MAX_RANK:
            raise WireError(f"array {name!r} has dtype {arr.dtype} and rank {arr.ndim}, not allowed on the wire")
        total += arr.nbytes
        if total > MAX_FRAME:
            raise WireError(f"frame would exceed MAX_FRAME={MAX_FRAME} bytes at array {name!r}")
        specs.append([name, arr.dtype.name, list(arr.shape), arr.nbytes])
        blobs.append(arr)
    try:
        header = json.dumps({"op": op, "meta": meta or {}, "arrays": specs}).encode()
    except (TypeError, ValueError, RecursionError) as exc:  # numpy scalars, sets, cycles, ...
        raise WireError(f"frame meta is not JSON-serialisable: {exc}") from exc
    if len(header) > MAX_HEADER or _LEN.size + len(header) + total > MAX_FRAME:
        raise WireError(f"frame header of {len(header)} bytes or frame of {total} array bytes is too large")
    body = [np.ascontiguousarray(a, dtype=_wire_dtype(a.dtype.name)).tobytes() for a in blobs]
    return _LEN.pack(len(header)) + header + b"".join(body)


def _parse_header(frame: bytes) -> tuple[str, dict[str, Any], list[Any], int]:
    """(op, meta, array specs, offset of the first array byte) of a frame."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError(f"a frame is bytes, not {type(frame).__name__}")
    if len(frame) < _LEN.size or len(frame) > MAX_FRAME:
        raise WireError(f"frame of {len(frame)} bytes is outside the allowed size (4..{MAX_FRAME})")
    (hlen,) = _LEN.unpack_from(frame, 0)
    if hlen > MAX_HEADER:
        raise WireError(f"frame header of {hlen} bytes is over the {MAX_HEADER}-byte limit")
    if _LEN.size + hlen > len(frame):
        raise WireError("frame header length exceeds the frame")
    try:
        header = json.loads(bytes(frame[_LEN.size:_LEN.size + hlen]).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, too many digits, too deep
        raise WireError(f"frame header is not valid JSON: {type(exc).__name__}") from exc
    if not isinstance(header, dict) or set(header) != {"op", "meta", "arrays"}:
        raise WireError("frame header has the wrong structure")
    op, meta, specs = header["op"], header["meta"], header["arrays"]
    if not isinstance(op, str) or not 1 <= len(op) <= MAX_OP or not isinstance(meta, dict) \
            or not isinstance(specs, list):
        raise WireError("frame header has the wrong structure")
    return op, meta, specs, _LEN.size + hlen


def _parse_spec(spec: object, names: set[str]) -> tuple[str, np.dtype, tuple[int, ...], int]:
    """Check one ``[name, dtype, shape, nbytes]`` entry: types, ranges and size agreement."""
    if not isinstance(spec, list) or len(spec) != 4:
        raise WireError(f"array spec {str(spec)[:80]} is not [name, dtype, shape, nbytes]")
    name, dtype, shape, nbytes = spec
    name = _check_name(name, names)
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise WireError(f"array {name!r}: dtype {str(dtype)[:40]!r} not allowed")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_FRAME for s in shape):
        raise WireError(f"array {name!r}: shape {str(shape)[:80]} not allowed")
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or not 0 <= nbytes <= MAX_FRAME:
        raise WireError(f"array {name!r}: nbytes {str(nbytes)[:40]} not allowed")
    wire = _wire_dtype(dtype)
    if math.prod(shape) * wire.itemsize != nbytes:  # Python ints: no overflow
        raise WireError(f"array {name!r} declares {nbytes} bytes but shape {shape} {dtype} disagree")
    return name, wire, tuple(shape), nbytes


def decode_frame(frame: bytes) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """Parse a frame into (op, meta, arrays); any malformed input raises :class:`WireError`.

    The arrays are read-only views into ``frame`` (no copy, nothing evaluated).
    ``meta`` is plain JSON; its fields are the caller's to range-check.
    """
    op, meta, specs, offset = _parse_header(frame)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        name, dtype, shape, nbytes = _parse_spec(spec, set(arrays))
        if offset + nbytes > len(frame):
            raise WireError(f"array {name!r} declares {nbytes} bytes but shape/frame disagree: the frame "
                            "ends before them")
        arrays[name] = np.frombuffer(frame, dtype=dtype, count=nbytes // dtype.itemsize,
                                     offset=offset).reshape(shape)
        offset += nbytes
    if offset != len(frame):
        raise WireError(f"{len(frame) - offset} trailing bytes after the last array")
    return op, meta, arrays
