"""``flwr run .`` as Flower users type it, against a local simulation SuperLink.

Starts ``flower-superlink --simulation --insecure --disable-runtime-dependency-installation``
on a free loopback port, writes a SuperLink connection into a temporary Flower
home (``FLWR_HOME``, and ``HOME`` too, so ``~/.flwr`` is never touched), and runs

    flwr run . local-sim --federation-config "num-supernodes=20 client-resources-num-cpus=1" \
        --run-config 'overrides="dataset.path=... dataset.max_users=20 clients_per_round=10 rounds=2" output-dir="..."' --stream

The SuperLink's simulation runtime runs the ServerApp and one virtual SuperNode
per user in Ray. The ServerApp registers every user's node before round 1, so
``num-supernodes`` must equal the number of users of the composed dataset
(here ``dataset.max_users=20``; ml-latest-small has 610). Flower's default
``client-resources-num-cpus`` is 2, which on a 2-core machine runs one
ClientApp at a time; 1 runs one per core. The app bundle carries no CSV
files, so ``dataset.path`` names the bundled ml-latest-small folder.

Processes are stopped by PID (the SuperLink's process group, then every
descendant it started: SuperExec, flwr-simulation, Ray) and the test checks
that none is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = ROOT / "recdata" / "ml-latest-small"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found by ``ps --ppid``, then theirs)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    kids = [int(x) for x in out.split()]
    return kids + [g for k in kids for g in descendants(k)]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, already dead and waiting to be reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def stop_pids(pids: list[int], timeout: float = 30) -> list[int]:
    """SIGTERM ``pids``, wait, SIGKILL what is left; return the PIDs still alive afterwards."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline and any(alive(p) for p in pids):
            time.sleep(0.3)
        if not any(alive(p) for p in pids):
            return []
    return [p for p in pids if alive(p)]


class SimulationSuperLink:
    """A ``flower-superlink --simulation`` on loopback and a Flower home that points ``flwr`` at it."""

    CONNECTION = "local-sim"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        home = tmp / "home"
        self.flwr_home = tmp / "flwr-home"
        home.mkdir()
        self.flwr_home.mkdir()
        self.env = {**os.environ, "HOME": str(home), "FLWR_HOME": str(self.flwr_home), "PYTHONPATH": str(ROOT),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("RAY_ADDRESS", None)  # the simulation starts its own Ray
        self.proc: subprocess.Popen | None = None
        self.seen: set[int] = set()

    def start(self) -> None:
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.CONNECTION}"\n\n'
            f'[superlink.{self.CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        log = open(self.tmp / "superlink.log", "w")
        self.proc = subprocess.Popen(
            [str(BIN / "flower-superlink"), "--simulation", "--insecure", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_port(self.port, self.proc)

    def run(self, overrides: str, out_dir: Path, num_supernodes: int, timeout: float = 780) -> dict:
        """``flwr run . local-sim`` with the overrides; return the results.json the ServerApp wrote."""
        assert self.proc is not None
        run_config = f'overrides="{overrides}" output-dir="{out_dir}"'
        federation_config = f"num-supernodes={num_supernodes} client-resources-num-cpus=1"
        cmd = [str(BIN / "flwr"), "run", ".", self.CONNECTION, "--federation-config", federation_config,
               "--run-config", run_config, "--stream"]
        proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        deadline = time.time() + timeout
        try:
            while proc.poll() is None and time.time() < deadline:
                self.seen.update(descendants(self.proc.pid))  # Ray's workers are reparented when it stops
                time.sleep(1)
        finally:
            if proc.poll() is None:
                stop_pids([proc.pid])
            out = proc.stdout.read() if proc.stdout else ""
            (self.tmp / "flwr_run.log").write_text(out)
        results = out_dir / "results.json"
        assert proc.returncode == 0 and results.exists(), f"no results; flwr run said:\n{out[-4000:]}"
        return json.loads(results.read_text())

    def stop(self) -> list[int]:
        """Stop the SuperLink and everything it started, by PID; return what survived (should be [])."""
        if self.proc is None:
            return []
        pids = [self.proc.pid, *descendants(self.proc.pid), *sorted(self.seen)]
        left = stop_pids(list(dict.fromkeys(pids)))
        self.proc.wait(timeout=10)
        return left


@pytest.fixture
def superlink(tmp_path):
    link = SimulationSuperLink(tmp_path)
    left: list[int] = []
    try:
        link.start()
        yield link
    finally:
        left = link.stop()
    assert not left, f"processes left running: {left}"


def test_flwr_run_default_config_on_a_simulation_superlink(superlink, tmp_path):
    n_users = 20
    overrides = f"dataset.path={DATA} dataset.max_users={n_users} clients_per_round=10 rounds=2"
    res = superlink.run(overrides, tmp_path / "out", num_supernodes=n_users)
    assert res["config"]["strategy"]["name"] == "plaintext" and res["config"]["dataset"]["name"] == "ml_latest_small"
    assert [r["round"] for r in res["records"]] == [1, 2]
    assert all(r["clients"] == 10 for r in res["records"])
    assert all(r["bytes_up_per_client"] > 0 for r in res["records"])
    assert 0 < res["final"]["final_test_rmse"] < 5
    assert (tmp_path / "out" / "rmse_bytes.png").exists()
