"""Paillier on top of python-paillier keys, with gmpy2 arithmetic: a public type and a private type.

Who may decrypt is a fact of types: :class:`PaillierPublic` (what FedMF's
server holds) encrypts, adds ciphertexts and adds public constants, and has no
secret and no way to decrypt; :class:`PaillierPrivate` (the users') adds
CRT decryption and holds p and q. The number encoding lives apart, in
:mod:`crypto.paillier_codec` (as python-paillier keeps ``EncodedNumber``
apart from its keys): plaintexts here are plain integers in [0, n).

Keys are python-paillier's (g = n + 1), so a single-value ciphertext of ours
decrypts with phe's ``raw_decrypt`` and vice versa. Speed comes from what the
FedMF prototype does not do (DESIGN.md, "Speed"): packing (the codec), CRT
decryption (mod p^2 and q^2 separately), homomorphic addition as one modular
multiplication (phe's EncryptedNumber arithmetic does far more per
operation), public constants added as g^x = 1 + x n mod n^2 with no
randomness, and obfuscators r^n mod n^2 (almost all of an encryption's cost)
drawn from an :class:`ObfuscatorPool` that can be filled off the critical
path and carried between rounds with :meth:`ObfuscatorPool.export` /
:meth:`ObfuscatorPool.from_export`.

Ciphertexts travel as fixed-width big-endian bytes (uint8 [N, width], width
from n^2), checked on receipt: each must lie in [1, n^2) and be coprime to n.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Sequence

import gmpy2
import numpy as np
from phe import paillier

log = logging.getLogger("secrec.paillier")
MIN_SECURE_BITS = 2048


# ------------------------------------------------------------------ keys
def generate_keypair(key_bits: int, allow_insecure_test_key: bool = False
                     ) -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    """phe key pair; 1024 bits (the FedMF paper's) warns, below 1024 only for tests."""
    if key_bits < 1024 and not allow_insecure_test_key:
        raise ValueError(f"Paillier keys below 1024 bits are refused (got {key_bits})")
    if key_bits < MIN_SECURE_BITS:
        log.warning("Paillier key of %d bits is below current recommendations (NIST: >= 2048); "
                    "use it only to reproduce the FedMF paper", key_bits)
    return paillier.generate_paillier_keypair(n_length=key_bits)


def int_to_bytes(x: int, width: int) -> np.ndarray:
    """Big-endian uint8 [width]."""
    return np.frombuffer(int(x).to_bytes(width, "big"), dtype=np.uint8).copy()


def bytes_to_int(b: np.ndarray) -> int:
    return int.from_bytes(np.asarray(b, dtype=np.uint8).tobytes(), "big")


def generate_key_bytes(key_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fresh key pair as big-endian bytes: n (key_bits / 8), p and q (key_bits / 16 each)."""
    pub, priv = generate_keypair(key_bits)
    return (int_to_bytes(pub.n, key_bits // 8), int_to_bytes(priv.p, key_bits // 16),
            int_to_bytes(priv.q, key_bits // 16))


def check_key_bytes(n_b: np.ndarray, p_b: np.ndarray, q_b: np.ndarray) -> None:
    """Refuse a delivered secret key (p, q) that does not factor the public modulus n."""
    n, p, q = bytes_to_int(n_b), bytes_to_int(p_b), bytes_to_int(q_b)
    if p < 2 or q < 2 or p * q != n:
        raise ValueError("the delivered secret key does not match the public key (p q != n)")
    if not (gmpy2.is_prime(p) and gmpy2.is_prime(q)) or p == q:
        raise ValueError("the delivered secret key is not two distinct primes")


def _ciphertext_bytes(n2) -> int:
    return (int(n2).bit_length() + 7) // 8


def _parse_units(arr: np.ndarray, n, n2, what: str) -> list:
    """uint8 [N, width] big-endian -> gmpy2 integers, each checked to lie in Z*_(n^2): [1, n^2), coprime to n."""
    arr = np.asarray(arr)
    w = _ciphertext_bytes(n2)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != w:
        raise ValueError(f"{what}s must be uint8 [N, {w}], got {arr.dtype} {arr.shape}")
    out = []
    raw = arr.tobytes()
    for i in range(arr.shape[0]):
        c = gmpy2.mpz(int.from_bytes(raw[i * w:(i + 1) * w], "big"))
        if not 0 < c < n2 or gmpy2.gcd(c, n) != 1:
            raise ValueError(f"{what} {i} is outside Z*_(n^2)")
        out.append(c)
    return out


def _to_units_array(values: Sequence, n2) -> np.ndarray:
    w = _ciphertext_bytes(n2)
    return np.frombuffer(b"".join(int(c).to_bytes(w, "big") for c in values), dtype=np.uint8).reshape(len(values), w)


# ------------------------------------------------------------ obfuscators
class ObfuscatorPool:
    """Precomputed obfuscators r^n mod n^2 (r uniform in Z_n^*, from ``secrets``).

    Computing r^n is almost all of an encryption (13 ms at 2048 bits). A user
    fills the pool while it has nothing else to do (:meth:`fill`) and keeps it
    between rounds in its own state (:meth:`export` / :meth:`from_export`);
    :meth:`take` falls back to computing one on the critical path, counted in
    ``computed_on_demand``. Each obfuscator is used once: export consumes.
    """

    def __init__(self, n: int) -> None:
        self.n, self.n2 = gmpy2.mpz(n), gmpy2.mpz(n) * gmpy2.mpz(n)
        self._items: list = []
        self._lock = threading.Lock()
        self.computed_on_demand = 0

    @property
    def ciphertext_bytes(self) -> int:
        return _ciphertext_bytes(self.n2)

    def _fresh(self):
        while True:
            r = gmpy2.mpz(secrets.randbelow(int(self.n) - 1) + 1)
            if gmpy2.gcd(r, self.n) == 1:
                return gmpy2.powmod(r, self.n, self.n2)

    def fill(self, count: int) -> None:
        """Compute ``count`` more obfuscators now (off the critical path, e.g. between rounds)."""
        fresh = [self._fresh() for _ in range(count)]
        with self._lock:
            self._items.extend(fresh)

    def take(self):
        """One obfuscator, from the pool if it has one, else computed now."""
        with self._lock:
            if self._items:
                return self._items.pop()
        self.computed_on_demand += 1
        return self._fresh()

    def export(self) -> np.ndarray:
        """All pooled obfuscators as uint8 [N, ciphertext_bytes], big-endian; the pool is left empty.

        Consuming them is the point: an obfuscator used twice would link two ciphertexts, so the
        exported copy is now the only one (store it, e.g. in the user's ``Context.state``).
        """
        with self._lock:
            items, self._items = self._items, []
        return _to_units_array(items, self.n2)

    @classmethod
    def from_export(cls, n: int, arr: np.ndarray) -> ObfuscatorPool:
        """A pool for modulus n holding the exported obfuscators ``arr`` (uint8 [N, ciphertext_bytes]).

        Each value must lie in [1, n^2) and be coprime to n (else ValueError naming the row).
        That a value is an n-th power cannot be checked without the secret key: the export must
        come from this user's own state, never from the wire.
        """
        pool = cls(n)
        pool._items = _parse_units(arr, pool.n, pool.n2, "obfuscator")
        return pool

    def __len__(self) -> int:
        return len(self._items)


# ---------------------------------------------------------------- scheme
class PaillierPublic:
    """The public key's operations: encrypt, add ciphertexts, add public constants, (de)serialise."""

    def __init__(self, n: int, pool: ObfuscatorPool | None = None) -> None:
        self.n = gmpy2.mpz(n)
        if self.n < 3 or self.n % 2 == 0:
            raise ValueError("a Paillier modulus is an odd number > 2")
        self.n2 = self.n * self.n
        self.key_bits = int(self.n).bit_length()
        if pool is not None and pool.n != self.n:
            raise ValueError("the obfuscator pool belongs to another modulus")
        self.pool = pool if pool is not None else ObfuscatorPool(int(n))

    @property
    def ciphertext_bytes(self) -> int:
        return _ciphertext_bytes(self.n2)

    def encrypt_batch(self, plaintexts: Sequence[int]) -> list:
        """(1 + m n) r^n mod n^2 per plaintext m in [0, n), r^n from the pool."""
        n, n2 = self.n, self.n2
        out = []
        for m in plaintexts:
            if not 0 <= m < n:
                raise ValueError("plaintext outside [0, n)")
            out.append(((1 + gmpy2.mpz(m) * n) % n2) * self.pool.take() % n2)
        return out

    def add_encrypted(self, a, b):
        """Enc(m_a) * Enc(m_b) mod n^2 = Enc(m_a + m_b mod n): homomorphic addition of the plaintexts."""
        return a * b % self.n2

    def add_public(self, c, plaintext: int):
        """c * g^x mod n^2 = Enc(m + x) with g = n + 1 (x may be negative): exact, no randomness needed."""
        return c * ((1 + (plaintext % self.n) * self.n) % self.n2) % self.n2

    def to_array(self, cts: Sequence) -> np.ndarray:
        """Fixed-width big-endian bytes, uint8 [N, ciphertext_bytes]."""
        return _to_units_array(cts, self.n2)

    def from_array(self, arr: np.ndarray) -> list:
        """Parse received ciphertexts; each must be in [1, n^2) and invertible mod n^2 (coprime to n)."""
        return _parse_units(arr, self.n, self.n2, "ciphertext")


class PaillierPrivate(PaillierPublic):
    """The key pair: everything :class:`PaillierPublic` does, plus CRT decryption with p and q."""

    def __init__(self, n: int, p: int, q: int, pool: ObfuscatorPool | None = None) -> None:
        super().__init__(n, pool)
        p, q = gmpy2.mpz(p), gmpy2.mpz(q)
        if p < 2 or q < 2 or p == q or p * q != self.n:
            raise ValueError("p q does not equal n: the secret key does not match the public key")
        self.p, self.q = p, q
        self._p2, self._q2 = p * p, q * q
        g = self.n + 1
        self._hp = gmpy2.invert((gmpy2.powmod(g, p - 1, self._p2) - 1) // p, p)
        self._hq = gmpy2.invert((gmpy2.powmod(g, q - 1, self._q2) - 1) // q, q)
        self._q_inv = gmpy2.invert(q, p)

    def public(self) -> PaillierPublic:
        """The public half alone (sharing this key's obfuscator pool)."""
        return PaillierPublic(int(self.n), self.pool)

    def decrypt_batch(self, ciphertexts: Sequence) -> list[int]:
        """CRT decryption, as in phe's PaillierPrivateKey but with gmpy2 throughout."""
        p, q, p2, q2 = self.p, self.q, self._p2, self._q2
        pm1, qm1 = p - 1, q - 1
        out = []
        for c in ciphertexts:
            mp = (gmpy2.powmod(c, pm1, p2) - 1) // p * self._hp % p
            mq = (gmpy2.powmod(c, qm1, q2) - 1) // q * self._hq % q
            out.append(int(mq + ((mp - mq) * self._q_inv % p) * q))
        return out
