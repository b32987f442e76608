"""A server's Gaussian noise as a ring element (SecEmb Appendix G, central DP).

Each of the two servers adds its own fresh ``N(0, std^2)`` noise, encoded with
the protocol's fixed point (``round(x * 2^frac_bits)``, two's complement in
Z_2^k), to its aggregated share of the table and dense sums before server 0
reconstructs them. The reconstructed sum then carries both noises; each server
knows (and could subtract) only its own, so each is accounted with the other's
noise alone (``strategies/privacy.py``). The noise comes from
:func:`models.dp.gaussian_noise` (a CSPRNG-seeded generator), never from the run
seed. Server 0 and server 1 of the Flower path and the batched engine all call
:func:`add_noise_share`, so every path adds the same thing.
"""

from __future__ import annotations

import numpy as np

from crypto.ring import check_ring
from models.dp import secure_generator


def noise_share(shape: tuple[int, ...], std: float, frac_bits: int, ring: np.dtype | type) -> np.ndarray:
    """Fresh Gaussian noise of ``std`` encoded in the ring (values beyond the ring's signed range saturate)."""
    bits = check_ring(ring).itemsize * 8
    limit = float(2 ** min(bits - 1, 62))
    scaled = np.rint(secure_generator().normal(0.0, float(std), size=shape) * float(2 ** int(frac_bits)))
    return np.clip(scaled, -limit, limit).astype(np.int64).astype(np.dtype(ring))


def add_noise_share(values: np.ndarray, std: float, frac_bits: int, slots: int | None = None) -> np.ndarray:
    """``values`` (a ring array) plus fresh noise on its first ``slots`` entries along the last axis (all if None).

    The remaining slots (the private train-metric sums) are left alone: they are not the released gradients.
    A std of 0 returns ``values`` unchanged.
    """
    if not std > 0:
        return values
    out = values.copy()
    n = out.shape[-1] if slots is None else int(slots)
    out[..., :n] += noise_share(out[..., :n].shape, std, frac_bits, out.dtype)
    return out
