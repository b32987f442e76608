"""``fedmf``: FedMF (Chai et al.) — the server updates an encrypted item matrix.

Set-up (:meth:`FedMFStrategy.setup`, stages in the paper's order): the server
picks a key holder, which generates the Paillier key pair; the server
encrypts V once; the secret key reaches every other user sealed under that
user's X25519 key, relayed by the server, which keeps only the public key.
Users without a key when sampled (late joiners, failed deliveries) go through
the same delivery first.

Each round (:meth:`FedMFStrategy.train_round`): sampled users download C_V,
decrypt, run the FedMF step (the same code as ``distributed_mf``) and upload
packed encryptions of their negated gradient rows with an offset; the server
multiplies them into C_V and removes the accumulated offsets with one public
constant per row — C_V <- C_V - sum C_G without ever decrypting. Training
loss and rating counts, and at evaluation test error sums and counts, reach
the server only as sums over the round's users: each user encrypts its
metrics in one packed ciphertext, the server multiplies them and one keyed
user decrypts the aggregate (``query.fedmf_decrypt``); a sum over fewer than
``strategy.min_users`` users is refused, never decrypted.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import RecordDict

from models.fedmf_mf import init_item_matrix
from crypto.packed_matrix import PackedMatrixPublic
from schemas import fedmf as schema
from recdata.dataset import DatasetMeta
from strategies.base import RecStrategy, RoundState as BaseRoundState, UserExchange
from strategies.exchange import Exchange, Meter
from schemas.config import AppConfig

log = logging.getLogger("secrec.fedmf")


@dataclass
class SetupState:
    """What the key set-up stages hand each other."""

    holder: int | None = None
    n_bytes: np.ndarray | None = None


@dataclass
class RoundState(BaseRoundState):
    """One round's working state, passed through :attr:`FedMFStrategy.stages` in order."""

    active: list[int] = field(default_factory=list)
    uploads: dict[int, schema.Upload] = field(default_factory=dict)


class FedMFStrategy(RecStrategy):
    name = "fedmf"
    evaluate_type = schema.EVALUATE

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        s = cfg.strategy
        s.check(cfg)
        self.mode, self.pad_to = s.mode, int(s.pad_to or 0)
        self.key_bits = int(s.key_bits)
        self.min_users = int(s.min_users)
        self.dim = int(cfg.model.dim)
        self.run_id = secrets.token_hex(8)
        self.crypto: PackedMatrixPublic | None = None  # public-key only on the server
        self.cv: list | None = None
        self.keyed: set[int] = set()
        self.holder: int | None = None
        self.n_bytes: np.ndarray | None = None
        self.setup_stages = (self.generate_key_stage, self.encrypt_model_stage, self.deliver_keys_stage)

    # ------------------------------------------------------ key distribution
    def setup(self) -> None:
        state = SetupState()
        for stage in self.setup_stages:
            stage(state)

    def generate_key_stage(self, state: SetupState) -> None:
        """The designated key holder (``strategy.key_holder``, the one with the signing key), else the first
        user that answers, generates the Paillier key pair."""
        assert self.exchange is not None
        designated = getattr(self.cfg.strategy, "key_holder", None)
        if designated is not None and int(designated) not in self.users:
            raise RuntimeError(f"strategy.key_holder={designated} is not a registered user")
        candidates = [int(designated)] if designated is not None else self.users
        for holder in candidates:
            reply = self.exchange.phase(schema.SETUP, {holder: schema.setup_message(self.key_bits, self.run_id)},
                                        "keys", lambda _u, c: schema.parse_public_key_reply(c, self.key_bits),
                                        count_bytes=False)
            if holder in reply:
                state.holder, state.n_bytes = holder, reply[holder]
                break
        if state.holder is None:
            raise RuntimeError("no user could generate the Paillier key")
        self.holder, self.n_bytes = state.holder, state.n_bytes
        self.keyed = {state.holder}

    def encrypt_model_stage(self, state: SetupState) -> None:
        """The server encrypts the initial V under the public key (it never holds the secret key)."""
        assert state.n_bytes is not None
        self.crypto = schema.matrix_crypto(self.cfg, self.meta.n_items, state.n_bytes)
        V = init_item_matrix(self.meta.n_items, self.dim, int(self.cfg.seed), float(self.cfg.model.init_std))
        self.cv = self.crypto.encrypt_matrix(V)

    def deliver_keys_stage(self, state: SetupState) -> None:
        """``strategy.key_delivery=eager`` only: every user gets the key now (FedMF's procedure, one message
        per user per phase). Lazy delivery leaves this to the rounds and evaluations that sample a user."""
        if self.cfg.strategy.key_delivery == "eager":
            self.distribute_keys([u for u in self.users if u != state.holder])

    def distribute_keys(self, users: list[int], ex: Exchange | None = None) -> list[int]:
        """Deliver the sealed secret key to ``users`` (through ``ex``, else the round's exchange);
        return those who acknowledged."""
        ex, run, n_b = ex or self.exchange, self.run_id, self.n_bytes
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
        acks = ex.phase(schema.KEY, {u: self.delivery_message(u, i, sealed[self.holder], pubs[u])
                                     for i, u in enumerate(order)}, "keys",
                        lambda _u, c: schema.parse_ack_reply(c), count_bytes=False)
        self.keyed.update(acks)
        return sorted(acks)

    def delivery_message(self, user: int, index: int, sealed: schema.SealedKeys, announce_pub: bytes) -> RecordDict:
        """The relayed box for ``user`` (and the holder's signature over (run, n, its announce key), if any).

        The server only relays; users that pin the key holder's fingerprint
        refuse a key this message does not prove came from the holder.
        """
        assert self.n_bytes is not None
        extra = {} if sealed.sigs is None else {"sig": sealed.sigs[index], "signer": sealed.signer}
        return schema.key_message("deliver", self.run_id, self.n_bytes, box=sealed.boxes[index], **extra)

    # ------------------------------------------------------------- round
    @property
    def stages(self) -> tuple:
        """One round (FedMF Section 5), run by :meth:`RecStrategy.train_round` in this order."""
        return (self.deliver_missing_keys_stage, self.update_stage, self.aggregate_stage, self.train_metrics_stage)

    def new_round_state(self, rnd: int, users: list[int]) -> RoundState:
        return RoundState(rnd, users)

    def deliver_missing_keys_stage(self, state: RoundState) -> None:
        """Sampled users without the key get it first; those still without it sit the round out."""
        assert self.exchange is not None
        missing = [u for u in state.users if u not in self.keyed]
        if missing:
            self.distribute_keys(missing)
        for u in missing:
            if u not in self.keyed:  # keep the delivery's own reason (e.g. a refused signature) beside ours
                why = self.exchange.meter.dropped.get(u)
                self.exchange.drop(u, "never received the Paillier key" + (f" ({why})" if why else ""))
        state.active = [u for u in state.users if u in self.keyed]

    def update_stage(self, state: RoundState) -> None:
        """Send C_V; receive each user's encrypted gradient rows and metric ciphertext."""
        assert self.exchange is not None and self.crypto is not None and self.cv is not None
        cv_bytes = self.crypto.to_bytes(self.cv)
        state.uploads = self.exchange.phase(
            schema.UPDATE, {u: schema.update_message(state.rnd, cv_bytes) for u in state.active}, str(state.rnd),
            lambda _u, c: self._parse_upload(c))
        for u, up in state.uploads.items():
            if up.seconds is not None:
                self.record_client_seconds(u, up.seconds)

    def aggregate_stage(self, state: RoundState) -> None:
        """C_V <- C_V - sum of the uploads, homomorphically."""
        assert self.crypto is not None and self.cv is not None
        self.cv = self.crypto.apply_updates(self.cv, [(up.items, up.ct_list) for up in state.uploads.values()])

    def train_metrics_stage(self, state: RoundState) -> None:
        """train_loss, the mean of the round's users' own losses, from their secure sum; none with
        ``train.release_loss=false`` (the users put 0 in the slot, and no sum is asked for)."""
        if not self.cfg.train.releases_loss(self.cfg.dp.enabled):
            state.metrics = {"train_loss": None}
            return
        sums, refused = self.secure_sum("train", state.rnd, {u: up.metric for u, up in state.uploads.items()})
        if sums is None:  # the model update stands; only the metric sum is withheld
            state.metrics = {"train_loss": None, "train_metrics_refused": refused}
            return
        state.metrics = {"train_loss": float(sums[0]) / len(state.uploads)}

    def _parse_upload(self, content: RecordDict) -> schema.Upload:
        """Schema check, then every ciphertext in [1, n^2) and coprime to n (else the user is dropped)."""
        assert self.crypto is not None
        up = schema.parse_update_reply(content, self.meta.n_items, self.crypto.cts_per_row, self.key_bits,
                                       self.mode, self.pad_to)
        up.ct_list = self.crypto.from_bytes(up.cts)
        up.metric = self.crypto.scheme.from_array(up.metric_ct)[0]
        return up

    # ------------------------------------------------------- secure sums
    def secure_sum(self, kind: str, rnd: int, cts: dict[int, Any]) -> tuple[np.ndarray | None, str | None]:
        """Multiply the users' metric ciphertexts and have one of them decrypt the aggregate.

        Returns (sums, None), or (None, why) when the sum is refused (fewer than
        ``min_users`` users) or no user would decrypt it. The decrypting user
        is drawn with ``secrets`` from the contributors, so the server cannot
        steer the choice by seed; the phase is metered as protocol traffic.
        """
        assert self.exchange is not None and self.crypto is not None
        k = len(cts)
        if k < self.min_users:
            why = (f"{kind} metrics of round {rnd} refused: the sum would cover {k} user(s), fewer than "
                   f"strategy.min_users={self.min_users}, and would reveal individual values")
            log.warning(why)
            return None, why
        scheme = self.crypto.scheme
        agg = None
        for c in cts.values():
            agg = c if agg is None else scheme.add_encrypted(agg, c)
        content = schema.decrypt_message(kind, rnd, k, scheme.to_array([agg]))
        candidates = list(cts)
        secrets.SystemRandom().shuffle(candidates)
        for user in candidates[:3]:  # a decryptor that fails is not dropped from the round: try another
            side = Meter()
            reply = self.side_exchange(side).phase(
                schema.DECRYPT, {user: content}, f"{kind}-sum-{rnd}",
                lambda _u, c: schema.parse_decrypt_reply(c, kind, k))
            self.meter.down[user] += side.down.get(user, 0)
            self.meter.up[user] += side.up.get(user, 0)
            self.meter.wait_seconds += side.wait_seconds
            if user in reply:
                return reply[user], None
            log.warning("user %d did not decrypt the %s aggregate: %s", user, kind, side.dropped.get(user))
        return None, f"{kind} metrics of round {rnd}: no user decrypted the aggregate"

    # ------------------------------------------------------- evaluation
    def evaluation_content(self) -> RecordDict:
        assert self.crypto is not None and self.cv is not None
        return RecordDict({"model": schema.update_message(0, self.crypto.to_bytes(self.cv))["model"]})

    def evaluate(self, rnd: int) -> dict[str, Any]:
        """Evaluated users without the key get it first (lazy delivery), then the base evaluation."""
        missing = [u for u in self.evaluation_sample() if u not in self.keyed]
        if missing:  # on its own meter, as evaluation's messages are: a failed delivery is not a round's drop
            self.distribute_keys(missing, self.side_exchange(Meter()))
        return super().evaluate(rnd)

    def side_exchange(self, meter: Meter) -> UserExchange:
        """The round's grid and node directory on another meter (a phase that must not count as the round's)."""
        assert self.exchange is not None
        return UserExchange(self.exchange.grid, self.directory, self.exchange.timeout, meter)

    def evaluation_users(self) -> list[int]:
        """Only users holding the key can decrypt C_V."""
        return [u for u in self.evaluation_sample() if u in self.keyed]

    def parse_evaluation(self, user: int, content: RecordDict) -> tuple[Any, float | None]:
        """A user's Enc([sse, count, hit, ndcg, ranked, 1]) (range-checked) and, with telemetry only, its seconds."""
        assert self.crypto is not None
        ct, seconds = schema.parse_evaluation_reply(content, self.key_bits)
        return self.crypto.scheme.from_array(ct)[0], seconds

    def evaluation_sums(self, rnd: int, replies: dict[int, Any]) -> tuple[float, int, int, list[float] | None] | str:
        """The test sums through the same secure sum as training (refused below min_users)."""
        sums, refused = self.secure_sum("eval", rnd, {u: r[0] for u, r in replies.items()})
        if sums is None:
            return str(refused)
        seconds = [r[1] for r in replies.values() if r[1] is not None]
        return float(sums[0]), int(round(sums[1])), len(replies), seconds or None, np.asarray(sums[2:5], float)

    def server_state_summary(self) -> dict[str, Any]:
        return {"key_bits": self.key_bits, "key_holder": self.holder, "keyed_users": len(self.keyed),
                "cts_per_row": self.crypto.cts_per_row if self.crypto else None}
