"""Packing codec: slot layout, headroom for S summands with no carry between slots, bounds, and the
end-to-end sum of users through real encryption."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crypto.fixed_point import FixedPointCodec
from crypto.paillier import PaillierPrivate, generate_keypair
from crypto.paillier_codec import PackingCodec


@pytest.fixture(scope="module")
def key512():
    pub, priv = generate_keypair(512, allow_insecure_test_key=True)
    return PaillierPrivate(pub.n, priv.p, priv.q), pub, priv


@settings(max_examples=25, deadline=None)
@given(frac=st.integers(8, 32), bound=st.floats(0.5, 64), users=st.integers(1, 40), seed=st.integers(0, 2**32),
       count=st.integers(1, 40))
def test_sum_of_users_round_trips_through_encryption(key512, frac, bound, users, seed, count):
    scheme = key512[0]
    codec = PackingCodec(FixedPointCodec(frac, bound), users, scheme.key_bits)
    rng = np.random.default_rng(seed)
    stored = rng.uniform(-bound, bound, count)
    updates = [rng.uniform(-bound, bound, count) / users for _ in range(users)]
    ct = scheme.encrypt_batch(codec.pack_stored(stored))
    for u in updates:
        ct = [scheme.add_encrypted(a, b) for a, b in zip(ct, scheme.encrypt_batch(codec.pack_update(u)))]
    ct = [scheme.add_public(c, -codec.correction_plaintext(users)) for c in ct]
    expected = stored - np.sum(updates, axis=0)
    if np.abs(expected).max() > bound:  # a result that left the bound is reported, never wrapped
        with pytest.raises(ValueError, match="value_bound"):
            codec.unpack_stored(scheme.decrypt_batch(ct), count)
        return
    got = codec.unpack_stored(scheme.decrypt_batch(ct), count)
    assert np.abs(got - expected).max() <= (users + 1) * 2.0 ** -frac


def test_values_at_the_bound_and_negative_values(key512):
    scheme = key512[0]
    codec = PackingCodec(FixedPointCodec(20, 4.0), 3, scheme.key_bits)
    v = np.array([-4.0, 4.0, -1e-6, 0.0, 3.999])
    got = codec.unpack_stored(scheme.decrypt_batch(scheme.encrypt_batch(codec.pack_stored(v))), len(v))
    assert np.allclose(got, v, atol=2**-20)


def test_over_bound_and_non_finite_values_are_refused(key512):
    codec = PackingCodec(FixedPointCodec(20, 4.0), 3, key512[0].key_bits)
    with pytest.raises(ValueError, match="exceed the bound"):
        codec.pack_update(np.array([4.5]))
    with pytest.raises(ValueError, match="NaN"):
        codec.pack_update(np.array([np.nan]))


def test_parameters_that_cannot_fit_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        PackingCodec(FixedPointCodec(60, 1e6), 10**6, 512)
    with pytest.raises(ValueError, match="headroom"):
        PackingCodec(FixedPointCodec(16, 1.0), 5, 1024).correction_plaintext(6)
    with pytest.raises(ValueError, match="max_summands"):
        PackingCodec(FixedPointCodec(16, 1.0), 0, 1024)


def test_an_update_at_a_bound_that_rounds_up_stays_in_its_slot():
    """The bug this codec once had: 0.1 * 2^20 = 104857.6 rounded to max_int + 1, so one legal update of
    +-0.1 wrapped its slot (M - e = -1: all ones) and carried into the next one."""
    codec = PackingCodec(FixedPointCodec(20, 0.1), 5, 1024)
    words = codec.unpack_words(codec.pack_update(np.array([0.1, -0.1, 0.0])))[0]
    assert words[:4].tolist() == [0, 2 * codec.M, codec.M, codec.M]  # slot 3: padding, encodes 0
    stored = codec.unpack_words(codec.pack_stored(np.array([0.1, -0.1])))[0]
    assert stored[:2].tolist() == [codec.H + codec.M, codec.H - codec.M]


# ------------------------------------------------------ boundary property (every FedMF config)
def _extremes(bound: float) -> np.ndarray:
    inside = np.nextafter(bound, 0.0)
    return np.array([bound, -bound, inside, -inside, bound * (1 - 2**-30), 0.0])


@settings(max_examples=60, deadline=None)
@given(frac=st.integers(1, 40), bound=st.sampled_from([64.0, 1.0, 0.1, 16.0, 1000.0]),
       users=st.integers(1, 500), key_bits=st.sampled_from([1024, 2048]), seed=st.integers(0, 2**32))
def test_values_at_and_inside_the_bound_never_carry_into_a_neighbouring_slot(frac, bound, users, key_bits, seed):
    """max_summands updates at +-value_bound (and just inside) onto a stored entry at +-value_bound:
    every slot holds exactly its own sum, and whatever ends inside the bound decodes to it."""
    try:
        codec = PackingCodec(FixedPointCodec(frac, bound), users, key_bits)
    except ValueError:  # refused at construction, so the config check refuses it too: nothing to test
        assume(False)
    ext = _extremes(bound)
    n = codec.slots + 3  # two plaintexts: slots carry across ciphertext boundaries too
    rng = np.random.default_rng(seed)
    stored = rng.choice(ext, n)
    distinct = [rng.choice(ext, n) for _ in range(min(users, 3))]
    times = [1] * (len(distinct) - 1) + [users - len(distinct) + 1]  # S summands in all, the last one repeated
    e_stored, e_up = codec.fixed.encode(stored), [codec.fixed.encode(u) for u in distinct]
    assert np.abs(e_stored).max() <= codec.M and max(np.abs(e).max() for e in e_up) <= codec.M

    packed = [codec.pack_update(u) for u in distinct]
    total = [a + sum(c * b for c, b in zip(times, bs)) for a, *bs in zip(codec.pack_stored(stored), *packed)]
    assert all(0 <= t < 2 ** (key_bits - 2) for t in total)  # below n: a homomorphic sum is this integer sum
    e_up = [e for e, c in zip(e_up, times) for _ in range(c)]
    expect_slots = (codec.H + e_stored + sum(codec.M - e for e in e_up)).astype(object)
    got = codec.unpack_words(total).reshape(-1)[:n].astype(object)
    assert np.array_equal(got, expect_slots)  # no carry: each slot is exactly its own sum
    final = [t - codec.correction_plaintext(users) for t in total]
    e_final = e_stored - sum(e_up)
    if np.abs(e_final).max() > codec.M:
        with pytest.raises(ValueError, match="value_bound"):
            codec.unpack_stored(final, n)
    else:
        assert np.array_equal(codec.unpack_stored(final, n), codec.fixed.decode(e_final))


@settings(max_examples=40, deadline=None)
@given(frac=st.integers(1, 40), users=st.integers(1, 500), key_bits=st.sampled_from([1024, 2048]))
def test_stored_values_at_and_inside_the_bound_round_trip(frac, users, key_bits):
    codec = PackingCodec(FixedPointCodec(frac, 64.0), users, key_bits)
    v = _extremes(64.0)
    got = codec.unpack_stored(codec.pack_stored(v), len(v))
    assert np.abs(got - v).max() < 2.0 ** -frac


def test_a_plaintext_beyond_its_slots_is_refused():
    codec = PackingCodec(FixedPointCodec(16, 1.0), 3, 1024)
    with pytest.raises(ValueError, match="beyond its packed slots"):
        codec.unpack_stored([1 << (codec.slots * codec.slot_bits)], 1)


@pytest.mark.parametrize("beyond", ["below", "above", "wraps"])
def test_a_stored_slot_outside_its_range_is_refused_even_where_a_signed_view_would_wrap(beyond):
    """A slot word outside [H - M, H + M] is refused. With 64-bit slots (frac 44, bound 64, 100 users: a
    config the checks accept) the word H + 2^63 read as int64 is INT64_MIN, whose abs() is negative and
    passed the bound check: it decoded to -2^19 with value_bound 64."""
    codec = PackingCodec(FixedPointCodec(44, 64.0), 100, 2048)
    assert codec.slot_bits == 64
    words = np.full((1, codec.slots), codec.H, dtype=np.uint64)  # stored zeros
    words[0, 1], words[0, 2] = codec.H - codec.M, codec.H + codec.M  # the range's edges decode to -+ the bound
    assert codec.unpack_stored(codec._pack_words(words), 3).tolist() == [0.0, -64.0, 64.0]
    words[0, 1] = {"below": codec.H - codec.M - 1, "above": codec.H + codec.M + 1, "wraps": codec.H + (1 << 63)}[beyond]
    with pytest.raises(ValueError, match="exceeds value_bound"):
        codec.unpack_stored(codec._pack_words(words), 3)
