"""How server 0 reaches server 1: in the same process, or over (mutual) TLS with length-prefixed frames.

Both links carry the same byte frames (:mod:`schemas.wire`), so what server 1
receives does not depend on where it runs.

Over the network a frame is an 8-byte big-endian length and the frame. The
length is checked against :data:`schemas.wire.MAX_FRAME` *before* anything is
buffered: a header announcing more gets an ``error`` reply and the connection
is closed without reading the body. Server 1 serves each connection in its own
thread (its state is behind :class:`twoserver.operations.Server1`'s lock),
drops peers that stall mid-frame or stay idle too long, and, with TLS, only
completes the handshake with a peer whose client certificate the deployment's
CA signed for server 0 (``twoserver.certs``): an unauthenticated peer never
reaches the handler.

Server 0's :class:`SocketLink` reconnects after a dropped connection (a few
tries with backoff); when server 1 stays unreachable it raises
:class:`Server1Unavailable`, which names server 1 and its address, so the
round loop can stop after saving what is done.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from schemas.config import split_address
from schemas.wire import MAX_FRAME, WireError, encode_frame
from twoserver.operations import Server1

log = logging.getLogger("secrec.server1")

HEADER = struct.Struct(">Q")
SERVER0_NAME = "server0"   # common name of server 0's client certificate (twoserver.certs)
MAX_CONNECTIONS = 32


class Server1Unavailable(RuntimeError):
    """Server 1 cannot be reached (down, died mid-run, or failed the TLS handshake)."""


class FrameTooLarge(WireError):
    """A frame header announcing more than wire.MAX_FRAME bytes (or fewer than a frame's minimum)."""


# --------------------------------------------------------------------------- framing
def send_frame(sock: socket.socket, data: bytes) -> None:
    if len(data) > MAX_FRAME:
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    sock.sendall(HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 20))
        if not k:
            raise ConnectionError("connection closed")
        got += k
    return bytes(buf)


def read_length(sock: socket.socket) -> int:
    """The announced frame length, refused before any of the body is read."""
    (n,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if not 4 <= n <= MAX_FRAME:
        raise FrameTooLarge(f"frame header announces {n} bytes; the limit is {MAX_FRAME}")
    return n


def recv_frame(sock: socket.socket) -> bytes:
    return _recv_exact(sock, read_length(sock))


# --------------------------------------------------------------------------- TLS
@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one side of the link: its certificate and key, and the CA that signs the other side."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def server0_in(cls, tls_dir: str | Path) -> "TlsFiles":
        """Server 0's files as ``python -m twoserver.certs`` writes them."""
        d = Path(tls_dir)
        return cls(d / "ca.pem", d / "server0.pem", d / "server0.key")

    def check(self) -> None:
        for p in (self.ca, self.cert, self.key):
            if not Path(p).is_file():
                raise ValueError(f"TLS file {p} does not exist (make them with `python -m twoserver.certs`)")


def _base_context(purpose: ssl.Purpose, files: TlsFiles) -> ssl.SSLContext:
    files.check()
    ctx = ssl.create_default_context(purpose, cafile=str(files.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """Server 1's side: its certificate, and a client certificate from the CA required of every peer."""
    return _base_context(ssl.Purpose.CLIENT_AUTH, files)


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """Server 0's side: its client certificate; server 1's certificate and host name are verified."""
    ctx = _base_context(ssl.Purpose.SERVER_AUTH, files)
    ctx.check_hostname = True
    return ctx


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- links
class InProcessLink:
    """Server 1 in the same process: the bytes still go through the frame codec."""

    def __init__(self, server: Server1 | None = None) -> None:
        self.server = server or Server1()
        self.bytes_sent = 0
        self.bytes_received = 0

    def request(self, frame: bytes) -> bytes:
        self.bytes_sent += len(frame)
        reply = self.server.handle(frame)
        self.bytes_received += len(reply)
        return reply

    def close(self) -> None:
        pass


class SocketLink:
    """Server 1 in its own process, reached over mutual TLS (or plain TCP on loopback)."""

    def __init__(self, address: str, tls: TlsFiles | None = None, timeout: float = 600.0,
                 retries: int = 3, backoff: float = 0.5) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        if tls is None and not is_loopback(self.host):
            raise ValueError(f"server 1 at {address} is not on loopback: plain TCP is refused, "
                             "set strategy.server1_tls_dir (see `python -m twoserver.certs`)")
        self.context = client_context(tls) if tls is not None else None
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.sock: socket.socket | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.context is None:
            return raw
        try:
            return self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def request(self, frame: bytes) -> bytes:
        """Send one frame and return the reply; reconnect after a dropped connection.

        Retrying is safe: server 1 admits one retrieval and one aggregation per
        round, so a request it already served before the drop is refused, not
        applied twice.
        """
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                if self.sock is None:
                    self.sock = self._connect()
                send_frame(self.sock, frame)
                reply = recv_frame(self.sock)
            except FrameTooLarge:
                self.close()
                raise
            except (OSError, ConnectionError) as exc:  # ssl.SSLError and socket.timeout are OSErrors
                self.close()
                last = exc
                log.warning("server 1 at %s: %s (attempt %d of %d)", self.address, exc, attempt + 1,
                            self.retries + 1)
                continue
            self.bytes_sent += len(frame)
            self.bytes_received += len(reply)
            return reply
        raise Server1Unavailable(f"server 1 at {self.address} is unavailable after {self.retries + 1} "
                                 f"attempts: {type(last).__name__}: {last}") from last


# --------------------------------------------------------------------------- server 1
class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def make_server(host: str, port: int, server1: Server1, tls: TlsFiles | None, read_timeout: float = 60.0,
                idle_timeout: float = 3600.0) -> socketserver.ThreadingTCPServer:
    """A threading TCP server answering frames with ``server1.handle``.

    ``read_timeout`` bounds every read once a frame has started (and the TLS
    handshake); ``idle_timeout`` bounds the wait for the next frame. A peer
    over either is dropped; server 0 reconnects when it next needs server 1.
    """
    if tls is None and not is_loopback(host):
        raise ValueError(f"plain TCP is only for loopback; {host} needs --cert/--key/--ca")
    context = server_context(tls) if tls is not None else None
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            if not slots.acquire(blocking=False):
                log.warning("server 1: too many connections, dropping %s", self.client_address)
                return
            try:
                self._serve()
            finally:
                slots.release()

        def _serve(self) -> None:
            sock: socket.socket = self.request
            sock.settimeout(read_timeout)
            if context is not None:
                try:
                    sock = context.wrap_socket(sock, server_side=True)
                    subject = dict(x[0] for x in sock.getpeercert()["subject"])
                    if subject.get("commonName") != SERVER0_NAME:
                        raise ssl.SSLError(f"client certificate is for {subject.get('commonName')!r}, "
                                           f"not {SERVER0_NAME!r}")
                except (OSError, KeyError, TypeError, ValueError) as exc:
                    log.warning("server 1: TLS handshake with %s refused: %s", self.client_address, exc)
                    sock.close()
                    return
            try:
                while True:
                    try:
                        n = self._next_length(sock)
                    except FrameTooLarge as exc:
                        log.warning("server 1: %s from %s; closing", exc, self.client_address)
                        send_frame(sock, encode_frame("error", {"reason": str(exc)}))
                        return
                    sock.settimeout(read_timeout)
                    frame = _recv_exact(sock, n)
                    send_frame(sock, server1.handle(frame))
            except (OSError, ConnectionError) as exc:
                log.info("server 1: connection from %s ended: %s", self.client_address, exc)
            finally:
                try:
                    sock.close()
                except OSError:
                    pass

        @staticmethod
        def _next_length(sock: socket.socket) -> int:
            """Wait up to ``idle_timeout`` for a frame to start, then read its header within ``read_timeout``."""
            sock.settimeout(idle_timeout)
            head = sock.recv(1)
            if not head:
                raise ConnectionError("closed by the peer")
            sock.settimeout(read_timeout)
            (n,) = HEADER.unpack(head + _recv_exact(sock, HEADER.size - 1))
            if not 4 <= n <= MAX_FRAME:
                raise FrameTooLarge(f"frame header announces {n} bytes; the limit is {MAX_FRAME}")
            return n

    return _Server((host, port), Handler)
