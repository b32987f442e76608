"""Differential-privacy building blocks for SecEmb Appendix G: per-record clipping and Gaussian noise.

Record-level DP protects one rating. Each user clips the gradient that every
single rating contributes (Abadi et al. 2016: ``g / max(1, ||g||_2 / clip)``)
before summing them into its upload, so adding or removing one rating moves
any aggregate by at most ``clip`` in L2 norm. (Appendix G prints the factor as
``max{1, Delta_2 / g}``; the clipping it cites is the ``min`` form used here.)

Each server then adds ``N(0, (noise_multiplier * clip)^2)`` to its share of the
aggregate, independently; the DP-FedRec baseline instead has each user add the
same noise to its own upload. Noise comes from a generator seeded from the
operating system's CSPRNG on every call, never from the run seed: anyone who
could predict the noise could subtract it.

Pure torch/numpy; accounting lives in ``strategies/privacy.py``.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch


def clip_factors(squared_norms: torch.Tensor, clip: float) -> torch.Tensor:
    """Each record's factor min(1, clip / ||g||) from its squared gradient norm (0 norm: factor 1).

    A record's clipped gradient is ``factor * g``. The norm is taken jointly over all of the record's
    parameter groups (row and dense parts), because the privacy unit is the record, not the tensor;
    :mod:`models.dp_training` computes it without forming every part (DeepFM's first layer).
    """
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    norms = torch.sqrt(squared_norms.clamp_min(0))
    return torch.clamp(clip / norms.clamp_min(torch.finfo(squared_norms.dtype).tiny), max=1.0)


def noise_std(noise_multiplier: float, clip: float) -> float:
    """Std of the Gaussian noise one server (or one DP-FedRec user) adds: ``noise_multiplier * clip``."""
    if not noise_multiplier >= 0 or not clip > 0:
        raise ValueError("noise_multiplier must be >= 0 and clip > 0")
    return float(noise_multiplier) * float(clip)


def secure_generator() -> np.random.Generator:
    """A numpy generator seeded with 128 bits from ``secrets`` (the OS CSPRNG), unrelated to the run seed."""
    return np.random.default_rng(secrets.randbits(128))


def gaussian_noise(shape: tuple[int, ...], noise_multiplier: float, clip: float) -> np.ndarray:
    """Fresh ``N(0, (noise_multiplier * clip)^2)`` noise of ``shape`` (float64), from a CSPRNG-seeded generator."""
    return secure_generator().normal(0.0, noise_std(noise_multiplier, clip), size=shape)


def add_gaussian_noise(values: np.ndarray, noise_multiplier: float, clip: float) -> np.ndarray:
    """``values`` plus fresh Gaussian noise of std ``noise_multiplier * clip``, in ``values``' float dtype.

    A DP-FedRec user applies it to its own clipped upload. A SecEmb server,
    whose share is a ring element, adds :func:`gaussian_noise` encoded with the
    protocol's fixed-point codec (``crypto.fixed_point.FixedPointCodec``) to it.
    """
    arr = np.asarray(values)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
    return (arr + gaussian_noise(arr.shape, noise_multiplier, clip)).astype(dtype)
