"""The fixed-point codec: the rounded integer is bounded, at every bound the configs build, and ring sums
of n_p users at their bound R_u never wrap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crypto.fixed_point import FixedPointCodec
from crypto.ring import signed_view


@given(st.lists(st.floats(-100, 100), min_size=1, max_size=30), st.integers(1, 20))
@settings(max_examples=40, deadline=None)
def test_ring_codec_sums_like_floats(values, users):
    codec = FixedPointCodec(16, 100.0)
    x = np.array(values)
    ring = sum((codec.to_ring(x / users, np.uint32) for _ in range(users)), np.zeros(len(x), np.uint32))
    assert np.allclose(codec.from_ring(ring), x, atol=users * 2**-16)


def test_codec_refuses_out_of_range_and_rings_too_small():
    with pytest.raises(ValueError, match="exceed the bound"):
        FixedPointCodec(16, 1.0).to_ring(np.array([2.0]), np.uint32)
    with pytest.raises(ValueError, match="ring"):
        FixedPointCodec(20, 5000.0).to_ring(np.array([1.0]), np.uint32)


@pytest.mark.parametrize("args,needle", [
    ((0, 1.0), "frac_bits"), ((63, 1.0), "frac_bits"), ((16, 0.0), "positive"), ((16, float("inf")), "finite"),
    ((16, float("nan")), "positive"), ((40, 2.0**23), "int64"), ((3, 0.1), "encode to 0"),
])
def test_parameters_are_checked_at_construction(args, needle):
    with pytest.raises(ValueError, match=needle):
        FixedPointCodec(*args)


def test_the_bound_is_on_the_rounded_integer():
    """0.1 * 2^20 = 104857.6: rounding alone would give max_int + 1; the codec clamps to max_int."""
    codec = FixedPointCodec(20, 0.1)
    assert codec.max_int == 104857
    assert codec.encode(np.array([0.1, -0.1, np.nextafter(0.1, 0)])).tolist() == [104857, -104857, 104857]
    assert abs(codec.decode(codec.encode(np.array([0.1])))[0] - 0.1) < 2**-20
    with pytest.raises(ValueError, match="exceed the bound"):
        codec.encode(np.array([np.nextafter(0.1, 1)]))  # beyond the bound: rejected, not clamped


@settings(max_examples=200, deadline=None)
@given(frac=st.integers(1, 62), bound=st.floats(1e-6, 1e12), x=st.floats(-1.0, 1.0), seed=st.integers(0, 7))
def test_every_accepted_value_encodes_within_max_int_and_within_one_unit(frac, bound, x, seed):
    try:
        codec = FixedPointCodec(frac, bound)
    except ValueError:
        assume(False)
    v = np.array([x * bound, bound, -bound, np.nextafter(bound, 0), -np.nextafter(bound, 0)])
    e = codec.encode(v)
    assert np.abs(e).max() <= codec.max_int
    assert np.abs(codec.decode(e) - v).max() < 2.0 ** -frac or np.abs(codec.decode(e) - v).max() <= bound * 2**-52


# ------------------------------------------------- the two-server ring codecs the configs build
def _server_and_user_codecs(bits: int, frac: int, users: int) -> tuple[FixedPointCodec, FixedPointCodec]:
    """As strategies/two_server.py and clients/two_server.py build them: R = 2^(k-1-f) - 1, R_u = R / n_p."""
    bound = 2.0 ** (bits - 1 - frac) - 1.0
    return FixedPointCodec(frac, bound), FixedPointCodec(frac, bound / users)


@st.composite
def ring_configs(draw):
    """(ring_bits, frac_bits, clients_per_round) as the config accepts them: frac < bits - 2 and R_u >= 1."""
    bits = draw(st.sampled_from([32, 64]))
    frac = draw(st.one_of(st.just(16), st.integers(1, bits - 3)))
    users = draw(st.one_of(st.just(100), st.integers(1, 1000), st.just(2 ** min(bits - 1 - frac, 40) - 1)))
    assume(1 <= users and (2.0 ** (bits - 1 - frac) - 1.0) / users >= 1.0)
    return bits, frac, users


@settings(max_examples=300, deadline=None)
@given(cfg=ring_configs(), signs=st.lists(st.sampled_from([-1, 1]), min_size=1, max_size=8), inside=st.booleans())
def test_n_p_users_at_their_bound_sum_without_wrapping_the_ring(cfg, signs, inside):
    bits, frac, users = cfg
    ring = np.uint32 if bits == 32 else np.uint64
    if bits == 64 and frac < 10:  # R = 2^(63-f) - 1 rounds to 2^(63-f) in float64: refused, never wrapped
        with pytest.raises(ValueError, match="int64"):
            _server_and_user_codecs(bits, frac, users)
        return
    server, user = _server_and_user_codecs(bits, frac, users)
    assert server.ring_fits(ring) and user.ring_fits(ring)
    r_u = np.nextafter(user.value_bound, 0) if inside else user.value_bound
    x = np.array(signs, dtype=np.float64) * r_u
    e = user.encode(x)
    assert np.abs(e).max() <= user.max_int and users * user.max_int < 2 ** (bits - 1)
    one = user.to_ring(x, ring)
    assert np.array_equal(user.from_ring(one), user.decode(e))  # round trip of one value at the bound
    assert np.abs(user.decode(e) - x).max() < 2.0 ** -frac
    total = one * ring(users)  # n_p users all at the bound: the worst case of a round's sum
    assert signed_view(total).astype(object).tolist() == (e.astype(object) * users).tolist()  # exact, no wrap
    assert np.array_equal(server.from_ring(total), server.decode(signed_view(total)))


@settings(max_examples=60, deadline=None)
@given(frac=st.integers(1, 30), x=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=20),
       ring=st.sampled_from([np.uint32, np.uint64]))
def test_ring_elements_are_the_twos_complement_of_the_encoded_integers_with_or_without_out(frac, x, ring):
    """to_ring is encode() mod 2^k, whether it allocates or writes into a caller's slice; NaN, infinities
    and values past the bound are refused on both paths, and a mismatched out is refused."""
    codec = FixedPointCodec(frac, 1.0)
    v = np.array(x)
    want = np.array([int(e) % 2 ** (8 * np.dtype(ring).itemsize) for e in codec.encode(v)], dtype=ring)
    out = np.full(len(v) + 2, 7, dtype=ring)
    assert codec.to_ring(v, ring).tolist() == want.tolist()
    assert codec.to_ring(v, ring, out=out[1:-1]) is not None and out[1:-1].tolist() == want.tolist()
    assert out[0] == out[-1] == 7  # nothing written beside the slice
    for bad in (np.nan, np.inf, -np.inf, 1.5):
        with pytest.raises(ValueError, match="NaN|exceed"):
            codec.to_ring(np.append(v, bad), ring, out=np.empty(len(v) + 1, ring))
    with pytest.raises(ValueError, match="out is"):
        codec.to_ring(v, ring, out=np.empty(len(v) + 1, ring))
    with pytest.raises(ValueError, match="out is"):
        codec.to_ring(v, ring, out=np.empty(len(v), np.int64))


@given(st.lists(st.floats(-1.0, 1.0, width=32), min_size=1, max_size=40), st.sampled_from([(20, 0.1), (16, 1.0),
                                                                                           (30, 0.7), (12, 0.013)]))
@settings(max_examples=60, deadline=None)
def test_float32_values_encode_as_their_exact_float64_widening(values, params):
    """Gradients arrive as float32 and are checked and scaled without a float64 copy: the same ring elements as
    the float64 values, and the same refusals (numpy would round a float bound to float32 before comparing)."""
    codec = FixedPointCodec(*params)
    x32 = np.array(values, dtype=np.float32)
    x64 = x32.astype(np.float64)
    if np.abs(x64).max() > codec.value_bound:
        for x in (x32, x64):
            with pytest.raises(ValueError, match="exceed the bound"):
                codec.to_ring(x, np.uint64)
        return
    for ring in (np.uint32, np.uint64):
        if codec.ring_fits(ring):
            assert np.array_equal(codec.to_ring(x32, ring), codec.to_ring(x64, ring))
    assert np.array_equal(codec.encode(x32), codec.encode(x64))


def test_a_float32_just_above_the_bound_is_refused_and_clipped_below_it():
    """float32(0.1) is 0.100000001: above a bound of 0.1 though float32(0.1) == it. The codec refuses it, and the
    two-server clients' clipping clips it in float64, to the bound itself."""
    from clients.two_server import clip_to_bound

    codec = FixedPointCodec(20, 0.1)
    x = np.array([np.float32(0.1), -np.float32(0.1), 0.05], dtype=np.float32)
    with pytest.raises(ValueError, match="2 values exceed the bound"):
        codec.to_ring(x, np.uint64)
    clipped = clip_to_bound(x, codec, "test")
    assert clipped.dtype == np.float64 and np.abs(clipped).max() == 0.1
    assert signed_view(codec.to_ring(clipped, np.uint64)).tolist() == [codec.max_int, -codec.max_int,
                                                                        round(0.05 * 2**20)]


def test_the_clients_encoding_clips_only_what_the_codec_refuses(caplog):
    """to_ring_clipped: values within R_u encode as the codec's to_ring does (no warning), values beyond it are
    clipped (and logged) and encoded into the same ``out``, and NaN is refused, not clipped."""
    from clients.two_server import to_ring_clipped
    from crypto.fixed_point import BoundExceededError

    codec = FixedPointCodec(20, 0.1)
    inside = np.array([0.05, -0.0999, 0.0999], dtype=np.float32)
    with caplog.at_level("WARNING"):
        assert np.array_equal(to_ring_clipped(inside, codec, np.uint64, "rows"), codec.to_ring(inside, np.uint64))
    assert "clipping" not in caplog.text
    over = np.array([[0.3, -0.05], [np.float32(0.1), -7.0]], dtype=np.float32)
    with pytest.raises(BoundExceededError, match="3 values exceed"):
        codec.to_ring(over, np.uint64)
    out = np.zeros((2, 3), dtype=np.uint64)
    with caplog.at_level("WARNING"):
        to_ring_clipped(over, codec, np.uint64, "dense gradient", out=out[:, :2])
    assert "dense gradient: clipping 3 values" in caplog.text
    assert signed_view(out[:, :2]).tolist() == [[codec.max_int, round(-0.05 * 2**20)],
                                                [codec.max_int, -codec.max_int]]
    assert out[:, 2].tolist() == [0, 0]
    with pytest.raises(ValueError, match="NaN") as err:
        to_ring_clipped(np.array([0.01, np.nan]), codec, np.uint64, "rows")
    assert not isinstance(err.value, BoundExceededError)


def test_the_ring_encoding_is_written_into_any_out_view_a_block_at_a_time():
    """to_ring writes through ``out`` in cache-sized blocks: an upload's column slice, a transposed view and
    arrays longer than a block (rows and columns cut) get the same elements as a fresh array."""
    from crypto import fixed_point

    codec = FixedPointCodec(20, 0.1)
    rng = np.random.default_rng(3)
    for shape in [(3, fixed_point.ROUND_BLOCK + 17), (fixed_point.ROUND_BLOCK // 5 + 3, 7), (5,), ()]:
        x = rng.uniform(-0.1, 0.1, shape).astype(np.float32)
        fresh = codec.to_ring(x, np.uint64)
        assert np.array_equal(signed_view(fresh), np.rint(x.astype(np.float64) * 2**20).astype(np.int64))
        if x.ndim == 2:
            upload = np.zeros((shape[0], shape[1] + 2), np.uint64)
            codec.to_ring(x, np.uint64, out=upload[:, :shape[1]])
            assert np.array_equal(upload[:, :shape[1]], fresh) and not upload[:, shape[1]:].any()
            transposed = np.zeros(shape[::-1], np.uint64).T
            codec.to_ring(x, np.uint64, out=transposed)
            assert np.array_equal(transposed, fresh)
