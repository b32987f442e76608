"""A real Flower deployment on loopback: SuperLink + two SuperNodes + ``flwr run .``.

Each SuperNode is told its user through ``--node-config partition-id=...``;
the runs train 2 rounds of ``secemb`` MF with server 1 as its own process, and
of ``fedmf`` FullText with 2048-bit keys, and the tests check the results the
ServerApp wrote. Both runs go to one SuperLink and the same two SuperNodes, as
runs do on a deployment (a plaintext run adds nothing: it takes the same
ClientApp, node-config and device-state path as these, with fewer messages).
The runs start when the session's tests are collected and go on in a thread
beside the rest of the suite; these tests run last and read their outcome
(:class:`BackgroundRuns`). Processes are stopped by PID. Everything runs over
TLS with certificates made by the documented command
``python -m twoserver.certs``: the SuperLink serves
its certificate (``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile``), the
SuperNodes and ``flwr`` verify it against the CA (``--root-certificates``,
``root-certificates`` in ``~/.flwr/config.toml``), and server 0 and server 1
authenticate each other with mutual TLS.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from clients.reply_hold import REPLY_HOLD_NODE_KEY

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_HOLD = 1e-6  # seconds: the node config hold one SuperNode runs with (every handler overruns it)
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Deployment:
    def __init__(self, tmp: Path, n_nodes: int) -> None:
        self.tmp = tmp
        self.env = {**os.environ, "HOME": str(tmp / "home"), "PYTHONPATH": str(ROOT),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.port = _free_port()
        self.procs: list[subprocess.Popen] = []
        self.n_nodes = n_nodes
        self.certs = tmp / "certs"
        subprocess.run([sys.executable, "-m", "twoserver.certs", "--out", str(self.certs)], env=self.env,
                       cwd=ROOT, check=True, capture_output=True)

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        flwr_home = self.tmp / "home" / ".flwr"
        flwr_home.mkdir(parents=True)
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.certs / "ca.pem"}"\n')
        self._spawn([str(BIN / "flower-superlink"), "--ssl-certfile", str(self.certs / "superlink.pem"),
                     "--ssl-keyfile", str(self.certs / "superlink.key"),
                     "--ssl-ca-certfile", str(self.certs / "ca.pem"), "--disable-runtime-dependency-installation",
                     "--host", "127.0.0.1", "--port", str(self.port)], "superlink")
        _wait_port(self.port)
        for pid in range(self.n_nodes):
            # the last node holds its replies for a microsecond, which every handler overruns: its own log says so
            hold = f" {REPLY_HOLD_NODE_KEY}={TINY_HOLD}" if pid == self.n_nodes - 1 else ""
            self._spawn([str(BIN / "flower-supernode"), "--root-certificates", str(self.certs / "ca.pem"),
                         "--superlink", f"127.0.0.1:{self.port}",
                         "--node-config", f"partition-id={pid} num-partitions={self.n_nodes}{hold}",
                         "--port", str(_free_port())], f"supernode{pid}")

    def run(self, overrides: str, out_dir: Path, timeout: float = 1200) -> dict:  # slower beside the suite
        run_config = f'overrides="{overrides}" output-dir="{out_dir}"'
        proc = subprocess.run([str(BIN / "flwr"), "run", ".", "deploy", "--run-config", run_config, "--stream"],
                              env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        (self.tmp / "flwr_run.log").write_text(proc.stdout + proc.stderr)
        results = out_dir / "results.json"
        deadline = time.time() + 30  # `flwr run --stream` returns when the run ended: results are written by then
        while not results.exists() and time.time() < deadline:
            time.sleep(1)
        assert results.exists(), f"no results; flwr run said:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return json.loads(results.read_text())

    def _descendants(self, pid: int) -> list[int]:
        """Child processes (the SuperLink and SuperNodes start detached SuperExec processes)."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        kids = [int(x) for x in out.split()]
        return kids + [g for k in kids for g in self._descendants(k)]

    def stop(self) -> None:
        pids = [d for p in self.procs for d in self._descendants(p.pid)]
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


# A Flower app bundle carries no CSV files: the nodes read the data from a local folder, as devices would.
DATA = ROOT / "recdata" / "ml-latest-small"
# Two rounds, so round 2 runs on the state nodes kept from round 1; the test set is evaluated after the
# last one only: every message exchange here costs ~11 s (SuperNodes poll every 3 s and start a fresh
# ClientApp process per message), and the simulation tests already evaluate every round.
COMMON = f"dataset.path={DATA} dataset.max_users=2 clients_per_round=2 rounds=2 train.eval_every=0 model.dim=8"


def _secemb(dep: Deployment) -> dict:
    """SecEmb MF with server 1 as its own process (mutual TLS with server 0), its X25519 key kept in a key file
    and its printed fingerprint pinned as the users' trust anchor, as the README's commands do."""
    port = _free_port()
    server1 = dep._spawn([sys.executable, "-m", "twoserver", "--port", str(port),
                          "--cert", str(dep.certs / "server1.pem"), "--key", str(dep.certs / "server1.key"),
                          "--ca", str(dep.certs / "ca.pem"), "--key-file", str(dep.tmp / "server1_x25519.key")],
                         "server1")
    _wait_port(port)
    log = dep.tmp / "server1.log"
    printed = None
    for _ in range(600):  # printed just after the port is bound: wait for the line, not on a clock
        if printed := re.search(r"fingerprint \(strategy\.server1_fingerprint\): ([0-9a-f]{64})", log.read_text()):
            break
        time.sleep(0.05)
    assert printed, log.read_text()
    res = dep.run(f"strategy=secemb model=mf {COMMON} strategy.server1_address=127.0.0.1:{port} "
                  f"strategy.server1_tls_dir={dep.certs} strategy.server1_fingerprint={printed.group(1)}",
                  dep.tmp / "secemb-out")
    return {**res, "server1_was_running": server1.poll() is None}


def _fedmf(dep: Deployment) -> dict:
    # 40 items: FullText encrypts every row, and a fresh 2048-bit obfuscator costs ~13 ms per ciphertext
    return dep.run(f"strategy=fedmf model=mf strategy.mode=fulltext strategy.key_bits=2048 "
                   f"dataset.max_items=40 {COMMON}", dep.tmp / "fedmf-out")


RUNS = {"test_secemb_with_server1_as_its_own_process": _secemb,
        "test_fedmf_key_distribution_and_training_on_a_real_deployment": _fedmf}


class BackgroundRuns:
    """The selected tests' runs, one after another on one deployment, in a thread started at collection.

    Why: the runs take about 190 s and are mostly waiting (each message exchange waits on the SuperNodes'
    3 s poll and a new ClientApp process), so tests/conftest.py starts them when the session starts and
    runs these tests last: the rest of the suite runs meanwhile. The tests are the same real deployment
    as before; they only read the outcome when it is ready. Processes are stopped when the runs end, and
    at session end (or exit) if they have not.
    """

    def __init__(self, names: list[str]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="deployment-"))
        self.names = [n for n in RUNS if n in names]
        self.outcomes: dict[str, dict | BaseException] = {}
        self.stopped = False
        self.dep: Deployment | None = None
        self.thread = threading.Thread(target=self._run, name="deployment-runs", daemon=True)
        atexit.register(self.stop)

    def start(self) -> BackgroundRuns:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.dep = Deployment(self.tmp, n_nodes=2)
            self.dep.start()
            for name in self.names:
                try:
                    self.outcomes[name] = RUNS[name](self.dep)
                except BaseException as err:  # reported by the test that reads it
                    self.outcomes[name] = err
        except BaseException as err:
            self.outcomes.update({n: err for n in self.names if n not in self.outcomes})
        finally:
            self.stop()

    def stop(self) -> None:
        if self.dep is not None and not self.stopped:
            self.dep.stop()
            self.stopped = all(p.poll() is not None for p in self.dep.procs)

    def outcome(self, name: str, timeout: float = 800) -> dict:  # within pytest-timeout's 900 s
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the deployment runs did not end in {timeout} s; logs in {self.tmp}")
        result = self.outcomes[name]
        if isinstance(result, BaseException):  # first: when the deployment never started, nothing was stopped
            raise AssertionError(f"{name}'s run failed; logs in {self.tmp}") from result
        assert self.stopped, f"a deployment process outlived stop(); logs in {self.tmp}"
        return result


_BACKGROUND: list[BackgroundRuns] = []


def start_in_background(names: list[str]) -> None:
    """Called by tests/conftest.py once the session's tests are collected."""
    if not _BACKGROUND:
        _BACKGROUND.append(BackgroundRuns(names).start())


def _outcome(name: str) -> dict:
    start_in_background([name])  # a no-op when conftest started them
    return _BACKGROUND[0].outcome(name)


def test_secemb_with_server1_as_its_own_process():
    res = _outcome("test_secemb_with_server1_as_its_own_process")
    assert res["server1_was_running"]  # server 1 served the run as a separate process
    # a SuperNode's own reply-hold-seconds reaches its handlers (clients.reply_hold), and only its own
    logs = [(_BACKGROUND[0].tmp / f"supernode{pid}.log").read_text() for pid in range(2)]
    assert "reply hold of 0.000 s" in logs[1] and "reply hold" not in logs[0], logs[1][-2000:]
    assert [r["round"] for r in res["records"]] == [1, 2] and all(r["clients"] == 2 for r in res["records"])
    assert 0 < res["final"]["final_test_rmse"] < 5


def test_fedmf_key_distribution_and_training_on_a_real_deployment():
    res = _outcome("test_fedmf_key_distribution_and_training_on_a_real_deployment")
    assert res["final"]["keyed_users"] == 2 and res["final"]["key_bits"] == 2048
    assert [r["round"] for r in res["records"]] == [1, 2] and all(r["clients"] == 2 for r in res["records"])
    assert 0 < res["final"]["final_test_rmse"] < 5
