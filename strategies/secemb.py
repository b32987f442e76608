"""``secemb``: SecEmb (Mai et al., ICML 2025) with two non-colluding servers.

Server 0 is this strategy (the Flower ServerApp); server 1 is reached only
through a bytes-in/bytes-out link (:mod:`twoserver`).

Set-up: m' = ceil(alpha x mean |I_u|) from a secure sum of the users' counts
(Appendix C), unless ``strategy.m_prime`` is given.

Each round (Algorithm 3), in the order of the paper:
1. Retrieval. Users send DPF keys (party 0's in the clear to server 0, party
   1's sealed to server 1). Server 0 syncs the public table to server 1, both
   evaluate their keys over the whole item domain and keep the tree paths;
   server 1's shares go back sealed to each user.
2. Aggregation. Users rebuild their rows, train, and upload one correction
   word per row (path sharing) and shares of the dense gradient. Each server
   runs ConvertEval on its cached paths for the users that are still there
   (dropouts between the phases are simply left out), server 1 sends its
   aggregate share to server 0, which reconstructs the sum, averages and
   steps the public model with Adam — exactly what ``plaintext`` does with
   its plaintext sum. The round's training loss and rating count travel only
   as two extra elements of the shared dense vector, so server 0 learns their
   sums over the kept users; an aggregate over fewer than ``min_users`` users
   is refused.

Evaluation uses the same retrieval (:mod:`clients.secemb_evaluation`): the
evaluated users send keys for their test items and ranking case padded to the
evaluation m' (:meth:`SecEmbStrategy.eval_m_prime`), server 1 evaluates them
with ``retrieve_eval`` (its paths are not kept, and its training state is left
alone), and the users answer with secret-shared metric sums.

The round is the stage list :attr:`SecEmbStrategy.stages` over a
:class:`SecEmbRoundState`; what differs between SecEmb and its ablations
(payload, both servers' aggregation) is one :mod:`twoserver.variants` object.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recdata.dataset import DatasetMeta
from schemas import secemb as schema
from schemas import two_server as ts
from schemas.config import AppConfig
from strategies.base import RoundState, SetupError
from strategies.exchange import Exchange
from strategies.two_server import TwoServerStrategy
from twoserver.link import Server1Error
from twoserver.party import SecEmbParty
from twoserver.variants import variant_of


log = logging.getLogger("secrec.strategy")


def m_prime_of(total_items: int, n_users: int, alpha: float) -> int:
    """Appendix C: m' = ceil(alpha x (sum_u |I_u|) / n), at least 1 (the caller caps it at n_items)."""
    return max(1, math.ceil(alpha * total_items / max(n_users, 1)))


COUNT_SALT = 0xC0DE  # seed-sequence salt of the m' count sample (never shares a stream with round sampling)


def count_sample(users: list[int], sample: int | None, seed: int) -> list[int]:
    """The users whose rated-item counts the secure sum for m' adds up: all of them, or a seeded sample.

    Appendix C sums every user's count; at ML-25M's 162,541 users that is one message per user before
    round 1 (about 30 minutes here). The mean of a seeded sample of 1,000 estimates it to a few percent
    (m' is a padding length, not a statistic anyone reports) at a cost independent of the population.
    The batched engine calls this too, so both engines use the same users.
    """
    if sample is None or sample >= len(users):
        return list(users)
    rng = np.random.default_rng([int(seed), COUNT_SALT])
    return sorted(users[i] for i in rng.choice(len(users), size=int(sample), replace=False))


@dataclass
class SecEmbRoundState(RoundState):
    """What the stages of one SecEmb round (Algorithm 3) read and fill, in order."""

    m_prime: int = 0
    requests: dict[int, Any] = field(default_factory=dict)    # user -> (party-0 DPF keys, box for server 1)
    table_ring: np.ndarray | None = None                       # public table in the ring (both servers)
    boxes1: dict[str, np.ndarray] = field(default_factory=dict)  # server 1's sealed embedding shares
    retrieved: list[int] = field(default_factory=list)         # users both servers evaluated
    shares0: dict[int, np.ndarray] = field(default_factory=dict)  # server 0's embedding shares
    uploads: dict[int, schema.Upload] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)              # users in both servers' aggregates
    sparse1: np.ndarray | None = None                          # server 1's aggregate shares
    dense1: np.ndarray | None = None


class SecEmbStrategy(TwoServerStrategy):
    name = "secemb"

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        s = cfg.strategy
        self.variant = variant_of(s.variant)
        self.m_prime: int | None = s.m_prime
        self.party0 = SecEmbParty(0, meta.n_items, self.ring, max_cache_bytes=int(cfg.strategy.path_cache_mib) << 20)

    def setup(self) -> None:
        super().setup()
        if self.m_prime is None:
            self.m_prime = self._secure_mean_count()
        self.m_prime = min(int(self.m_prime), self.meta.n_items)

    def _secure_mean_count(self) -> int:
        """Appendix C: m' = ceil(alpha x (sum_u |I_u|) / n) from additive shares of the counts
        (over :func:`count_sample`'s users)."""
        assert self.exchange is not None
        users = count_sample(list(self.users), self.cfg.strategy.count_users, int(self.cfg.seed))
        replies = self.exchange.phase(schema.COUNT, {u: schema.count_message(self.server1_public, self.run_id)
                                                     for u in users}, "setup",
                                      lambda _u, c: schema.parse_count_reply(c), count_bytes=False)
        refused = self.too_few(replies, "count sum")
        if refused:
            raise SetupError(f"cannot derive m' securely: {refused}{self.why_users_failed(users, replies)}; "
                             "fix that, or set strategy.m_prime to skip the secure count")
        meta, arrays = self.server1.call("count", {"run": self.run_id, "users": sorted(replies),
                                                  "min_users": self.min_users},
                                         {f"box_{u}": r[1] for u, r in replies.items()},
                                         expect={"sum": (np.uint64, (1,))})
        ok = [u for u in replies if str(u) not in meta["rejected"]]
        total = (sum((replies[u][0] for u in ok), np.zeros(1, np.uint64)) + arrays["sum"])[0]
        return m_prime_of(int(total), len(ok), float(self.cfg.strategy.alpha))

    # -------------------------------------------------------------- round
    def new_round_state(self, rnd: int, users: list[int]) -> SecEmbRoundState:
        assert self.m_prime is not None
        return SecEmbRoundState(rnd, users, m_prime=self.m_prime)

    @property
    def stages(self):
        return (self.retrieval_stage, self.server_retrieval_stage, self.aggregation_stage,
                self.server_aggregation_stage, self.update_stage)

    def retrieval_stage(self, st: SecEmbRoundState) -> None:
        """Users pad/truncate to m' and send DPF keys (party 1's sealed for server 1)."""
        assert self.exchange is not None
        msg = schema.retrieve_message(st.rnd, st.m_prime, self.server1_public, self.run_id, self.ring_bits,
                                      self.variant.name)
        st.requests = self.exchange.phase(
            schema.RETRIEVE, {u: msg for u in st.users}, str(st.rnd),
            lambda _u, c: schema.parse_retrieve_reply(c, self.meta.n_items, st.m_prime, self.ring))
        refused = self.too_few(st.requests, "retrieval")  # its aggregate could not reach min_users anyway
        if refused:
            st.refuse(refused)

    def ring_table(self) -> np.ndarray:
        """The public table in Z_2^k, what both servers retrieve rows from (so users receive it quantised)."""
        return self.codec.to_ring(self.model.table_numpy().astype(np.float64), self.ring)

    def share_table(self) -> np.ndarray:
        """The current public table in the ring, also set at server 1 (both servers retrieve from it)."""
        table_ring = self.ring_table()
        self.server1.call("set_model", {"ring_bits": self.ring_bits}, {"table": table_ring})
        return table_ring

    def server_retrieval_stage(self, st: SecEmbRoundState) -> None:
        """Both servers evaluate their keys over the item domain (server 1's shares go back sealed)."""
        st.table_ring = self.share_table()
        try:
            meta1, st.boxes1 = self.server1.call(
                "retrieve", {"run": self.run_id, "round": st.rnd, "m_prime": st.m_prime,
                             "users": sorted(st.requests)}, {f"box_{u}": box for u, (_k, box) in st.requests.items()})
        except Server1Error as exc:  # e.g. below server 1's floor after its own rejections: this round only
            st.refuse(str(exc))
            return
        st.retrieved = [u for u in st.requests if str(u) not in meta1["rejected"]]
        unboxed = [u for u in st.retrieved if not ts.is_box(st.boxes1.get(f"box_{u}"))]
        refused = (f"server 1's retrieval reply lacks a sealed box for users {unboxed}" if unboxed
                   else self.too_few(st.retrieved, "retrieval"))
        if refused:
            st.refuse(refused)
            return
        st.shares0 = self.party0.retrieve({u: st.requests[u][0] for u in st.retrieved}, st.table_ring)

    def aggregation_stage(self, st: SecEmbRoundState) -> None:
        """Users rebuild rows, train, upload CWs (or fresh keys) and shares of [dense, loss, 1]."""
        assert self.exchange is not None
        dense = self.model.dense_numpy()
        size = self.spec.dense_size + ts.TRAIN_METRICS
        key_shape = self.variant.upload_key_shape(st.m_prime, self.spec.row_dim)
        st.uploads = self.exchange.phase(
            schema.UPLOAD,
            {u: schema.upload_message(st.rnd, st.shares0[u], st.boxes1[f"box_{u}"], dense) for u in st.retrieved},
            str(st.rnd), lambda _u, c: schema.parse_upload_reply(c, key_shape, self.meta.n_items, st.m_prime,
                                                                 self.spec.row_dim, size, self.ring))
        refused = self.too_few(st.uploads, "aggregation")
        if refused:
            st.refuse(refused)

    def server_aggregation_stage(self, st: SecEmbRoundState) -> None:
        """Server 1 aggregates its shares for the users it accepts; server 0 the same users."""
        meta = {"run": self.run_id, "round": st.rnd, "width": self.spec.row_dim,
                "dense_size": self.spec.dense_size + ts.TRAIN_METRICS, "users": sorted(st.uploads),
                **self.variant.server1_meta(st.m_prime, self.meta.n_items), **self.server1_dp_meta()}
        answer = self.server1_sum(self.variant.server1_op, meta, self.variant.server1_arrays(st.uploads),
                                  "aggregation", expect={"sparse": (self.ring, (self.meta.n_items, self.spec.row_dim)),
                                                         "dense": (self.ring, (meta["dense_size"],))})
        if isinstance(answer, str):
            st.refuse(answer)
            return
        _meta1, agg1, st.kept = answer
        st.sparse1, st.dense1 = agg1["sparse"], agg1["dense"]

    def update_stage(self, st: SecEmbRoundState) -> None:
        """Server 0 reconstructs the sums, averages over the kept users and steps the public model."""
        sparse0 = self.variant.aggregate_uploads(self.party0, {u: st.uploads[u] for u in st.kept},
                                                 self.spec.row_dim)
        dense0 = sum((st.uploads[u].dense_share0 for u in st.kept),
                     np.zeros(self.spec.dense_size + ts.TRAIN_METRICS, dtype=self.ring))
        # central DP: server 0 noises its own share (server 1 did the same to its share); metric slots untouched
        sparse0, dense0 = self.noised_share(sparse0), self.noised_share(dense0, self.spec.dense_size)
        train_loss = self.step_from_ring(sparse0 + st.sparse1, dense0 + st.dense1, len(st.kept))
        self.record_telemetry(st.uploads, st.kept)
        st.metrics = {"train_loss": train_loss, "m_prime": st.m_prime}

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The public model plus m' (so a resumed run keeps it and skips the secure count)."""
        arrays = super().checkpoint_state()
        if self.m_prime is not None:
            arrays["m_prime"] = np.array([self.m_prime], dtype=np.int64)
        return arrays

    def restore_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().restore_state(arrays)
        if "m_prime" in arrays:
            self.m_prime = int(arrays["m_prime"][0])

    def ranking_case_size(self) -> int:
        """Items in a user's ranking case (its positive and the negatives), 0 without ranking."""
        train = self.cfg.train
        return int(train.ranking_negatives) + 1 if train.ranking else 0

    def eval_m_prime(self) -> int:
        """The evaluation m': a training request's m' plus room for the ranking case (all items at most)."""
        assert self.m_prime is not None
        return min(int(self.m_prime) + self.ranking_case_size(), self.meta.n_items)

    def evaluation_replies(self, rnd: int, users: list[int], ex: Exchange) -> dict[int, Any]:
        """Evaluation through the private retrieval (:mod:`clients.secemb_evaluation`): users send DPF keys
        for their test items and ranking case padded to :meth:`eval_m_prime`, both servers evaluate them
        on the current table (server 1 with paths it does not keep), users get the shares and the dense
        vector and answer with secret-shared metric sums."""
        m_eval = self.eval_m_prime()
        msg = schema.retrieve_message(rnd, m_eval, self.server1_public, self.run_id, self.ring_bits, self.variant.name)
        requests = ex.phase(schema.EVAL_RETRIEVE, {u: msg for u in users}, f"eval-{rnd}",
                            lambda _u, c: schema.parse_retrieve_reply(c, self.meta.n_items, m_eval, self.ring))
        if self.too_few(requests, "evaluation retrieval"):
            return {}  # evaluation_sums then refuses the evaluation
        table_ring = self.share_table()
        try:
            meta1, boxes1 = self.server1.call(
                "retrieve_eval", {"run": self.run_id, "round": rnd, "m_prime": m_eval, "users": sorted(requests),
                                  "min_users": self.min_users},
                {f"box_{u}": box for u, (_k, box) in requests.items()})
        except Server1Error as exc:
            log.warning("[%s] server 1 refused the evaluation retrieval of round %d: %s", self.name, rnd, exc)
            return {}
        retrieved = [u for u in requests if str(u) not in meta1["rejected"]
                     and ts.is_box(boxes1.get(f"box_{u}"))]
        party0 = SecEmbParty(0, self.meta.n_items, self.ring, max_cache_bytes=0)  # nothing is aggregated from it
        shares0 = party0.retrieve({u: requests[u][0] for u in retrieved}, table_ring)
        dense = self.model.dense_numpy()
        contents = {u: self.evaluation_message(rnd, schema.upload_message(rnd, shares0[u], boxes1[f"box_{u}"], dense))
                    for u in retrieved}
        return ex.phase(schema.EVALUATE_SHARES, contents, f"eval-{rnd}", self.parse_evaluation)

    def server_state_summary(self) -> dict[str, Any]:
        return {"m_prime": self.m_prime, "server1_bytes_sent": self.server1.bytes_sent,
                "server1_bytes_received": self.server1.bytes_received}
