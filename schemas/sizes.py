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

import numpy as np
from flwr.app import RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from crypto.sealed import OVERHEAD


def content_nbytes(content: RecordDict) -> int:
    """Bytes of a message's content as Flower serialises it for transport (deduplicated objects)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


def int_width(value: int) -> int:
    """Bytes of ``value`` as a ConfigRecord integer on the wire (a zigzag varint): sizes of messages that
    carry the round number change only where this does (rounds 64 and 8,192), so size caches key on it."""
    zigzag = 2 * value if value >= 0 else -2 * value - 1
    return max(1, (zigzag.bit_length() + 6) // 7)


def filler(shape: tuple[int, ...] | int, dtype: np.dtype | type) -> np.ndarray:
    """A deterministic placeholder array that does not repeat.

    Why: Flower splits an array into chunks of ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`` bytes (5 MiB) and
    sends identical chunks once, so a placeholder whose chunks repeat measures smaller than real data.
    A counter does not repeat for 4-byte and wider integers or floats, but wraps every 256 (65,536)
    values for 1-byte (2-byte) integers, and 5 MiB is a multiple of both periods: every full chunk of
    such a counter is the same, and a 16 MB sealed share measured 5.2 MB short. Narrow integers are
    therefore a seeded pseudorandom stream (public sizes only, nothing secret).
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = int(np.prod(shape, dtype=np.int64))
    dt = np.dtype(dtype)
    if dt.kind in "iu" and dt.itemsize < 4:
        return np.frombuffer(np.random.default_rng(count).bytes(count * dt.itemsize), dtype=dt).reshape(shape)
    values = np.arange(1, count + 1, dtype=np.uint64)
    if dt.kind == "f":
        return (values.astype(np.float64) * 1e-3).astype(dt).reshape(shape)
    return values.astype(dt).reshape(shape)


def sealed_box(plaintext_bytes: int) -> bytes:
    """A placeholder of the size :func:`crypto.sealed.seal` gives ``plaintext_bytes`` bytes."""
    return filler(plaintext_bytes + OVERHEAD, np.uint8).tobytes()
