"""Server 0 of a two-server protocol (SecEmb, Secure FedRec): the ring codec and the link to server 1."""

from __future__ import annotations

import secrets
from typing import Any

from crypto.fixed_point import FixedPointCodec
from recdata.dataset import DatasetMeta
from schemas.secemb import ring_of
from strategies.public_model import ModelStrategy
from twoserver.link import Server1Client
from schemas.config import AppConfig


class TwoServerStrategy(ModelStrategy):
    """Server 0 of a two-server protocol: the ring codec and the link to server 1."""

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        s = cfg.strategy
        self.ring_bits = int(s.ring_bits)
        self.ring = ring_of(self.ring_bits)
        frac = int(s.frac_bits)
        self.codec = FixedPointCodec(frac_bits=frac, value_bound=2.0 ** (self.ring_bits - 1 - frac) - 1.0)
        self.server1 = Server1Client(s.server1_address, self._reject)
        self.run_id = secrets.token_hex(8)
        self.server1_public = b""

    def setup(self) -> None:
        self.server1_public = self.server1.call("hello", {})[1]["public_key"].tobytes()
