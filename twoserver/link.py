"""Server 0's side of the link to server 1: send a request frame, check the answer.

Per-user rejections by server 1 (a box that fails authentication, keys of the
wrong shape) come back in the reply's ``rejected`` map; they are reported to
``on_reject`` so the round continues without those users. A refusal of the
whole request raises :class:`Server1Error`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from schemas.wire import decode_frame, encode_frame
from twoserver.transport import link_for


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
