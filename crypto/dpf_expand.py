"""Full-domain DPF tree expansion (FSS.PathEval for every x in [0, m)): the server's hot kernel.

All K keys of a batch advance level by level as numpy arrays, pruned to the
nodes that cover [0, m). Each level is stored as [left children; right
children] (not interleaved), so every AES call and XOR runs over contiguous
memory; the leaves therefore come out in a fixed permutation of the items,
the same for every key (:func:`leaf_order`). A child is AES(x) XOR (x XOR t_x
CW): AES writes straight into the child's slot and one XOR applies the MMO
feed-forward and the correction, computed once per parent for both sides.

Buffers: each worker thread keeps one workspace (ping-pong level buffers and
the per-parent corrections) across calls, so steady-state rounds allocate
nothing here. Where the time goes (server, ML1M sizes): the AES calls, about
one numpy pass per 16-byte block for each XOR / mask around them, and the
transposed store of the leaves; see benchmarks/bench_secemb.py.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from crypto import prg
from crypto.dpf_keys import DpfKeyBatch, depth, to_words, with_t


class _ExpandWorkspace:
    """One thread's buffers for :func:`expand_leaves`, reused across calls (no page faults per level)."""

    def __init__(self) -> None:
        self.size = 0

    def ensure(self, n_blocks: int) -> None:
        if n_blocks > self.size:
            self.size = n_blocks
            self.a = np.empty(2 * n_blocks + 2, dtype=np.uint64)  # ping
            self.b = np.empty(2 * n_blocks + 2, dtype=np.uint64)  # pong
            self.corr = np.empty(n_blocks, dtype=np.uint64)  # half-size buffers: one per parent
            self.t = np.empty(n_blocks // 2 + 1, dtype=np.uint64)


_tls = threading.local()


def _workspace() -> _ExpandWorkspace:
    ws = getattr(_tls, "ws", None)
    if ws is None:
        ws = _tls.ws = _ExpandWorkspace()
    return ws


@functools.lru_cache(maxsize=32)
def level_plan(m: int) -> tuple[tuple[tuple[int, int | None], ...], np.ndarray]:
    """Per tree level (nodes kept, row dropped or None), and the item each final row holds.

    Each level is stored as [left children; right children]; pruning to [0, m) drops at most
    one node per level (a right child past the domain) and moves the last row into its place.
    """
    n = depth(m)
    order = np.zeros(1, dtype=np.int64)
    plan = []
    for level in range(n):
        width = -(-m // (1 << (n - level - 1)))  # nodes needed at the next level
        order = np.concatenate([2 * order, 2 * order + 1])
        drop = None
        if len(order) > width:
            drop = int(np.flatnonzero(order >= width)[0])
            order[drop] = order[-1]
        order = order[:width]
        plan.append((width, drop))
    order.setflags(write=False)
    return tuple(plan), order


def leaf_order(m: int) -> np.ndarray:
    """Item held by each leaf row of :func:`expand_leaves` (the same for every key; read-only)."""
    return level_plan(m)[1]


def level_corrections(keys: DpfKeyBatch) -> tuple[np.ndarray, np.ndarray]:
    """Per level and key: the left child's correction s_cw | tL_cw [n, K, 2], and tL_cw ^ tR_cw [n, K].

    The right child's correction differs from the left one only in the control bit, so one
    corrected copy of the parents serves both children and the right side gets a 1-bit fix.
    """
    left = with_t(to_words(keys.cw_seeds), keys.cw_t[:, :, 0]).transpose(1, 0, 2).copy()
    flip = (keys.cw_t[:, :, 0] ^ keys.cw_t[:, :, 1]).T.astype(np.uint64)
    return left, np.ascontiguousarray(flip)


def expand_leaves(keys: DpfKeyBatch) -> tuple[np.ndarray, np.ndarray]:
    """FSS.PathEval for every x in [0, m): leaf blocks uint64 [m, K, 2] and the item of each row.

    Row p holds item order[p] (see :func:`leaf_order`). The returned array lives in this
    thread's workspace: copy it (e.g. with :func:`store_leaves`) before the next call on the
    same thread.
    """
    m, k = keys.domain_size, keys.n_keys
    plan, order = level_plan(m)
    ws = _workspace()
    ws.ensure((m + 1) * k)
    cur, nxt = ws.a, ws.b  # ping-pong: nodes of this level live in cur, children go to nxt
    nodes = cur[:2 * k].reshape(1, k, 2)
    nodes[0] = with_t(to_words(keys.seeds), keys.t0)
    cw_left, flip = level_corrections(keys)
    zero, one = np.zeros(1, np.uint64), np.uint64(1)
    for level, (width, drop) in enumerate(plan):
        c = nodes.shape[0]
        size = c * k * 2
        t = ws.t[:c * k].reshape(c, k)
        np.bitwise_and(nodes[:, :, 0], one, out=t)
        np.subtract(zero, t, out=t)  # all-ones where the parent's t is 1
        corr = ws.corr[:size].reshape(c, k, 2)
        np.bitwise_and(t, cw_left[level, :, 0], out=corr[:, :, 0])
        np.bitwise_and(t, cw_left[level, :, 1], out=corr[:, :, 1])
        np.bitwise_xor(corr, nodes, out=corr)  # x XOR t * CW_left
        prg.aes_into(prg.TREE_LEFT, nodes, nxt)
        prg.aes_into(prg.TREE_RIGHT, nodes, nxt[size:])
        children = nxt[:2 * size].reshape(2, c, k, 2)
        np.bitwise_xor(children, corr, out=children)
        np.bitwise_and(t, flip[level], out=t)  # right child: t_cw differs by tL_cw ^ tR_cw
        np.bitwise_xor(children[1, :, :, 0], t, out=children[1, :, :, 0])
        children = children.reshape(2 * c, k, 2)
        if drop is not None:
            children[drop] = children[2 * c - 1]
        nodes = children[:width]
        cur, nxt = nxt, cur
    return nodes, order


def store_leaves(nodes: np.ndarray, leaves: np.ndarray, bits: np.ndarray) -> None:
    """Expansion output [m, k, 2] -> key-major leaves [k, m, 2] and control bits [k, m] of a cache."""
    m = nodes.shape[0]
    src, dst = nodes.view(np.complex128)[:, :, 0], leaves.view(np.complex128)[:, :, 0]
    for x in range(0, m, 256):  # transposed tile by tile, while the tile is in cache
        dst[:, x:x + 256] = src[x:x + 256].T  # 16-byte moves
    np.bitwise_and(leaves.view(np.uint8)[:, :, 0], 1, out=bits)  # t: the lowest bit of each leaf
