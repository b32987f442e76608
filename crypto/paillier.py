"""Packed Paillier on top of python-paillier keys, with gmpy2 arithmetic.

Keys are python-paillier's (g = n + 1), so a single-value ciphertext of ours
decrypts with phe's ``raw_decrypt`` and vice versa. Speed comes from four
things the FedMF prototype does not do (DESIGN.md, "Speed"):

1. packing: many fixed-point values share one plaintext, each in a slot of w
   bits with headroom for the sum over a round's users (no carry ever crosses
   a slot: checked when the codec is built);
2. CRT decryption (mod p^2 and q^2 separately);
3. homomorphic addition as one modular multiplication per ciphertext (phe's
   EncryptedNumber arithmetic does far more per operation), with the round's
   offsets removed by one public constant g^-x = 1 - x n mod n^2;
4. obfuscators r^n mod n^2 drawn from a pool precomputed off the critical path.

Slot layout (values v with |v| <= value_bound, e = round(v 2^f), |e| <= M):
a stored matrix entry holds e + H with H = M (S + 1); each user's update adds
(-g_e + M) in [0, 2M]; after K <= S users the server subtracts K M. Every slot
therefore stays in [0, M (3S + 2)] < 2^w during a round, and a decrypted entry
outside [H - M, H + M] (a value that left the bound) is reported, not wrapped.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import gmpy2
import numpy as np
from phe import paillier

from crypto.fixed_point import FixedPointCodec

log = logging.getLogger("secrec.paillier")
MIN_SECURE_BITS = 2048


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
    return np.frombuffer(int(x).to_bytes(width, "big"), dtype=np.uint8).copy()


def bytes_to_int(b: np.ndarray) -> int:
    return int.from_bytes(np.asarray(b, dtype=np.uint8).tobytes(), "big")


@dataclass(frozen=True)
class PackingCodec:
    """Fixed-point values <-> packed plaintexts, overflow-free by construction for <= S summands."""

    fixed: FixedPointCodec
    max_summands: int
    key_bits: int

    def __post_init__(self) -> None:
        if self.max_summands < 1:
            raise ValueError("max_summands must be >= 1")
        if self.slots < 1:
            raise ValueError(f"a slot of {self.slot_bits} bits (frac_bits={self.fixed.frac_bits}, value_bound="
                             f"{self.fixed.value_bound}, {self.max_summands} users) does not fit a "
                             f"{self.key_bits}-bit plaintext")

    @property
    def M(self) -> int:
        return self.fixed.max_int

    @property
    def H(self) -> int:
        return self.M * (self.max_summands + 1)

    @property
    def slot_bits(self) -> int:
        """Bits per slot, rounded up to whole bytes, with one guard bit."""
        bits = (self.M * (3 * self.max_summands + 2)).bit_length() + 1
        return 8 * math.ceil(bits / 8)

    @property
    def slots(self) -> int:
        if self.slot_bits > 64:
            return 0  # slots are handled as uint64 words
        return (self.key_bits - 2) // self.slot_bits

    def _pack_words(self, words: np.ndarray) -> list[int]:
        """Rows of non-negative slot values (uint64 [N, slots]) -> one integer per row (slot 0 lowest)."""
        wb = self.slot_bits // 8
        raw = np.ascontiguousarray(words.astype("<u8")).view(np.uint8).reshape(len(words), -1, 8)[:, :, :wb]
        raw = np.ascontiguousarray(raw).reshape(len(words), -1)
        return [int.from_bytes(row.tobytes(), "little") for row in raw]

    def _unpack_words(self, ints: Sequence[int]) -> np.ndarray:
        wb = self.slot_bits // 8
        raw = np.frombuffer(b"".join(int(x).to_bytes(self.slots * wb, "little") for x in ints), dtype=np.uint8)
        out = np.zeros((len(ints), self.slots, 8), dtype=np.uint8)
        out[:, :, :wb] = raw.reshape(len(ints), self.slots, wb)
        return out.view("<u8").reshape(len(ints), self.slots)

    def n_plaintexts(self, count: int) -> int:
        return -(-count // self.slots)

    def _layout(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        padded = np.zeros(self.n_plaintexts(len(v)) * self.slots)
        padded[: len(v)] = v
        return padded.reshape(-1, self.slots)

    def pack_stored(self, values: np.ndarray) -> list[int]:
        """Encode stored entries (e + H per slot)."""
        e = self.fixed.encode(self._layout(values))
        return self._pack_words((e + self.H).astype(np.uint64))

    def pack_update(self, values: np.ndarray) -> list[int]:
        """Encode one user's update that will be SUBTRACTED: (-e + M) per slot, in [0, 2M]."""
        e = self.fixed.encode(self._layout(values))
        return self._pack_words((self.M - e).astype(np.uint64))

    def unpack_stored(self, ints: Sequence[int], count: int) -> np.ndarray:
        """Decode stored entries; refuses slots that left [H - M, H + M] (value beyond the bound)."""
        words = self._unpack_words(ints).astype(np.int64) - self.H
        if np.abs(words).max(initial=0) > self.M:
            raise ValueError(f"a decrypted value exceeds value_bound={self.fixed.value_bound}: raise the bound "
                             "or lower the learning rate")
        return self.fixed.decode(words.reshape(-1)[:count])

    def correction_plaintext(self, n_users: int) -> int:
        """The packed constant K M (per slot) that a round with K users added on top of the stored offset."""
        if not 0 <= n_users <= self.max_summands:
            raise ValueError(f"{n_users} updates exceed the codec's headroom of {self.max_summands}")
        return self._pack_words(np.full((1, self.slots), n_users * self.M, dtype=np.uint64))[0]


class ObfuscatorPool:
    """Precomputed r^n mod n^2 (r uniform in Z_n^*), refillable from a background thread."""

    def __init__(self, n: int) -> None:
        self.n, self.n2 = gmpy2.mpz(n), gmpy2.mpz(n) * gmpy2.mpz(n)
        self._items: list = []
        self._lock = threading.Lock()
        self.computed_on_demand = 0

    def _fresh(self):
        while True:
            r = gmpy2.mpz(secrets.randbelow(int(self.n) - 1) + 1)
            if gmpy2.gcd(r, self.n) == 1:
                return gmpy2.powmod(r, self.n, self.n2)

    def fill(self, count: int) -> None:
        fresh = [self._fresh() for _ in range(count)]
        with self._lock:
            self._items.extend(fresh)

    def fill_in_background(self, count: int) -> threading.Thread:
        th = threading.Thread(target=self.fill, args=(count,), daemon=True)
        th.start()
        return th

    def take(self):
        with self._lock:
            if self._items:
                return self._items.pop()
        self.computed_on_demand += 1
        return self._fresh()

    def __len__(self) -> int:
        return len(self._items)


class PackedPaillier:
    """Batch encryption/decryption and homomorphic arithmetic on packed plaintexts."""

    def __init__(self, n: int, p: int | None = None, q: int | None = None, pool: ObfuscatorPool | None = None) -> None:
        self.n = gmpy2.mpz(n)
        self.n2 = self.n * self.n
        self.key_bits = int(self.n).bit_length()
        self.pool = pool or ObfuscatorPool(int(n))
        self.can_decrypt = p is not None and q is not None
        if self.can_decrypt:
            p, q = gmpy2.mpz(p), gmpy2.mpz(q)
            if p * q != self.n:
                raise ValueError("p q does not equal n: the secret key does not match the public key")
            self.p, self.q = p, q
            self.p2, self.q2 = p * p, q * q
            g = self.n + 1
            self.hp = gmpy2.invert((gmpy2.powmod(g, p - 1, self.p2) - 1) // p, p)
            self.hq = gmpy2.invert((gmpy2.powmod(g, q - 1, self.q2) - 1) // q, q)
            self.q_inv = gmpy2.invert(q, p)

    @property
    def ciphertext_bytes(self) -> int:
        return (int(self.n2).bit_length() + 7) // 8

    def encrypt_batch(self, plaintexts: Sequence[int]) -> list:
        """(1 + m n) r^n mod n^2 per plaintext, r^n from the pool."""
        n, n2 = self.n, self.n2
        out = []
        for m in plaintexts:
            if not 0 <= m < n:
                raise ValueError("plaintext outside [0, n)")
            out.append(((1 + gmpy2.mpz(m) * n) % n2) * self.pool.take() % n2)
        return out

    def decrypt_batch(self, ciphertexts: Sequence) -> list[int]:
        """CRT decryption, as in phe's PaillierPrivateKey but with gmpy2 throughout."""
        if not self.can_decrypt:
            raise ValueError("this key holds no secret key")
        p, q, p2, q2 = self.p, self.q, self.p2, self.q2
        pm1, qm1 = p - 1, q - 1
        out = []
        for c in ciphertexts:
            mp = (gmpy2.powmod(c, pm1, p2) - 1) // p * self.hp % p
            mq = (gmpy2.powmod(c, qm1, q2) - 1) // q * self.hq % q
            out.append(int(mq + ((mp - mq) * self.q_inv % p) * q))
        return out

    def mul(self, a, b):
        """Homomorphic addition of the plaintexts."""
        return a * b % self.n2

    def add_public(self, c, plaintext: int):
        """c * g^x mod n^2 = Enc(m + x) with g = n + 1 (x may be negative): exact, no randomness needed."""
        return c * ((1 + (plaintext % self.n) * self.n) % self.n2) % self.n2

    # ------------------------------------------------------------ transport
    def to_array(self, cts: Sequence) -> np.ndarray:
        """Fixed-width big-endian bytes, uint8 [N, width]."""
        w = self.ciphertext_bytes
        return np.frombuffer(b"".join(int(c).to_bytes(w, "big") for c in cts), dtype=np.uint8).reshape(len(cts), w)

    def from_array(self, arr: np.ndarray) -> list:
        """Parse received ciphertexts; each must be in [1, n^2) and invertible mod n^2 (coprime to n)."""
        arr = np.asarray(arr)
        w = self.ciphertext_bytes
        if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != w:
            raise ValueError(f"ciphertexts must be uint8 [N, {w}], got {arr.dtype} {arr.shape}")
        out = []
        raw = arr.tobytes()
        for i in range(arr.shape[0]):
            c = gmpy2.mpz(int.from_bytes(raw[i * w:(i + 1) * w], "big"))
            if not 0 < c < self.n2 or gmpy2.gcd(c, self.n) != 1:
                raise ValueError(f"ciphertext {i} is outside Z*_(n^2)")
            out.append(c)
        return out
