"""benchmarks/table3.py's verdict on the issue's targets and its markdown rows, on hand-made cells."""

from __future__ import annotations

import pytest

from benchmarks.table3 import Cell, Row, markdown_table


def _cells(finals: list[float], rr: float) -> tuple[Cell, ...]:
    return tuple(Cell(final_rmse=f, best_rmse=f - 0.01, reduction_ratio=rr, upload_bytes=1e5, seconds=10.0)
                 for f in finals)


@pytest.mark.parametrize(("method", "finals", "rr", "verdict"), [
    ("secemb", [0.950, 0.956], 5.0, "RMSE ok, R.R. ok"),    # paper 0.944 +- 0.003, R.R. 4.99: mean 0.953, 0.009 off
    ("secemb", [0.952, 0.958], 5.6, "RMSE off, R.R. off"),  # 0.011 off; R.R. 12% above
    ("bit8", [0.962, 0.963], 3.61, "RMSE ok, R.R. ok"),     # paper 0.948, R.R. 4.00: 0.0145 off, 9.75% below
    ("bit8", [0.920, 0.930], 4.00, "RMSE off, R.R. ok"),    # better than the paper by 0.023 is off too
])
def test_a_row_meets_the_targets_only_within_their_margins(method, finals, rr, verdict):
    assert Row("mf", method, _cells(finals, rr)).targets() == verdict


def test_the_markdown_row_carries_the_row_and_bolds_only_a_met_rmse_target():
    met, missed = Row("mf", "svd", _cells([0.950, 0.954], 5.2)), Row("mf", "colr", _cells([0.97, 0.99], 5.4))
    table = markdown_table([met, missed]).splitlines()
    assert len(table) == 4 and table[0].count("|") == table[2].count("|") == table[3].count("|")
    assert "| mf | svd | **0.9520 +- 0.003** (0.9500 0.9540) | 0.952 +- 0.006 |" in table[2]
    assert "| 5.20 / 5.22 |" in table[2] and "| +0.0000 | RMSE ok, R.R. ok | 20 |" in table[2]
    assert "| mf | colr | 0.9800 +- 0.014 (0.9700 0.9900) |" in table[3] and "| +0.0290 | RMSE off" in table[3]


_PARENT = """
import sys, time
from benchmarks.table3 import _pool
pool = _pool(2)
for f in [pool.submit(time.sleep, 600) for _ in range(2)]:
    pass
time.sleep(600)
"""


def test_cell_processes_end_with_the_table_process(tmp_path):
    """A table stopped by a signal (SIGKILL here: nothing runs in it) leaves no cell process behind; they used
    to keep running, orphaned, until killed by hand."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], cwd=root)
    try:
        proc = psutil.Process(parent.pid)
        workers: list[psutil.Process] = []
        while len(workers) < 2 and parent.poll() is None:  # the pool's two spawned workers (beside its tracker)
            workers = [c for c in proc.children() if "spawn_main" in " ".join(c.cmdline())]
            time.sleep(0.2)
        assert len(workers) == 2, "the pool did not start its workers"
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    gone, alive = psutil.wait_procs(workers, timeout=60)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    assert not alive, f"cell processes outlived the table: {[p.pid for p in alive]}"
