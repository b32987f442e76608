"""Server 1's operations: a separate party behind a bytes-in/bytes-out interface.

Server 0 (the Flower ServerApp) relays users' sealed messages to server 1 and
receives only what the protocol lets it see: sealed embedding shares to pass
back to users, and server 1's share of the round's *aggregate*. Server 1 has
its own X25519 key pair; users seal their keys and dense shares to it, so
server 0 cannot add both shares. It runs in-process in simulation
(:class:`InProcessLink`) or as its own process (``python -m twoserver
--port P``, reached through :class:`twoserver.transport.SocketLink`).

Operations (frames of :mod:`schemas.wire`):
``hello`` -> public key; ``set_model`` (table in the ring); ``count`` (secure
sum of rated-item counts, SecEmb Appendix C); ``retrieve`` (open each user's
sealed DPF keys, evaluate, return sealed shares); ``aggregate`` (ConvertEval
on cached paths for the kept users, plus the dense shares);
``aggregate_fresh`` (ablations without path sharing); ``sum_shares`` (Secure
FedRec: sum of sealed full-gradient shares).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from crypto.sealed import SealedMessageError, generate_keypair, open_sealed, seal
from schemas import secemb as schema
from schemas.wire import WireError, decode_frame, encode_frame
from twoserver.party import SecEmbParty, fresh_aggregate

log = logging.getLogger("secrec.server1")


class Server1:
    """State and operations of server 1 (party b = 1)."""

    def __init__(self) -> None:
        self._private, self.public_key = generate_keypair()
        self.table: np.ndarray | None = None
        self.party: SecEmbParty | None = None
        self.ring_dtype: type = np.uint32

    # ------------------------------------------------------------ dispatch
    def handle(self, frame: bytes) -> bytes:
        """Answer one request frame; malformed requests get an ``error`` frame."""
        try:
            op, meta, arrays = decode_frame(frame)
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                raise WireError(f"unknown operation {op!r}")
            out_meta, out_arrays = handler(meta, arrays)
            return encode_frame("ok", out_meta, out_arrays)
        except (WireError, ValueError, KeyError) as exc:
            log.warning("server 1 rejected a request: %s", exc)
            return encode_frame("error", {"reason": str(exc)})

    def _open(self, box: np.ndarray, context: bytes) -> bytes:
        return open_sealed(self._private, box.tobytes(), context)

    # ---------------------------------------------------------- operations
    def _op_hello(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]):
        return {}, {"public_key": np.frombuffer(self.public_key, dtype=np.uint8)}

    def _op_set_model(self, meta, arrays):
        self.ring_dtype = np.uint64 if int(meta["ring_bits"]) == 64 else np.uint32
        table = arrays["table"]
        if table.dtype != self.ring_dtype or table.ndim != 2:
            raise WireError("table must be a 2-D array in the ring")
        self.table = table.copy()
        return {}, {}

    def _op_count(self, meta, arrays):
        total = np.zeros(1, dtype=np.uint64)
        rejected = {}
        for user in meta["users"]:
            try:
                raw = self._open(arrays[f"box_{user}"], schema.context(meta["run"], 0, user, "count"))
                total += schema.parse_count_share(raw)
            except (SealedMessageError, ValueError, KeyError) as exc:
                rejected[str(user)] = str(exc)
        return {"rejected": rejected}, {"sum": total}

    def _op_retrieve(self, meta, arrays):
        if self.table is None:
            raise WireError("retrieve before set_model")
        rnd, run = int(meta["round"]), meta["run"]
        keys, user_pubs, rejected = {}, {}, {}
        for user in meta["users"]:
            try:
                raw = self._open(arrays[f"box_{user}"], schema.context(run, rnd, user, "retrieve"))
                keys[user], user_pubs[user] = schema.parse_sealed_retrieval(
                    raw, party=1, n_items=self.table.shape[0], m_prime=int(meta["m_prime"]),
                    ring_dtype=self.ring_dtype)
            except (SealedMessageError, ValueError, KeyError) as exc:
                rejected[str(user)] = str(exc)
        self.party = SecEmbParty(1, self.table.shape[0], self.ring_dtype)
        shares = self.party.retrieve(keys, self.table)
        out = {f"box_{u}": np.frombuffer(seal(user_pubs[u], schema.share_bytes(shares[u]),
                                              schema.context(run, rnd, u, "shares")), dtype=np.uint8)
               for u in shares}
        return {"rejected": rejected}, out

    def _op_aggregate(self, meta, arrays):
        if self.party is None:
            raise WireError("aggregate before retrieve")
        rnd, run, width, dense = int(meta["round"]), meta["run"], int(meta["width"]), int(meta["dense_size"])
        cws, dense_sum, rejected = {}, np.zeros(dense, dtype=self.ring_dtype), {}
        for user in meta["users"]:
            try:
                raw = self._open(arrays[f"box_{user}"], schema.context(run, rnd, user, "dense"))
                share = schema.parse_ring_vector(raw, dense, self.ring_dtype)
                cw = arrays[f"cw_{user}"]
                schema.check_ring_matrix(cw, (self.party.slices[user].stop - self.party.slices[user].start, width),
                                         self.ring_dtype, "correction words")
            except (SealedMessageError, ValueError, KeyError) as exc:
                rejected[str(user)] = str(exc)
                continue
            cws[user] = cw
            dense_sum += share
        return {"rejected": rejected, "users": sorted(cws)}, {"sparse": self.party.aggregate(cws, width),
                                                                "dense": dense_sum}

    def _op_aggregate_fresh(self, meta, arrays):
        rnd, run, width, dense = int(meta["round"]), meta["run"], int(meta["width"]), int(meta["dense_size"])
        keys, dense_sum, rejected = {}, np.zeros(dense, dtype=self.ring_dtype), {}
        n_items = self.table.shape[0] if self.table is not None else int(meta["n_items"])
        for user in meta["users"]:
            try:
                raw = self._open(arrays[f"box_{user}"], schema.context(run, rnd, user, "upload"))
                keys[user], share = schema.parse_sealed_fresh_upload(raw, n_items, meta, self.ring_dtype)
            except (SealedMessageError, ValueError, KeyError) as exc:
                rejected[str(user)] = str(exc)
                continue
            dense_sum += share
        party = SecEmbParty(1, n_items, self.ring_dtype)
        sparse = fresh_aggregate(party, keys, width, meta["variant"])
        return {"rejected": rejected, "users": sorted(keys)}, {"sparse": sparse, "dense": dense_sum}

    def _op_sum_shares(self, meta, arrays):
        rnd, run = int(meta["round"]), meta["run"]
        shape = tuple(int(s) for s in meta["shape"])
        ring = np.uint64 if int(meta["ring_bits"]) == 64 else np.uint32
        total, rejected, used = np.zeros(shape, dtype=ring), {}, []
        for user in meta["users"]:
            try:
                raw = self._open(arrays[f"box_{user}"], schema.context(run, rnd, user, "secfedrec"))
                total += schema.parse_ring_vector(raw, int(np.prod(shape)), ring).reshape(shape)
                used.append(user)
            except (SealedMessageError, ValueError, KeyError) as exc:
                rejected[str(user)] = str(exc)
        return {"rejected": rejected, "users": used}, {"sum": total}
