"""The Flower simulation on an existing Ray cluster (``simulation.ray_address`` / ``RAY_ADDRESS``).

Starts a Ray head on loopback with ``ray start --head`` (its own temp dir and
free ports, so it cannot meet the Ray instance this test session shares, see
tests/sim_utils.py), runs ``python -m simulations.run`` in a subprocess through
it, once with ``simulation.ray_address=127.0.0.1:<port>`` and once with
``RAY_ADDRESS``, checks results.json and that each run was a driver of that
cluster, and stops the head by PID.

``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray on loopback: without it, on
Linux, ``ray start`` replaces ``--node-ip-address 127.0.0.1`` by the host's
network address, its GCS and raylet listen on every interface, and a driver
given ``127.0.0.1:<port>`` dials the network address instead. A multi-host
cluster leaves it unset and uses the address ``ray start`` prints.

``ray start`` forks the head's processes and exits; they are found by the
head's temp dir in their command lines, plus their descendants (the raylet's
agents and workers), and stopped by PID (``ray stop`` would stop every Ray
on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.test_flwr_run_simulation import descendants, free_port, stop_pids

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

SMALL = ["dataset=synthetic", "dataset.n_users=12", "dataset.n_items=40", "dataset.mean_ratings=8",
         "clients_per_round=6", "rounds=2", "model.dim=8"]


def pids_with(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (read from /proc, no pgrep needed)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


class RayHead:
    """A one-node Ray cluster on loopback, with its own temp dir and ports."""

    def __init__(self) -> None:
        # Short: Ray's unix sockets live under it, and socket paths are limited to 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="rayc", dir="/tmp")
        self.port = free_port()
        self.env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": str(ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("RAY_ADDRESS", None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        ports = {flag: str(free_port()) for flag in (
            "--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port", "--object-manager-port")}
        cmd = [str(BIN / "ray"), "start", "--head", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
               "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
               "--temp-dir", self.temp_dir, *[x for kv in ports.items() for x in kv]]
        proc = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"ray start failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    def pids(self) -> list[int]:
        roots = pids_with(self.temp_dir + "/")
        return list(dict.fromkeys(roots + [d for p in roots for d in descendants(p)]))

    def driver_logs(self) -> list[str]:
        logs = Path(self.temp_dir) / "session_latest" / "logs"
        return sorted(p.name for p in logs.glob("python-core-driver-*.log"))

    def stop(self) -> list[int]:
        left = stop_pids(self.pids(), timeout=10)  # the GCS can ignore SIGTERM for a while: then SIGKILL
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left


@pytest.fixture
def ray_head():
    head = RayHead()
    left: list[int] = []
    try:
        head.start()
        yield head
    finally:
        left = head.stop()
    assert not left, f"Ray head processes left running: {left}"
    assert not pids_with(head.temp_dir + "/")


def _simulate(head: RayHead, out_dir: Path, extra: list[str], env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "simulations.run", *SMALL, *extra, f"hydra.run.dir={out_dir}"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, f"simulation failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert f"simulation runs on the Ray cluster at {head.address}" in proc.stdout + proc.stderr
    return json.loads((out_dir / "results.json").read_text())


def test_simulation_runs_on_an_existing_ray_cluster(ray_head, tmp_path):
    # simulation.ray_address
    res = _simulate(ray_head, tmp_path / "by_key", [f"simulation.ray_address={ray_head.address}"], ray_head.env)
    assert [r["round"] for r in res["records"]] == [1, 2] and all(r["clients"] == 6 for r in res["records"])
    assert 0 < res["final"]["final_test_rmse"] < 10
    assert res["config"]["simulation"]["ray_address"] == ray_head.address
    assert len(ray_head.driver_logs()) == 1  # the run was a driver of this cluster, not a Ray of its own

    # RAY_ADDRESS, as Ray's own tools read it
    res2 = _simulate(ray_head, tmp_path / "by_env", [], {**ray_head.env, "RAY_ADDRESS": ray_head.address})
    assert [r["round"] for r in res2["records"]] == [1, 2]
    assert res2["final"]["final_test_rmse"] == pytest.approx(res["final"]["final_test_rmse"])  # same seed
    assert len(ray_head.driver_logs()) == 2

    # Flower's end-of-run ray.shutdown() disconnects the driver; the cluster keeps running
    assert ray_head.pids()


def test_multirun_jobs_run_in_parallel_with_the_joblib_launcher(tmp_path):
    """``--multirun hydra/launcher=joblib``: two seeds at once, each job with its own local Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "simulations.run", "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           *[o for o in SMALL if not o.startswith("rounds=")], "rounds=1", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"multirun failed:\n{out[-4000:]}"
    assert "Joblib.Parallel(n_jobs=2" in out
    results = [json.loads((sweep / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [r["config"]["seed"] for r in results] == [0, 1]
    assert all([rec["round"] for rec in r["records"]] == [1] for r in results)
    assert results[0]["final"]["final_test_rmse"] != results[1]["final"]["final_test_rmse"]
