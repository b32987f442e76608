"""``secfedrec``: the Secure FedRec baseline of the SecEmb paper.

Every sampled user downloads the full model, trains, and secret-shares its
full gradient (m x row_dim + dense) between server 0 and server 1 (two-server
additive secret sharing, the cheapest SecAgg of SecEmb Table 6), with the
user's loss and a 1 as two extra ring elements. Each server
sums its shares; server 1 sends its sum to server 0, which reconstructs the
aggregate (and the metric sums, never one user's) and steps the same public
model as ``plaintext`` and ``secemb``. Fewer than ``min_users`` users: refused.

Evaluation sends every evaluated user the full public model, as training does: asking for its
test items (what ``plaintext`` does, :class:`strategies.base.ItemRequestEvaluation`) would tell
server 0 items the user rated, which this protocol hides (tests/test_server_views.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import RecordDict

from schemas import plaintext as plain_schema
from schemas import secfedrec as schema
from schemas import two_server as ts
from strategies.base import RoundState
from strategies.two_server import TwoServerStrategy


@dataclass
class SecFedRecRoundState(RoundState):
    uploads: dict[int, schema.Upload] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)
    sum1: np.ndarray | None = None  # server 1's share of the sum


class SecFedRecStrategy(TwoServerStrategy):
    name = "secfedrec"

    @property
    def n_table(self) -> int:
        return self.meta.n_items * self.spec.row_dim

    @property
    def size(self) -> int:
        """Length of the shared vector: all rows, the dense gradient, then the metric elements."""
        return self.n_table + self.spec.dense_size + ts.TRAIN_METRICS

    def new_round_state(self, rnd: int, users: list[int]) -> SecFedRecRoundState:
        return SecFedRecRoundState(rnd, users)

    @property
    def stages(self):
        return (self.update_stage, self.server_sum_stage, self.step_stage)

    def update_stage(self, st: SecFedRecRoundState) -> None:
        """Users get the full model, train, and upload share 0 (clear) and share 1 (sealed for server 1)."""
        assert self.exchange is not None
        content = schema.update_message(st.rnd, self.model.table_numpy(), self.model.dense_numpy(),
                                        self.server1_public, self.run_id, self.ring_bits)
        st.uploads = self.exchange.phase(schema.UPDATE, {u: content for u in st.users}, str(st.rnd),
                                         lambda _u, c: schema.parse_update_reply(c, self.size, self.ring_bits))
        refused = self.too_few(st.uploads, "aggregation")
        if refused:
            st.refuse(refused)

    def server_sum_stage(self, st: SecFedRecRoundState) -> None:
        """Server 1 sums the shares it can open; server 0 keeps the same users."""
        answer = self.server1_sum(
            "sum_shares", {"run": self.run_id, "round": st.rnd, "users": sorted(st.uploads), "shape": [self.size],
                           "ring_bits": self.ring_bits, **self.server1_dp_meta()},
            {f"box_{u}": up.box for u, up in st.uploads.items()},
            "aggregation", expect={"sum": (self.ring, (self.size,))})
        if isinstance(answer, str):
            st.refuse(answer)
            return
        _meta1, arrays1, st.kept = answer
        st.sum1 = arrays1["sum"]

    def step_stage(self, st: SecFedRecRoundState) -> None:
        """Reconstruct the sums, average over the kept users, step the public model."""
        share0 = sum((st.uploads[u].share0 for u in st.kept), np.zeros(self.size, dtype=self.ring))
        # central DP: server 0 noises its own share of [table | dense] (server 1 did the same), not the metrics
        total = self.noised_share(share0, self.size - ts.TRAIN_METRICS) + st.sum1
        train_loss = self.step_from_ring(total[:self.n_table].reshape(self.meta.n_items, self.spec.row_dim),
                                         total[self.n_table:], len(st.kept))
        self.record_telemetry(st.uploads, st.kept)
        st.metrics = {"train_loss": train_loss}

    def evaluation_content(self) -> RecordDict:
        return plain_schema.model_content(self.model.table_numpy(), self.model.dense_numpy())
