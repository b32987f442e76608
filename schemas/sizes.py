"""Bytes a message occupies on Flower's wire, and placeholder payloads to measure one without sending it.

The batched engine (engine/) sends no messages, yet reports each protocol's bytes
per client. Each protocol's schema module therefore has a size function that builds
the very messages its Flower path sends (with the protocol's own message builders)
around placeholder arrays of the right shapes and dtypes, and measures them the way
the Flower path's meter does: the deflated Flower objects of the content. Sizes
depend on shapes and dtypes only (and on the varint width of a few integers), so a
placeholder message measures what the real one would.
"""

from __future__ import annotations

import itertools

import numpy as np
from flwr.app import RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from crypto.sealed import OVERHEAD

_FILLER_CALLS = itertools.count()  # one fresh stream per placeholder


def content_nbytes(content: RecordDict) -> int:
    """Bytes of a message's content as Flower serialises it for transport (deduplicated objects)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


def int_width(value: int) -> int:
    """Bytes of ``value`` as a ConfigRecord integer on the wire (a zigzag varint): sizes of messages that
    carry the round number change only where this does (rounds 64 and 8,192), so size caches key on it."""
    zigzag = 2 * value if value >= 0 else -2 * value - 1
    return max(1, (zigzag.bit_length() + 6) // 7)


def filler(shape: tuple[int, ...] | int, dtype: np.dtype | type) -> np.ndarray:
    """A placeholder array whose chunks repeat neither within it nor across placeholders.

    Why: Flower splits an array into chunks of ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`` bytes (5 MiB) and
    sends identical chunks once, so a placeholder with repeating chunks measures smaller than real data.
    A counter wraps every 256 (65,536) values for 1-byte (2-byte) integers, and 5 MiB is a multiple of
    both periods (a 16 MB sealed share measured 5.2 MB short that way); and two placeholders of one
    shape and dtype in one message (a table and a dense part of the same size) would be one object sent
    once. Each call therefore draws its own pseudorandom stream, seeded by a per-process call counter
    (public sizes only, nothing secret; floats uniform in [0, 1), so builders see finite values).
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = int(np.prod(shape, dtype=np.int64))
    dt = np.dtype(dtype)
    rng = np.random.default_rng((next(_FILLER_CALLS), count))
    if dt.kind == "f":
        wide = np.float32 if dt.itemsize <= 4 else np.float64
        return rng.random(count, dtype=wide).astype(dt).reshape(shape)
    return np.frombuffer(bytearray(rng.bytes(count * dt.itemsize)), dtype=dt).reshape(shape)  # writable, as real data


def sealed_box(plaintext_bytes: int) -> bytes:
    """A placeholder of the size :func:`crypto.sealed.seal` gives ``plaintext_bytes`` bytes."""
    return filler(plaintext_bytes + OVERHEAD, np.uint8).tobytes()
