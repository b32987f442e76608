"""``fedmf``: FedMF (Chai et al.) — the server updates an encrypted item matrix.

Set-up (:meth:`FedMFStrategy.setup`): the server picks a key holder, which
generates the Paillier key pair; the secret key reaches every other user
sealed under that user's X25519 key, relayed by the server, which keeps only
the public key. Users without a key when sampled (late joiners, failed
deliveries) go through the same delivery first. The server encrypts V once.

Each round: sampled users download C_V, decrypt, run the FedMF step (the same
code as ``distributed_mf``) and upload packed encryptions of their negated
gradient rows with an offset; the server multiplies them into C_V and removes
the accumulated offsets with one public constant per row — C_V <- C_V - sum
C_G without ever decrypting. Test RMSE is computed by users, who decrypt C_V
locally and report their squared-error sums.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
from flwr.app import RecordDict

from models.fedmf_mf import init_item_matrix
from crypto.packed_matrix import PackedMatrixCrypto
from schemas import fedmf as schema
from recdata.dataset import DatasetMeta
from strategies.base import RecStrategy, weighted_train_loss
from schemas.config import AppConfig


class FedMFStrategy(RecStrategy):
    name = "fedmf"
    evaluate_type = schema.EVALUATE

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        s = cfg.strategy
        self.mode, self.pad_to = s.mode, int(s.pad_to or 0)
        self.key_bits = int(s.key_bits)
        self.dim = int(cfg.model.dim)
        self.run_id = secrets.token_hex(8)
        self.crypto: PackedMatrixCrypto | None = None  # public-key only on the server
        self.cv: list | None = None
        self.keyed: set[int] = set()
        self.holder: int | None = None
        self.n_bytes: np.ndarray | None = None

    # ------------------------------------------------------ key distribution
    def setup(self) -> None:
        assert self.exchange is not None
        for holder in self.users:  # the first user that answers becomes the key holder
            reply = self.exchange.phase(schema.SETUP, {holder: schema.setup_message(self.key_bits, self.run_id)},
                                        "keys", lambda _u, c: schema.parse_public_key_reply(c, self.key_bits),
                                        count_bytes=False)
            if holder in reply:
                self.holder, self.n_bytes = holder, reply[holder]
                break
        if self.holder is None:
            raise RuntimeError("no user could generate the Paillier key")
        self.keyed = {self.holder}
        self.crypto = PackedMatrixCrypto.from_config(self.cfg, self.meta.n_items, n_bytes=self.n_bytes)
        V = init_item_matrix(self.meta.n_items, self.dim, int(self.cfg.seed), float(self.cfg.model.init_std))
        self.cv = self.crypto.encrypt_matrix(V)
        self.distribute_keys([u for u in self.users if u != self.holder])

    def distribute_keys(self, users: list[int]) -> list[int]:
        """Deliver the sealed secret key to ``users``; return those who acknowledged."""
        ex, run, n_b = self.exchange, self.run_id, self.n_bytes
        assert ex is not None and n_b is not None and self.holder is not None
        if not users:
            return []
        pubs = ex.phase(schema.KEY, {u: schema.key_message("announce", run, n_b) for u in users}, "keys",
                        lambda _u, c: schema.parse_announce_reply(c), count_bytes=False)
        order = sorted(pubs)
        if not order:
            return []
        sealed = ex.phase(schema.KEY, {self.holder: schema.key_message(
            "seal", run, n_b, users=np.array(order, dtype=np.int64),
            pubs=np.stack([np.frombuffer(pubs[u], dtype=np.uint8) for u in order]))}, "keys",
            lambda _u, c: schema.parse_seal_reply(c, len(order)), count_bytes=False)
        if self.holder not in sealed:
            return []
        boxes = sealed[self.holder]
        acks = ex.phase(schema.KEY, {u: schema.key_message("deliver", run, n_b, box=boxes[i])
                                     for i, u in enumerate(order)}, "keys",
                        lambda _u, c: schema.parse_ack_reply(c), count_bytes=False)
        self.keyed.update(acks)
        return sorted(acks)

    # ------------------------------------------------------------- round
    def train_round(self, rnd: int, users: list[int]) -> dict[str, float]:
        ex, crypto = self.exchange, self.crypto
        assert ex is not None and crypto is not None and self.cv is not None
        missing = [u for u in users if u not in self.keyed]
        if missing:
            self.distribute_keys(missing)
        for u in missing:
            if u not in self.keyed:
                ex.drop(u, "never received the Paillier key")
        active = [u for u in users if u in self.keyed]
        cv_bytes = crypto.to_bytes(self.cv)
        uploads = ex.phase(
            schema.UPDATE, {u: schema.update_message(rnd, cv_bytes) for u in active}, str(rnd),
            lambda _u, c: self._parse_upload(c))
        self.cv = crypto.apply_updates(self.cv, [(up.items, up.ct_list) for up in uploads.values()])
        for u, up in uploads.items():
            self.record_client_seconds(u, up.seconds)
        return {"train_loss": weighted_train_loss(uploads.values())}

    def _parse_upload(self, content: RecordDict) -> schema.Upload:
        """Schema check, then every ciphertext in [1, n^2) and coprime to n (else the user is dropped)."""
        assert self.crypto is not None
        up = schema.parse_update_reply(content, self.meta.n_items, self.crypto.cts_per_row, self.key_bits,
                                       self.mode, self.pad_to)
        up.ct_list = self.crypto.from_bytes(up.cts)
        return up

    def evaluation_content(self) -> RecordDict:
        assert self.crypto is not None and self.cv is not None
        return RecordDict({"model": schema.update_message(0, self.crypto.to_bytes(self.cv))["model"]})

    def server_state_summary(self) -> dict[str, Any]:
        return {"key_bits": self.key_bits, "key_holder": self.holder, "keyed_users": len(self.keyed),
                "cts_per_row": self.crypto.cts_per_row if self.crypto else None}
