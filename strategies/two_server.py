"""Server 0 of a two-server protocol (SecEmb, Secure FedRec): ring codec, link to server 1, private metrics.

What both protocols' server 0 does alike lives here: the fixed-point codec,
the link to server 1, the ``min_users`` floor of every aggregate, decoding
the metric elements appended to the shared dense vector (the round's loss
and rating count arrive only as sums), and the secure evaluation (users
secret-share [SSE, count, hit, ndcg, ranked]; server 1 sums its shares with ``sum_metrics``;
server 0 reconstructs only the sums).
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import RecordDict

from crypto.fixed_point import FixedPointCodec
from crypto.ring import ring_dtype
from crypto.sealed import SealedMessageError, check_public_key, fingerprint
from recdata.dataset import DatasetMeta
from schemas import two_server as ts
from schemas.config import AppConfig
from strategies.base import EvalSums
from strategies.public_model import ModelStrategy
from twoserver.dp_noise import add_noise_share
from twoserver.link import Server1Client, Server1Error

log = logging.getLogger("secrec.strategy")


class TwoServerStrategy(ModelStrategy):
    """Server 0 of a two-server protocol: the ring codec and the link to server 1."""

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        s = cfg.strategy
        s.check(cfg)
        self.ring_bits = int(s.ring_bits)
        self.ring = ring_dtype(self.ring_bits)
        frac = int(s.frac_bits)
        self.codec = FixedPointCodec(frac_bits=frac, value_bound=2.0 ** (self.ring_bits - 1 - frac) - 1.0)
        self.min_users = int(s.min_users)
        # the metric codecs are the users' (both sides derive them from the config alone)
        self.train_metrics = ts.MetricCodec.for_training(self.ring_bits, int(cfg.clients_per_round))
        self.eval_metrics = ts.MetricCodec.for_evaluation(ts.eval_summands(cfg.train.eval_clients, meta.n_users))
        self.server1 = Server1Client.from_config(s, self._reject)
        self.run_id = secrets.token_hex(8)
        self.server1_public = b""

    def setup(self) -> None:
        raw = self.server1.call("hello", {"run": self.run_id, "min_users": self.min_users},
                                expect={"public_key": (np.uint8, (ts.PUBLIC_KEY_BYTES,))})[1]["public_key"].tobytes()
        try:
            self.server1_public = check_public_key(raw)
        except SealedMessageError as exc:
            raise Server1Error(f"server 1's public key is unusable: {exc}") from exc
        log.info("[%s] server 1 key fingerprint %s", self.name, fingerprint(self.server1_public))

    # ------------------------------------------------------ central DP
    @property
    def dp_std(self) -> float:
        """Std of the Gaussian noise each server adds to its aggregated share (0 without DP)."""
        return 0.0 if self.dp is None else self.dp.std

    def noised_share(self, share: np.ndarray, slots: int | None = None) -> np.ndarray:
        """Server 0's aggregated ``share`` plus its own fresh ring-encoded noise (first ``slots`` entries)."""
        return add_noise_share(share, self.dp_std, int(self.cfg.strategy.frac_bits), slots)

    def server1_dp_meta(self) -> dict[str, float | int]:
        """What server 1 needs to add its own noise to its aggregate (sent with the aggregation request).

        {} without DP. Server 1 draws its noise itself; server 0 only tells it the agreed std (raised to
        server 1's own floor there) and the fixed-point scale (which a server 1 with a floor pins itself).
        """
        if self.dp is None:
            return {}
        return {"noise_std": self.dp_std, "frac_bits": int(self.cfg.strategy.frac_bits)}

    # ------------------------------------------------------- aggregates
    def too_few(self, users, what: str) -> str | None:
        """The refusal reason when an aggregate would cover fewer than ``min_users`` users."""
        n = len(list(users))
        if n < self.min_users:
            return f"{what} over {n} users refused: strategy.min_users={self.min_users}"
        return None

    def why_users_failed(self, asked: Iterable[int], answered: Iterable[int]) -> str:
        """What most of the users asked and not answering said (their error replies, or none), for a refusal
        message: a whole population refusing one thing (say, server 1's key against their trust anchor) is a
        configuration to fix, not a reason to try another setting."""
        missing = set(asked) - set(answered)
        if not missing:
            return ""
        reasons = Counter(_gist(self.meter.dropped.get(u, "no reply")) for u in missing)
        reason, n = reasons.most_common(1)[0]
        reason = reason if len(reason) <= 300 else reason[:300] + "..."
        return f" ({len(missing)} users failed; {n} of them: {reason})"

    def server1_sum(self, op: str, meta: dict[str, Any], arrays: dict[str, np.ndarray], what: str,
                    expect: dict[str, tuple[np.dtype | type, tuple[int, ...]]]
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray], list[int]] | str:
        """Server 1's share of a sum over users: (its meta, its arrays, the users it kept), or why it is refused.

        Server 1 refuses a whole request below its own ``min_users`` floor (Server1Error);
        server 0 refuses again when server 1's per-user rejections leave too few users.
        Server1Unavailable (server 1 unreachable) is not a refusal and propagates to the loop.
        """
        try:
            meta1, arrays1 = self.server1.call(op, {**meta, "min_users": self.min_users}, arrays, expect)
        except Server1Error as exc:
            return str(exc)
        if "users" not in meta1:
            return f"server 1's reply to {op} does not say which users it summed"
        kept = [int(u) for u in meta1["users"]]
        return self.too_few(kept, what) or (meta1, arrays1, kept)

    def split_metrics(self, dense_total: np.ndarray, dense_size: int) -> tuple[np.ndarray, float | None]:
        """Split a reconstructed [dense, loss sum, users] sum; return the dense sum (ring) and the round's
        train loss, the mean of its users' losses (None where the users send none: under DP or
        ``train.release_loss=false``, see :func:`clients.two_server.released_loss`)."""
        loss_sum, n_users = self.train_metrics.decode(dense_total[dense_size:])
        released = self.cfg.train.releases_loss(self.dp is not None)
        return dense_total[:dense_size], ts.mean_of(loss_sum, n_users) if released else None

    def step_from_ring(self, table_sum: np.ndarray, dense_metrics_sum: np.ndarray, n_users: int) -> float:
        """Decode the reconstructed ring sums, average over ``n_users`` and step the public model.

        ``table_sum`` [n_items, row_dim] and ``dense_metrics_sum`` [dense_size + 2] are the sums
        over the users of what :func:`clients.two_server.encode_upload` encoded (SecEmb's and
        Secure FedRec's server 0 reconstruct them from the two servers' shares; the batched
        engine adds them directly). Returns the round's train loss (from the metric sums).
        """
        dense_ring, train_loss = self.split_metrics(dense_metrics_sum, self.spec.dense_size)
        self.model.step(self.codec.from_ring(table_sum), self.codec.from_ring(dense_ring), n_users)
        return train_loss

    def record_telemetry(self, uploads: dict[int, Any], kept: list[int]) -> None:
        for u in kept:
            if uploads[u].seconds is not None:
                self.record_client_seconds(u, uploads[u].seconds)

    # ------------------------------------------------------- evaluation
    def evaluation_message(self, rnd: int, content: RecordDict) -> RecordDict:
        return ts.eval_message(content, rnd, self.server1_public, self.run_id)

    def parse_evaluation(self, user: int, content: RecordDict) -> Any:
        return ts.parse_secure_eval_reply(content, self.eval_metrics.ring)

    def evaluation_sums(self, rnd: int, replies: dict[int, Any]) -> EvalSums | str:
        """Secure sum of [SSE, count, hits, ndcg, ranked] over the evaluated users; refused below ``min_users``."""
        refused = self.too_few(replies, "evaluation sum")
        if refused:
            return refused
        answer = self.server1_sum(
            "sum_metrics", {"run": self.run_id, "round": rnd, "users": sorted(replies), "size": ts.EVAL_METRICS,
                            "ring_bits": self.eval_metrics.ring_bits}, {f"box_{u}": r[1] for u, r in replies.items()},
            "evaluation sum", expect={"sum": (self.eval_metrics.ring, (ts.EVAL_METRICS,))})
        if isinstance(answer, str):
            return answer
        _meta1, arrays1, kept = answer
        ring = self.eval_metrics.ring
        total = sum((replies[u][0] for u in kept), np.zeros(ts.EVAL_METRICS, dtype=ring)) + arrays1["sum"]
        sse, count, ranking = self.eval_metrics.decode_eval(total)
        seconds = [replies[u][2] for u in kept if replies[u][2] is not None]
        return sse, count, len(kept), seconds or None, ranking


def _gist(reason: str) -> str:
    """The last line of a drop reason: a client's error reply carries its runtime's whole traceback (Ray's
    names its actor and pid, different for every user), and the exception's own message is its last line."""
    lines = [line.strip() for line in reason.replace("\\n", "\n").splitlines() if line.strip()]
    return lines[-1].removesuffix("'>") if lines else reason
