"""DPF keys as plain data: parameters, key batches and their transport form, the generator's state.

Distributed point functions (Boyle, Gilboa, Ishai 2016): a point function
f_{alpha,beta}(x) = beta if x == alpha else 0, beta in (Z_2^k)^w, is split
into keys k0, k1 with Eval(k0, x) + Eval(k1, x) = f(x) for every x in the
domain [0, m); either key alone is pseudorandom. lambda = 128, n =
ceil(log2 m) tree levels. As in Google's distributed_point_functions, the
parameters of a family of keys (:class:`DpfParams`) are validated once, keys
are plain arrays with no behaviour beyond (de)serialisation
(:class:`DpfKeyBatch`), generation lives in :mod:`crypto.dpf_gen` and
evaluation, with its explicit context, in :mod:`crypto.dpf_eval`.

Tree nodes: a node is one 128-bit block (uint64 [..., 2], little-endian
words: the bytes AES reads) whose lowest bit is the BGI control bit t, so the
PRG output of a parent gives each child's seed and t at once and one XOR with
(s_cw | t_cw) corrects both. The transported key format is unaffected (seeds,
CW seeds and packed t bits travel separately).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crypto.ring import check_ring

LAMBDA_BYTES = 16
RETRIEVE_DOMAIN = 0  # Convert domain of SecEmb's retrieval keys (beta = 1)
AGGREGATE_DOMAIN = 1  # Convert domain of aggregation payloads (ConvertGen / fresh keys)
MAX_DOMAIN = 1 << 62  # points are decomposed into bits as int64


def depth(domain_size: int) -> int:
    """Tree levels n = ceil(log2 m) of a domain of m >= 2 points."""
    if domain_size < 2:
        raise ValueError(f"DPF domain must have at least 2 points, got {domain_size}")
    return int(np.ceil(np.log2(domain_size)))


@dataclass(frozen=True)
class DpfParams:
    """What a family of keys is for: domain [0, domain_size), output width and ring. Checked once here."""

    domain_size: int
    width: int
    ring: np.dtype
    depth: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("domain_size", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"DPF {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not 2 <= self.domain_size <= MAX_DOMAIN:
            raise ValueError(f"DPF domain must have 2 .. 2^62 points, got {self.domain_size}")
        if self.width < 1:
            raise ValueError(f"DPF output width must be >= 1, got {self.width}")
        object.__setattr__(self, "ring", check_ring(self.ring))
        object.__setattr__(self, "depth", depth(self.domain_size))

    @property
    def tbits_per_key(self) -> int:
        """t^(0) and (tL_cw, tR_cw) of every level."""
        return 1 + 2 * self.depth

    def tbits_bytes(self, n_keys: int) -> int:
        return (n_keys * self.tbits_per_key + 7) // 8


@dataclass(frozen=True)
class DpfKeyBatch:
    """K keys of one party: s^(0), t^(0), CW^(1..n) = (s_cw, tL_cw, tR_cw), CW^(n+1)."""

    party: int
    domain_size: int
    seeds: np.ndarray     # uint8 [K, 16]
    t0: np.ndarray        # uint8 [K]
    cw_seeds: np.ndarray  # uint8 [K, n, 16]
    cw_t: np.ndarray      # uint8 [K, n, 2]
    cw_out: np.ndarray    # ring [K, w]

    @property
    def n_keys(self) -> int:
        return int(self.seeds.shape[0])

    @property
    def width(self) -> int:
        return int(self.cw_out.shape[1])

    @property
    def ring(self) -> np.dtype:
        return self.cw_out.dtype

    @property
    def params(self) -> DpfParams:
        return DpfParams(self.domain_size, self.width, self.ring)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.to_arrays().values())

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Transport form: seeds, CW seeds and CW^(n+1) as arrays, all t bits bit-packed."""
        bits = np.concatenate([self.t0[:, None], self.cw_t.reshape(self.n_keys, -1)], axis=1)
        return {"seeds": self.seeds, "cw_seeds": self.cw_seeds, "tbits": np.packbits(bits, axis=None),
                "cw_out": self.cw_out}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], party: int, params: DpfParams) -> DpfKeyBatch:
        """Rebuild and validate received keys; any mismatch raises ValueError naming the field."""
        if party not in (0, 1):
            raise ValueError(f"DPF party must be 0 or 1, got {party!r}")
        n, dt, width = params.depth, params.ring, params.width
        missing = {"seeds", "cw_seeds", "tbits", "cw_out"} - set(arrays)
        if missing:
            raise ValueError(f"DPF keys lack {sorted(missing)}")
        seeds, cw_seeds, tbits, cw_out = (np.asarray(arrays[k]) for k in ("seeds", "cw_seeds", "tbits", "cw_out"))
        if seeds.dtype != np.uint8 or seeds.ndim != 2 or seeds.shape[1] != LAMBDA_BYTES:
            raise ValueError(f"DPF seeds must be uint8 [K, 16], got {seeds.dtype} {seeds.shape}")
        k = seeds.shape[0]
        if cw_seeds.dtype != np.uint8 or cw_seeds.shape != (k, n, LAMBDA_BYTES):
            raise ValueError(f"DPF correction seeds must be uint8 {(k, n, LAMBDA_BYTES)} for a domain of "
                             f"{params.domain_size} (depth {n}), got {cw_seeds.dtype} {cw_seeds.shape}")
        n_bits = k * params.tbits_per_key
        if tbits.dtype != np.uint8 or tbits.shape != (params.tbits_bytes(k),):
            raise ValueError(f"DPF t bits must be uint8 [{params.tbits_bytes(k)}], got {tbits.dtype} {tbits.shape}")
        if cw_out.dtype != dt or cw_out.shape != (k, width):
            raise ValueError(f"DPF output correction words must be {dt} {(k, width)}, "
                             f"got {cw_out.dtype} {cw_out.shape}")
        bits = np.unpackbits(tbits)[:n_bits].reshape(k, params.tbits_per_key)
        return cls(party=party, domain_size=params.domain_size, seeds=seeds, t0=bits[:, 0].copy(),
                   cw_seeds=cw_seeds, cw_t=bits[:, 1:].reshape(k, n, 2).copy(), cw_out=cw_out)

    @staticmethod
    def concatenate(batches: list[DpfKeyBatch]) -> DpfKeyBatch:
        """One batch of all keys, in order; all must belong to one party and one domain."""
        first = batches[0]
        if any(b.party != first.party or b.domain_size != first.domain_size for b in batches):
            raise ValueError("cannot concatenate DPF keys of different parties or domains")
        return DpfKeyBatch(first.party, first.domain_size, *(np.concatenate([getattr(b, f) for b in batches])
                                                             for f in ("seeds", "t0", "cw_seeds", "cw_t", "cw_out")))

    def select(self, idx: np.ndarray | slice) -> DpfKeyBatch:
        return DpfKeyBatch(self.party, self.domain_size, self.seeds[idx], self.t0[idx], self.cw_seeds[idx],
                           self.cw_t[idx], self.cw_out[idx])


@dataclass(frozen=True)
class GenState:
    """What the key generator keeps for later ConvertGen calls: t_1^(n), s_0^(n), s_1^(n) per key."""

    t1: np.ndarray  # uint8 [K]
    s0: np.ndarray  # uint8 [K, 16]
    s1: np.ndarray  # uint8 [K, 16]

    @property
    def n_keys(self) -> int:
        return int(self.t1.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"t1": self.t1, "s0": self.s0, "s1": self.s1}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> GenState:
        """The state back from :meth:`to_arrays` (a user's own stored secrets), shapes checked."""
        missing = {"t1", "s0", "s1"} - set(arrays)
        if missing:
            raise ValueError(f"DPF generation state lacks {sorted(missing)}")
        t1, s0, s1 = (np.asarray(arrays[k]) for k in ("t1", "s0", "s1"))
        k = t1.shape[0] if t1.ndim == 1 else -1
        for name, a, shape in (("t1", t1, (k,)), ("s0", s0, (k, LAMBDA_BYTES)), ("s1", s1, (k, LAMBDA_BYTES))):
            if a.dtype != np.uint8 or a.shape != shape:
                raise ValueError(f"DPF generation state {name} must be uint8 {shape}, got {a.dtype} {a.shape}")
        return cls(t1, s0, s1)


# ------------------------------------------------------------------ tree nodes
_ONE = np.uint64(1)


def to_words(seed_bytes: np.ndarray) -> np.ndarray:
    """uint8 [..., 16] seeds -> uint64 blocks [..., 2] (the bytes AES reads)."""
    return np.ascontiguousarray(seed_bytes, dtype=np.uint8).view("<u8").astype(np.uint64)


def to_bytes(blocks: np.ndarray) -> np.ndarray:
    """uint64 blocks [..., 2] -> uint8 [..., 16]."""
    return np.ascontiguousarray(blocks, dtype="<u8").view(np.uint8)


def with_t(blocks: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blocks whose lowest bit is the control bit t (seed and t travel as one 128-bit value)."""
    out = blocks.copy()
    out[..., 0] = (out[..., 0] & ~_ONE) | t.astype(np.uint64)
    return out


def t_of(blocks: np.ndarray) -> np.ndarray:
    """The control bit t of each node block, uint8."""
    return (blocks[..., 0] & _ONE).astype(np.uint8)


def mask_of(t: np.ndarray) -> np.ndarray:
    """All-ones uint64 where the bit t is 1 (for branch-free conditional XOR)."""
    return np.zeros(1, np.uint64) - (t & 1).astype(np.uint64)
