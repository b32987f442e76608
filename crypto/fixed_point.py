"""One fixed-point codec for all of crypto/ (python-paillier keeps EncodedNumber apart from the scheme too).

A float x is represented by the integer e = round(x * 2^frac_bits). In the
ring Z_2^k (secret sharing, DPF outputs) negatives are two's complement; for
Paillier the packing layer (:mod:`crypto.paillier_codec`) adds offsets
instead.

The bound is a bound on the *integer*: every accepted value encodes to
|e| <= max_int = floor(value_bound * 2^f), which is what the packing headroom
and the two-server sum bounds (n_p users x R_u) are computed from. Rounding
alone could break it: round(value_bound * 2^f) may be max_int + 1 (with
frac_bits=20 and value_bound=0.1, 0.1 * 2^20 = 104857.6 rounds up), and one
legal update would then fill its Paillier slot and carry into the next.
So, consistently:

* |x| > value_bound (or NaN / inf) is **rejected** with a ValueError naming
  how many values and the largest magnitude; callers that want clipping clip
  to value_bound first (the two-server clients do, and log it);
* inside the bound the rounded integer is **clamped** to +-max_int, which
  only moves values within one unit of the bound, by less than one unit:
  the encoding error is <= 2^-(f+1) everywhere except in that last unit,
  where it is < 2^-f.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crypto.ring import check_ring, signed_view

ROUND_BLOCK = 1 << 16  # values :meth:`FixedPointCodec._round_into` scales at a time (a 512 KB float64 buffer)


class BoundExceededError(ValueError):
    """Finite values beyond ``value_bound``: what a caller that clips catches (NaN and infinities stay a plain
    ValueError), so it learns of them from the codec's own check instead of reading the array's extremes twice."""


def magnitude(x: np.ndarray) -> float:
    """max |x| over the array (NaN if any value is NaN, 0.0 if it is empty): two reductions, no temporary.

    The extremes are read as Python floats, so comparing them with a bound is exact for float32 arrays too
    (numpy would round a Python float bound to float32 before comparing it with a float32 value).
    """
    if x.size == 0:
        return 0.0
    lo, hi = float(x.min()), float(x.max())
    return max(-lo, hi) if not (math.isnan(lo) or math.isnan(hi)) else math.nan


def _floats(x: np.ndarray) -> np.ndarray:
    """x as float32 or float64 values: float32 stays as it is (every float32 is exactly a float64, and
    widening 873K values per DeepFM user only to check and scale them was a pass of its own)."""
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


@dataclass(frozen=True)
class FixedPointCodec:
    frac_bits: int
    value_bound: float

    def __post_init__(self) -> None:
        if not 0 < self.frac_bits <= 62:
            raise ValueError(f"frac_bits must be in 1..62, got {self.frac_bits}")
        if not (self.value_bound > 0 and math.isfinite(self.value_bound)):
            raise ValueError(f"value_bound must be positive and finite, got {self.value_bound}")
        if self.value_bound * self.scale >= 2.0 ** 63:
            raise ValueError(f"value_bound={self.value_bound} x 2^{self.frac_bits} does not fit int64; lower "
                             "frac_bits or value_bound")
        if self.max_int < 1:
            raise ValueError(f"value_bound={self.value_bound} x 2^{self.frac_bits} < 1: every value would encode "
                             "to 0; raise frac_bits or value_bound")

    @property
    def scale(self) -> float:
        return float(2 ** self.frac_bits)

    @property
    def max_int(self) -> int:
        """Largest |encoded integer| of any accepted value: floor(value_bound * 2^f)."""
        return int(math.floor(self.value_bound * self.scale))  # exact: scaling by 2^f is exact in float64

    def check(self, x: np.ndarray) -> np.ndarray:
        """x as a float array (float32 kept, anything else as float64) if every value is finite and within
        +-value_bound, else ValueError.

        The common case is two reductions without temporaries (:func:`magnitude`: a NaN fails the comparison,
        an infinity the bound); only a failing array pays for the passes that name what is wrong.
        """
        return self._checked(x)[0]

    def _checked(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """(:meth:`check`'s array, its largest magnitude)."""
        x = _floats(x)
        largest = magnitude(x)
        if largest <= self.value_bound:
            return x, largest
        if not np.isfinite(x).all():
            raise ValueError(f"{int((~np.isfinite(x)).sum())} values are NaN or infinite")
        over = np.abs(x) > np.float64(self.value_bound)  # a float64 scalar: float32 values are widened, not it
        raise BoundExceededError(f"{int(over.sum())} values exceed the bound {self.value_bound} "
                                 f"(largest |x| = {largest:.6g})")

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Signed integers round(x * 2^f), clamped to +-max_int, as int64 (see the module docstring)."""
        x, largest = self._checked(x)
        out = np.empty(x.shape, dtype=np.int64)
        self._round_into(x, out, largest)
        return out

    def _round_into(self, x: np.ndarray, out: np.ndarray, largest: float) -> None:
        """Write round(x * 2^f) into the signed integer array ``out`` (x's shape), clamped to +-max_int first
        when x's ``largest`` magnitude (from :meth:`_checked`) scales past it: a block of values at a time
        through one cache-sized float64 buffer.

        Exact: float32 widens exactly and 2^f scales exactly in float64; clamping before rounding gives the
        same integers as rounding first (max_int is an integer), so an array whose largest magnitude scales
        to at most max_int skips it; the rounded values are integers of magnitude <= max_int < 2^63, cast
        exactly. Why blocks: an array-sized float64 temporary cost its page faults and numpy's buffered cast
        on top of the passes themselves (16.7 ms per 3.5M values, in blocks 7.3 ms; a DeepFM SecEmb round
        encodes 87M).
        """
        if x.size == 0:
            return
        clamp = largest * self.scale > self.max_int  # Python floats against an int: exact
        width = x.shape[-1] if x.ndim else 1
        values = x.reshape(-1, width)
        try:
            target = np.reshape(out, (-1, width), copy=False)  # a view (an upload's slice), never a silent copy
        except ValueError:  # an ``out`` whose rows cannot be one 2-d view (e.g. transposed): through a copy
            whole = np.empty(out.shape, dtype=out.dtype)
            self._round_into(x, whole, largest)
            np.copyto(out, whole)
            return
        rows, cols = max(1, ROUND_BLOCK // width), min(width, ROUND_BLOCK)
        buffer = np.empty(min(values.size, rows * cols), dtype=np.float64)
        for r in range(0, values.shape[0], rows):
            for c in range(0, width, cols):
                block = values[r:r + rows, c:c + cols]
                scaled = buffer[:block.size].reshape(block.shape)
                np.multiply(block, self.scale, out=scaled, dtype=np.float64)
                if clamp:
                    np.clip(scaled, -self.max_int, self.max_int, out=scaled)
                np.rint(scaled, out=scaled)
                np.copyto(target[r:r + rows, c:c + cols], scaled, casting="unsafe")

    def ring_fits(self, ring_dtype: np.dtype | type) -> bool:
        """Whether every encoded value has a two's-complement representative in the ring."""
        bits = check_ring(ring_dtype).itemsize * 8
        return self.max_int < 2 ** (bits - 1)

    def to_ring(self, x: np.ndarray, ring_dtype: np.dtype | type, out: np.ndarray | None = None) -> np.ndarray:
        """Two's-complement encoding in Z_2^k (uint32 / uint64), written into ``out`` (of x's shape and
        that dtype) when given, so a caller assembling an upload does not copy it a second time."""
        if not self.ring_fits(ring_dtype):
            raise ValueError(f"value_bound * 2^frac_bits does not fit a signed {np.dtype(ring_dtype)} ring")
        ring = np.dtype(ring_dtype)
        if out is None:
            out = np.empty(np.shape(x), dtype=ring)
        elif out.dtype != ring or out.shape != np.shape(x):
            raise ValueError(f"out is {out.dtype} {out.shape}, expected {ring} {np.shape(x)}")
        # the integers fit the signed reading of the ring (ring_fits), so the float -> signed cast is exact,
        # and the ring element is its two's complement: the same bits as int64 then mod 2^k
        x, largest = self._checked(x)
        self._round_into(x, signed_view(out), largest)
        return out

    def decode(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(v, dtype=np.float64) / self.scale

    def from_ring(self, v: np.ndarray) -> np.ndarray:
        """Signed interpretation of ring elements, decoded to float64."""
        return self.decode(signed_view(v))
