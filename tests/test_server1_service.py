"""Server 1 as a real service: its own process, mutual TLS, capped frames, checked meta, per-round state.

Server 1 is started with ``python -m twoserver`` on a free loopback port, with
certificates made by the documented command ``python -m twoserver.certs``,
and stopped by PID. Nothing here measures time: a refused peer is recognised
by what the server sends back (nothing, or an ``error`` frame) and by the
connection being closed.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crypto.dpf_gen import convert_gen, gen
from crypto.sealed import generate_keypair, seal
from schemas import secemb as schema
from schemas.wire import MAX_FRAME, decode_frame, encode_frame
from twoserver.link import Server1Client, Server1Error, Server1Unavailable
from twoserver.operations import Server1
from twoserver.party import SecEmbParty
from twoserver.transport import SocketLink, TlsFiles

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, WIDTH = 16, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "twoserver.certs", "--out", str(out)], check=True, cwd=ROOT,
                   capture_output=True)
    return out


def _wait_listening(proc: subprocess.Popen, log: Path, port: int) -> None:
    """Wait until server 1 logged that it listens (no sleeps on a clock)."""
    while "listening on" not in log.read_text():
        if proc.poll() is not None:
            raise RuntimeError(f"server 1 exited:\n{log.read_text()}")
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass


class Server1Process:
    def __init__(self, tmp: Path, certs: Path, *extra: str) -> None:
        self.port = _free_port()
        self.log = tmp / f"server1_{self.port}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "twoserver", "--port", str(self.port), "--cert", str(certs / "server1.pem"),
                 "--key", str(certs / "server1.key"), "--ca", str(certs / "ca.pem"), *extra],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        _wait_listening(self.proc, self.log, self.port)
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("other_ca"))


@pytest.fixture(scope="module")
def server1(tmp_path_factory, certs):
    proc = Server1Process(tmp_path_factory.mktemp("server1"), certs)
    yield proc
    proc.stop()


def client(server, certs: Path, **kw) -> Server1Client:
    rejected: list[tuple[int, str]] = []
    c = Server1Client(server.address, lambda u, r: rejected.append((u, r)), str(certs), **kw)
    c.rejected = rejected  # type: ignore[attr-defined]
    return c


def _tls_socket(port: int, certs: Path, cert_dir: Path | None, stem: str = "server0") -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if cert_dir is not None:
        ctx.load_cert_chain(str(cert_dir / f"{stem}.pem"), str(cert_dir / f"{stem}.key"))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="127.0.0.1")


def _framed(frame: bytes) -> bytes:
    return struct.pack(">Q", len(frame)) + frame


def _reply_or_nothing(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (b'' when it sends nothing)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    return data


def _table(rows: int) -> np.ndarray:
    return np.arange(rows * WIDTH, dtype=np.uint32).reshape(rows, WIDTH)


# ------------------------------------------------------------------------- certificates
def test_certs_command_writes_private_keys_readable_only_by_the_owner(certs):
    for name in ("ca", "server0", "server1", "superlink"):
        assert (certs / f"{name}.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        assert stat.S_IMODE((certs / f"{name}.key").stat().st_mode) == 0o600


def test_plain_tcp_is_refused_for_a_non_loopback_host(certs):
    proc = subprocess.run([sys.executable, "-m", "twoserver", "--host", "0.0.0.0", "--port", "1", "--insecure"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "non-loopback" in proc.stderr
    with pytest.raises(ValueError, match="not on loopback"):
        SocketLink("10.1.2.3:4000")


def test_certs_command_refuses_to_replace_a_deployments_certificates_without_force(tmp_path):
    """A second run over the same folder would make a new CA that the running SuperLink and server 1 do not
    trust; it is refused, nothing changes, and --force replaces every file."""
    out = make_certs(tmp_path / "certs")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = [sys.executable, "-m", "twoserver.certs", "--out", str(out)]
    proc = subprocess.run(again, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    subprocess.run([*again, "--force"], cwd=ROOT, check=True, capture_output=True)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)


def test_server1_start_up_failures_are_one_error_line(tmp_path, certs, capsys):
    """What an operator gets wrong at start (a missing file, a key of another certificate, a CA file holding no
    certificate, a port in use, a key file in a missing folder, --frac-bits without a DP floor or out of range)
    ends in one ``error:`` line and a non-zero exit, not a traceback, and before any fingerprint is printed."""
    from twoserver.__main__ import main

    tls = ["--cert", str(certs / "server1.pem"), "--key", str(certs / "server1.key"), "--ca", str(certs / "ca.pem")]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        cases = {
            "does not exist": ["--port", busy, "--cert", str(tmp_path / "nope.pem"), *tls[2:]],
            "KEY_VALUES_MISMATCH": ["--port", busy, *tls[:2], "--key", str(certs / "server0.key"), *tls[4:]],
            "NO_CERTIFICATE": ["--port", busy, *tls[:4], "--ca", str(certs / "ca.key")],
            "in use": ["--port", busy, *tls],
            "No such file": ["--port", busy, *tls, "--key-file", str(tmp_path / "missing" / "x25519.key")],
            "--min-noise-std": ["--port", busy, "--insecure", "--frac-bits", "12"],
            "0..62": ["--port", busy, "--insecure", "--min-noise-std", "1", "--frac-bits", "63"],
        }
        for expected, argv in cases.items():
            with pytest.raises(SystemExit) as stop:
                main(argv)
            out, err = capsys.readouterr()
            assert stop.value.code in (1, 2) and expected in err and "python -m twoserver: error:" in err, err
            assert "fingerprint" not in out


# ------------------------------------------------------------------------- (a) authentication
def test_unauthenticated_peers_get_nothing_and_change_nothing(server1, certs, other_ca):
    c = client(server1, certs)
    public = c.call("hello", {})[1]["public_key"].tobytes()
    c.call("set_model", {"ring_bits": 32}, {"table": _table(N_ITEMS)})

    attack = _framed(encode_frame("set_model", {"ring_bits": 32}, {"table": _table(2)}))
    retrieve = _framed(encode_frame("retrieve", {"run": "victim", "round": 99, "m_prime": 1, "users": []}))
    # plain TCP: the TLS handshake fails, nothing is answered
    with socket.create_connection(("127.0.0.1", server1.port), timeout=30) as s:
        s.sendall(attack + retrieve)
        assert b"ok" not in _reply_or_nothing(s)
    # TLS without a client certificate, with a certificate from another CA, and with one of the
    # deployment's other certificates (the SuperLink's server certificate is not server 0's)
    for cert_dir, stem in ((None, ""), (other_ca, "server0"), (certs, "superlink"), (certs, "server1")):
        try:
            with _tls_socket(server1.port, certs, cert_dir, stem) as s:
                s.sendall(attack + retrieve)
                assert _reply_or_nothing(s) == b""
        except (ssl.SSLError, ConnectionError):
            pass  # refused during the handshake: also nothing
    # a client that does not trust server 1's CA refuses server 1 (server 0 verifies server 1)
    stranger = Server1Client(server1.address, lambda u, r: None, str(other_ca), retries=0)
    with pytest.raises(Server1Unavailable, match="server 1 at 127.0.0.1"):
        stranger.call("hello", {})

    # the authenticated server 0 still works, and nothing the attackers sent took effect
    assert c.call("hello", {})[1]["public_key"].tobytes() == public
    c.call("retrieve", {"run": "victim", "round": 1, "m_prime": N_ITEMS, "users": []})  # table still has 16 rows
    assert "TLS handshake" in server1.log.read_text()


# ------------------------------------------------------------------------- (b) frame cap
def test_a_header_announcing_16_gib_is_refused_without_reading_the_body(server1, certs):
    with _tls_socket(server1.port, certs, certs) as s:
        s.sendall(struct.pack(">Q", 16 << 30))
        data = _reply_or_nothing(s)  # the server answers and closes although no body was sent
    (n,) = struct.unpack(">Q", data[:8])
    status, meta, _ = decode_frame(data[8:8 + n])
    assert status == "error" and str(MAX_FRAME) in meta["reason"]
    assert len(data) == 8 + n


def test_meta_fields_are_range_checked():
    s1 = Server1()

    def call(op, meta, arrays=None):
        return decode_frame(s1.handle(encode_frame(op, meta, arrays)))

    assert call("set_model", {"ring_bits": 32}, {"table": _table(N_ITEMS)})[0] == "ok"
    box = {"box_1": np.zeros(8, np.uint8), "box_2": np.zeros(8, np.uint8)}
    bad = [
        ("sum_shares", {"run": "r", "round": 1, "users": [1, 2], "shape": [2 ** 40], "ring_bits": 32}, box),
        ("sum_shares", {"run": "r", "round": 1, "users": [1, 2], "shape": [1], "ring_bits": 16}, box),
        ("aggregate", {"run": "r", "round": 1, "width": WIDTH, "dense_size": 2 ** 40, "users": [1, 2]}, box),
        ("aggregate", {"run": "r", "round": 1, "width": 10 ** 6, "dense_size": 1, "users": [1, 2]}, box),
        ("retrieve", {"run": "r", "round": 0, "m_prime": 1, "users": []}, {}),
        ("retrieve", {"run": "r", "round": 1, "m_prime": N_ITEMS + 1, "users": []}, {}),
        ("retrieve", {"run": "r", "round": 1, "m_prime": 1, "users": [1, 1]}, {}),
        ("retrieve", {"run": "r", "round": 1, "m_prime": 1, "users": ["1"]}, {}),
        ("retrieve", {"run": "r", "round": True, "m_prime": 1, "users": []}, {}),
        ("retrieve", {"run": "x" * 65, "round": 1, "m_prime": 1, "users": []}, {}),
        ("retrieve", {"run": "r", "round": 1, "m_prime": 1, "users": [], "extra": [1] * 10}, {}),
        ("retrieve", {"run": "r", "round": 1, "users": []}, {}),
        ("aggregate_fresh", {"run": "r", "round": 1, "width": WIDTH, "dense_size": 1, "users": [1, 2],
                             "variant": {"secemb": 1}, "m_prime": 1, "n_items": N_ITEMS}, box),
        ("sum_metrics", {"run": "r", "round": 1, "users": [1, 2], "ring_bits": 64}, box),
        ("sum_metrics", {"run": "r", "round": 1, "users": [1, 2], "ring_bits": 64, "size": "5"}, box),
        ("sum_metrics", {"run": "r", "round": 1, "users": [1, 2], "ring_bits": 64, "size": 17}, box),
    ]
    for op, meta, arrays in bad:
        status, out, _ = call(op, meta, arrays)
        assert status == "error", (op, meta)
        assert not out["reason"].startswith("internal error"), (op, meta, out)  # refused by a check
    # none of the refused requests consumed round 1
    assert call("retrieve", {"run": "r", "round": 1, "m_prime": 1, "users": []})[0] == "ok"


# ------------------------------------------------------------------------- (d) per-round state
class Round:
    """Real sealed retrieval and aggregation boxes for a few users (zero gradients)."""

    def __init__(self, public: bytes, run: str, rnd: int, users: list[int], m_prime: int = 2,
                 purpose: str = "retrieve") -> None:
        self.run, self.rnd, self.users, self.m_prime = run, rnd, users, m_prime
        self.boxes, self.gen = {}, {}
        for u in users:
            items = np.arange(m_prime, dtype=np.int64) + u % (N_ITEMS - m_prime)
            _k0, k1, self.gen[u] = gen(items, np.ones((m_prime, 1), dtype=np.uint32), N_ITEMS, domain=0)
            _priv, user_pub = generate_keypair()
            self.boxes[u] = np.frombuffer(seal(public, schema.sealed_retrieval_bytes(k1, user_pub),
                                               schema.context(run, rnd, u, purpose)), np.uint8)
        self.public = public

    def retrieve_args(self, users: list[int] | None = None):
        users = self.users if users is None else users
        return ({"run": self.run, "round": self.rnd, "m_prime": self.m_prime, "users": users},
                {f"box_{u}": self.boxes[u] for u in users})

    def aggregate_args(self, users: list[int], dense_size: int = 4):
        arrays = {}
        for u in users:
            if u in self.gen:
                arrays[f"cw_{u}"] = convert_gen(self.gen[u], np.zeros((self.m_prime, WIDTH), np.uint32), domain=1)
            else:
                arrays[f"cw_{u}"] = np.zeros((self.m_prime, WIDTH), np.uint32)
            raw = schema.sealed_dense_bytes(np.zeros(dense_size, np.uint32))
            arrays[f"box_{u}"] = np.frombuffer(seal(self.public, raw, schema.context(self.run, self.rnd, u, "dense")),
                                               np.uint8)
        return ({"run": self.run, "round": self.rnd, "width": WIDTH, "dense_size": dense_size, "users": users},
                arrays)


def test_one_retrieval_and_one_aggregation_per_round_over_the_retrievals_users(server1, certs):
    c = client(server1, certs)
    public = c.call("hello", {"run": "perround", "min_users": 2})[1]["public_key"].tobytes()
    c.call("set_model", {"ring_bits": 32}, {"table": _table(N_ITEMS)})

    r1 = Round(public, "perround", 1, [1, 2, 3])
    c.call("retrieve", *r1.retrieve_args())
    with pytest.raises(Server1Error, match="already retrieved"):
        c.call("retrieve", *r1.retrieve_args())
    with pytest.raises(Server1Error, match="not in round 1's retrieval"):
        c.call("aggregate", *r1.aggregate_args([1, 2, 7]))
    with pytest.raises(Server1Error, match="at least 2"):
        c.call("aggregate", *r1.aggregate_args([1]))
    meta, arrays = c.call("aggregate", *r1.aggregate_args([1, 2]))  # user 3 dropped out: allowed
    assert meta["users"] == [1, 2] and arrays["sparse"].shape == (N_ITEMS, WIDTH)
    with pytest.raises(Server1Error, match="already aggregated"):
        c.call("aggregate", *r1.aggregate_args([1, 3]))
    with pytest.raises(Server1Error, match="already aggregated"):
        c.call("aggregate", *r1.aggregate_args([1, 2]))

    # rounds must increase; the next round works as usual
    with pytest.raises(Server1Error, match="already retrieved"):
        c.call("retrieve", *Round(public, "perround", 1, [4, 5]).retrieve_args())
    r2 = Round(public, "perround", 2, [4, 5])
    c.call("retrieve", *r2.retrieve_args())
    assert c.call("aggregate", *r2.aggregate_args([4, 5]))[0]["users"] == [4, 5]


def test_server0_cannot_lower_server1s_floor_but_may_raise_it(server1, certs):
    c = client(server1, certs)
    public = c.call("hello", {"run": "floor", "min_users": 1})[1]["public_key"].tobytes()  # asks for 1: floor stays 2
    c.call("set_model", {"ring_bits": 32}, {"table": _table(N_ITEMS)})
    r1 = Round(public, "floor", 1, [1, 2, 3])
    c.call("retrieve", *r1.retrieve_args())
    with pytest.raises(Server1Error, match="at least 2"):
        c.call("aggregate", *r1.aggregate_args([1]))
    c.call("hello", {"run": "floor", "min_users": 3})
    with pytest.raises(Server1Error, match="at least 3"):
        c.call("aggregate", *r1.aggregate_args([1, 2]))
    box = {f"box_{u}": np.zeros(8, np.uint8) for u in (1,)}
    with pytest.raises(Server1Error, match="at least 3"):
        c.call("sum_shares", {"run": "floor", "round": 1, "users": [1], "shape": [2], "ring_bits": 32}, box)


def test_an_evaluation_retrieval_leaves_the_rounds_training_state_alone():
    """SecEmb evaluates through retrieve_eval: its own boxes, once per round, and the round's training
    retrieval is still the one aggregated."""
    s1 = Server1(min_users=2)

    def call(op, meta, arrays=None):
        return decode_frame(s1.handle(encode_frame(op, meta, arrays or {})))

    call("set_model", {"ring_bits": 32}, {"table": _table(N_ITEMS)})
    train = Round(s1.public_key, "ev", 1, [1, 2, 3])
    assert call("retrieve", *train.retrieve_args())[0] == "ok"
    status, meta, arrays = call("retrieve_eval", *Round(s1.public_key, "ev", 1, [1, 2, 3],
                                                          purpose=schema.EVAL_BOX).retrieve_args())
    assert status == "ok" and not meta["rejected"] and sorted(arrays) == ["box_1", "box_2", "box_3"]
    status, meta, arrays = call("aggregate", *train.aggregate_args([1, 2]))
    assert status == "ok" and meta["users"] == [1, 2]
    again = Round(s1.public_key, "ev", 1, [1, 2], purpose=schema.EVAL_BOX)
    assert call("retrieve_eval", *again.retrieve_args())[0] == "error"  # one per round
    # boxes sealed for training do not open as evaluation boxes
    status, meta, arrays = call("retrieve_eval", *Round(s1.public_key, "ev", 2, [1, 2]).retrieve_args())
    assert status == "ok" and sorted(meta["rejected"]) == ["1", "2"] and not arrays
    # below the floor: refused before any work
    assert call("retrieve_eval", *Round(s1.public_key, "ev", 3, [1], purpose=schema.EVAL_BOX).retrieve_args()
                )[0] == "error"


def test_a_user_whose_reply_key_is_a_low_order_point_is_rejected_alone():
    """Server 1 seals each user's shares to the user's one-round key. An all-zero key cannot be sealed to:
    that user is rejected with the reason and the others are served (before, the failed seal refused the
    whole retrieval, and server 0's round loop stopped the run)."""
    s1 = Server1(min_users=2)

    def call(op, meta, arrays=None):
        return decode_frame(s1.handle(encode_frame(op, meta, arrays or {})))

    call("set_model", {"ring_bits": 32}, {"table": _table(N_ITEMS)})
    rnd = Round(s1.public_key, "low", 1, [1, 2, 3])
    _k0, k1, _gen = gen(np.arange(2, dtype=np.int64), np.ones((2, 1), dtype=np.uint32), N_ITEMS, domain=0)
    rnd.boxes[3] = np.frombuffer(seal(s1.public_key, schema.sealed_retrieval_bytes(k1, bytes(32)),
                                      schema.context("low", 1, 3, "retrieve")), np.uint8)
    status, meta, arrays = call("retrieve", *rnd.retrieve_args())
    assert status == "ok" and sorted(arrays) == ["box_1", "box_2"]
    assert list(meta["rejected"]) == ["3"] and "low-order" in meta["rejected"]["3"]
    status, meta, _ = call("aggregate", *rnd.aggregate_args([1, 2]))
    assert status == "ok" and meta["users"] == [1, 2]


def test_server1_keeps_its_training_party_and_a_failed_retrieval_leaves_no_round_to_aggregate(monkeypatch):
    """Server 1 reuses its training party (and the buffers of its cached paths) from round to round, as
    server 0 does. A retrieval that fails after it was admitted has begun replacing those paths: the
    previous round can no longer be aggregated (it would be summed from nothing), and the failed round
    may be retried."""
    s1 = Server1(min_users=2)

    def call(op, meta, arrays=None):
        return decode_frame(s1.handle(encode_frame(op, meta, arrays or {})))

    call("set_model", {"ring_bits": 32}, {"table": _table(N_ITEMS)})
    r1 = Round(s1.public_key, "keep", 1, [1, 2])
    assert call("retrieve", *r1.retrieve_args())[0] == "ok"
    party = s1.party

    def failing(self, keys, table):
        self.context = None  # as SecEmbParty.retrieve does before it evaluates
        raise MemoryError("injected: the evaluation ran out of memory")

    monkeypatch.setattr(SecEmbParty, "retrieve", failing)
    r2 = Round(s1.public_key, "keep", 2, [1, 2])
    assert call("retrieve", *r2.retrieve_args())[0] == "error"
    monkeypatch.undo()
    status, meta, _ = call("aggregate", *r1.aggregate_args([1, 2]))
    assert status == "error" and "latest retrieval" in meta["reason"]
    assert call("retrieve", *r2.retrieve_args())[0] == "ok"  # the failed round was not consumed
    status, meta, arrays = call("aggregate", *r2.aggregate_args([1, 2]))
    assert status == "ok" and meta["users"] == [1, 2]
    assert s1.party is party


def test_sum_shares_once_per_round_and_users_that_fail_count_against_the_floor():
    s1 = Server1(min_users=2)

    def call(meta, users):
        arrays = {f"box_{u}": np.frombuffer(seal(s1.public_key, schema.sealed_dense_bytes(np.ones(3, np.uint32))
                                                 if u >= 0 else b"bad", schema.context("sf", meta, abs(u),
                                                                                        "secfedrec")), np.uint8)
                  for u in users}
        ids = [abs(u) for u in users]
        return decode_frame(s1.handle(encode_frame("sum_shares", {"run": "sf", "round": meta, "users": ids,
                                                                  "shape": [3], "ring_bits": 32}, arrays)))

    # one user's box does not open: only one user would be summed -> refused, round not consumed
    assert call(1, [1, -2])[0] == "error"
    status, meta, arrays = call(1, [1, 2])
    assert status == "ok" and meta["users"] == [1, 2] and list(arrays["sum"]) == [2, 2, 2]
    assert call(1, [1, 2])[0] == "error"
    assert call(2, [1, 2])[0] == "ok"


# ------------------------------------------------------------------------- (c) garbage, then a real run
def test_server1_survives_garbage_and_serves_a_real_secemb_run(server1, certs, tmp_path):
    from tests.sim_utils import SMALL, run_sim

    rng = np.random.default_rng(0)
    with socket.create_connection(("127.0.0.1", server1.port), timeout=30) as s:
        s.sendall(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        _reply_or_nothing(s)
    with _tls_socket(server1.port, certs, certs) as s:  # authenticated, but the frame is garbage
        s.sendall(_framed(rng.integers(0, 256, 100, dtype=np.uint8).tobytes()))
        (n,) = struct.unpack(">Q", s.recv(8))
        assert decode_frame(s.recv(n))[0] == "error"
        s.sendall(_framed(encode_frame("no_such_op", {})))
        (n,) = struct.unpack(">Q", s.recv(8))
        assert decode_frame(s.recv(n))[0] == "error"

    res, _ = run_sim(tmp_path, [*SMALL, "strategy=secemb", f"strategy.server1_address={server1.address}",
                                f"strategy.server1_tls_dir={certs}"])
    assert [r["round"] for r in res["records"]] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in res["records"])
    assert server1.proc.poll() is None


# ------------------------------------------------------------------------- (e) server 1 dies mid-run
def test_server1_dying_mid_run_raises_server1_unavailable_naming_it(tmp_path, certs):
    proc = Server1Process(tmp_path, certs)
    try:
        c = client(proc, certs, retries=2, backoff=0.01)
        c.call("hello", {})
        os.kill(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait(timeout=30)
        with pytest.raises(Server1Unavailable, match=f"server 1 at {proc.address}"):
            c.call("hello", {})
    finally:
        proc.stop()


def test_server0_reconnects_after_a_dropped_connection(server1, certs):
    c = client(server1, certs)
    c.call("hello", {})
    c.link.sock.close()  # the connection drops (e.g. server 1 dropped an idle peer)
    assert c.call("hello", {})[1]["public_key"].shape == (32,)


def test_x25519_key_file_keeps_the_fingerprint_across_restarts(tmp_path, certs):
    key = tmp_path / "x25519.key"
    prints = []
    for _ in range(2):
        proc = Server1Process(tmp_path, certs, "--key-file", str(key))
        proc.stop()
        prints.append([line for line in proc.log.read_text().splitlines() if "fingerprint" in line][0])
    assert prints[0] == prints[1]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    s1 = Server1()
    assert s1.fingerprint in f"{s1.fingerprint}" and len(s1.fingerprint) == 64


# ------------------------------------------------------------------------- concurrency and timeouts
def test_a_stalled_peer_neither_blocks_others_nor_stays_connected(tmp_path, certs):
    proc = Server1Process(tmp_path, certs, "--read-timeout", "1")
    try:
        with _tls_socket(proc.port, certs, certs) as stalled:
            stalled.sendall(struct.pack(">Q", 1000)[:5])  # half a header, then nothing
            c = client(proc, certs)
            assert c.call("hello", {})[1]["public_key"].shape == (32,)  # served while the other peer stalls
            assert _reply_or_nothing(stalled) == b""  # server 1 drops the stalled peer (read timeout)
        assert c.call("hello", {})[1]["public_key"].shape == (32,)
    finally:
        proc.stop()


class _Replies:
    """A server 1 that answers every request with one fixed frame (a peer that deviates from the protocol)."""

    bytes_sent = bytes_received = 0

    def __init__(self, meta, arrays) -> None:
        self.frame = encode_frame("ok", meta, arrays)

    def request(self, frame: bytes) -> bytes:
        return self.frame


def test_server0_checks_server1s_replies_before_reading_them():
    """Every array server 0 reads from a reply has the dtype and shape it expects, and the users server 1 says
    it kept are among those it was asked about; anything else is a Server1Error (a refusal of that request,
    which a round survives), not a KeyError, TypeError or a silently garbled sum."""
    sum_u64 = {"sum": (np.uint64, (5,))}
    asked = {"users": [1, 2, 3]}
    bad = [
        ({}, {}, sum_u64),                                              # no array
        ({}, {"sum": np.zeros(3, np.uint64)}, sum_u64),                 # wrong shape
        ({}, {"sum": np.zeros(5, np.float64)}, sum_u64),                # wrong dtype
        ({"users": [1, 7]}, {"sum": np.zeros(5, np.uint64)}, sum_u64),  # a user it was not asked about
        ({"users": 5}, {"sum": np.zeros(5, np.uint64)}, sum_u64),       # not a list
        ({"users": [1, 1]}, {"sum": np.zeros(5, np.uint64)}, sum_u64),  # twice
    ]
    for meta, arrays, expect in bad:
        client = Server1Client(None, lambda _u, _why: None)
        client.link = _Replies(meta, arrays)
        with pytest.raises(Server1Error):
            client.call("sum_metrics", asked, {}, expect)
    client.link = _Replies({"users": [1, 3]}, {"sum": np.arange(5, dtype=np.uint64)})
    assert client.call("sum_metrics", asked, {}, sum_u64)[0]["users"] == [1, 3]
