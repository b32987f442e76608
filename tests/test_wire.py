"""The server 0 <-> server 1 frame codec round-trips and refuses malformed frames."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from schemas.wire import WireError, decode_frame, encode_frame

dtypes = st.sampled_from([np.uint8, np.uint32, np.uint64, np.int64, np.float32, np.float64])


@given(st.dictionaries(st.text("abcxyz_", min_size=1, max_size=5),
                       dtypes.flatmap(lambda d: arrays(d, st.integers(0, 3).map(lambda n: (n, 2)))), max_size=4),
       st.dictionaries(st.text("abc", min_size=1, max_size=3), st.integers(-5, 5), max_size=3))
def test_round_trip(arrs, meta):
    op, meta2, out = decode_frame(encode_frame("op", meta, arrs))
    assert op == "op" and meta2 == meta and set(out) == set(arrs)
    for k, v in arrs.items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v, equal_nan=True)


def _frame(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + body


@pytest.mark.parametrize("frame,needle", [
    (b"\x00", "size"),
    (struct.pack(">I", 99) + b"{}", "exceeds"),
    (_frame({"op": 1, "meta": {}, "arrays": []}), "structure"),
    (_frame({"op": "x", "meta": {}, "arrays": [["a", "object", [1], 8]]}, b"\x00" * 8), "not allowed"),
    (_frame({"op": "x", "meta": {}, "arrays": [["a", "uint8", [4], 4]]}, b"\x00" * 2), "disagree"),
    (_frame({"op": "x", "meta": {}, "arrays": [["a", "uint8", [2], 2]]}, b"\x00" * 5), "trailing"),
    (_frame({"op": "x", "meta": {}, "arrays": [["a", "uint8", [-1], 0]]}), "not allowed"),
])
def test_malformed_frames_are_refused(frame, needle):
    with pytest.raises(WireError, match=needle):
        decode_frame(frame)


def test_object_arrays_cannot_be_encoded():
    with pytest.raises(WireError):
        encode_frame("x", {}, {"a": np.array([object()])})
