"""Batched driver of the compressed plaintext protocol (see :mod:`strategies.compressed`).

Users train exactly as the plaintext driver's (full item sets: ``m_prime`` is
None under compression); each user's update is encoded by the same
:func:`schemas.compressed.encode_update` the Flower client calls and the
server step is :meth:`CompressedPlaintextStrategy.apply_payloads`, so only the
message transport differs. TernGrad's stochastic rounding uses a
``secrets``-seeded generator on both paths, so tern runs are not bit-equal
across engines; bit8 / svd / colr are deterministic.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from engine.model_protocols import PlaintextDriver, RoundBatch
from schemas import compressed as schema
from schemas.sizes import int_width
from strategies.base import mean_train_loss
from strategies.compressed import CompressedPlaintextStrategy


class CompressedPlaintextDriver(PlaintextDriver):
    strategy_class = CompressedPlaintextStrategy
    strategy: CompressedPlaintextStrategy

    def train_round(self, rnd: int, users: np.ndarray) -> dict[str, Any]:
        self._rnd = rnd  # the codec's round (CoLR's basis); aggregate() is called without it
        return super().train_round(rnd, users)

    def aggregate(self, batch: RoundBatch) -> dict[str, Any]:
        st, rnd = self.strategy, self._rnd
        rng = np.random.default_rng(secrets.randbits(128))
        payloads = (schema.encode_update(st.codec, self.meta.n_items, items, batch.row_grads[b][batch.row_mask[b]],
                                         rng, rnd) for b, items in enumerate(batch.items))
        st.apply_payloads(rnd, payloads, batch.dense_grads)
        return {"train_loss": mean_train_loss(batch.loss),
                "reduction_ratio": st.reduction_ratio(rnd)}

    def round_sizes(self, rnd: int, items: list[np.ndarray]) -> dict[str, float]:
        """Bytes per client from :func:`schemas.compressed.round_bytes`.

        The messages' shapes do not depend on a user's rating count k (full model down, fixed-shape payload
        up): k reaches the wire only as the reply's ``n_ratings`` varint. So one measurement per (round
        width, k width) serves every k of that width, where one per k cost each new count a serialised
        placeholder model (37 ms for DeepFM's 873K dense values; hundreds of distinct counts a run)."""
        st = self.strategy
        return self.mean_bytes_by_count(rnd, items, lambda k: self.cached_bytes(
            (int_width(rnd), int_width(k)), lambda: schema.round_bytes(
                rnd, st.codec.name, st.rank, self.meta.n_items, self.spec.row_dim, self.spec.dense_size, k)))
