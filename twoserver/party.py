"""What each of SecEmb's two servers computes, written once for both (party b in {0, 1}).

Retrieval: every user's m' DPF keys are evaluated on the whole item domain;
the party's share of user u's embeddings is sum_j Eval(k_{u,i}, j) * Q_j.
The evaluated tree paths (leaf seeds and t bits) come back as an explicit
evaluation context (:class:`crypto.dpf_eval.EvalContext`) that the party
keeps for the round, so aggregation needs only the users' final correction
words: sum over users and keys of (-1)^b [Convert(s_leaf) + t_leaf * CW]
(SecEmb Algorithm 3 with ConvertEval, Algorithm 4). Users that answered
retrieval but not aggregation are left out by a mask over the round's keys.
The paths kept between the phases are capped at ``max_cache_bytes`` (17 bytes
per key and item); keys past the cap keep only their keys and are re-expanded
in aggregation, with the same result (:mod:`crypto.dpf_eval`).
The ablations' fresh keys are evaluated in the evaluator's scratch buffer,
which leaves the round's context intact.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
from threadpoolctl import ThreadpoolController

from crypto.dpf_eval import DEFAULT_MAX_CACHE_BYTES, DpfEvaluator, EvalContext
from crypto.dpf_keys import DpfKeyBatch
from crypto.ring import check_ring


@functools.lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    return ThreadpoolController()  # inspecting the loaded BLAS libraries takes milliseconds: once per process


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS at one thread while the DPF worker pool runs the exact ring products.

    Each pool thread already owns a core; a multi-threaded OpenBLAS call beside the other busy
    worker oversubscribes the cores (its spinning threads made fused retrieval 2x slower on the
    2-core machine this was measured on). crypto/ knows nothing of BLAS, so the server-side
    caller sets the limit around every DPF call.
    """
    with _blas().limit(limits=1, user_api="blas"):
        yield


class SecEmbParty:
    """One server's SecEmb state: its evaluator (buffers reused across rounds) and this round's context."""

    def __init__(self, party: int, n_items: int, ring_dtype: np.dtype | type,
                 max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES) -> None:
        """``max_cache_bytes``: cap on the round's cached paths (beyond it, keys are re-expanded in aggregation)."""
        self.party = party
        self.n_items = n_items
        self.ring_dtype = check_ring(ring_dtype)
        self.evaluator = DpfEvaluator(party, n_items, self.ring_dtype, max_cache_bytes=max_cache_bytes)
        self.context: EvalContext | None = None  # this round's retrieval paths; None before one or after no keys
        self.slices: dict[int, slice] = {}

    def retrieve(self, keys: Mapping[int, DpfKeyBatch], table_ring: np.ndarray) -> dict[int, np.ndarray]:
        """Shares of every user's embeddings; keeps the keys' paths (as many as the cap allows) for aggregation."""
        users = sorted(keys)
        self.slices, start = {}, 0
        for u in users:
            self.slices[u] = slice(start, start + keys[u].n_keys)
            start += keys[u].n_keys
        self.context = None  # last round's context goes stale now; drop it first so its memory can go
        if not users:
            return {}
        batch = DpfKeyBatch.concatenate([keys[u] for u in users])
        with single_threaded_blas():
            shares, self.context = self.evaluator.retrieve(batch, table_ring)
        return {u: shares[self.slices[u]] for u in users}

    def aggregate(self, correction_words: Mapping[int, np.ndarray], width: int) -> np.ndarray:
        """This party's share of the sum of all kept users' sparse gradient matrices [m, width]."""
        if self.context is None or not correction_words:
            return np.zeros((self.n_items, width), dtype=self.ring_dtype)
        total = self.context.n_keys
        keep = np.zeros(total, dtype=bool)
        cw = np.zeros((total, width), dtype=self.ring_dtype)
        for u, words in correction_words.items():
            keep[self.slices[u]] = True
            cw[self.slices[u]] = words
        with single_threaded_blas():
            return self.evaluator.aggregate(self.context, cw, keep=keep)

    def aggregate_fresh(self, keys: Mapping[int, DpfKeyBatch], width: int) -> np.ndarray:
        """Ablation (SecEmb-RowEnc / -Init): evaluate fresh full keys, no shared path."""
        if not keys:
            return np.zeros((self.n_items, width), dtype=self.ring_dtype)
        batch = DpfKeyBatch.concatenate([keys[u] for u in sorted(keys)])
        with single_threaded_blas():
            return self.evaluator.sum_full(batch)
