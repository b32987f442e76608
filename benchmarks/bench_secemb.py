"""SecEmb costs beside the paper's tables: bytes per user, user secret generation, server compute.

Bytes are measured from the serialized Flower messages a user sends and
receives in one round (built by the same schema functions the client and
server use, with real DPF keys and sealed boxes), for SecEmb, its ablations
and Secure FedRec, at the item counts of ML100K, ML1M, ML10M, ML25M and Yelp
(synthetic ids; m' and d as in SecEmb Appendix I). The paper's formula
2 m' [(lambda + 1 + (lambda+2) n + 32) + 32 d] bits is printed beside.

    python -m benchmarks.bench_secemb --tables bytes,usertime,server --server-users 100,200
    python -m benchmarks.bench_secemb --tables floor --server-users 100   # one server's non-AES costs
    python -m benchmarks.bench_secemb --tables server,floor --server-users 3 --server-variants secemb --server-dataset ML25M
        # the same at ML25M's 62,423 items (3 users x 500 keys: their paths fit the default 2 GiB cache)
    python -m benchmarks.bench_secemb --tables cache --cache-users 100,4  # the capped path cache (issue 15)
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import numpy as np

from crypto import dpf_eval, dpf_expand, dpf_gen, dpf_keys, prg, workers
from crypto import ring as ring_ops
from crypto.fixed_point import FixedPointCodec
from crypto.sealed import generate_keypair, seal
from crypto.secret_sharing import share
from models import ModelSpec
from schemas import secemb as S
from schemas import secfedrec as SF
from clients.two_server import share_with_metrics
from schemas.two_server import MetricCodec
from strategies.exchange import content_nbytes
from twoserver.party import single_threaded_blas
from twoserver.variants import variant_of

MIB = 1024 * 1024
CODEC = FixedPointCodec(16, 300.0)  # 16 fraction bits as in conf/strategy/secemb.yaml; 300 bounds the random values


class PaperDataset(NamedTuple):
    """One column of SecEmb's Tables 2 and 7: what the message sizes and server costs depend on."""

    items: int
    m_prime: int  # SecEmb's padded rows per user (Appendix I)
    fields: tuple[int, int]  # (l_x, l_y): user and item feature counts (FM, DeepFM)
    ncf_dim: int  # NCF's embedding size (Table 8); the other models use 64


DATASETS = {
    "ML100K": PaperDataset(1682, 200, (84, 19), 16), "ML1M": PaperDataset(3883, 300, (30, 18), 16),
    "ML10M": PaperDataset(10681, 300, (0, 20), 24), "ML25M": PaperDataset(62423, 500, (0, 20), 24),
    "Yelp": PaperDataset(93386, 500, (0, 16), 20),
}
PAPER_UP = {  # Table 2 / 16 upload MB: SecFedRec, SecEmb-Init, SecEmb-RowEnc, SecEmb
    "mf": ([0.86, 1.99, 5.47, 31.96, 47.81], [4.56, 7.60, 8.51, 16.83, 17.43], [0.28, 0.43, 0.45, 0.78, 0.79],
           [0.17, 0.27, 0.28, 0.51, 0.52]),
    "ncf": ([0.44, 1.00, 4.11, 23.98, 29.89], [2.32, 3.86, 6.42, 12.70, 11.00], [0.18, 0.28, 0.38, 0.67, 0.61],
            [0.13, 0.20, 0.26, 0.46, 0.44]),
    "fm": ([0.91, 2.01, 5.48, 31.97, 47.82], [4.80, 7.84, 8.74, 17.16, 17.47], [0.29, 0.44, 0.46, 0.80, 0.79],
           [0.18, 0.28, 0.29, 0.53, 0.53]),
    "deepfm": ([14.95, 8.84, 8.63, 35.13, 50.45], [18.84, 14.66, 11.89, 20.23, 20.10],
               [14.33, 7.27, 3.61, 3.95, 3.43], [14.22, 7.10, 3.45, 3.68, 3.16]),
}
PAPER_DOWN = {"mf": ([0.43, 0.99, 2.73, 15.98, 23.91], [0.10, 0.15, 0.15, 0.26, 0.26]),
              "ncf": ([0.22, 0.50, 2.06, 11.99, 14.95], [0.05, 0.08, 0.12, 0.20, 0.44]),
              "fm": ([1.12, 1.74, 3.59, 20.97, 29.88], [0.11, 0.16, 0.16, 0.26, 0.26]),
              "deepfm": ([8.14, 5.15, 5.17, 22.55, 31.20], [7.12, 3.57, 1.74, 1.84, 1.57])}
PAPER_USER_MS = {"mf": [0.31, 0.47, 0.47, 0.72, 0.74], "ncf": [0.37, 0.44, 0.48, 0.81, 0.80],
                 "fm": [0.46, 0.50, 0.48, 0.74, 0.74], "deepfm": [12.99, 6.67, 3.45, 3.77, 3.54]}
PAPER_SERVER_MIN = {100: 0.08, 200: 0.16, 300: 0.25, 400: 0.33, 500: 0.41}


def spec_for(model: str, ds: str) -> ModelSpec:
    shape = DATASETS[ds]
    lx, ly = shape.fields if model in ("fm", "deepfm") else (0, 0)
    return ModelSpec(model, shape.ncf_dim if model == "ncf" else 64, lx, ly)


def paper_formula_mib(m: int, m_prime: int, d: int) -> float:
    n = math.ceil(math.log2(m))
    return 2 * m_prime * ((128 + 1 + 130 * n + 32) + d * 32) / 8 / MIB


def user_round_messages(model: str, ds: str, variant: str) -> tuple[int, int, float]:
    """(upload bytes, download bytes, secret-generation ms) of one user in one round.

    Payload values are random, as real shares and parameters are: Flower deduplicates identical
    array chunks, so all-zero test arrays would under-count the bytes.
    """
    m, m_prime = DATASETS[ds].items, DATASETS[ds].m_prime
    spec = spec_for(model, ds)
    ring = np.uint32
    _sk1, pub1 = generate_keypair()
    rng = np.random.default_rng(0)
    items = rng.choice(m, m_prime, replace=False)
    grads = rng.normal(0, 0.01, (m_prime, spec.row_dim))
    dense = rng.normal(0, 0.01, spec.dense_size)
    if variant == "secfedrec":
        t = time.perf_counter()
        full = np.zeros((m, spec.row_dim))
        full[items] = grads
        metrics = MetricCodec.for_training(32, 100).encode(0.1 * 10, 10, "bench")
        s0, s1 = share_with_metrics(CODEC.to_ring(np.concatenate([full.reshape(-1), dense]), ring), metrics)
        gen_ms = (time.perf_counter() - t) * 1e3
        box = seal(pub1, SF.sealed_share_bytes(s1), b"ctx")
        up = SF.update_reply(s0, box, None)
        down = SF.update_message(1, rng.normal(size=(m, spec.row_dim)).astype(np.float32),
                                 rng.normal(size=spec.dense_size).astype(np.float32), pub1, "run", 32)
        return content_nbytes(up), content_nbytes(down), gen_ms
    t = time.perf_counter()
    k0, k1, state = dpf_gen.gen(items, np.ones((m_prime, 1), ring), m)
    betas = CODEC.to_ring(grads, ring)
    metrics = MetricCodec.for_training(32, 100).encode(0.1 * 10, 10, "bench")
    d0, d1 = share_with_metrics(CODEC.to_ring(dense, ring), metrics)  # the product's client payload functions
    payload, inner = variant_of(variant).client_payload(state, items, betas, m, d1)
    gen_ms = (time.perf_counter() - t) * 1e3
    _skU, pubU = generate_keypair()
    req = S.retrieve_reply(k0, seal(pub1, S.sealed_retrieval_bytes(k1, pubU), b"ctx"))
    up = S.upload_reply(payload, d0, seal(pub1, inner, b"ctx"), None)
    shares = rng.integers(0, 2**32, (m_prime, spec.row_dim), dtype=np.uint64).astype(ring)  # random like real shares
    down = S.upload_message(1, shares, np.frombuffer(seal(pubU, S.share_bytes(shares), b"ctx"), np.uint8),
                            rng.normal(size=spec.dense_size).astype(np.float32))
    down_req = S.retrieve_message(1, m_prime, pub1, "run", 32, variant)
    return content_nbytes(req) + content_nbytes(up), content_nbytes(down) + content_nbytes(down_req), gen_ms


def table_bytes(models: list[str]) -> None:
    names = list(DATASETS)
    print("\nUpload / download MiB per user per round, measured from serialized messages (paper MB in brackets)")
    print("model  variant     " + "  ".join(f"{n:>22}" for n in names))
    for model in models:
        paper_up = dict(zip(("secfedrec", "init", "rowenc", "secemb"), PAPER_UP[model]))
        for variant in ("secemb", "rowenc", "init", "secfedrec"):
            cells_up, cells_down = [], []
            for i, ds in enumerate(names):
                if variant == "init" and DATASETS[ds].items > 20000 and model == "deepfm":
                    cells_up.append(f"{'skipped':>22}")
                    cells_down.append(f"{'':>22}")
                    continue
                up, down, _ = user_round_messages(model, ds, variant)
                cells_up.append(f"{up / MIB:8.3f} [{paper_up[variant][i]:6.2f}]".rjust(22))
                if variant in ("secemb", "secfedrec"):
                    pd = PAPER_DOWN[model][0 if variant == "secfedrec" else 1][i]
                    cells_down.append(f"{down / MIB:8.3f} [{pd:6.2f}]".rjust(22))
                else:
                    cells_down.append(f"{down / MIB:8.3f}".rjust(22))
            print(f"{model:6} {variant:10} up   " + "  ".join(cells_up))
            print(f"{'':6} {'':10} down " + "  ".join(cells_down))
        if model == "mf":
            form = [paper_formula_mib(DATASETS[ds].items, DATASETS[ds].m_prime, 64) for ds in names]
            print(f"{'mf':6} {'formula':10} up   " + "  ".join(f"{f:8.3f}".rjust(22) for f in form))


def table_user_time(models: list[str], repeats: int = 20) -> None:
    names = list(DATASETS)
    print("\nUser secret generation, ms (DPF keys + ConvertGen + dense shares; median of runs) [paper Table 17]")
    print("model  variant    " + "  ".join(f"{n:>18}" for n in names))
    for model in models:
        for variant in ("secemb", "rowenc", "init", "secfedrec"):
            cells = []
            for i, ds in enumerate(names):
                ms = np.median([user_round_messages(model, ds, variant)[2] for _ in range(repeats)])
                paper = PAPER_USER_MS[model][i] if variant == "secemb" else float("nan")
                cells.append(f"{ms:8.2f} [{paper:5.2f}]".rjust(18))
            print(f"{model:6} {variant:10} " + "  ".join(cells))


def _tree_blocks(n_keys: int, m: int) -> int:
    """AES blocks of the pruned full-domain tree expansion: two per expanded parent node."""
    n = dpf_keys.depth(m)
    return 2 * n_keys * sum(-(-m // (1 << (n - level))) for level in range(n))


def _server_inputs(users: int, variant: str, m: int, m_prime: int, width: int, ring) -> dict:
    """Random users' real round inputs for both servers (keys, correction words or shares)."""
    rng = np.random.default_rng(0)
    out = {"keys": ({}, {}), "agg": ({}, {})}
    for u in range(users):
        items = rng.choice(m, m_prime, replace=False)
        betas = rng.integers(0, 2**32, (m_prime, width), dtype=np.uint64).astype(ring)
        if variant == "secfedrec":
            g = np.zeros((m, width), ring)
            g[items] = betas
            s0, s1 = share(g)
            out["agg"][0][u], out["agg"][1][u] = s0, s1
            continue
        k0, k1, st = dpf_gen.gen(items, np.ones((m_prime, 1), ring), m)
        out["keys"][0][u], out["keys"][1][u] = k0, k1
        # the product's client payload, and what server 1 reads from its sealed part (as twoserver.operations)
        v = variant_of(variant)
        payload0, inner = v.client_payload(st, items, betas, m, np.zeros(1, ring))
        if v.server1_op == "aggregate":
            out["agg"][0][u], out["agg"][1][u] = payload0, payload0
        else:
            out["agg"][0][u] = payload0
            out["agg"][1][u] = S.parse_sealed_fresh_upload(inner, m, v.key_shape(m_prime, width), 1, ring)[0]
    return out


def server_blocks(users: int, variant: str, m: int, m_prime: int, width: int, ring, recomputed: int = 0) -> int:
    """AES blocks one server needs in a round (tree expansions + Convert blocks per leaf).

    ``recomputed``: SecEmb keys whose paths did not fit the server's path cache, so aggregation
    expands their trees a second time (:func:`recomputed_keys`).
    """
    if variant == "secfedrec":
        return 0
    keys = users * m_prime
    blocks = _tree_blocks(keys, m) + keys * m  # retrieval: tree + one Convert block per leaf
    if variant == "secemb":
        return blocks + _tree_blocks(recomputed, m) + keys * m * prg.blocks_for(width, ring)
    if variant == "rowenc":
        return blocks + _tree_blocks(keys, m) + keys * m * prg.blocks_for(width, ring)
    return blocks + _tree_blocks(keys * width, m) + keys * width * m * prg.blocks_for(1, ring)


def recomputed_keys(users: int, m: int, m_prime: int, ring, cache_bytes: int) -> int:
    """Keys of a SecEmb round whose paths exceed a server's ``strategy.path_cache_mib`` cap (the
    evaluator's own rule, :meth:`crypto.dpf_eval.DpfEvaluator.cached_keys`)."""
    keys = users * m_prime
    return keys - dpf_eval.DpfEvaluator(0, m, ring, max_cache_bytes=cache_bytes).cached_keys(keys)


def _embedding_table(rng: np.random.Generator, m: int, width: int, ring) -> np.ndarray:
    """A public item table as server 0 holds it: random embeddings in the clients' fixed-point codec."""
    return CODEC.to_ring(rng.normal(0, 0.1, (m, width)), ring)


def server_round(users: int, variant: str = "secemb", m: int = 3883, m_prime: int = 300, width: int = 65,
                 rounds: int = 3) -> tuple[float, float, int]:
    """Seconds of both servers' retrieval and aggregation (run one after the other), each the best
    of ``rounds`` - 1 rounds after a first one that warms the reused buffers (as a running server's
    are; best-of as for the AES rate, since other jobs on this VM slow single runs), and the AES
    blocks both servers need."""
    from twoserver.party import SecEmbParty

    ring = np.uint32
    inputs = _server_inputs(users, variant, m, m_prime, width, ring)
    table = _embedding_table(np.random.default_rng(1), m, width, ring)
    retrieve_s = aggregate_s = 0.0
    for party in (0, 1):
        p = SecEmbParty(party, m, ring)
        best_retrieve = best_aggregate = float("inf")
        for r in range(rounds):
            t0 = time.perf_counter()
            if variant != "secfedrec":
                p.retrieve(inputs["keys"][party], table)
            t1 = time.perf_counter()
            agg = inputs["agg"][party]
            if variant == "secfedrec":
                total = np.zeros((m, width), ring)
                for share_u in agg.values():
                    total += share_u
            else:
                variant_of(variant).aggregate(p, agg, width)  # both servers' aggregation, as in the product
            t2 = time.perf_counter()
            if r or rounds == 1:
                best_retrieve, best_aggregate = min(best_retrieve, t1 - t0), min(best_aggregate, t2 - t1)
        retrieve_s += best_retrieve
        aggregate_s += best_aggregate
        del p
    return retrieve_s, aggregate_s, 2 * server_blocks(users, variant, m, m_prime, width, ring)


def _best_seconds(fn, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls (other jobs on this VM slow single runs)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def exact_products_seconds(users: int, m: int = 3883, m_prime: int = 300, width: int = 65, rounds: int = 2
                           ) -> float:
    """Seconds both servers spend, at least, in the two exact ring products of a SecEmb round that
    no AES bound counts: retrieval's sum_x Eval(k, x) table[x] ([K x m] x [m x w]) and
    aggregation's sum_k t_k CW_k ([m x K] x [K x w]), on random inputs of the real shapes, through
    the same float64 routines and pool split as a server (best of ``rounds``)."""
    ring, keys, chunk = np.uint32, users * m_prime, 128
    rng = np.random.default_rng(2)
    table = ring_ops.RingRhs(_embedding_table(rng, m, width, ring))
    e = rng.integers(0, 2**32, (-(-keys // chunk), m, chunk), dtype=np.uint32)  # node-major, as expanded
    t = rng.integers(0, 2, (keys, m), dtype=np.uint8)
    cw = rng.integers(0, 2**32, (keys, width), dtype=np.uint32)

    def both_products() -> None:
        with single_threaded_blas():  # as twoserver.party runs them
            workers.parallel_map(lambda part: table.left_multiply(part.T), list(e))
            ring_ops.bits_times_rows(t, cw)

    return 2 * _best_seconds(both_products, rounds)


def aes_rate() -> float:
    """This machine's AES-128-ECB blocks/s via ``cryptography`` on all cores: the best of a
    cache-resident and a 64 MiB buffer (the higher rate gives the stricter bound)."""
    return max(prg.aes_blocks_per_second(1 << 22, threads=workers.N_THREADS),
               prg.aes_blocks_per_second(1 << 15, threads=workers.N_THREADS, passes=64))


def table_server(user_counts: list[int], variants: list[str], dataset: str = "ML1M") -> None:
    m, m_prime = DATASETS[dataset].items, DATASETS[dataset].m_prime
    print(f"\nServer compute per round at {dataset} sizes (m={m}, m'={m_prime}, d=64+bias, 32-bit ring), both servers one "
          f"after the other on {workers.N_THREADS} cores [paper Table 14]. AES bound = blocks / the highest AES-128-ECB "
          "rate of `cryptography` seen right before or after the row (the rate of this VM varies run to run)")
    print("(exact products s: the two exact ring matmuls of a SecEmb round alone, which the AES bound does not "
          "count; the last ratio is to AES bound + products)")
    print("variant    users | retrieval s | aggregation s | both servers s | AES blocks (G) | AES M/s (min-max) |"
          " AES bound s | ratio | exact products s | ratio | paper s")
    for variant in variants:
        for users in user_counts:
            before = aes_rate()
            ret, agg, blocks = server_round(users, variant, m=m, m_prime=m_prime)
            after = aes_rate()
            products = exact_products_seconds(users, m=m, m_prime=m_prime) if variant == "secemb" else float("nan")
            rate = max(before, after)
            both = ret + agg
            bound = blocks / rate
            ratio = f"{both / bound:5.2f}" if bound else "  -  "
            ratio_products = f"{both / (bound + products):5.2f}" if variant == "secemb" else "  -  "
            paper = PAPER_SERVER_MIN.get(users) if variant == "secemb" and dataset == "ML1M" else None
            print(f"{variant:10} {users:5d} | {ret:11.3f} | {agg:13.3f} | {both:14.3f} | {blocks / 1e9:14.2f} |"
                  f" {min(before, after) / 1e6:7.0f}-{rate / 1e6:<9.0f} | {bound:11.2f} | {ratio} |"
                  f" {products:16.2f} | {ratio_products} | {paper * 60 if paper else float('nan'):7.1f}", flush=True)


def table_floor(users: int, m: int = 3883, m_prime: int = 300, width: int = 65) -> None:
    """Where one server's SecEmb round goes besides AES (server 0, ML1M sizes unless given, best of 3 warm runs).

    Retrieval is split into the tree expansion (and the AES it needs, timed alone on as many
    blocks), the leaf-cache store and the exact product; aggregation's per-block cost is
    AES alone against AES plus the sum over keys, on one group of keys of the real shape.
    """
    ring = np.uint32
    per_user = _server_inputs(users, "secemb", m, m_prime, width, ring)["keys"][0]
    keys = dpf_keys.DpfKeyBatch.concatenate(list(per_user.values()))
    table = _embedding_table(np.random.default_rng(1), m, width, ring)
    ev = dpf_eval.DpfEvaluator(0, m, ring)
    step = ev.expand_chunk_keys
    chunks = [keys.select(slice(lo, lo + step)) for lo in range(0, keys.n_keys, step)]
    sizes = [c.n_keys for c in chunks]
    tree_in = np.frombuffer(os.urandom(_tree_blocks(step, m) * prg.BLOCK // 2), np.uint64)

    def tree_aes(n_keys: int) -> None:
        """The AES blocks of one chunk's tree (both children of every expanded node), nothing else."""
        src = tree_in[:_tree_blocks(n_keys, m)]  # half the blocks, in uint64 words
        out = workers.scratch(2 * src.size + 2)  # the pool thread's own buffer
        prg.aes_into(prg.TREE_LEFT, src, out)
        prg.aes_into(prg.TREE_RIGHT, src, out[src.size:])

    rhs = ring_ops.RingRhs(table[dpf_expand.leaf_order(m)])
    group = ev.product_keys(keys.n_keys)  # keys per retrieval product (whole expansion chunks)
    products = [min(group, keys.n_keys - lo) for lo in range(0, keys.n_keys, group)]
    e = np.random.default_rng(2).integers(0, 2**32, (m, group), dtype=np.uint32)
    with single_threaded_blas():  # as twoserver.party runs the evaluator
        ev.retrieve(keys, table)  # warm the reused buffers
        rows = [("retrieval, whole", _best_seconds(lambda: ev.retrieve(keys, table))),
                ("tree expansion + leaf cache", _best_seconds(lambda: ev.expand(keys))),
                ("tree expansion", _best_seconds(lambda: workers.parallel_map(dpf_expand.expand_leaves, chunks))),
                ("  its AES alone", _best_seconds(lambda: workers.parallel_map(tree_aes, sizes))),
                ("retrieval product", _best_seconds(
                    lambda: workers.parallel_map(lambda n: rhs.left_multiply(e[:, :n].T), products)))]
    print(f"\nOne server's retrieval, {users} users x {m_prime} keys at {m} items, {workers.N_THREADS} threads "
          "(best of 3 warm runs)")
    for name, sec in rows:
        print(f"  {name:30} {sec:7.3f} s")
    group = max(1, ev.group_blocks // m)
    src = np.frombuffer(os.urandom(group * m * prg.BLOCK), np.uint64).reshape(group, m, 2)
    out = np.empty(src.size + 2, np.uint64)
    acc = np.zeros(m * prg.BLOCK // np.dtype(ring).itemsize, ring)
    label = prg.convert_label(dpf_keys.AGGREGATE_DOMAIN, 0)

    def aes_only() -> None:
        prg.aes_into(label, src, out)

    def aes_and_sum() -> None:
        prg.aes_into(label, src, out)
        np.add(acc, out[:src.size].view(ring).reshape(group, -1).sum(axis=0, dtype=ring), out=acc)

    print(f"Aggregation Convert, one thread, {group} keys x {m} leaves per AES call: ns per block")
    for name, fn in (("AES alone", aes_only), ("AES + sum over keys", aes_and_sum)):
        sec = _best_seconds(lambda: [fn() for _ in range(10)])
        print(f"  {name:30} {sec / (10 * group * m) * 1e9:7.2f} ns")


CACHE_ITEMS = {"ML1M": 3706, "ML25M": 62423}  # rated items: the cache spans them; m' is DATASETS'


def _peak_rss_while(fn) -> tuple[object, int]:
    """(fn(), the highest RSS psutil sees while it runs, sampled every 2 ms)."""
    import psutil

    proc, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        return fn(), peak[0]
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], proc.memory_info().rss)


def _cache_round(m: int, m_prime: int, users: int, cap: int, rounds: int) -> dict:
    """One server (party 0) of a SecEmb round under a path-cache cap, in a fresh process: best retrieval and
    aggregation seconds and least process CPU seconds of ``rounds`` - 1 warm rounds, the keys kept cached,
    and RSS (inputs, peak)."""
    import psutil

    from twoserver.party import SecEmbParty

    ring, width = np.uint32, 65
    inputs = _server_inputs(users, "secemb", m, m_prime, width, ring)
    keys, cws = inputs["keys"][0], inputs["agg"][0]
    table = _embedding_table(np.random.default_rng(1), m, width, ring)
    del inputs
    rss_inputs = psutil.Process().memory_info().rss
    party = SecEmbParty(0, m, ring, max_cache_bytes=cap)

    def run() -> tuple[float, float, float]:
        best_retrieve = best_aggregate = best_cpu = float("inf")
        for r in range(rounds):
            t0, cpu0 = time.perf_counter(), time.process_time()
            party.retrieve(keys, table)
            t1 = time.perf_counter()
            variant_of("secemb").aggregate(party, cws, width)
            t2, cpu = time.perf_counter(), time.process_time() - cpu0
            if r or rounds == 1:
                best_retrieve, best_aggregate = min(best_retrieve, t1 - t0), min(best_aggregate, t2 - t1)
                best_cpu = min(best_cpu, cpu)
        return best_retrieve, best_aggregate, best_cpu

    (retrieve_s, aggregate_s, cpu_s), peak = _peak_rss_while(run)
    assert party.context is not None
    return {"retrieve_s": retrieve_s, "aggregate_s": aggregate_s, "cpu_s": cpu_s, "keys": party.context.n_keys,
            "cached": party.context.n_cached, "rss_inputs": rss_inputs, "rss_peak": peak,
            "hwm": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def table_cache(user_counts: list[int], rounds: int = 3) -> None:
    """One server's SecEmb round under the path-cache cap (issue 15): every path cached, about half, none.

    Each row runs in a fresh process, so its peak RSS is its own. AES blocks count the recomputed
    keys' second tree expansion; the bound divides them by the best AES rate seen around the row.
    """
    print("\nOne server's SecEmb round (party 0) under the path-cache cap max_cache_bytes, d=64+bias, 32-bit ring, "
          f"{workers.N_THREADS} threads; best of {rounds - 1} warm rounds; peak RSS sampled by psutil every 2 ms "
          "(HWM: the kernel's high-water mark of the whole process, input generation included); CPU s: process "
          "CPU seconds of the round, both phases, all threads (steadier than wall time on a loaded machine)")
    print("data   users     m    m' | cap MiB | recomputed | retrieval s | aggregation s | CPU s | AES blocks (G) |"
          " AES bound s | ratio | inputs RSS MiB | peak RSS MiB | HWM MiB | full cache MiB")
    spawn = multiprocessing.get_context("spawn")
    for (name, m), users in zip(CACHE_ITEMS.items(), user_counts):
        m_prime = DATASETS[name].m_prime
        n_keys = users * m_prime
        per_key = dpf_eval.PATH_BYTES_PER_LEAF * m
        full = n_keys * per_key
        chunk = dpf_eval.RECOMPUTE_CHUNK_BYTES
        for cap in (full, full // 2 + chunk, chunk):
            before = aes_rate()
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                row = pool.submit(_cache_round, m, m_prime, users, cap, rounds).result()
            after = aes_rate()
            recomputed = row["keys"] - row["cached"]
            blocks = server_blocks(users, "secemb", m, m_prime, 65, np.uint32, recomputed)
            bound = blocks / max(before, after)
            both = row["retrieve_s"] + row["aggregate_s"]
            print(f"{name:6} {users:5d} {m:5d} {m_prime:5d} | {cap / MIB:7.0f} | {recomputed / n_keys:10.0%} |"
                  f" {row['retrieve_s']:11.2f} | {row['aggregate_s']:13.2f} | {row['cpu_s']:5.1f} |"
                  f" {blocks / 1e9:14.2f} | {bound:11.2f} |"
                  f" {both / bound:5.2f} | {row['rss_inputs'] / MIB:14.0f} | {row['rss_peak'] / MIB:12.0f} |"
                  f" {row['hwm'] / MIB:7.0f} | {full / MIB:14.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", default="bytes,usertime,server")
    parser.add_argument("--models", default="mf,ncf,fm,deepfm")
    parser.add_argument("--server-users", default="100")
    parser.add_argument("--server-variants", default="secemb,rowenc,secfedrec")
    parser.add_argument("--server-dataset", default="ML1M", choices=sorted(DATASETS),
                        help="item count and m' of --tables server and floor (SecEmb Table 7 / Appendix I)")
    parser.add_argument("--cache-users", default="100,4", help="users at ML1M and ML25M sizes (--tables cache)")
    parser.add_argument("--cache-rounds", type=int, default=3, help="rounds per cache row: 1 warm-up + best of rest")
    args = parser.parse_args()
    models = args.models.split(",")
    tables = args.tables.split(",")
    if "bytes" in tables:
        table_bytes(models)
    if "usertime" in tables:
        table_user_time(models)
    if "floor" in tables:
        shape = DATASETS[args.server_dataset]
        table_floor(int(args.server_users.split(",")[0]), m=shape.items, m_prime=shape.m_prime)
    if "cache" in tables:
        table_cache([int(u) for u in args.cache_users.split(",")], args.cache_rounds)
    if "server" in tables:
        table_server([int(u) for u in args.server_users.split(",")], args.server_variants.split(","),
                     args.server_dataset)


if __name__ == "__main__":
    main()
