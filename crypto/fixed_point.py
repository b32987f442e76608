"""One fixed-point codec for all of crypto/ (python-paillier keeps EncodedNumber apart from the scheme too).

A float x is represented by the integer round(x * 2^frac_bits). In the ring
Z_2^k (secret sharing, DPF outputs) negatives are two's complement; for
Paillier the packing layer adds offsets instead. ``value_bound`` is enforced
on encoding, never assumed: an out-of-range value raises, naming how many
values and the largest magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FixedPointCodec:
    frac_bits: int
    value_bound: float

    def __post_init__(self) -> None:
        if not 0 < self.frac_bits <= 62:
            raise ValueError(f"frac_bits must be in 1..62, got {self.frac_bits}")
        if not self.value_bound > 0:
            raise ValueError(f"value_bound must be positive, got {self.value_bound}")

    @property
    def scale(self) -> float:
        return float(2 ** self.frac_bits)

    @property
    def max_int(self) -> int:
        """Largest |encoded integer|."""
        return int(np.floor(self.value_bound * self.scale))

    def check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"{int((~np.isfinite(x)).sum())} values are NaN or infinite")
        over = np.abs(x) > self.value_bound
        if over.any():
            raise ValueError(f"{int(over.sum())} values exceed the bound {self.value_bound} "
                             f"(largest |x| = {float(np.abs(x).max()):.6g})")
        return x

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Signed integers round(x * 2^f) as int64 (needs value_bound * 2^f < 2^63)."""
        if self.max_int >= 2**63:
            raise ValueError("encoded values would not fit int64; lower frac_bits or value_bound")
        return np.rint(self.check(x) * self.scale).astype(np.int64)

    def decode(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(v, dtype=np.float64) / self.scale

    def ring_fits(self, ring_dtype: np.dtype | type) -> bool:
        bits = np.dtype(ring_dtype).itemsize * 8
        return self.max_int < 2 ** (bits - 1)

    def to_ring(self, x: np.ndarray, ring_dtype: np.dtype | type) -> np.ndarray:
        """Two's-complement encoding in Z_2^k (uint32 / uint64)."""
        if not self.ring_fits(ring_dtype):
            raise ValueError(f"value_bound * 2^frac_bits does not fit a signed {np.dtype(ring_dtype)} ring")
        return self.encode(x).astype(np.dtype(ring_dtype))

    def from_ring(self, v: np.ndarray) -> np.ndarray:
        """Signed interpretation of ring elements, decoded to float64."""
        signed = {4: np.int32, 8: np.int64}[np.asarray(v).dtype.itemsize]
        return self.decode(np.asarray(v).view(signed))
