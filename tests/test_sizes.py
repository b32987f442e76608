"""The size functions' placeholders measure what real payloads of the same shapes measure on Flower's wire.

Flower sends each array in chunks of ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`` bytes and identical chunks
once, so a placeholder whose chunks repeat would under-count large messages (a sealed share of a few
MB and up: Secure FedRec's upload at ML-25M sizes).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

from models.compression import CODEC_NAMES
from schemas import compressed, secfedrec, sizes


def _nbytes(arr: np.ndarray) -> int:
    return sizes.content_nbytes(RecordDict({"r": ArrayRecord({"a": Array(arr)})}))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint32, np.int64, np.float32])
def test_a_placeholder_of_several_chunks_measures_as_random_data(dtype):
    count = (3 * FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE + 12_345) // np.dtype(dtype).itemsize
    real = np.frombuffer(np.random.default_rng(1).bytes(count * np.dtype(dtype).itemsize), dtype=dtype)
    placeholder = sizes.filler(count, dtype)
    assert placeholder.shape == real.shape and placeholder.dtype == real.dtype
    assert _nbytes(placeholder) == _nbytes(real)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float32])
def test_two_placeholders_of_one_shape_in_one_message_both_count(dtype):
    """Two real arrays of one shape and dtype (e.g. a table and a same-sized dense part) are sent in full,
    so two placeholders of that shape must not share a chunk, which Flower would send once."""
    count = (2 * FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE) // np.dtype(dtype).itemsize
    a, b = sizes.filler(count, dtype), sizes.filler(count, dtype)
    both = sizes.content_nbytes(RecordDict({"r": ArrayRecord({"a": Array(a), "b": Array(b)})}))
    rng = np.random.default_rng(2)
    real = [np.frombuffer(rng.bytes(count * np.dtype(dtype).itemsize), dtype=dtype) for _ in range(2)]
    assert both == sizes.content_nbytes(RecordDict({"r": ArrayRecord({"a": Array(real[0]), "b": Array(real[1])})}))
    assert sizes.filler(1000, dtype).shape == (1000,)


def test_a_sealed_box_placeholder_does_not_repeat():
    box = sizes.sealed_box(3 * FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE)
    chunk = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
    assert len(box) == 3 * chunk + sizes.OVERHEAD
    assert len({box[i:i + chunk] for i in range(0, 3 * chunk, chunk)}) == 3


def test_secure_fedrec_upload_at_ml25m_is_two_four_byte_shares_per_value():
    """Share 0 in the clear and share 1 sealed, 4 bytes a value each, for 62,423 rows of 65 (+ 2 metrics)."""
    n_items, row_dim, dense_size = 62_423, 65, 1  # MF at ML-25M's sizes; its dense part is the global bias
    up = secfedrec.round_bytes(1, n_items, row_dim, dense_size, ring_bits=32, telemetry=False)[1]
    assert up == pytest.approx(8 * (n_items * row_dim + dense_size + 2), rel=0.001)


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_a_compressed_round_depends_on_the_rating_count_only_through_its_varint_width(codec):
    """The batched compressed driver measures one (down, up) per varint width of k and reuses it for
    every k of that width: exact only if nothing else of the messages depends on k."""
    rank = 3 if codec in ("svd", "colr") else None
    by_k = {k: compressed.round_bytes(70, codec, rank, 50, 9, 7, k) for k in (1, 5, 63, 64, 500, 8191, 8192)}
    assert len({down for down, _ in by_k.values()}) == 1
    widths: dict[int, set[int]] = {}
    for k, (_, up) in by_k.items():
        widths.setdefault(sizes.int_width(k), set()).add(up)
    assert sorted(widths) == [1, 2, 3] and all(len(ups) == 1 for ups in widths.values())
    assert by_k[64][1] == by_k[63][1] + 1 and by_k[8192][1] == by_k[8191][1] + 1
