"""What each of SecEmb's two servers computes, written once for both (party b in {0, 1}).

Retrieval: every user's m' DPF keys are evaluated on the whole item domain;
the party's share of user u's embeddings is sum_j Eval(k_{u,i}, j) * Q_j.
The evaluated tree paths (leaf seeds and t bits) stay cached in the
evaluation context, so aggregation needs only the users' final correction
words: sum over users and keys of (-1)^b [Convert(s_leaf) + t_leaf * CW]
(SecEmb Algorithm 3 with ConvertEval, Algorithm 4). Users that answered
retrieval but not aggregation are left out by a mask over the cached keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from crypto.dpf import DpfEvaluator, DpfKeyBatch


class SecEmbParty:
    def __init__(self, party: int, n_items: int, ring_dtype: type) -> None:
        self.party = party
        self.n_items = n_items
        self.ring_dtype = ring_dtype
        self.evaluator: DpfEvaluator | None = None  # set by a retrieval, cleared when it had no keys
        self._evaluator = DpfEvaluator(party, n_items, ring_dtype)  # kept across rounds: its buffers are reused
        self._fresh: DpfEvaluator | None = None  # for the ablations' fresh aggregation keys
        self.slices: dict[int, slice] = {}

    def retrieve(self, keys: Mapping[int, DpfKeyBatch], table_ring: np.ndarray) -> dict[int, np.ndarray]:
        """Shares of every user's embeddings; caches the paths of all keys for :meth:`aggregate`."""
        users = sorted(keys)
        self.slices, start = {}, 0
        for u in users:
            self.slices[u] = slice(start, start + keys[u].n_keys)
            start += keys[u].n_keys
        self.evaluator = self._evaluator if users else None
        if not users:
            return {}
        batch = DpfKeyBatch.concatenate([keys[u] for u in users])
        shares = self.evaluator.retrieve(batch, table_ring)
        return {u: shares[self.slices[u]] for u in users}

    def aggregate(self, correction_words: Mapping[int, np.ndarray], width: int) -> np.ndarray:
        """This party's share of the sum of all kept users' sparse gradient matrices [m, width]."""
        if self.evaluator is None or not correction_words:
            return np.zeros((self.n_items, width), dtype=self.ring_dtype)
        total = sum(s.stop - s.start for s in self.slices.values())
        keep = np.zeros(total, dtype=bool)
        cw = np.zeros((total, width), dtype=self.ring_dtype)
        for u, words in correction_words.items():
            keep[self.slices[u]] = True
            cw[self.slices[u]] = words
        return self.evaluator.aggregate(cw, keep=keep)

    def aggregate_fresh(self, keys: Mapping[int, DpfKeyBatch], width: int) -> np.ndarray:
        """Ablation (SecEmb-RowEnc / -Init): evaluate fresh full keys, no shared path."""
        if not keys:
            return np.zeros((self.n_items, width), dtype=self.ring_dtype)
        if self._fresh is None:
            self._fresh = DpfEvaluator(self.party, self.n_items, self.ring_dtype)
        batch = DpfKeyBatch.concatenate([keys[u] for u in sorted(keys)])
        return self._fresh.sum_full(batch)


def fresh_aggregate(party: SecEmbParty, keys: Mapping[int, DpfKeyBatch], width: int, variant: str) -> np.ndarray:
    """Sum of fresh full keys: row keys (rowenc) or one key per element (init, column-major groups)."""
    if variant == "rowenc":
        return party.aggregate_fresh(keys, width)
    out = np.zeros((party.n_items, width), dtype=party.ring_dtype)
    for col in range(width):  # a loop over the d+1 columns; each column is one batched evaluation
        per_col = {u: k.select(np.arange(col, k.n_keys, width)) for u, k in keys.items()}
        out[:, col] = party.aggregate_fresh(per_col, 1)[:, 0]
    return out
