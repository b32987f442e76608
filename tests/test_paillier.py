"""The Paillier scheme: public and private types, CRT decryption, phe interop, received-ciphertext checks,
and the obfuscator pool with its export / import."""

from __future__ import annotations

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.paillier import (
    ObfuscatorPool, PaillierPrivate, PaillierPublic, check_key_bytes, generate_key_bytes, generate_keypair,
    int_to_bytes,
)


@pytest.fixture(scope="module")
def key512():
    pub, priv = generate_keypair(512, allow_insecure_test_key=True)
    return PaillierPrivate(pub.n, priv.p, priv.q), pub, priv


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


def test_the_public_type_cannot_decrypt_and_holds_no_secret(key512):
    """'The server holds no secret key' is a fact of types: PaillierPublic has no decrypt and no p, q."""
    scheme, pub, _ = key512
    public = PaillierPublic(pub.n)
    assert not hasattr(public, "decrypt_batch")
    assert not {"p", "q", "_p2", "_q2", "_hp", "_hq", "_q_inv"} & set(vars(public))
    assert not isinstance(public, PaillierPrivate) and isinstance(scheme, PaillierPublic)
    assert not hasattr(scheme.public(), "decrypt_batch") and scheme.public().n == scheme.n
    ct = public.encrypt_batch([42])  # but anyone with the public key encrypts for the key holder
    assert scheme.decrypt_batch(ct) == [42]


@settings(max_examples=20, deadline=None)
@given(a=st.integers(0, 2**400), b=st.integers(0, 2**400), x=st.integers(-(2**400), 2**400))
def test_homomorphic_operations_are_their_definitions(key512, a, b, x):
    """add_encrypted: Dec(Enc a * Enc b) = a + b mod n; add_public: Dec(c g^x) = m + x mod n, no randomness."""
    scheme = key512[0]
    n = int(scheme.n)
    ca, cb = scheme.encrypt_batch([a % n, b % n])
    assert scheme.decrypt_batch([scheme.add_encrypted(ca, cb)]) == [(a + b) % n]
    assert scheme.decrypt_batch([scheme.add_public(ca, x)]) == [(a + x) % n]
    assert scheme.add_public(ca, x) == scheme.add_public(ca, x)  # deterministic: g^x needs no obfuscator


def test_encryption_is_randomised_and_refuses_plaintexts_outside_zn(key512):
    scheme = key512[0]
    c1, c2 = scheme.encrypt_batch([7, 7])
    assert c1 != c2
    with pytest.raises(ValueError, match="outside"):
        scheme.encrypt_batch([int(scheme.n)])
    with pytest.raises(ValueError, match="outside"):
        scheme.encrypt_batch([-1])


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


def test_a_ciphertext_sharing_a_factor_with_n_is_refused(key512):
    scheme = key512[0]
    arr = scheme.to_array([scheme.p * 12345])
    with pytest.raises(ValueError, match="ciphertext 0 is outside"):
        scheme.from_array(arr)


def test_wrong_secret_key_is_refused(key512):
    _, pub, priv = key512
    with pytest.raises(ValueError, match="does not match"):
        PaillierPrivate(pub.n, priv.p + 2, priv.q)
    with pytest.raises(ValueError, match="odd"):
        PaillierPublic(pub.n + 1)


def test_key_bytes_round_trip_and_a_wrong_key_is_refused():
    n, p, q = generate_key_bytes(1024)
    assert n.shape == (128,) and p.shape == q.shape == (64,)
    check_key_bytes(n, p, q)
    with pytest.raises(ValueError, match="does not match"):
        check_key_bytes(n, p, int_to_bytes(int.from_bytes(q.tobytes(), "big") + 2, 64))


def test_1024_bit_keys_warn(caplog):
    generate_keypair(1024)
    assert "below current recommendations" in caplog.text


# --------------------------------------------------------------------- pool
def test_pool_export_consumes_and_import_restores_the_same_obfuscators(key512):
    scheme = key512[0]
    pool = ObfuscatorPool(int(scheme.n))
    pool.fill(4)
    values = sorted(int(v) for v in pool._items)
    arr = pool.export()
    assert len(pool) == 0 and arr.dtype == np.uint8 and arr.shape == (4, scheme.ciphertext_bytes)
    assert pool.export().shape == (0, scheme.ciphertext_bytes)
    back = ObfuscatorPool.from_export(int(scheme.n), arr)
    assert len(back) == 4 and sorted(int(v) for v in back._items) == values
    user = PaillierPrivate(int(scheme.n), scheme.p, scheme.q, pool=back)  # encryption with imported values works
    assert user.decrypt_batch(user.encrypt_batch([11, 22, 33, 44])) == [11, 22, 33, 44]
    assert back.computed_on_demand == 0 and len(back) == 0


def test_every_imported_obfuscator_is_an_nth_power(key512):
    """r^n mod n^2 has order dividing lambda(n) = lcm(p-1, q-1): y^lambda = 1 mod n^2 for an n-th power."""
    scheme = key512[0]
    pool = ObfuscatorPool(int(scheme.n))
    pool.fill(3)
    lam = gmpy2.lcm(scheme.p - 1, scheme.q - 1)
    for y in ObfuscatorPool.from_export(int(scheme.n), pool.export())._items:
        assert gmpy2.powmod(y, lam, scheme.n2) == 1


@pytest.mark.parametrize("bad,needle", [
    (lambda a, s: a[:, :-1], "uint8"), (lambda a, s: a.astype(np.uint16), "uint8"), (lambda a, s: a[0], "uint8"),
    (lambda a, s: np.zeros_like(a), "obfuscator 0 is outside"),
    (lambda a, s: np.full_like(a, 0xFF), "outside"),
    (lambda a, s: np.concatenate([a, s.to_array([s.q])]), "obfuscator 2 is outside"),
])
def test_pool_import_validates_every_value(key512, bad, needle):
    scheme = key512[0]
    pool = ObfuscatorPool(int(scheme.n))
    pool.fill(2)
    with pytest.raises(ValueError, match=needle):
        ObfuscatorPool.from_export(int(scheme.n), bad(pool.export(), scheme))


def test_a_pool_of_another_modulus_is_refused(key512):
    other, _ = generate_keypair(512, allow_insecure_test_key=True)
    with pytest.raises(ValueError, match="another modulus"):
        PaillierPublic(key512[1].n, pool=ObfuscatorPool(other.n))


def test_an_empty_pool_computes_on_demand_and_counts_it(key512):
    pool = ObfuscatorPool(int(key512[0].n))
    PaillierPublic(int(key512[0].n), pool=pool).encrypt_batch([1, 2])
    assert pool.computed_on_demand == 2 and not hasattr(pool, "fill_in_background")
