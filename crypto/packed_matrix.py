"""FedMF's encrypted item matrix: rows of V packed into Paillier ciphertexts, a server type and a user type.

Each row of d values is packed into c = ceil(d / slots) ciphertexts, so a
PartText or padded upload can touch single rows. The server holds C_V as a
flat list (row-major, c per row) in a :class:`PackedMatrixPublic`, which has
the public key only: it can encrypt the initial V, parse uploads and apply
them, never decrypt. Users hold a :class:`PackedMatrixPrivate` (the same plus
p, q) and decrypt. Updates are users' encryptions of their negated gradient
rows (offsets: :class:`crypto.paillier_codec.PackingCodec`); the server
multiplies them in and removes K_j offsets from row j with one public
constant, so C_V <- C_V - sum of the round's C_G without decrypting.

Constructors take explicit parameters (modulus, dim, rows, and the codec's
frac_bits, value_bound, max_summands = users per round): mapping a run's
configuration onto them is the caller's job, not crypto's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crypto.fixed_point import FixedPointCodec
from crypto.paillier import ObfuscatorPool, PaillierPrivate, PaillierPublic
from crypto.paillier_codec import PackingCodec


class PackedMatrixPublic:
    """The server's view of C_V: encrypt, parse, apply updates, serialise. No secret key."""

    scheme: PaillierPublic

    def __init__(self, n: int, dim: int, n_rows: int, *, frac_bits: int, value_bound: float, max_summands: int,
                 pool: ObfuscatorPool | None = None) -> None:
        self._setup(PaillierPublic(n, pool), dim, n_rows, frac_bits, value_bound, max_summands)

    def _setup(self, scheme: PaillierPublic, dim: int, n_rows: int, frac_bits: int, value_bound: float,
               max_summands: int) -> None:
        if dim < 1 or n_rows < 1:
            raise ValueError(f"an item matrix needs dim >= 1 and n_rows >= 1, got dim={dim}, n_rows={n_rows}")
        self.scheme = scheme
        self.codec = PackingCodec(FixedPointCodec(frac_bits, value_bound), max_summands=max_summands,
                                  key_bits=scheme.key_bits)
        self.dim = dim
        self.n_rows = n_rows
        self.key_bits = scheme.key_bits
        self.cts_per_row = -(-dim // self.codec.slots)

    # --------------------------------------------------------------- layout
    def _rows_flat(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows must be [k, {self.dim}], got {rows.shape}")
        padded = np.zeros((rows.shape[0], self.cts_per_row * self.codec.slots))
        padded[:, : self.dim] = rows
        return padded.reshape(-1)

    def encrypt_matrix(self, V: np.ndarray) -> list:
        """Server set-up: C_V = Enc(V) with the stored-entry offsets (public key only)."""
        return self.scheme.encrypt_batch(self.codec.pack_stored(self._rows_flat(V)))

    def encrypt_gradient_rows(self, rows: np.ndarray) -> np.ndarray:
        """User side: Enc(-G) per row (the server subtracts by multiplying) -> uint8 [k, c, width]."""
        cts = self.scheme.encrypt_batch(self.codec.pack_update(self._rows_flat(rows)))
        return self.scheme.to_array(cts).reshape(len(rows), self.cts_per_row, self.scheme.ciphertext_bytes)

    # --------------------------------------------------------------- server
    def apply_updates(self, cv: list, uploads: Sequence[tuple[np.ndarray, list]]) -> list:
        """C_V <- C_V - sum of the uploads, row by row; K_j offsets removed per row j."""
        cv = list(cv)
        counts = np.zeros(self.n_rows, dtype=np.int64)
        c, n2 = self.cts_per_row, self.scheme.n2
        for items, cts in uploads:
            for r, item in enumerate(items):
                base = int(item) * c
                for k in range(c):
                    cv[base + k] = cv[base + k] * cts[r * c + k] % n2
            counts[items] += 1
        for row in np.flatnonzero(counts):
            corr = self.codec.correction_plaintext(int(counts[row]))
            for k in range(c):
                cv[int(row) * c + k] = self.scheme.add_public(cv[int(row) * c + k], -corr)
        return cv

    # ------------------------------------------------------------ transport
    def to_bytes(self, cts: Sequence) -> np.ndarray:
        """uint8 [k, c, width] for whole rows, else uint8 [N, width]."""
        arr = self.scheme.to_array(cts)
        return arr.reshape(-1, self.cts_per_row, arr.shape[1]) if len(cts) % self.cts_per_row == 0 else arr

    def from_bytes(self, arr: np.ndarray) -> list:
        """Validated ciphertexts (each in [1, n^2), coprime to n) from uint8 [k, c, width]."""
        arr = np.asarray(arr)
        if arr.ndim != 3 or arr.shape[1] != self.cts_per_row:
            raise ValueError(f"expected ciphertexts [k, {self.cts_per_row}, width], got {arr.shape}")
        return self.scheme.from_array(arr.reshape(-1, arr.shape[2]))


class PackedMatrixPrivate(PackedMatrixPublic):
    """A user's view of C_V: everything the server can do, plus decryption with the secret primes."""

    scheme: PaillierPrivate

    def __init__(self, n: int, p: int, q: int, dim: int, n_rows: int, *, frac_bits: int, value_bound: float,
                 max_summands: int, pool: ObfuscatorPool | None = None) -> None:
        self._setup(PaillierPrivate(n, p, q, pool), dim, n_rows, frac_bits, value_bound, max_summands)

    def decrypt_matrix(self, cv: np.ndarray) -> np.ndarray:
        """C_V (uint8 [m, c, width]) -> V float64 [m, d]."""
        cts = self.from_bytes(cv)
        flat = self.codec.unpack_stored(self.scheme.decrypt_batch(cts), len(cts) * self.codec.slots)
        return flat.reshape(cv.shape[0], -1)[:, : self.dim]


__all__ = ["PackedMatrixPrivate", "PackedMatrixPublic"]
