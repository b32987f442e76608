"""Server 0's side of the link to server 1: send a request frame, check the answer.

Per-user rejections by server 1 (a box that fails authentication, keys of the
wrong shape) come back in the reply's ``rejected`` map; they are reported to
``on_reject`` so the round continues without those users. A refusal of the
whole request raises :class:`Server1Error`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import numpy as np

from crypto.fixed_point import FixedPointCodec
from schemas.secemb import ring_of
from schemas.wire import decode_frame, encode_frame
from strategies.base import DatasetMeta
from strategies.public_model import ModelStrategy
from strategies.secemb_server1 import link_for


class Server1Error(RuntimeError):
    """Server 1 refused a whole request (not a single user's data)."""


class Server1Client:
    def __init__(self, address: str | None, on_reject: Callable[[int, str], None]) -> None:
        self.link = link_for(address)
        self.on_reject = on_reject

    def call(self, op: str, meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        status, out_meta, out_arrays = decode_frame(self.link.request(encode_frame(op, meta, arrays)))
        if status != "ok":
            raise Server1Error(f"server 1 refused {op}: {out_meta.get('reason')}")
        for user, reason in out_meta.get("rejected", {}).items():
            self.on_reject(int(user), f"server 1 rejected {op}: {reason}")
        return out_meta, out_arrays

    @property
    def bytes_sent(self) -> int:
        return self.link.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.link.bytes_received


class TwoServerStrategy(ModelStrategy):
    """Server 0 of a two-server protocol: the ring codec and the link to server 1."""

    def __init__(self, cfg: dict[str, Any], meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        s = cfg["strategy"]
        self.ring_bits = int(s["ring_bits"])
        self.ring = ring_of(self.ring_bits)
        frac = int(s["frac_bits"])
        self.codec = FixedPointCodec(frac_bits=frac, value_bound=2.0 ** (self.ring_bits - 1 - frac) - 1.0)
        self.server1 = Server1Client(s.get("server1_address"), self._reject)
        self.run_id = secrets.token_hex(8)
        self.server1_public = b""

    def setup(self) -> None:
        self.server1_public = self.server1.call("hello", {})[1]["public_key"].tobytes()
