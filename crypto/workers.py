"""The process-wide worker pool of the DPF and ring kernels, and each worker thread's scratch memory.

numpy and OpenSSL (AES through ``cryptography``) release the GIL, so plain
threads run the kernels on every core without copying arrays between
processes. The pool is created once and its threads live on, which is what
lets thread-local buffers (:func:`scratch`, the expansion workspace of
:mod:`crypto.dpf_expand`) survive across calls and rounds: a fresh
multi-megabyte array costs page faults on first touch, a reused one does not.

BLAS: this module knows nothing of it. A caller whose tasks run float64
matmuls (the exact ring products) should cap BLAS at one thread while it
maps: every pool thread already owns a core, and a multi-threaded BLAS call
beside another busy worker oversubscribes the cores. The server-side caller,
:mod:`twoserver.party`, does so.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

N_THREADS = max(1, min(2, os.cpu_count() or 1))

T = TypeVar("T")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_tls = threading.local()


def worker_pool() -> ThreadPoolExecutor:
    """The one pool of ``N_THREADS`` threads (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(N_THREADS, thread_name_prefix="dpf")
        return _pool


def parallel_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[fn(x) for x in items], run on the worker pool, in order; the first exception propagates."""
    return list(worker_pool().map(fn, items))


def per_thread(items: list[T]) -> list[list[T]]:
    """items dealt round-robin into one non-empty share per pool thread (fewer if items are few)."""
    return [share for share in (items[i::N_THREADS] for i in range(N_THREADS)) if share]


def scratch(n_words: int) -> np.ndarray:
    """This thread's reusable uint64 buffer of at least n_words (fresh large arrays cost page faults).

    The same memory comes back on the next call from this thread: copy what must outlive it.
    """
    buf = getattr(_tls, "scratch", None)
    if buf is None or buf.size < n_words:
        buf = _tls.scratch = np.empty(n_words, dtype=np.uint64)
    return buf[:n_words]
