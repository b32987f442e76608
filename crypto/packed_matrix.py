"""FedMF's encrypted item matrix: rows of V packed into Paillier ciphertexts.

Each row of d values is packed into c = ceil(d / slots) ciphertexts, so a
PartText or padded upload can touch single rows. The server holds C_V as a
flat list (row-major, c per row) and never a secret key; users hold the
secret key and decrypt. Updates are users' encryptions of their negated
gradient rows (see :class:`crypto.paillier.PackingCodec` for the offsets); the
server multiplies them in and removes K_j offsets from row j with one public
constant, so C_V <- C_V - sum of the round's C_G without decrypting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crypto.fixed_point import FixedPointCodec
from crypto.paillier import PackedPaillier, PackingCodec, bytes_to_int, generate_keypair, int_to_bytes


class PackedMatrixCrypto:
    def __init__(self, n: int, dim: int, n_rows: int, codec: PackingCodec, p: int | None = None,
                 q: int | None = None) -> None:
        self.scheme = PackedPaillier(n, p, q)
        self.codec = codec
        self.dim = dim
        self.n_rows = n_rows
        self.key_bits = self.scheme.key_bits
        self.cts_per_row = -(-dim // codec.slots)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], n_items: int, n_bytes: np.ndarray, p_bytes: np.ndarray | None = None,
                    q_bytes: np.ndarray | None = None) -> PackedMatrixCrypto:
        s = cfg["strategy"]
        n = bytes_to_int(n_bytes)
        codec = PackingCodec(FixedPointCodec(int(s["frac_bits"]), float(s["value_bound"])),
                             max_summands=int(cfg["clients_per_round"]), key_bits=n.bit_length())
        p = bytes_to_int(p_bytes) if p_bytes is not None else None
        q = bytes_to_int(q_bytes) if q_bytes is not None else None
        return cls(n, int(cfg["model"]["dim"]), n_items, codec, p, q)

    @staticmethod
    def generate_key_bytes(key_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pub, priv = generate_keypair(key_bits)
        return (int_to_bytes(pub.n, key_bits // 8), int_to_bytes(priv.p, key_bits // 16),
                int_to_bytes(priv.q, key_bits // 16))

    @staticmethod
    def check_key(n_b: np.ndarray, p_b: np.ndarray, q_b: np.ndarray) -> None:
        n, p, q = bytes_to_int(n_b), bytes_to_int(p_b), bytes_to_int(q_b)
        if p < 2 or q < 2 or p * q != n:
            raise ValueError("the delivered secret key does not match the public key (p q != n)")

    # --------------------------------------------------------------- layout
    def _rows_flat(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        padded = np.zeros((rows.shape[0], self.cts_per_row * self.codec.slots))
        padded[:, : self.dim] = rows
        return padded.reshape(-1)

    def encrypt_matrix(self, V: np.ndarray) -> list:
        """Server set-up: C_V = Enc(V) with the stored-entry offsets."""
        return self.scheme.encrypt_batch(self.codec.pack_stored(self._rows_flat(V)))

    def decrypt_matrix(self, cv: np.ndarray) -> np.ndarray:
        """User side: C_V (uint8 [m, c, width]) -> V float64 [m, d]."""
        cts = self.from_bytes(cv)
        flat = self.codec.unpack_stored(self.scheme.decrypt_batch(cts), len(cts) * self.codec.slots)
        return flat.reshape(cv.shape[0], -1)[:, : self.dim]

    def encrypt_gradient_rows(self, rows: np.ndarray) -> np.ndarray:
        """User side: Enc(-G) per row (the server subtracts by multiplying) -> uint8 [k, c, width]."""
        cts = self.scheme.encrypt_batch(self.codec.pack_update(self._rows_flat(rows)))
        return self.to_bytes(cts).reshape(rows.shape[0], self.cts_per_row, -1)

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

    def to_bytes(self, cts: Sequence) -> np.ndarray:
        arr = self.scheme.to_array(cts)
        return arr.reshape(-1, self.cts_per_row, arr.shape[1]) if len(cts) % self.cts_per_row == 0 else arr

    def from_bytes(self, arr: np.ndarray) -> list:
        """Validated ciphertexts (each in [1, n^2), coprime to n) from uint8 [k, c, width]."""
        arr = np.asarray(arr)
        if arr.ndim != 3 or arr.shape[1] != self.cts_per_row:
            raise ValueError(f"expected ciphertexts [k, {self.cts_per_row}, width], got {arr.shape}")
        return self.scheme.from_array(arr.reshape(-1, arr.shape[2]))


__all__ = ["PackedMatrixCrypto"]
