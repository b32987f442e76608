"""SecEmb and its two ablations (SecEmb Table 4), one object each, used by every party alike.

A variant decides three things, and only these:

* the user's aggregation payload: final correction words on the retrieval's
  shared path (``secemb``, row encoding + ConvertEval), or fresh full DPF keys
  per row (``rowenc``) or per element (``init``), plus what is sealed for
  server 1 (the dense share, or the fresh keys and the dense share);
* how each server aggregates those payloads (:class:`twoserver.party.SecEmbParty`);
* the upload size it implies.

The client (:mod:`clients.secemb`), server 0 (:mod:`strategies.secemb`),
server 1 (:mod:`twoserver.operations`) and the benchmark
(:mod:`benchmarks.bench_secemb`) all call these objects, so the variants are
written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from crypto.dpf_gen import convert_gen, gen
from crypto.dpf_keys import AGGREGATE_DOMAIN, GenState
from crypto.dpf_keys import DpfKeyBatch
from schemas import secemb as schema
from twoserver.party import SecEmbParty


class SecEmbVariant:
    """``secemb``: one correction word per row on the retrieval's cached path (Algorithm 3 + ConvertEval)."""

    name = "secemb"
    server1_op = "aggregate"
    box_purpose = "dense"  # what the sealed upload box is bound to (AEAD associated data)

    # ----------------------------------------------------------------- user
    def client_payload(self, gen_state: GenState, items: np.ndarray, betas: np.ndarray, n_items: int,
                       dense_share1: np.ndarray) -> tuple[np.ndarray | DpfKeyBatch, bytes]:
        """(payload in the clear for server 0, plaintext to seal for server 1)."""
        return convert_gen(gen_state, betas, domain=AGGREGATE_DOMAIN), schema.sealed_dense_bytes(dense_share1)

    # -------------------------------------------------------------- server 0
    def server1_meta(self, m_prime: int, n_items: int) -> dict[str, Any]:
        return {"variant": self.name, "m_prime": m_prime, "n_items": n_items}

    def server1_arrays(self, uploads: Mapping[int, schema.Upload]) -> dict[str, np.ndarray]:
        """What server 0 relays to server 1: the CWs (public to both) and each sealed box."""
        return {**{f"cw_{u}": up.correction_words for u, up in uploads.items()},
                **{f"box_{u}": up.box for u, up in uploads.items()}}

    def payload_of(self, upload: schema.Upload) -> np.ndarray | DpfKeyBatch:
        return upload.correction_words

    def upload_key_shape(self, m_prime: int, row_dim: int) -> tuple[int, int] | None:
        """The fresh keys' (count, width) an upload carries; None: correction words on the shared path."""
        return None

    def aggregate(self, party: SecEmbParty, payloads: Mapping[int, Any], width: int) -> np.ndarray:
        """This party's share of the sum of the users' sparse gradient matrices [n_items, width]."""
        return party.aggregate(payloads, width)

    def aggregate_uploads(self, party: SecEmbParty, uploads: Mapping[int, schema.Upload], width: int) -> np.ndarray:
        return self.aggregate(party, {u: self.payload_of(up) for u, up in uploads.items()}, width)

    # ----------------------------------------------------------------- sizes
    def upload_ring_words(self, m_prime: int, row_dim: int) -> int:
        """Ring words of the sparse payload in the clear (CWs: m' x row_dim; no key material)."""
        return m_prime * row_dim


class FreshKeysVariant(SecEmbVariant):
    """Ablations without the shared path (SecEmb-RowEnc / -Init): each upload carries fresh full DPF keys."""

    server1_op = "aggregate_fresh"
    box_purpose = "upload"

    def key_shape(self, m_prime: int, row_dim: int) -> tuple[int, int]:
        """(number of fresh keys, output width of each) of one user's upload."""
        raise NotImplementedError

    def upload_key_shape(self, m_prime: int, row_dim: int) -> tuple[int, int] | None:
        return self.key_shape(m_prime, row_dim)

    def server1_arrays(self, uploads):
        return {f"box_{u}": up.box for u, up in uploads.items()}

    def payload_of(self, upload):
        return upload.keys0

    def upload_ring_words(self, m_prime, row_dim):
        n_keys, width = self.key_shape(m_prime, row_dim)
        return n_keys * width  # plus each key's seeds and per-level correction words


class RowEncVariant(FreshKeysVariant):
    """``rowenc``: one fresh full key per row, beta = the row's gradient."""

    name = "rowenc"

    def key_shape(self, m_prime, row_dim):
        return m_prime, row_dim

    def client_payload(self, gen_state, items, betas, n_items, dense_share1):
        keys0, keys1, _ = gen(items, betas, n_items, domain=AGGREGATE_DOMAIN)
        return keys0, schema.sealed_fresh_upload_bytes(keys1, dense_share1)

    def aggregate(self, party, payloads, width):
        return party.aggregate_fresh(payloads, width)


class InitVariant(FreshKeysVariant):
    """``init``: one fresh full key per element (row-major: key r * width + c holds row r, column c)."""

    name = "init"

    def key_shape(self, m_prime, row_dim):
        return m_prime * row_dim, 1

    def client_payload(self, gen_state, items, betas, n_items, dense_share1):
        width = betas.shape[1]
        keys0, keys1, _ = gen(np.repeat(items, width), betas.reshape(-1, 1), n_items, domain=AGGREGATE_DOMAIN)
        return keys0, schema.sealed_fresh_upload_bytes(keys1, dense_share1)

    def aggregate(self, party, payloads, width):
        """Column by column: the keys of column c are every width-th key; each column is one batched sum."""
        out = np.zeros((party.n_items, width), dtype=party.ring_dtype)
        for col in range(width):
            per_col = {u: k.select(np.arange(col, k.n_keys, width)) for u, k in payloads.items()}
            out[:, col] = party.aggregate_fresh(per_col, 1)[:, 0]
        return out


VARIANTS: dict[str, SecEmbVariant] = {"secemb": SecEmbVariant(), "rowenc": RowEncVariant(), "init": InitVariant()}


def variant_of(name: str) -> SecEmbVariant:
    """The variant object for ``strategy.variant``; an unknown name is refused with the choices."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"SecEmb variant {name!r} is not one of {sorted(VARIANTS)}") from None
