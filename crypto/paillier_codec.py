"""Packing fixed-point values into Paillier plaintexts, apart from the scheme (as phe keeps EncodedNumber apart).

Many values share one plaintext, each in a slot of w bits with headroom for
the sum over a round's users, so no carry ever crosses a slot; whether the
parameters allow that is checked when the codec is built. The codec knows
nothing of keys or ciphertexts: a plaintext is a Python int below 2^(key_bits-2),
and homomorphic addition of ciphertexts is plain integer addition of these.

Slot layout (values v with |v| <= value_bound, e = encode(v), |e| <= M =
FixedPointCodec.max_int, guaranteed by the codec's clamping): a stored matrix
entry holds e + H with H = M (S + 1); each user's update that the server
*subtracts* adds (-e + M) in [0, 2M]; after K <= S users the server removes
K M with one public constant. Every slot therefore stays in [0, M (3S + 2)]
< 2^w during a round, and a decrypted entry outside [H - M, H + M] (a value
that left the bound) is reported, not wrapped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crypto.fixed_point import FixedPointCodec


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
        """Largest |encoded value| (the fixed-point codec's max_int)."""
        return self.fixed.max_int

    @property
    def H(self) -> int:
        """Offset of a stored entry: keeps it non-negative after S subtracted updates."""
        return self.M * (self.max_summands + 1)

    @property
    def slot_bits(self) -> int:
        """Bits per slot, rounded up to whole bytes, with one guard bit."""
        bits = (self.M * (3 * self.max_summands + 2)).bit_length() + 1
        return 8 * math.ceil(bits / 8)

    @property
    def slots(self) -> int:
        """Slots per plaintext (plaintexts stay below 2^(key_bits - 2) < n)."""
        if self.slot_bits > 64:
            return 0  # slots are handled as uint64 words
        return (self.key_bits - 2) // self.slot_bits

    def _pack_words(self, words: np.ndarray) -> list[int]:
        """Rows of non-negative slot values (uint64 [N, slots]) -> one integer per row (slot 0 lowest)."""
        wb = self.slot_bits // 8
        raw = np.ascontiguousarray(words.astype("<u8")).view(np.uint8).reshape(len(words), self.slots, 8)[:, :, :wb]
        raw = np.ascontiguousarray(raw).reshape(len(words), self.slots * wb)
        return [int.from_bytes(row.tobytes(), "little") for row in raw]

    def unpack_words(self, ints: Sequence[int]) -> np.ndarray:
        """Plaintexts -> their slots as uint64 [N, slots] (each slot's bits, nothing interpreted)."""
        wb = self.slot_bits // 8
        try:
            raw = np.frombuffer(b"".join(int(x).to_bytes(self.slots * wb, "little") for x in ints), dtype=np.uint8)
        except OverflowError:
            raise ValueError("a plaintext has data beyond its packed slots "
                             "(not a sum of this codec's values)") from None
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

    def encode_entries(self, values: np.ndarray) -> np.ndarray:
        """The signed fixed-point integers e (int64, same shape) that a slot carries for ``values``.

        With :meth:`decode_entries` this is the plaintext arithmetic the
        ciphertexts carry: a round leaves a stored entry at e_V - sum of the
        users' e_G, so the batched engine (no keys) keeps those integers and
        calls these two methods, the same ones the packing below uses.
        encode(0) = 0: zero rows (FullText's unrated items, padding) change no sum.
        """
        return self.fixed.encode(values)

    def _beyond_bound(self) -> ValueError:
        return ValueError(f"a decrypted value exceeds value_bound={self.fixed.value_bound}: raise the bound "
                          "or lower the learning rate")

    def decode_entries(self, e: np.ndarray) -> np.ndarray:
        """Stored integers (offset removed) -> float64; refuses an entry beyond +-M (value beyond the bound)."""
        e = np.asarray(e, dtype=np.int64)
        if np.abs(e).max(initial=0) > self.M:
            raise self._beyond_bound()
        return self.fixed.decode(e)

    def pack_stored(self, values: np.ndarray) -> list[int]:
        """Encode stored entries (e + H per slot)."""
        e = self.encode_entries(self._layout(values))
        return self._pack_words((e + self.H).astype(np.uint64))

    def pack_update(self, values: np.ndarray) -> list[int]:
        """Encode one user's update that will be SUBTRACTED: (-e + M) per slot, in [0, 2M]."""
        e = self.encode_entries(self._layout(values))
        return self._pack_words((self.M - e).astype(np.uint64))

    def unpack_stored(self, ints: Sequence[int], count: int) -> np.ndarray:
        """Decode stored entries; refuses slots that left [H - M, H + M] (value beyond the bound)."""
        words = self.unpack_words(ints).reshape(-1)
        # checked in uint64 before any signed view: a word of 2^63 + H would wrap to INT64_MIN, whose abs() is
        # negative and would pass decode_entries' bound (64-bit slots)
        if ((words < np.uint64(self.H - self.M)) | (words > np.uint64(self.H + self.M))).any():
            raise self._beyond_bound()
        return self.decode_entries((words - np.uint64(self.H)).view(np.int64))[:count]

    def correction_plaintext(self, n_users: int) -> int:
        """The packed constant K M (per slot) that a round with K users added on top of the stored offset."""
        if not 0 <= n_users <= self.max_summands:
            raise ValueError(f"{n_users} updates exceed the codec's headroom of {self.max_summands}")
        return self._pack_words(np.full((1, self.slots), n_users * self.M, dtype=np.uint64))[0]
