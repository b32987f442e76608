"""DPF evaluation with an explicit evaluation context: SecEmb's retrieval and ConvertEval on the shared path.

Following Google's distributed_point_functions, what evaluation carries
between calls is a value the caller holds, not hidden evaluator state:
:meth:`DpfEvaluator.expand` and :meth:`DpfEvaluator.retrieve` return an
:class:`EvalContext` (every key's leaf seeds, control bits and the leaf
order), and :meth:`DpfEvaluator.aggregate` takes it explicitly. SecEmb's path
sharing is exactly that: the retrieval keys' leaves are kept and combined
with the aggregation phase's new final correction words (FSS.ConvertEval,
SecEmb Algorithms 4 and 6).

When a context becomes invalid: the leaves of a round (16 bytes per key and
item: 300 MB for 100 users x 300 keys at ML1M sizes) live in buffers the
evaluator reuses from round to round, since fresh buffers of that size cost
page faults on every round. A context is therefore valid until the *next*
:meth:`~DpfEvaluator.expand` or :meth:`~DpfEvaluator.retrieve` on the same
evaluator; then it is stale, and passing it to :meth:`~DpfEvaluator.aggregate`
raises :class:`StaleContextError` (a generation counter, checked on every
use). :meth:`~DpfEvaluator.sum_full` and :meth:`~DpfEvaluator.eval_full`
(ablations, tests) work in a separate scratch buffer and never invalidate a
context. The arrays a context exposes are read-only views. An evaluator is
not thread-safe; it runs its own work on :mod:`crypto.workers`' pool.

Speed: the callers' BLAS should run single-threaded meanwhile (see
:mod:`crypto.workers`); :mod:`twoserver.party` does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crypto import prg
from crypto.dpf_expand import expand_leaves, leaf_order, store_leaves
from crypto.dpf_keys import AGGREGATE_DOMAIN, RETRIEVE_DOMAIN, DpfKeyBatch, DpfParams
from crypto.ring import RingRhs, bits_times_rows, party_sign
from crypto.workers import parallel_map, per_thread, scratch


class StaleContextError(RuntimeError):
    """An evaluation context used after its evaluator expanded another batch into the same buffers."""


class _LeafStore:
    """Reusable leaf and t-bit buffers of one evaluator, with a generation per fill."""

    def __init__(self, domain_size: int) -> None:
        self.domain_size = domain_size
        self.capacity = 0
        self.generation = 0
        self._leaves = np.empty((0, domain_size, 2), dtype=np.uint64)
        self._t = np.empty((0, domain_size), dtype=np.uint8)

    def claim(self, n_keys: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Writable leaves [n_keys, m, 2] and t [n_keys, m] for a new fill; every older context goes stale."""
        self.generation += 1
        if self.capacity < n_keys:  # grown, never shrunk: no page faults in steady state
            self._leaves = self._t = None  # type: ignore[assignment]  # free before allocating
            self._leaves = np.empty((n_keys, self.domain_size, 2), dtype=np.uint64)
            self._t = np.empty((n_keys, self.domain_size), dtype=np.uint8)
            self.capacity = n_keys
        return self._leaves[:n_keys], self._t[:n_keys], self.generation


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.setflags(write=False)
    return view


@dataclass(frozen=True, eq=False)
class EvalContext:
    """The evaluated tree paths of one key batch of one party on the whole domain.

    ``leaves`` uint64 [K, m, 2] (leaf seed with the control bit in its lowest bit), ``t``
    uint8 [K, m] (that bit), ``order`` (item of each leaf position). Valid until its
    evaluator expands another batch; see the module docstring.
    """

    party: int
    domain_size: int
    ring: np.dtype
    leaves: np.ndarray = field(repr=False)
    t: np.ndarray = field(repr=False)
    order: np.ndarray = field(repr=False)
    _store: _LeafStore = field(repr=False)
    _generation: int = 0

    @property
    def n_keys(self) -> int:
        return int(self.leaves.shape[0])

    @property
    def valid(self) -> bool:
        return self._store.generation == self._generation

    def check(self) -> None:
        if not self.valid:
            raise StaleContextError("this DPF evaluation context is stale: its evaluator has since expanded another "
                                    "key batch into the same buffers (expand or retrieve again)")


class DpfEvaluator:
    """One party's DPF evaluator for a domain and ring: full-domain expansion, retrieval, ConvertEval."""

    def __init__(self, party: int, domain_size: int, ring_dtype: np.dtype | type, expand_chunk_keys: int = 128
                 ) -> None:
        if party not in (0, 1):
            raise ValueError("party must be 0 or 1")
        self.party = party
        self.params = DpfParams(domain_size, 1, ring_dtype)  # checks domain and ring once (any width evaluates)
        self.domain_size = self.params.domain_size
        self.ring = self.params.ring
        self.expand_chunk_keys = expand_chunk_keys  # small batches keep each tree level in cache
        self.group_blocks = 1 << 18  # leaf blocks per aggregation AES call
        self._store = _LeafStore(self.domain_size)  # contexts handed to callers
        self._scratch_store = _LeafStore(self.domain_size)  # sum_full / eval_full only

    def _check(self, keys: DpfKeyBatch) -> None:
        if keys.party != self.party or keys.domain_size != self.domain_size or keys.cw_out.dtype != self.ring:
            raise ValueError("keys do not belong to this evaluator's party, domain or ring")

    def _check_context(self, context: EvalContext) -> None:
        if not isinstance(context, EvalContext):
            raise TypeError(f"expected an EvalContext, got {type(context).__name__}")
        context.check()
        if context.party != self.party or context.domain_size != self.domain_size or context.ring != self.ring:
            raise ValueError("the evaluation context belongs to another party, domain or ring")

    # ------------------------------------------------------------- expansion
    def _fill(self, store: _LeafStore, keys: DpfKeyBatch, table_by_leaf: RingRhs | None
              ) -> tuple[EvalContext, np.ndarray | None]:
        """Expand every key on the whole domain into ``store`` (and the retrieval shares, if a table is given)."""
        self._check(keys)
        n_keys, m = keys.n_keys, self.domain_size
        leaves, bits, generation = store.claim(n_keys)
        order = leaf_order(m)
        shares = None if table_by_leaf is None else np.empty((n_keys, table_by_leaf.width), dtype=self.ring)
        step = self.expand_chunk_keys

        def work(lo: int) -> None:
            hi = min(lo + step, n_keys)
            part = keys.select(slice(lo, hi))
            nodes = expand_leaves(part)[0]
            if shares is not None:
                shares[lo:hi] = self._retrieve_chunk(nodes, part.cw_out[:, 0], table_by_leaf)
            store_leaves(nodes, leaves[lo:hi], bits[lo:hi])

        parallel_map(work, range(0, n_keys, step))
        context = EvalContext(self.party, m, self.ring, _read_only(leaves), _read_only(bits), order, store, generation)
        return context, shares

    def expand(self, keys: DpfKeyBatch) -> EvalContext:
        """Evaluate every key's tree on the whole domain: the shared path (stales any older context)."""
        return self._fill(self._store, keys, None)[0]

    def retrieve(self, keys: DpfKeyBatch, table: np.ndarray) -> tuple[np.ndarray, EvalContext]:
        """Phase 1 of SecEmb: shares sum_j Eval(k, j) * table[j] -> ring [K, w], and the keys' context.

        The shares are computed chunk by chunk while each chunk's leaves are still in cache.
        """
        if keys.width != 1:
            raise ValueError("retrieval keys encode beta = 1 (width 1)")
        if table.dtype != self.ring or table.ndim != 2 or table.shape[0] != self.domain_size:
            raise ValueError(f"table must be {self.ring} [{self.domain_size}, w]")
        context, shares = self._fill(self._store, keys, RingRhs(table[leaf_order(self.domain_size)]))
        assert shares is not None
        return shares, context

    def _retrieve_chunk(self, nodes: np.ndarray, cw_out: np.ndarray, table_by_leaf: RingRhs) -> np.ndarray:
        """Shares of one chunk's embeddings from its leaves [m, k, 2] (node-major, in cache).

        Eval(k, x) = (-1)^b [Convert(s_x) + t_x CW^(n+1)] with a width-1 Convert: the first ring
        lane of AES_K(s) + s. The t bit is the lowest bit of that lane.
        """
        lanes = 16 // self.ring.itemsize
        m, k = nodes.shape[:2]
        label = prg.convert_label(RETRIEVE_DOMAIN, 0)
        rows = max(1, (1 << 16) // k)  # ~1 MB of AES output per call: it is read back from L2
        raw = scratch(rows * k * 2 + 2)
        e = np.empty((m, k), dtype=self.ring)
        t_cw = np.empty((rows, k), dtype=self.ring)
        for x in range(0, m, rows):  # tile by tile, so the AES output and the seeds are read back from cache
            part = nodes[x:x + rows]
            out, tile = e[x:x + rows], t_cw[:len(part)]
            prg.aes_into(label, part, raw)
            seed = part.view(self.ring).reshape(-1, k, lanes)[:, :, 0]
            np.add(raw[:part.size].view(self.ring).reshape(-1, k, lanes)[:, :, 0], seed, out=out)  # AES(s) + s
            np.bitwise_and(seed, 1, out=tile)
            np.multiply(tile, cw_out, out=tile)
            out += tile  # + t CW^(n+1)
        return party_sign(table_by_leaf.left_multiply(e.T), self.party)

    # ----------------------------------------------------------- aggregation
    def aggregate(self, context: EvalContext, cw: np.ndarray, keep: np.ndarray | None = None,
                  domain: int = AGGREGATE_DOMAIN) -> np.ndarray:
        """ConvertEval (Algorithm 4) on the context's paths, summed over the keys kept: ring [m, w]."""
        self._check_context(context)
        k = context.n_keys
        if cw.dtype != self.ring or cw.ndim != 2 or cw.shape[0] != k:
            raise ValueError(f"correction words must be {self.ring} [{k}, w], got {cw.dtype} {cw.shape}")
        if keep is not None and np.shape(keep) != (k,):
            raise ValueError(f"keep must be a mask of the context's {k} keys, got shape {np.shape(keep)}")
        idx = np.arange(k) if keep is None else np.flatnonzero(keep)
        return self._sum_convert(context, cw, idx, domain)

    def eval_full(self, keys: DpfKeyBatch, domain: int = RETRIEVE_DOMAIN) -> np.ndarray:
        """Eval(k, x) for all x: ring [K, m, w] (tests and small domains; leaves held contexts valid)."""
        ctx = self._fill(self._scratch_store, keys, None)[0]
        conv = prg.convert(ctx.leaves, keys.width, self.ring, domain)
        out = np.empty_like(conv)
        out[:, ctx.order] = conv + ctx.t[:, :, None].astype(self.ring) * keys.cw_out[:, None, :]
        return party_sign(out, self.party)

    def sum_full(self, keys: DpfKeyBatch, domain: int = AGGREGATE_DOMAIN, batch_leaves: int = 1 << 24
                 ) -> np.ndarray:
        """Sum over fresh full keys of Eval on the whole domain (ablations without path sharing).

        Streams over batches of keys (~batch_leaves leaves each) in the scratch buffer, so memory
        stays bounded even for SecEmb-Init's one key per element, and a context the caller
        holds stays valid.
        """
        self._check(keys)
        step = max(1, batch_leaves // self.domain_size)
        total = np.zeros((self.domain_size, keys.width), dtype=self.ring)
        for lo in range(0, keys.n_keys, step):
            part = keys.select(slice(lo, lo + step))
            ctx = self._fill(self._scratch_store, part, None)[0]
            total += self._sum_convert(ctx, part.cw_out, np.arange(part.n_keys), domain)
        return total

    def _sum_convert(self, context: EvalContext, cw: np.ndarray, idx: np.ndarray, domain: int) -> np.ndarray:
        """sum_k Convert(leaf_k) + t_k CW_k over keys idx, for every item.

        Convert's block b is AES_{K_b}(s) + s (ring lanes), so the sum over keys splits into
        sum_k AES_{K_b}(s_k), one AES call under K_{domain,b} per group of keys (AES reads the
        cached leaves in place) and one add into an accumulator [nb, m * lanes], plus
        sum_k s_k once per group for all blocks. The t_k CW_k term is one bits x ring matmul.
        """
        m, w = self.domain_size, cw.shape[1]
        nb = prg.blocks_for(w, self.ring)
        lanes = 16 // self.ring.itemsize
        group = max(1, self.group_blocks // m)  # keys per AES call: ~256K blocks, so each GIL hand-off is amortised
        labels = [prg.convert_label(domain, b) for b in range(nb)]
        groups = [idx[i:i + group] for i in range(0, len(idx), group)]
        leaves = context.leaves

        def work(my_groups: list[np.ndarray]) -> np.ndarray:
            acc = np.zeros((nb + 1, m * lanes), dtype=self.ring)  # row nb: sum of the seeds themselves
            out = scratch(group * m * 2 + 2)
            for ids in my_groups:
                g = len(ids)
                src = leaves[ids[0]:ids[-1] + 1] if ids[-1] - ids[0] == g - 1 else leaves[ids]
                acc[nb] += src.view(self.ring).reshape(g, m * lanes).sum(axis=0, dtype=self.ring)
                for b, label in enumerate(labels):
                    prg.aes_into(label, src, out)
                    ring = out[:src.size].view(self.ring).reshape(g, m * lanes)
                    acc[b] += ring.sum(axis=0, dtype=self.ring) if g > 1 else ring[0]
            return acc

        acc = np.zeros((nb + 1, m * lanes), dtype=self.ring)
        for part in parallel_map(work, per_thread(groups)):
            acc += part
        acc = acc[:nb] + acc[nb]  # the feed-forward + s_k, the same for every block
        total = np.ascontiguousarray(acc.reshape(nb, m, lanes).transpose(1, 0, 2)).reshape(m, nb * lanes)[:, :w]
        out = np.empty((m, w), dtype=self.ring)
        out[context.order] = total + self._t_term(context, cw, idx)
        return party_sign(out, self.party)

    def _t_term(self, context: EvalContext, cw: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """sum_k t_k(x) CW_k over the kept keys idx, for every leaf; keys left out get a zero CW."""
        k = context.n_keys
        if len(idx) < k:
            kept = np.zeros((k, 1), dtype=cw.dtype)
            kept[idx] = 1
            cw = cw * kept
        return bits_times_rows(context.t, cw)
