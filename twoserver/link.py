"""Server 0's side of the link to server 1: send a request frame, check the answer.

Per-user rejections by server 1 (a box that fails authentication, keys of the
wrong shape) come back in the reply's ``rejected`` map; they are reported to
``on_reject`` so the round continues without those users. A refusal of the
whole request raises :class:`Server1Error`; server 1 being unreachable (down,
died mid-run, TLS refused) raises :class:`Server1Unavailable`, whose message
names server 1 and its address, so the round loop stops after saving what is
done.

Server 0's side of the link is configured by ``strategy.server1_address``
(``host:port``; null = server 1 in-process) and ``strategy.server1_tls_dir``
(the folder ``python -m twoserver.certs`` writes: ``ca.pem``, ``server0.pem``,
``server0.key``). Without a TLS folder the link is plain TCP and only to a
loopback address.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import numpy as np

from crypto.dpf_eval import DEFAULT_MAX_CACHE_BYTES
from schemas.config import ConfigError
from schemas.wire import WireError, decode_frame, encode_frame
from twoserver.operations import Server1
from twoserver.transport import InProcessLink, Server1Unavailable, SocketLink, TlsFiles

__all__ = ["Server1Client", "Server1Error", "Server1Unavailable"]


class Server1Error(RuntimeError):
    """Server 1 refused a whole request (not a single user's data)."""


class Server1Client:
    def __init__(self, address: str | None, on_reject: Callable[[int, str], None],
                 tls_dir: str | None = None, min_users: int = 2, timeout: float = 600.0,
                 retries: int = 3, backoff: float = 0.5, max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES) -> None:
        """In-process server 1 when ``address`` is None (its floor is then this run's ``min_users`` and its
        DPF path cache this run's ``max_cache_bytes``; a server 1 process sets its own, ``--path-cache-mib``)."""
        if address:
            try:
                tls = TlsFiles.server0_in(tls_dir) if tls_dir else None
                self.link: InProcessLink | SocketLink = SocketLink(address, tls, timeout, retries, backoff)
            except (ValueError, ssl.SSLError) as exc:  # a missing or unreadable TLS file, plain TCP off loopback
                raise ConfigError(f"strategy.server1_address={address!r} with strategy.server1_tls_dir={tls_dir!r}: "
                                  f"{exc}") from exc
        else:
            self.link = InProcessLink(Server1(min_users=min_users, max_cache_bytes=max_cache_bytes))
        self.on_reject = on_reject

    @classmethod
    def from_config(cls, strategy_cfg: Any, on_reject: Callable[[int, str], None]) -> "Server1Client":
        """The link a two-server strategy config describes (address, TLS folder, min_users)."""
        cache_mib = getattr(strategy_cfg, "path_cache_mib", None)
        return cls(strategy_cfg.server1_address, on_reject, getattr(strategy_cfg, "server1_tls_dir", None),
                   int(getattr(strategy_cfg, "min_users", 2)),
                   max_cache_bytes=DEFAULT_MAX_CACHE_BYTES if cache_mib is None else int(cache_mib) << 20)

    @staticmethod
    def check_config(strategy_cfg: Any) -> None:
        """Refuse a server 1 link its config cannot make (ConfigError), before a run starts anything: the same
        construction as a run's, which reads the TLS files and connects to nothing."""
        if getattr(strategy_cfg, "server1_address", None):
            Server1Client.from_config(strategy_cfg, lambda _user, _reason: None).link.close()

    def call(self, op: str, meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
             expect: dict[str, tuple[np.dtype | type, tuple[int, ...]]] | None = None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Send one request; return server 1's (meta, arrays) once checked, else raise Server1Error.

        ``expect`` names the arrays the reply must carry with their dtype and exact shape; with
        ``users`` in ``meta``, a reply naming ``users`` must name a subset of them.
        """
        reply = self.link.request(encode_frame(op, meta, arrays))
        try:
            status, out_meta, out_arrays = decode_frame(reply)
        except WireError as exc:
            raise Server1Error(f"server 1 sent a malformed reply to {op}: {exc}") from exc
        if status != "ok":
            raise Server1Error(f"server 1 refused {op}: {out_meta.get('reason')}")
        rejected = out_meta.get("rejected", {})
        if not isinstance(rejected, dict) or not all(isinstance(u, str) and u.isdigit() for u in rejected):
            raise Server1Error(f"server 1 sent a malformed 'rejected' map in its reply to {op}")
        _check_reply(op, meta, out_meta, out_arrays, expect or {})
        for user, reason in rejected.items():
            self.on_reject(int(user), f"server 1 rejected {op}: {str(reason)[:200]}")
        return out_meta, out_arrays

    @property
    def bytes_sent(self) -> int:
        return self.link.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.link.bytes_received

    def close(self) -> None:
        self.link.close()


def _check_reply(op: str, sent: dict[str, Any], meta: dict[str, Any], arrays: dict[str, np.ndarray],
                 expect: dict[str, tuple[np.dtype | type, tuple[int, ...]]]) -> None:
    """Server 1's reply fields as server 0 will read them (Server1Error otherwise): the expected arrays with
    their dtypes and shapes, and kept ``users`` (when given) distinct ints among the users server 0 sent."""
    for name, (dtype, shape) in expect.items():
        arr = arrays.get(name)
        if arr is None or arr.dtype != np.dtype(dtype) or arr.shape != tuple(shape):
            got = "nothing" if arr is None else f"{arr.dtype} {arr.shape}"
            raise Server1Error(f"server 1's reply to {op} has {got} for {name!r}, expected {np.dtype(dtype)} "
                               f"{tuple(shape)}")
    if "users" in meta:
        kept, asked = meta["users"], set(sent.get("users", ()))
        if not isinstance(kept, list) or not all(type(u) is int and u in asked for u in kept) \
                or len(set(kept)) != len(kept):
            raise Server1Error(f"server 1's reply to {op} names users it was not asked about")
