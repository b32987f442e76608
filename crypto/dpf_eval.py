"""DPF evaluation with an explicit evaluation context: SecEmb's retrieval and ConvertEval on the shared path.

Following Google's distributed_point_functions, what evaluation carries
between calls is a value the caller holds, not hidden evaluator state:
:meth:`DpfEvaluator.expand` and :meth:`DpfEvaluator.retrieve` return an
:class:`EvalContext` (every key's leaf seeds, control bits and the leaf
order), and :meth:`DpfEvaluator.aggregate` takes it explicitly. SecEmb's path
sharing is exactly that: the retrieval keys' leaves are kept and combined
with the aggregation phase's new final correction words (FSS.ConvertEval,
SecEmb Algorithms 4 and 6).

When a context becomes invalid: the paths of a round (17 bytes per key and
item: 1.9 GB for 100 users x 300 keys at ML1M sizes, unless capped) live in
buffers the evaluator reuses from round to round, since fresh buffers of that
size cost page faults on every round. A context is therefore valid until the *next*
:meth:`~DpfEvaluator.expand` or :meth:`~DpfEvaluator.retrieve` on the same
evaluator; then it is stale, and passing it to :meth:`~DpfEvaluator.aggregate`
raises :class:`StaleContextError` (a generation counter, checked on every
use). :meth:`~DpfEvaluator.sum_full` and :meth:`~DpfEvaluator.eval_full`
(ablations, tests) work in a separate scratch buffer and never invalidate a
context. The arrays a context exposes are read-only views. An evaluator is
not thread-safe; it runs its own work on :mod:`crypto.workers`' pool.

Memory cap: a round's paths take 17 bytes per key and item (the 16-byte leaf
and its t bit), ~16 GB per server for 100 users x 150 keys at ML25M's 62,423
items. ``max_cache_bytes`` bounds them: when a batch's paths fit, every path
is kept; when they do not, the cap first funds one re-expansion chunk (128
MiB, or the whole cap if smaller), the paths of the first keys that fit in
the remainder are kept, and the context holds only the *keys* of the rest
(keys are data, ~250 bytes each). :meth:`~DpfEvaluator.aggregate` then
re-expands those keys chunk by chunk in the scratch buffer and runs the same
ConvertEval on each chunk, which costs one more tree expansion's AES per
recomputed key and gives bit-identical sums (ring addition is exact).

Speed: the callers' BLAS should run single-threaded meanwhile (see
:mod:`crypto.workers`); :mod:`twoserver.party` does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crypto import prg, workers
from crypto.dpf_expand import expand_leaves, leaf_order, store_leaves
from crypto.dpf_keys import AGGREGATE_DOMAIN, RETRIEVE_DOMAIN, DpfKeyBatch, DpfParams
from crypto.ring import RingRhs, bits_times_rows, party_sign
from crypto.workers import parallel_map, per_thread, scratch

MIB = 1 << 20
DEFAULT_MAX_CACHE_BYTES = 2048 * MIB  # a round's paths at ML1M sizes (100 users x 300 keys: 1.9 GB) still fit
PATH_BYTES_PER_LEAF = 16 + 1  # leaf seed and its t bit
RECOMPUTE_CHUNK_BYTES = 128 * MIB  # paths re-expanded at once: > 2 x 2^22 leaves, so a chunk's t term
# (crypto.ring.bits_times_rows, 2^22 t entries per tile) runs on both pool threads; per-chunk overheads vanish
PRODUCT_KEYS = 128  # keys per retrieval product (several expansion chunks at large domains)
EXPAND_CHUNK_LEAVES = 1 << 20  # leaves per expansion task, <= 128 keys: bounds each thread's workspace
# (16 keys at ML25M: one retrieval then peaked 284 MiB above its inputs, 817 MiB at 128 keys; ML1M keeps 128)


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

    ``leaves`` uint64 [n_cached, m, 2] (leaf seed with the control bit in its lowest bit), ``t``
    uint8 [n_cached, m] (that bit), ``order`` (item of each leaf position): the paths of the
    batch's first ``n_cached`` keys. ``recompute`` holds the keys of the rest, whose paths did
    not fit under the evaluator's cap (None when every path is cached). Valid until its
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
    recompute: DpfKeyBatch | None = field(default=None, repr=False)

    @property
    def n_cached(self) -> int:
        return int(self.leaves.shape[0])

    @property
    def n_recomputed(self) -> int:
        return 0 if self.recompute is None else self.recompute.n_keys

    @property
    def n_keys(self) -> int:
        return self.n_cached + self.n_recomputed

    @property
    def valid(self) -> bool:
        return self._store.generation == self._generation

    def check(self) -> None:
        if not self.valid:
            raise StaleContextError("this DPF evaluation context is stale: its evaluator has since expanded another "
                                    "key batch into the same buffers (expand or retrieve again)")


class DpfEvaluator:
    """One party's DPF evaluator for a domain and ring: full-domain expansion, retrieval, ConvertEval.

    ``max_cache_bytes`` caps the paths a context keeps (17 bytes per key and item, see the
    module docstring); ``expand_chunk_keys`` is the keys per expansion task (default: about
    ``EXPAND_CHUNK_LEAVES`` leaves, at most 128 keys), which bounds each pool thread's workspace.
    """

    def __init__(self, party: int, domain_size: int, ring_dtype: np.dtype | type,
                 expand_chunk_keys: int | None = None, max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES) -> None:
        if party not in (0, 1):
            raise ValueError("party must be 0 or 1")
        if max_cache_bytes < 0:
            raise ValueError(f"max_cache_bytes must be >= 0, got {max_cache_bytes}")
        self.party = party
        self.params = DpfParams(domain_size, 1, ring_dtype)  # checks domain and ring once (any width evaluates)
        self.domain_size = self.params.domain_size
        self.ring = self.params.ring
        # small batches keep each tree level in cache (ML1M) and each thread's workspace small (ML25M)
        self.expand_chunk_keys = expand_chunk_keys or max(1, min(128, EXPAND_CHUNK_LEAVES // self.domain_size))
        self.max_cache_bytes = int(max_cache_bytes)
        self.group_blocks = 1 << 18  # leaf blocks per aggregation AES call
        self.recompute_chunk_bytes = RECOMPUTE_CHUNK_BYTES  # paths re-expanded at once when the cap binds
        self._store = _LeafStore(self.domain_size)  # contexts handed to callers
        self._scratch_store = _LeafStore(self.domain_size)  # sum_full / eval_full / recomputed chunks only

    @property
    def path_bytes_per_key(self) -> int:
        """Bytes one key's cached path takes: leaf seeds and t bits over the whole domain."""
        return PATH_BYTES_PER_LEAF * self.domain_size

    @property
    def recompute_chunk_keys(self) -> int:
        """Keys re-expanded at once in aggregation: ``recompute_chunk_bytes`` of paths, or the whole cap
        if smaller, and at least one key."""
        return max(1, min(self.recompute_chunk_bytes, self.max_cache_bytes) // self.path_bytes_per_key)

    def cached_keys(self, n_keys: int) -> int:
        """How many of a batch's n_keys keys keep their paths under the cap (the first ones; the rest recompute).

        All, if they fit; else as many as fit beside one re-expansion chunk, so cached paths plus
        the chunk stay within ``max_cache_bytes`` (none if the cap is one chunk or less; a cap
        below one key's path still recomputes one key at a time).
        """
        per_key = self.path_bytes_per_key
        if n_keys * per_key <= self.max_cache_bytes:
            return n_keys
        return min(n_keys, max(0, self.max_cache_bytes // per_key - self.recompute_chunk_keys))

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
    def _fill(self, store: _LeafStore, keys: DpfKeyBatch, table_by_leaf: RingRhs | None, n_store: int | None = None
              ) -> tuple[EvalContext, np.ndarray | None]:
        """Expand every key on the whole domain (and compute the retrieval shares, if a table is given),
        keeping the paths of the first ``n_store`` keys (default all) in ``store``; the context holds
        the keys of the rest."""
        self._check(keys)
        n_keys, m = keys.n_keys, self.domain_size
        n_store = n_keys if n_store is None else n_store
        leaves, bits, generation = store.claim(n_store)
        order = leaf_order(m)
        shares = None if table_by_leaf is None else np.empty((n_keys, table_by_leaf.width), dtype=self.ring)
        step = self.expand_chunk_keys
        # keys whose paths are not stored are expanded only for their shares: nothing to do without a table
        last = n_keys if shares is not None else n_store
        group = self.product_keys(last)

        def work(lo: int) -> None:
            hi = min(lo + group, last)
            e = None if shares is None else np.empty((m, hi - lo), dtype=self.ring)  # Eval(k, x), leaf-major
            for c_lo in range(lo, hi, step):  # expansion chunks: each thread's tree workspace stays small
                c_hi = min(c_lo + step, hi)
                part = keys.select(slice(c_lo, c_hi))
                nodes = expand_leaves(part)[0]
                if e is not None:
                    self._eval_leaves(nodes, part.cw_out[:, 0], e[:, c_lo - lo:c_hi - lo])
                kept = min(c_hi, n_store) - c_lo
                if kept > 0:
                    store_leaves(nodes[:, :kept], leaves[c_lo:c_lo + kept], bits[c_lo:c_lo + kept])
            if e is not None:  # one product per group: the table's digits are streamed once per `group` keys
                shares[lo:hi] = party_sign(table_by_leaf.left_multiply(e.T), self.party)

        parallel_map(work, range(0, last, group))
        rest = keys.select(slice(n_store, n_keys)) if n_store < n_keys else None
        context = EvalContext(self.party, m, self.ring, _read_only(leaves), _read_only(bits), order, store, generation,
                              rest)
        return context, shares

    def expand(self, keys: DpfKeyBatch) -> EvalContext:
        """Evaluate every key's tree on the whole domain: the shared path, capped (stales any older context)."""
        return self._fill(self._store, keys, None, self.cached_keys(keys.n_keys))[0]

    def retrieve(self, keys: DpfKeyBatch, table: np.ndarray) -> tuple[np.ndarray, EvalContext]:
        """Phase 1 of SecEmb: shares sum_j Eval(k, j) * table[j] -> ring [K, w], and the keys' context.

        Each chunk's Eval values are computed while its leaves are still in cache, and multiplied by
        the table once per group of chunks (:meth:`product_keys`); the context keeps the paths of as
        many keys as the cap allows (:meth:`cached_keys`).
        """
        if keys.width != 1:
            raise ValueError("retrieval keys encode beta = 1 (width 1)")
        if table.dtype != self.ring or table.ndim != 2 or table.shape[0] != self.domain_size:
            raise ValueError(f"table must be {self.ring} [{self.domain_size}, w]")
        context, shares = self._fill(self._store, keys, RingRhs(table[leaf_order(self.domain_size)]),
                                     self.cached_keys(keys.n_keys))
        assert shares is not None
        return shares, context

    def product_keys(self, n_keys: int) -> int:
        """Keys per retrieval product: whole expansion chunks, up to ``PRODUCT_KEYS``, but no more than
        leave every pool thread a group. A product of few keys is bound by streaming the table's
        float64 digits (at ML-25M's 62,423 items: 15 ns per key and item for 16 keys, 5.8 for 128)."""
        step = self.expand_chunk_keys
        per_thread_chunks = -(-n_keys // (step * workers.N_THREADS))
        return step * max(1, min(PRODUCT_KEYS // step, per_thread_chunks))

    def _eval_leaves(self, nodes: np.ndarray, cw_out: np.ndarray, e: np.ndarray) -> None:
        """Eval(k, x) of one chunk's keys at every leaf, from its leaves [m, k, 2] (node-major, in cache),
        into ``e`` [m, k] (unsigned: the party's sign is applied to the product).

        Eval(k, x) = (-1)^b [Convert(s_x) + t_x CW^(n+1)] with a width-1 Convert: the first ring
        lane of AES_K(s) + s. The t bit is the lowest bit of that lane.
        """
        lanes = 16 // self.ring.itemsize
        m, k = nodes.shape[:2]
        label = prg.convert_label(RETRIEVE_DOMAIN, 0)
        rows = max(1, (1 << 16) // k)  # ~1 MB of AES output per call: it is read back from L2
        raw = scratch(rows * k * 2 + 2)
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

    # ----------------------------------------------------------- aggregation
    def aggregate(self, context: EvalContext, cw: np.ndarray, keep: np.ndarray | None = None,
                  domain: int = AGGREGATE_DOMAIN) -> np.ndarray:
        """ConvertEval (Algorithm 4) on the context's paths, summed over the keys kept: ring [m, w].

        Cached paths are read in place; the kept keys among those the cap left out are
        re-expanded ``recompute_chunk_keys`` at a time (keys dropped by ``keep`` cost nothing).
        """
        self._check_context(context)
        k = context.n_keys
        if cw.dtype != self.ring or cw.ndim != 2 or cw.shape[0] != k:
            raise ValueError(f"correction words must be {self.ring} [{k}, w], got {cw.dtype} {cw.shape}")
        if keep is not None and np.shape(keep) != (k,):
            raise ValueError(f"keep must be a mask of the context's {k} keys, got shape {np.shape(keep)}")
        idx = np.arange(k) if keep is None else np.flatnonzero(keep)
        n = context.n_cached
        cached, rest = idx[idx < n], idx[idx >= n] - n
        acc = self._convert_sums(context.leaves, cached, cw.shape[1], domain)
        t_term = self._t_term(context.t, cw[:n], cached)
        if len(rest):
            assert context.recompute is not None
            more_acc, more_t = self._streamed_sums(context.recompute.select(rest), cw[n:][rest],
                                                   self.recompute_chunk_keys, domain)
            acc += more_acc
            t_term += more_t
        return self._finish(acc, t_term, context.order)

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
        return self._finish(*self._streamed_sums(keys, keys.cw_out, step, domain), leaf_order(self.domain_size))

    def _streamed_sums(self, keys: DpfKeyBatch, cw: np.ndarray, step: int, domain: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Convert sums and t term (see :meth:`_convert_sums`) of keys expanded ``step`` at a time in the
        scratch buffer: fresh keys (sum_full) or the keys the cap left out (aggregate)."""
        m, w = self.domain_size, cw.shape[1]
        acc = np.zeros((prg.blocks_for(w, self.ring) + 1, m * 16 // self.ring.itemsize), dtype=self.ring)
        t_term = np.zeros((m, w), dtype=self.ring)
        for lo in range(0, keys.n_keys, step):
            part = keys.select(slice(lo, lo + step))
            ctx = self._fill(self._scratch_store, part, None)[0]
            ids = np.arange(part.n_keys)
            acc += self._convert_sums(ctx.leaves, ids, w, domain)
            t_term += self._t_term(ctx.t, cw[lo:lo + step], ids)
        return acc, t_term

    def _convert_sums(self, leaves: np.ndarray, idx: np.ndarray, w: int, domain: int) -> np.ndarray:
        """sum_k Convert(leaf_k) over keys idx of leaves [K, m, 2], before the feed-forward: ring
        [nb + 1, m * lanes] (row b < nb: sum_k AES_{K_b}(s_k); row nb: sum_k s_k; see :meth:`_finish`).

        Convert's block b is AES_{K_b}(s) + s (ring lanes), so the sum over keys splits into
        sum_k AES_{K_b}(s_k), one AES call under K_{domain,b} per group of keys (AES reads the
        leaves in place) and one add into an accumulator, plus sum_k s_k once per group for all
        blocks. Sums of several key sets add up (ring addition), which is what lets recomputed
        chunks join the cached paths.
        """
        m = self.domain_size
        nb = prg.blocks_for(w, self.ring)
        lanes = 16 // self.ring.itemsize
        group = max(1, self.group_blocks // m)  # keys per AES call: ~256K blocks, so each GIL hand-off is amortised
        labels = [prg.convert_label(domain, b) for b in range(nb)]
        groups = [idx[i:i + group] for i in range(0, len(idx), group)]

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
        return acc

    def _finish(self, acc: np.ndarray, t_term: np.ndarray, order: np.ndarray) -> np.ndarray:
        """The party's share [m, w] from :meth:`_convert_sums`' accumulator and the t term (leaf order)."""
        m, w = t_term.shape
        nb, lanes = acc.shape[0] - 1, 16 // self.ring.itemsize
        sums = acc[:nb] + acc[nb]  # the feed-forward + s_k, the same for every block
        total = np.ascontiguousarray(sums.reshape(nb, m, lanes).transpose(1, 0, 2)).reshape(m, nb * lanes)[:, :w]
        out = np.empty((m, w), dtype=self.ring)
        out[order] = total + t_term
        return party_sign(out, self.party)

    @staticmethod
    def _t_term(t: np.ndarray, cw: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """sum_k t_k(x) CW_k over keys idx of t [K, m], for every leaf; keys left out get a zero CW."""
        k = t.shape[0]
        if len(idx) < k:
            kept = np.zeros((k, 1), dtype=cw.dtype)
            kept[idx] = 1
            cw = cw * kept
        return bits_times_rows(t, cw)
