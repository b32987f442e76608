"""FedMF's packed item matrix: the server type holds no secret, the user type decrypts, updates subtract."""

from __future__ import annotations

import numpy as np
import pytest
from phe import paillier

from crypto.packed_matrix import PackedMatrixPrivate, PackedMatrixPublic
from crypto.paillier import ObfuscatorPool, PaillierPublic, generate_keypair

CODEC = {"frac_bits": 32, "value_bound": 64.0, "max_summands": 3}


@pytest.fixture(scope="module")
def key512():
    return generate_keypair(512, allow_insecure_test_key=True)


@pytest.mark.parametrize("bits", [1024, 2048])
def test_real_key_sizes_pack_and_update_a_matrix(bits):
    pub, priv = paillier.generate_paillier_keypair(n_length=bits)
    server = PackedMatrixPublic(pub.n, 10, 4, **CODEC)
    user = PackedMatrixPrivate(pub.n, priv.p, priv.q, 10, 4, **CODEC)
    V = np.random.default_rng(0).normal(size=(4, 10))
    cv = server.encrypt_matrix(V)
    g1, g2 = np.full((2, 10), 0.25), np.full((1, 10), -0.5)
    up1 = server.from_bytes(user.encrypt_gradient_rows(g1))
    up2 = server.from_bytes(user.encrypt_gradient_rows(g2))
    cv = server.apply_updates(cv, [(np.array([0, 2]), up1), (np.array([2]), up2)])
    want = V.copy()
    want[[0, 2]] -= 0.25
    want[2] += 0.5
    assert np.allclose(user.decrypt_matrix(server.to_bytes(cv)), want, atol=1e-8)


def test_the_server_type_cannot_decrypt(key512):
    pub, _ = key512
    server = PackedMatrixPublic(pub.n, 4, 3, **CODEC)
    assert not hasattr(server, "decrypt_matrix") and not hasattr(server.scheme, "decrypt_batch")
    assert type(server.scheme) is PaillierPublic


def test_both_sides_agree_on_the_layout(key512):
    pub, priv = key512
    server = PackedMatrixPublic(pub.n, 40, 7, **CODEC)
    user = PackedMatrixPrivate(pub.n, priv.p, priv.q, 40, 7, **CODEC)
    assert server.cts_per_row == user.cts_per_row == -(-40 // server.codec.slots)
    assert server.codec == user.codec and server.key_bits == user.key_bits == pub.n.bit_length()
    arr = user.encrypt_gradient_rows(np.zeros((3, 40)))
    assert arr.shape == (3, server.cts_per_row, server.scheme.ciphertext_bytes) and arr.dtype == np.uint8
    assert user.encrypt_gradient_rows(np.zeros((0, 40))).shape == (0, server.cts_per_row,
                                                                   server.scheme.ciphertext_bytes)


def test_an_update_of_a_row_set_twice_removes_both_offsets(key512):
    """K_j offsets per row: a row two users touch gets 2 M removed, a row nobody touches none."""
    pub, priv = key512
    server = PackedMatrixPublic(pub.n, 3, 3, **CODEC)
    user = PackedMatrixPrivate(pub.n, priv.p, priv.q, 3, 3, **CODEC)
    V = np.arange(9, dtype=float).reshape(3, 3) / 10
    cv = server.encrypt_matrix(V)
    rows = np.array([[1.0, -1.0, 0.5]])
    up = server.from_bytes(user.encrypt_gradient_rows(rows))
    cv = server.apply_updates(cv, [(np.array([1]), up), (np.array([1]), up)])
    want = V.copy()
    want[1] -= 2 * rows[0]
    assert np.allclose(user.decrypt_matrix(server.to_bytes(cv)), want, atol=1e-8)


def test_bad_shapes_and_parameters_are_refused(key512):
    pub, _ = key512
    server = PackedMatrixPublic(pub.n, 4, 3, **CODEC)
    with pytest.raises(ValueError, match="rows must be"):
        server.encrypt_matrix(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="expected ciphertexts"):
        server.from_bytes(np.zeros((2, server.scheme.ciphertext_bytes), np.uint8))
    with pytest.raises(ValueError, match="dim"):
        PackedMatrixPublic(pub.n, 0, 3, **CODEC)
    with pytest.raises(ValueError, match="does not fit"):
        PackedMatrixPublic(pub.n, 4, 3, frac_bits=60, value_bound=64.0, max_summands=3)


def test_a_user_matrix_uses_its_imported_obfuscators(key512):
    pub, priv = key512
    pool = ObfuscatorPool(pub.n)
    pool.fill(2)
    user = PackedMatrixPrivate(pub.n, priv.p, priv.q, 4, 3, pool=ObfuscatorPool.from_export(pub.n, pool.export()),
                               **CODEC)
    user.encrypt_gradient_rows(np.ones((2, 4)))
    assert user.scheme.pool.computed_on_demand == 0 and len(user.scheme.pool) == 0
