"""Lossy upload compression of the item-embedding update: SecEmb's baselines (Section 5.3, Appendix J).

SecEmb compares its lossless sparse upload with four lossy codecs applied to the
item-embedding update only (the ``[n_items, row_dim]`` gradient, item bias
column included; dense parameters are uploaded as they are):

* :class:`Bit8Codec` - Dettmers (2015), "8-bit approximations for parallelism in
  deep learning": the *dynamic tree* 8-bit data type (sign bit, a base-10
  exponent written as a run of zero bits, then a linear fraction in [0.1, 1]),
  applied after dividing the tensor by its absolute maximum. One float32 scale
  per tensor, as Dettmers normalises each matrix by its maximum; Table 3's R.R.
  of exactly 4.00 for MF has no room for per-row scales either.
* :class:`TernGradCodec` - TernGrad (Wen et al., 2017): optional clipping to
  ``clip_factor`` standard deviations, scale ``s = max|g|`` (or a scale shared
  by all users, TernGrad's "scaler sharing"), unbiased stochastic ternarisation
  ``s * sign(g) * Bernoulli(|g| / s)`` and TernGrad's 2-bit packing (four
  values per byte).
* :class:`SVDCodec` - rank-r truncated SVD (as in CoLR-FedRec's SVD baseline);
  the user uploads ``U * S`` and ``V^T``.
* :class:`CoLRCodec` - CoLR (Nguyen et al., 2024): the update is restricted to
  ``A @ B`` with ``B`` a random ``[r, row_dim]`` basis with orthogonal rows,
  drawn anew each round from a public seed and the round number, so every
  user and the server regenerate it; the user uploads only the coefficients
  ``A`` (``[n_items, r]``). Coefficients are additive across users, so a
  secure aggregate of them decodes with one product.

Every codec maps a float32 update to a payload, a ``dict`` of numpy arrays that
is exactly what would be uploaded, and back. :func:`reduction_ratio` is the
paper's R.R.: upload bytes before compression over after, where "before" is the
float32 item-embedding update plus the float32 dense update and "after" is the
payload plus the same, uncompressed, dense update (this reproduces Table 3,
e.g. NCF on ML100K with Bit8: 3.86; MF on ML100K with SVD rank 12: 5.22).

Numpy only: these run on the user side, before any Flower message exists.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Payload = dict[str, np.ndarray]

FLOAT_BYTES = 4  # the uncompressed upload is float32

# SecEmb Table 10: rank of the reduced item-embedding update for SVD and CoLR, by model and dataset.
TABLE10_RANKS: dict[str, dict[str, int]] = {
    "mf": {"ml_100k": 12, "ml_1m": 10, "ml_10m": 4, "ml_25m": 4, "yelp": 4},
    "ncf": {"ml_100k": 10, "ml_1m": 8, "ml_10m": 4, "ml_25m": 4, "yelp": 4},
    "fm": {"ml_100k": 12, "ml_1m": 10, "ml_10m": 4, "ml_25m": 4, "yelp": 4},
    "deepfm": {"ml_100k": 12, "ml_1m": 10, "ml_10m": 4, "ml_25m": 4, "yelp": 4},
}


def table10_rank(model: str, dataset: str) -> int:
    """SecEmb Table 10's SVD/CoLR rank for a model and dataset.

    The ``synthetic_*`` stand-ins take the rank of the dataset whose size they
    copy. Other datasets (ml_latest_small, csv, synthetic) are not in the table:
    a rank must then be given explicitly, so this raises ``KeyError``.
    """
    key = dataset.removeprefix("synthetic_")
    try:
        return TABLE10_RANKS[model][key]
    except KeyError:
        raise KeyError(f"SecEmb Table 10 has no rank for model {model!r} on dataset {dataset!r}; set it explicitly") from None


class UpdateCodec(Protocol):
    """A lossy codec for a ``[n_rows, d]`` float32 update."""

    name: str

    def compress(self, update: np.ndarray, rng: np.random.Generator, round_idx: int) -> Payload:
        """Encode ``update``; ``rng`` drives stochastic rounding, ``round_idx`` per-round shared state."""
        ...

    def decompress(self, payload: Payload, shape: tuple[int, int], round_idx: int) -> np.ndarray:
        """Decode a payload back to a float32 update of ``shape``."""
        ...


def _as_update(update: np.ndarray) -> np.ndarray:
    arr = np.asarray(update, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a [n_rows, d] update, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("update has non-finite entries")
    return arr


def _max_abs(arr: np.ndarray) -> float:
    return float(np.abs(arr).max()) if arr.size else 0.0


def payload_bytes(payload: Payload) -> int:
    """Bytes of the upload: the sum of the payload arrays' buffers."""
    return int(sum(np.asarray(a).nbytes for a in payload.values()))


def reduction_ratio(shape: tuple[int, int], payload: Payload, dense_size: int = 0) -> float:
    """SecEmb's R.R.: upload bytes before compression divided by bytes after.

    Before: the full float32 item-embedding update (``shape``) plus the float32
    dense update (``dense_size`` parameters). After: the payload plus the same
    dense update, which the paper leaves uncompressed.
    """
    n_rows, d = shape
    dense_bytes = FLOAT_BYTES * int(dense_size)
    return (FLOAT_BYTES * n_rows * d + dense_bytes) / (payload_bytes(payload) + dense_bytes)


# ---------------------------------------------------------------- Bit8 (Dettmers 2015)


def dynamic_tree_codebook(exponent_bits: int = 7) -> np.ndarray:
    """The 256 values of Dettmers' signed 8-bit dynamic tree data type, sorted, in [-1, 1].

    A code is a sign bit, then ``k`` zero bits (the exponent: scale ``10^-k``),
    an indicator bit, and ``6 - k`` fraction bits that split [0.1, 1] linearly
    into ``2^(6-k)`` bins, each represented by its midpoint. The exponent runs
    over k = 0..6 (``exponent_bits`` = 7 levels), which gives 2 * 127 values;
    zero and +1 take the two remaining codes.
    """
    total_fraction_bits = exponent_bits - 1
    values = [np.array([0.0, 1.0])]
    for k in range(exponent_bits):
        bins = 2 ** (total_fraction_bits - k)
        edges = np.linspace(0.1, 1.0, bins + 1)
        mids = 10.0 ** (-k) * (edges[:-1] + edges[1:]) / 2.0
        values += [mids, -mids]
    codebook = np.sort(np.concatenate(values))
    if codebook.size != 256:
        raise AssertionError(f"dynamic tree codebook has {codebook.size} values, expected 256")
    return codebook


_CODEBOOK = dynamic_tree_codebook()
_CODEBOOK_MIDPOINTS = (_CODEBOOK[:-1] + _CODEBOOK[1:]) / 2.0
_ZERO_CODE = np.uint8(np.searchsorted(_CODEBOOK_MIDPOINTS, 0.0))


@dataclass(frozen=True)
class Bit8Codec:
    """Dettmers (2015) dynamic-tree 8-bit quantisation with one absmax scale per tensor.

    Payload: ``codes`` (uint8, the update's shape: indices into
    :func:`dynamic_tree_codebook`) and ``scale`` (one float32, max |update|).
    Deterministic: each entry maps to the nearest codebook value times the scale.
    """

    name: str = "bit8"

    def compress(self, update: np.ndarray, rng: np.random.Generator | None = None, round_idx: int = 0) -> Payload:
        arr = _as_update(update)
        scale = np.float32(_max_abs(arr))
        # A user's update is zero outside its rated rows: only the nonzero entries are searched, the
        # rest take zero's code (the same codes as searching every entry, ~15x less work on ml_100k).
        codes = np.full(arr.shape, _ZERO_CODE, dtype=np.uint8)
        if scale > 0:
            nonzero = arr != 0
            codes[nonzero] = np.searchsorted(_CODEBOOK_MIDPOINTS, arr[nonzero].astype(np.float64) / scale)
        return {"codes": codes, "scale": np.array([scale], dtype=np.float32)}

    def decompress(self, payload: Payload, shape: tuple[int, int], round_idx: int = 0) -> np.ndarray:
        codes = np.asarray(payload["codes"]).reshape(shape)
        out = np.zeros(shape, dtype=np.float32)
        coded = codes != _ZERO_CODE  # zero's code decodes to 0 at any scale
        out[coded] = _CODEBOOK[codes[coded]] * float(payload["scale"][0])
        return out


# ---------------------------------------------------------------- TernGrad (Wen et al. 2017)

_TERN_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)


@dataclass(frozen=True)
class TernGradCodec:
    """TernGrad: unbiased stochastic ternarisation ``s * sign(g) * Bernoulli(|g| / s)``.

    ``clip_factor`` (TernGrad's c, 2.5 in the paper; ``None`` disables) first
    clips every entry to ``c`` standard deviations of the tensor, which shrinks
    ``s`` and so the variance; the code is then unbiased for the *clipped*
    update. ``s`` is the user's ``max|g|`` unless a shared ``scale`` is passed to
    :meth:`compress` (TernGrad's scaler sharing: the maximum of every user's
    :meth:`local_scale`, which makes the ternary codes of all users summable).

    Payload: ``packed`` (uint8, four 2-bit codes per byte, code = value + 1, as
    TernGrad's encoder packs them) and ``scale`` (one float32). Two bits per
    value give MF on ML100K an R.R. near 16; SecEmb's Table 3 reports 8.00 for
    every MF cell, i.e. four bits per value. We keep TernGrad's own packing and
    say so beside the measured ratio.
    """

    clip_factor: float | None = 2.5
    name: str = "tern"

    def clip(self, update: np.ndarray) -> np.ndarray:
        """TernGrad's gradient clipping to ``[-c * std, c * std]`` (identity if ``clip_factor`` is None)."""
        arr = _as_update(update)
        if self.clip_factor is None or arr.size == 0:
            return arr
        bound = self.clip_factor * float(arr.std())
        return np.clip(arr, -bound, bound)

    def local_scale(self, update: np.ndarray) -> float:
        """This user's scaler ``max|clip(g)|``; the shared scale is the maximum over users."""
        return _max_abs(self.clip(update))

    def compress(
        self, update: np.ndarray, rng: np.random.Generator, round_idx: int = 0, scale: float | None = None
    ) -> Payload:
        clipped = self.clip(update)
        local = _max_abs(clipped)
        s = local if scale is None else float(scale)
        if s < local * (1 - 1e-6):
            raise ValueError(f"shared scale {s} is below this user's max |g| = {local}; share the maximum")
        flat = clipped.ravel()
        codes = np.ones(flat.size + (-flat.size) % 4, dtype=np.uint8)  # code 1 is the value 0 (also the padding)
        if s > 0:
            # Zero entries stay zero whatever the draw (keep probability 0), so only the nonzero ones draw.
            nonzero = np.flatnonzero(flat)
            keep = rng.random(nonzero.size) < np.abs(flat[nonzero]) / s
            codes[nonzero] += (np.sign(flat[nonzero]) * keep).astype(np.int8).view(np.uint8)
        quads = codes.reshape(-1, 4)
        packed = quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)
        return {"packed": packed, "scale": np.array([s], dtype=np.float32)}

    def decompress(self, payload: Payload, shape: tuple[int, int], round_idx: int = 0) -> np.ndarray:
        packed = np.asarray(payload["packed"], dtype=np.uint8)
        codes = ((packed[:, None] >> _TERN_SHIFTS) & 3).ravel()[: math.prod(shape)]
        return ((codes.astype(np.float32) - 1.0) * payload["scale"][0]).reshape(shape)


# ---------------------------------------------------------------- low rank: SVD and CoLR


@dataclass(frozen=True)
class SVDCodec:
    """Rank-``rank`` truncated SVD: the best rank-r approximation (Eckart-Young).

    Payload: ``us`` = ``U_r * S_r`` (``[n_rows, r]``) and ``vt`` = ``V_r^T``
    (``[r, d]``), both float32: ``r * (n_rows + d)`` floats, which is the count
    behind SecEmb Table 3's SVD ratios (singular values folded into ``U``).
    """

    rank: int
    name: str = "svd"

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError("SVD rank must be positive")

    def compress(self, update: np.ndarray, rng: np.random.Generator | None = None, round_idx: int = 0) -> Payload:
        arr = _as_update(update)
        r = min(self.rank, *arr.shape)
        # Zero rows (items the user did not rate) add nothing to the singular values or V and get zero
        # rows of U, so the SVD runs on the nonzero rows only; a user with fewer than r such rows gets
        # zero-padded factors (singular value 0), which decode to the same product.
        rows = np.flatnonzero(np.any(arr != 0, axis=1))
        us = np.zeros((arr.shape[0], r), dtype=np.float32)
        vt = np.zeros((r, arr.shape[1]), dtype=np.float32)
        if rows.size:
            u, s, v = np.linalg.svd(arr[rows].astype(np.float64), full_matrices=False)
            k = min(r, s.size)
            us[rows, :k] = u[:, :k] * s[:k]
            vt[:k] = v[:k]
        return {"us": us, "vt": vt}

    def decompress(self, payload: Payload, shape: tuple[int, int], round_idx: int = 0) -> np.ndarray:
        out = np.asarray(payload["us"], dtype=np.float64) @ np.asarray(payload["vt"], dtype=np.float64)
        if out.shape != tuple(shape):
            raise ValueError(f"SVD payload decodes to {out.shape}, expected {tuple(shape)}")
        return out.astype(np.float32)


@dataclass(frozen=True)
class CoLRCodec:
    """CoLR: coefficients of the update in a shared random basis that changes every round.

    The basis ``B`` (``[rank, d]``) is CoLR-FedRec's "orthnorm" initialisation:
    a Gaussian matrix replaced by its orthogonal polar factor and scaled by
    ``sqrt(d / rank)``, drawn from ``(basis_seed, round_idx)`` so that every
    user and the server build the same ``B`` without sending it. The user
    uploads ``A = update @ B^+`` (least squares; ``B B^T = (d / rank) I``), so
    the decoded update ``A @ B`` is the update's orthogonal projection onto the
    round's rank-``rank`` row space, exact when the update already lies in it.
    Decoding is linear: the sum of users' ``A`` decodes to the sum of their
    projected updates, which keeps CoLR compatible with secure aggregation.
    """

    rank: int
    basis_seed: int
    name: str = "colr"

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError("CoLR rank must be positive")
        if self.basis_seed < 0:
            raise ValueError("CoLR basis_seed must be >= 0 (it seeds numpy's SeedSequence)")

    def basis(self, d: int, round_idx: int) -> np.ndarray:
        """The round's shared basis ``B``, float64 ``[rank, d]`` (rank <= d)."""
        if self.rank > d:
            raise ValueError(f"CoLR rank {self.rank} exceeds the row width {d}")
        return _colr_basis(int(self.basis_seed), int(round_idx), self.rank, d)

    def compress(self, update: np.ndarray, rng: np.random.Generator | None, round_idx: int) -> Payload:
        """Coefficients in round ``round_idx``'s basis (``rng`` is unused: the basis comes from the public seed)."""
        arr = _as_update(update)
        b = self.basis(arr.shape[1], round_idx)
        coef = arr.astype(np.float64) @ b.T * (self.rank / arr.shape[1])
        return {"coef": coef.astype(np.float32)}

    def decompress(self, payload: Payload, shape: tuple[int, int], round_idx: int) -> np.ndarray:
        coef = np.asarray(payload["coef"], dtype=np.float64)
        if coef.shape != (shape[0], self.rank):
            raise ValueError(f"CoLR payload has shape {coef.shape}, expected {(shape[0], self.rank)}")
        return (coef @ self.basis(shape[1], round_idx)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _colr_basis(basis_seed: int, round_idx: int, rank: int, d: int) -> np.ndarray:
    """One round's basis, built once per round rather than once per user and per decode (read-only)."""
    gen = np.random.default_rng([basis_seed, round_idx])
    u, _, vt = np.linalg.svd(gen.standard_normal((rank, d)), full_matrices=False)
    basis = (u @ vt) * math.sqrt(d / rank)
    basis.flags.writeable = False
    return basis


CODEC_NAMES = ("bit8", "tern", "svd", "colr")


def make_codec(name: str, rank: int | None = None, basis_seed: int = 0, clip_factor: float | None = 2.5) -> UpdateCodec:
    """Build a codec by name (``strategy.compression``); ``rank`` is required for svd and colr."""
    if name == "bit8":
        return Bit8Codec()
    if name == "tern":
        return TernGradCodec(clip_factor=clip_factor)
    if name in ("svd", "colr"):
        if rank is None:
            raise ValueError(f"{name} compression needs a rank (see table10_rank)")
        return SVDCodec(rank) if name == "svd" else CoLRCodec(rank, basis_seed)
    raise ValueError(f"unknown compression {name!r}; choose one of {', '.join(CODEC_NAMES)}")
