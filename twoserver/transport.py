"""How server 0 reaches server 1: in the same process, or over TCP with length-prefixed frames.

Both links carry the same byte frames (:mod:`schemas.wire`), so what server 1
receives does not depend on where it runs.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct

from schemas.wire import WireError
from twoserver.operations import Server1

log = logging.getLogger("secrec.server1")


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


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack(">Q", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("server 1 connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv_frame(sock: socket.socket) -> bytes:
    (n,) = struct.unpack(">Q", _recv_exact(sock, 8))
    if n > 1 << 34:
        raise WireError("frame too large")
    return _recv_exact(sock, n)


class SocketLink:
    """Server 1 in its own process, reached over TCP with length-prefixed frames."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=600)
        self.bytes_sent = 0
        self.bytes_received = 0

    def request(self, frame: bytes) -> bytes:
        self.bytes_sent += len(frame)
        _send_frame(self.sock, frame)
        reply = _recv_frame(self.sock)
        self.bytes_received += len(reply)
        return reply


def link_for(address: str | None):
    return InProcessLink() if not address else SocketLink(address)


def serve(host: str, port: int) -> None:
    """Run server 1 as its own process (one connection at a time, state kept across them)."""
    server1 = Server1()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while True:
                try:
                    frame = _recv_frame(self.request)
                except (ConnectionError, WireError):
                    return
                _send_frame(self.request, server1.handle(frame))

    with socketserver.TCPServer((host, port), Handler) as srv:
        log.info("server 1 listening on %s:%d", host, port)
        srv.serve_forever()
