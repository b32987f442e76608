"""``secfedrec``: the Secure FedRec baseline of the SecEmb paper.

Every sampled user downloads the full model, trains, and secret-shares its
full gradient (m x row_dim + dense) between server 0 and server 1 (two-server
additive secret sharing, the cheapest SecAgg of SecEmb Table 6). Each server
sums its shares; server 1 sends its sum to server 0, which reconstructs the
aggregate and steps the same public model as ``plaintext`` and ``secemb``.
"""

from __future__ import annotations


import numpy as np
from flwr.app import RecordDict

from schemas import plaintext as plain_schema
from schemas import secfedrec as schema
from strategies.base import weighted_train_loss
from strategies.two_server import TwoServerStrategy


class SecFedRecStrategy(TwoServerStrategy):
    name = "secfedrec"


    def train_round(self, rnd: int, users: list[int]) -> dict[str, float]:
        assert self.exchange is not None
        n_table = self.meta.n_items * self.spec.row_dim
        size = n_table + self.spec.dense_size
        content = schema.update_message(rnd, self.model.table_numpy(), self.model.dense_numpy(),
                                        self.server1_public, self.run_id, self.ring_bits)
        uploads = self.exchange.phase(schema.UPDATE, {u: content for u in users}, str(rnd),
                                      lambda _u, c: schema.parse_update_reply(c, size, self.ring_bits))
        meta1, arrays1 = self.server1.call("sum_shares", {"run": self.run_id, "round": rnd, "users": sorted(uploads),
                                                      "shape": [size], "ring_bits": self.ring_bits},
                                       {f"box_{u}": up.box for u, up in uploads.items()})
        kept = [int(u) for u in meta1["users"]]
        total0 = sum((uploads[u].share0 for u in kept), np.zeros(size, dtype=self.ring))
        grad = self.codec.from_ring(total0 + arrays1["sum"])
        self.model.step(grad[:n_table].reshape(self.meta.n_items, self.spec.row_dim), grad[n_table:], len(kept))
        for u in kept:
            self.record_client_seconds(u, uploads[u].seconds)
        return {"train_loss": weighted_train_loss(uploads[u] for u in kept)}

    def evaluation_content(self) -> RecordDict:
        return plain_schema.model_content(self.model.table_numpy(), self.model.dense_numpy())
