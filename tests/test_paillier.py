"""Packed Paillier: codec properties, CRT decryption, phe interop, bounds, received-ciphertext checks."""

from __future__ import annotations

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phe import paillier

from crypto.fixed_point import FixedPointCodec
from crypto.packed_matrix import PackedMatrixCrypto
from crypto.paillier import PackedPaillier, PackingCodec, generate_keypair


@pytest.fixture(scope="module")
def key512():
    pub, priv = generate_keypair(512, allow_insecure_test_key=True)
    return PackedPaillier(pub.n, priv.p, priv.q), pub, priv


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
        ct = [scheme.mul(a, b) for a, b in zip(ct, scheme.encrypt_batch(codec.pack_update(u)))]
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


def test_crt_decryption_matches_phe_and_interop_both_ways(key512):
    scheme, pub, priv = key512
    ours = scheme.encrypt_batch([123456789])[0]
    assert priv.raw_decrypt(int(ours)) == 123456789
    theirs = pub.raw_encrypt(987654321)
    assert scheme.decrypt_batch([gmpy2.mpz(theirs)]) == [987654321]
    enc = pub.encrypt(-2.5)  # phe's own EncodedNumber path still decrypts with phe
    assert priv.decrypt(enc) == -2.5
    cts = scheme.encrypt_batch(list(range(1, 20)))
    assert scheme.decrypt_batch(cts) == [priv.raw_decrypt(int(c)) for c in cts]


def test_pool_obfuscators_are_used(key512):
    scheme = key512[0]
    scheme.pool.fill(5)
    before = scheme.pool.computed_on_demand
    scheme.encrypt_batch([1, 2, 3])
    assert scheme.pool.computed_on_demand == before and len(scheme.pool) == 2


def test_ciphertext_parsing_rejects_out_of_range_and_bad_shapes(key512):
    scheme = key512[0]
    arr = scheme.to_array(scheme.encrypt_batch([5, 6]))
    assert [int(x) for x in scheme.from_array(arr)] == [int(x) for x in scheme.from_array(arr.copy())]
    zero = arr.copy()
    zero[0] = 0
    with pytest.raises(ValueError, match="outside"):
        scheme.from_array(zero)
    big = arr.copy()
    big[0] = 0xFF
    with pytest.raises(ValueError, match="outside"):
        scheme.from_array(big)
    with pytest.raises(ValueError, match="uint8"):
        scheme.from_array(arr[:, :-1])
    with pytest.raises(ValueError, match="uint8"):
        scheme.from_array(arr.astype(np.uint16))


def test_wrong_secret_key_is_refused(key512):
    _, pub, priv = key512
    with pytest.raises(ValueError, match="does not match"):
        PackedPaillier(pub.n, priv.p + 2, priv.q)


@pytest.mark.parametrize("bits", [1024, 2048])
def test_real_key_sizes_pack_and_update_a_matrix(bits, caplog):
    pub, priv = paillier.generate_paillier_keypair(n_length=bits)
    cfg = {"strategy": {"frac_bits": 32, "value_bound": 64.0}, "clients_per_round": 3, "model": {"dim": 10}}
    from crypto.paillier import int_to_bytes
    crypto = PackedMatrixCrypto.from_config(cfg, 4, int_to_bytes(pub.n, bits // 8), int_to_bytes(priv.p, bits // 16),
                                            int_to_bytes(priv.q, bits // 16))
    V = np.random.default_rng(0).normal(size=(4, 10))
    cv = crypto.encrypt_matrix(V)
    g1, g2 = np.full((2, 10), 0.25), np.full((1, 10), -0.5)
    up1 = crypto.from_bytes(crypto.encrypt_gradient_rows(g1))
    up2 = crypto.from_bytes(crypto.encrypt_gradient_rows(g2))
    cv = crypto.apply_updates(cv, [(np.array([0, 2]), up1), (np.array([2]), up2)])
    want = V.copy()
    want[[0, 2]] -= 0.25
    want[2] += 0.5
    assert np.allclose(crypto.decrypt_matrix(crypto.to_bytes(cv)), want, atol=1e-8)


def test_1024_bit_keys_warn(caplog):
    generate_keypair(1024)
    assert "below current recommendations" in caplog.text
