"""DPF key generation, vectorised over K points: FSS.PathGen, FSS.ConvertGen and FSS.Gen (BGI'16).

SecEmb (Algorithms 5 and 7) splits Gen in two so the tree part can be reused:
:func:`path_gen` builds both parties' tree keys and returns the generator's
state (t_1^(n), s_0^(n), s_1^(n)); :func:`convert_gen` later turns that state
and any payload beta into the final correction word CW^(n+1). A user thus
sends retrieval keys (beta = 1) first and, after training, only one new
CW^(n+1) per row: the servers reuse the retrieval's evaluated paths.

All K keys advance level by level as numpy arrays (one PRG call per level
for both parties); the only Python loop runs over the n <= 62 tree levels.
Randomness comes from ``os.urandom``.
"""

from __future__ import annotations

import os

import numpy as np

from crypto import prg
from crypto.dpf_keys import (
    LAMBDA_BYTES, RETRIEVE_DOMAIN, DpfKeyBatch, GenState, depth, mask_of, t_of, to_bytes, to_words, with_t,
)
from crypto.ring import check_ring, negate

_ONE = np.uint64(1)


def _bits(alphas: np.ndarray, n: int) -> np.ndarray:
    """MSB-first bit decomposition [K, n] (level 1 decides the top bit)."""
    shifts = np.arange(n - 1, -1, -1, dtype=np.int64)
    return ((alphas[:, None] >> shifts) & 1).astype(np.uint8)


def path_gen(alphas: np.ndarray, domain_size: int) -> tuple[dict, dict, GenState]:
    """FSS.PathGen (SecEmb Algorithm 7) for K points at once: both parties' tree keys and the gen state.

    Node values are 128-bit blocks whose lowest bit is the control bit t: the PRG output of a
    node gives the child seed and its t together, and the correction word of a level is
    (s_cw with t_cw in its lowest bit) for the kept side.
    """
    alphas = np.asarray(alphas, dtype=np.int64).reshape(-1)
    if alphas.size == 0 or alphas.min() < 0 or alphas.max() >= domain_size:
        raise ValueError(f"DPF points must lie in [0, {domain_size})")
    n, k = depth(domain_size), len(alphas)
    rand = np.frombuffer(os.urandom(2 * k * LAMBDA_BYTES), dtype=np.uint8).reshape(2, k, LAMBDA_BYTES)
    nodes = np.concatenate([with_t(to_words(rand[0]), np.zeros(k, np.uint8)),
                            with_t(to_words(rand[1]), np.ones(k, np.uint8))])  # [2K, 2]: party 0 then 1
    bits = _bits(alphas, n)
    cw_s = np.empty((k, n, 2), dtype=np.uint64)
    cw_t = np.empty((k, n, 2), dtype=np.uint8)
    for level in range(n):
        a = bits[:, level].astype(bool)
        left, right = prg.expand_tree(nodes)  # both parties in one call
        tl, tr = t_of(left), t_of(right)
        lose = np.where(a[:, None], left[:k] ^ left[k:], right[:k] ^ right[k:])
        lose[:, 0] &= ~_ONE
        tl_cw = tl[:k] ^ tl[k:] ^ a ^ 1
        tr_cw = tr[:k] ^ tr[k:] ^ a
        cw_s[:, level], cw_t[:, level, 0], cw_t[:, level, 1] = lose, tl_cw, tr_cw
        keep_cw = with_t(lose, np.where(a, tr_cw, tl_cw))
        keep = np.where(np.concatenate([a, a])[:, None], right, left)
        nodes = keep ^ (mask_of(t_of(nodes))[:, None] & np.concatenate([keep_cw, keep_cw]))
    cw_bytes = to_bytes(cw_s)
    path0 = {"seeds": rand[0].copy(), "t0": np.zeros(k, np.uint8), "cw_seeds": cw_bytes, "cw_t": cw_t}
    path1 = {"seeds": rand[1].copy(), "t0": np.ones(k, np.uint8), "cw_seeds": cw_bytes.copy(), "cw_t": cw_t.copy()}
    return path0, path1, GenState(t1=t_of(nodes[k:]), s0=to_bytes(nodes[:k]), s1=to_bytes(nodes[k:]))


def convert_gen(state: GenState, betas: np.ndarray, domain: int) -> np.ndarray:
    """FSS.ConvertGen (Algorithm 5): CW^(n+1) = (-1)^t1 [beta - Convert(s0) + Convert(s1)]."""
    dt = check_ring(betas.dtype)
    if betas.ndim != 2 or betas.shape[0] != len(state.t1):
        raise ValueError(f"betas must be [K, w] with K = {len(state.t1)}, got {betas.shape}")
    w = betas.shape[1]
    cw = betas - prg.convert(to_words(state.s0), w, dt, domain) + prg.convert(to_words(state.s1), w, dt, domain)
    neg = state.t1.astype(bool)
    cw[neg] = negate(cw[neg])
    return cw


def gen(alphas: np.ndarray, betas: np.ndarray, domain_size: int, domain: int = RETRIEVE_DOMAIN
        ) -> tuple[DpfKeyBatch, DpfKeyBatch, GenState]:
    """FSS.Gen for K point functions: keys of party 0 and 1 plus the state for later ConvertGen."""
    path0, path1, state = path_gen(alphas, domain_size)
    cw_out = convert_gen(state, np.asarray(betas), domain)
    return (DpfKeyBatch(0, domain_size, cw_out=cw_out, **path0),
            DpfKeyBatch(1, domain_size, cw_out=cw_out.copy(), **path1), state)
