"""The worker pool: order, errors, the per-thread split and each thread's own scratch memory."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from crypto import workers


def test_parallel_map_keeps_order_and_runs_on_the_pool():
    names = workers.parallel_map(lambda x: (x * x, threading.current_thread().name), range(20))
    assert [v for v, _ in names] == [x * x for x in range(20)]
    assert all(name.startswith("dpf") for _, name in names)
    assert workers.parallel_map(lambda x: x, []) == []


def test_the_first_error_propagates():
    def boom(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        workers.parallel_map(boom, range(6))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7])
def test_per_thread_deals_every_item_once_into_non_empty_shares(n):
    items = list(range(n))
    shares = workers.per_thread(items)
    assert len(shares) == min(n, workers.N_THREADS) and all(shares)
    assert sorted(x for share in shares for x in share) == items


def test_scratch_is_reused_per_thread_and_grows_on_demand():
    a = workers.scratch(100)
    b = workers.scratch(50)
    assert a.dtype == np.uint64 and a.size == 100 and b.size == 50 and np.shares_memory(a, b)
    c = workers.scratch(10_000)
    assert c.size == 10_000
    other = workers.parallel_map(lambda _: workers.scratch(100), [0])[0]
    assert not np.shares_memory(other, workers.scratch(100))  # another thread has its own buffer

