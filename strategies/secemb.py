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
   its plaintext sum.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.app import RecordDict

from schemas import plaintext as plain_schema
from schemas import secemb as schema
from recdata.dataset import DatasetMeta
from strategies.base import weighted_train_loss
from twoserver.party import SecEmbParty, fresh_aggregate
from strategies.two_server import TwoServerStrategy
from schemas.config import AppConfig



class SecEmbStrategy(TwoServerStrategy):
    name = "secemb"

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        s = cfg.strategy
        self.variant = s.variant
        self.m_prime: int | None = s.m_prime
        self.party0 = SecEmbParty(0, meta.n_items, self.ring)

    # ----------------------------------------------------------- server 1

    def setup(self) -> None:
        super().setup()
        if self.m_prime is None:
            self.m_prime = self._secure_mean_count()
        self.m_prime = min(int(self.m_prime), self.meta.n_items)

    def _secure_mean_count(self) -> int:
        """Appendix C: m' = ceil(alpha x (sum_u |I_u|) / n) from additive shares of the counts."""
        assert self.exchange is not None
        replies = self.exchange.phase(schema.COUNT, {u: schema.count_message(self.server1_public, self.run_id)
                                                     for u in self.users}, "setup",
                                      lambda _u, c: schema.parse_count_reply(c), count_bytes=False)
        meta, arrays = self.server1.call("count", {"run": self.run_id, "users": sorted(replies)},
                                     {f"box_{u}": r[1] for u, r in replies.items()})
        ok = [u for u in replies if str(u) not in meta["rejected"]]
        total = (sum((replies[u][0] for u in ok), np.zeros(1, np.uint64)) + arrays["sum"])[0]
        return max(1, math.ceil(float(self.cfg.strategy.alpha) * int(total) / max(len(ok), 1)))

    # -------------------------------------------------------------- round
    def train_round(self, rnd: int, users: list[int]) -> dict[str, float]:
        ex = self.exchange
        assert ex is not None and self.m_prime is not None
        m_prime, row_dim, dense_size = self.m_prime, self.spec.row_dim, self.spec.dense_size

        # 1. Retrieval
        requests = ex.phase(
            schema.RETRIEVE,
            {u: schema.retrieve_message(rnd, m_prime, self.server1_public, self.run_id, self.ring_bits, self.variant)
             for u in users}, str(rnd),
            lambda _u, c: schema.parse_retrieve_reply(c, self.meta.n_items, m_prime, self.ring))
        table_ring = self.codec.to_ring(self.model.table_numpy().astype(np.float64), self.ring)
        self.server1.call("set_model", {"ring_bits": self.ring_bits}, {"table": table_ring})
        meta1, boxes1 = self.server1.call("retrieve", {"run": self.run_id, "round": rnd, "m_prime": m_prime,
                                                   "users": sorted(requests)},
                                      {f"box_{u}": box for u, (_k, box) in requests.items()})
        retrieved = [u for u in requests if str(u) not in meta1["rejected"]]
        shares0 = self.party0.retrieve({u: requests[u][0] for u in retrieved}, table_ring)

        # 2. Aggregation
        dense = self.model.dense_numpy()
        uploads = ex.phase(
            schema.UPLOAD, {u: schema.upload_message(rnd, shares0[u], boxes1[f"box_{u}"], dense) for u in retrieved},
            str(rnd), lambda _u, c: schema.parse_upload_reply(c, self.variant, self.meta.n_items, m_prime, row_dim,
                                                              dense_size, self.ring))
        agg_meta = {"run": self.run_id, "round": rnd, "width": row_dim, "dense_size": dense_size,
                    "users": sorted(uploads), "variant": self.variant, "m_prime": m_prime,
                    "n_items": self.meta.n_items}
        if self.variant == "secemb":
            meta1, agg1 = self.server1.call("aggregate", agg_meta,
                                        {**{f"cw_{u}": up.correction_words for u, up in uploads.items()},
                                         **{f"box_{u}": up.box for u, up in uploads.items()}})
            kept = [int(u) for u in meta1["users"]]
            sparse0 = self.party0.aggregate({u: uploads[u].correction_words for u in kept}, row_dim)
        else:
            meta1, agg1 = self.server1.call("aggregate_fresh", agg_meta, {f"box_{u}": up.box for u, up in uploads.items()})
            kept = [int(u) for u in meta1["users"]]
            sparse0 = fresh_aggregate(SecEmbParty(0, self.meta.n_items, self.ring),
                                             {u: uploads[u].keys0 for u in kept}, row_dim, self.variant)
        dense0 = sum((uploads[u].dense_share0 for u in kept), np.zeros(dense_size, dtype=self.ring))
        table_grad = self.codec.from_ring(sparse0 + agg1["sparse"])
        dense_grad = self.codec.from_ring(dense0 + agg1["dense"])
        self.model.step(table_grad, dense_grad, len(kept))
        for u in kept:
            self.record_client_seconds(u, uploads[u].seconds)
        return {"train_loss": weighted_train_loss(uploads[u] for u in kept), "m_prime": m_prime}

    def evaluation_content(self) -> RecordDict:
        return plain_schema.model_content(self.model.table_numpy(), self.model.dense_numpy())

    def server_state_summary(self) -> dict[str, Any]:
        return {"m_prime": self.m_prime, "server1_bytes_sent": self.server1.bytes_sent,
                "server1_bytes_received": self.server1.bytes_received}
