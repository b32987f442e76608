"""``dp_fedrec``: the DP-FedRec baseline (local DP) of SecEmb Figure 7, on the plaintext protocol.

Selected by strategy=plaintext with dp.enabled=true, dp.mode=local. Each round
the server sends every sampled user the full public model and the noise
multiplier; each user returns a noised gradient of EVERY item row and of the
dense vector (clients/dp_fedrec.py). The server sums them, averages over the
users and steps with the plaintext aggregation
(:meth:`PlaintextStrategy.apply_gradients`). No secure aggregation: the server
sees each upload with that user's own noise on it, which is what the ledger
accounts (one noise multiplier per release, as for one server in central mode).
It receives no loss or rating count, so its records carry no train loss.
"""

from __future__ import annotations

import numpy as np

from schemas import dp_fedrec as schema
from strategies.plaintext import PlaintextRoundState, PlaintextStrategy


class DPFedRecStrategy(PlaintextStrategy):
    name = "dp_fedrec"

    @property
    def stages(self):
        return (self.update_stage, self.step_stage)

    def update_stage(self, st: PlaintextRoundState) -> None:
        """Full model down (with the noise multiplier), full noised gradients up."""
        assert self.exchange is not None and self.dp is not None
        content = schema.update_message(st.rnd, self.model.table_numpy(), self.model.dense_numpy(),
                                        self.dp.noise_multiplier)
        n, r, d = self.meta.n_items, self.spec.row_dim, self.spec.dense_size
        st.updates = self.exchange.phase(schema.UPDATE, {u: content for u in st.users}, str(st.rnd),
                                         lambda _u, c: schema.parse_update_reply(c, n, r, d))

    def step_stage(self, st: PlaintextRoundState) -> None:
        users = list(st.updates)
        for u in users:
            if st.updates[u].seconds is not None:
                self.record_client_seconds(u, st.updates[u].seconds)
        if users:
            rows = np.sum([st.updates[u].row_grads for u in users], axis=0, dtype=np.float64)
            self.apply_gradients(np.arange(self.meta.n_items), rows, np.stack([st.updates[u].dense_grad for u in users]))
        st.metrics = {"train_loss": None}  # the users send no loss (schemas/dp_fedrec.py)
