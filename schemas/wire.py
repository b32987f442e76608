"""A framed binary format for the bytes-in/bytes-out link between server 0 and server 1.

Frame: 4-byte big-endian header length, a UTF-8 JSON header
``{"op": str, "meta": {...}, "arrays": [[name, dtype, shape, nbytes], ...]}``,
then the raw array bytes in order. Only plain numeric dtypes are accepted and
every declared size is checked against the bytes present, so nothing is ever
unpickled or evaluated. Sealed boxes travel as uint8 arrays.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

ALLOWED_DTYPES = {"uint8", "uint32", "uint64", "int64", "float32", "float64"}
MAX_FRAME = 1 << 32


class WireError(ValueError):
    """A frame that is malformed, oversized or carries a forbidden dtype."""


def encode_frame(op: str, meta: dict[str, Any] | None = None, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    arrays = arrays or {}
    specs, blobs = [], []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise WireError(f"array {name!r} has dtype {arr.dtype}, not allowed on the wire")
        specs.append([name, arr.dtype.name, list(arr.shape), arr.nbytes])
        blobs.append(arr.tobytes())
    header = json.dumps({"op": op, "meta": meta or {}, "arrays": specs}).encode()
    return struct.pack(">I", len(header)) + header + b"".join(blobs)


def decode_frame(frame: bytes) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    if len(frame) < 4 or len(frame) > MAX_FRAME:
        raise WireError(f"frame of {len(frame)} bytes is outside the allowed size")
    (hlen,) = struct.unpack(">I", frame[:4])
    if 4 + hlen > len(frame):
        raise WireError("frame header length exceeds the frame")
    try:
        header = json.loads(frame[4:4 + hlen].decode())
        op, meta, specs = header["op"], header["meta"], header["arrays"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"frame header is not valid: {exc}") from exc
    if not isinstance(op, str) or not isinstance(meta, dict) or not isinstance(specs, list):
        raise WireError("frame header has the wrong structure")
    arrays, offset = {}, 4 + hlen
    for spec in specs:
        try:
            name, dtype, shape, nbytes = spec
            shape = tuple(int(s) for s in shape)
        except (ValueError, TypeError) as exc:
            raise WireError(f"bad array spec {spec!r}") from exc
        if dtype not in ALLOWED_DTYPES or any(s < 0 for s in shape):
            raise WireError(f"array {name!r}: dtype {dtype!r} or shape {shape} not allowed")
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if size != nbytes or offset + size > len(frame):
            raise WireError(f"array {name!r} declares {nbytes} bytes but shape/frame disagree")
        arrays[name] = np.frombuffer(frame, dtype=dtype, count=size // np.dtype(dtype).itemsize,
                                     offset=offset).reshape(shape)
        offset += size
    if offset != len(frame):
        raise WireError(f"{len(frame) - offset} trailing bytes after the last array")
    return op, meta, arrays
