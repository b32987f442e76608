"""Server 1's operations: a separate party behind a bytes-in/bytes-out interface.

Server 0 (the Flower ServerApp) relays users' sealed messages to server 1 and
receives only what the protocol lets it see: sealed embedding shares to pass
back to users, and server 1's share of the round's *aggregate*. Server 1 has
its own X25519 key pair; users seal their keys and dense shares to it, so
server 0 cannot add both shares. It runs in-process in simulation
(:class:`InProcessLink`) or as its own process (``python -m twoserver
--port P --cert ... --key ... --ca ...``, reached over mutual TLS through
:class:`twoserver.transport.SocketLink`). Before any operation runs, every
meta field is range-checked and server 1's per-(run, round) state admits the
request (:mod:`twoserver.guard`): one retrieval and one aggregation per round,
over the retrieval's users less dropouts, never fewer than ``min_users``.

Operations (frames of :mod:`schemas.wire`):
``hello`` -> public key; ``set_model`` (table in the ring); ``count`` (secure
sum of rated-item counts, SecEmb Appendix C); ``retrieve`` (open each user's
sealed DPF keys, evaluate, return sealed shares); ``retrieve_eval`` (the same
for the rows users evaluate with, paths not kept); ``aggregate`` (ConvertEval
on cached paths for the kept users, plus the dense shares);
``aggregate_fresh`` (ablations without path sharing); ``sum_shares`` (Secure
FedRec: sum of sealed full-gradient shares).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from crypto.dpf_eval import DEFAULT_MAX_CACHE_BYTES
from crypto.ring import ring_dtype
from crypto.sealed import SealedMessageError, fingerprint, open_sealed, public_bytes, seal
from schemas import secemb as schema
from schemas.config import TwoServerConfig
from schemas.two_server import TRAIN_METRICS
from schemas.wire import MAX_FRAME, WireError, decode_frame, encode_frame
from twoserver.dp_noise import add_noise_share
from twoserver.guard import RoundGuard, validate_request
from twoserver.party import SecEmbParty
from twoserver.variants import variant_of

log = logging.getLogger("secrec.server1")


class Server1:
    """State and operations of server 1 (party b = 1)."""

    def __init__(self, min_users: int = 2, private_key: X25519PrivateKey | None = None,
                 max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES, min_noise_std: float = 0.0,
                 frac_bits: int = TwoServerConfig.frac_bits) -> None:
        """``min_users`` is server 1's own floor: server 0 may ask for more, never for fewer.

        ``min_noise_std`` is server 1's own floor for its central-DP noise (SecEmb Appendix G): each
        server's guarantee rests on the *other* server's noise, so the operator of server 1 sets what
        it adds, whatever server 0 asks. With a floor, an aggregation without DP parameters is refused,
        and so is one whose ``frac_bits`` is not ``frac_bits`` (the runs' ``strategy.frac_bits``, which the
        operator pins too): the noise is encoded at that scale, so a smaller one from server 0 would shrink it.
        Which entries are metric slots (not noised) server 1 works out itself (the last ``TRAIN_METRICS``).

        ``private_key`` lets a deployment keep server 1's X25519 key across restarts
        (``--key-file``), so the fingerprint users pin stays valid. ``max_cache_bytes`` caps
        the round's cached DPF paths (:class:`twoserver.party.SecEmbParty`).
        """
        self.max_cache_bytes = max_cache_bytes
        if not (math.isfinite(min_noise_std) and min_noise_std >= 0):
            raise ValueError(f"min_noise_std must be a finite number >= 0, got {min_noise_std}")
        self.min_noise_std = float(min_noise_std)
        if not 0 <= int(frac_bits) <= 62:
            raise ValueError(f"frac_bits must be in 0..62, got {frac_bits}")
        self.frac_bits = int(frac_bits)
        self._private = private_key or X25519PrivateKey.generate()
        self.public_key = public_bytes(self._private)
        self.table: np.ndarray | None = None
        self.party: SecEmbParty | None = None
        self.ring_dtype: np.dtype = ring_dtype(32)
        # Per-(run, round) state: one retrieval and one aggregation per round, over the retrieval's
        # users; the lock serialises every operation, since connections are served by several threads.
        self.guard = RoundGuard(min_users)
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """sha256 hex of the raw X25519 public key: what operators put in ``strategy.server1_fingerprint``."""
        return fingerprint(self.public_key)

    # ------------------------------------------------------------ dispatch
    def handle(self, frame: bytes) -> bytes:
        """Answer one request frame; malformed or refused requests get an ``error`` frame.

        Every meta field is range-checked (:func:`twoserver.guard.validate_request`)
        and the round state admits the request before an operation runs; the
        state records it only after the operation succeeded.
        """
        with self._lock:
            try:
                if len(frame) > MAX_FRAME:
                    raise WireError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
                op, meta, arrays = decode_frame(frame)
                handler = getattr(self, f"_op_{op}", None)
                if handler is None:
                    raise WireError(f"unknown operation {op!r}")
                meta = validate_request(op, meta, arrays, self.table)
                self.guard.admit(op, meta)
                out_meta, out_arrays = handler(meta, arrays)
                self.guard.commit(op, meta, out_meta)
                return encode_frame("ok", out_meta, out_arrays)
            except (WireError, ValueError) as exc:  # the checks' own errors (MessageError, SealedMessageError too)
                reason = str(exc)[:1000]  # may quote request fields: bounded so the error frame always encodes
                log.warning("server 1 rejected a request: %s", reason)
                return encode_frame("error", {"reason": reason})
            except (KeyError, TypeError, OverflowError, MemoryError, IndexError, AttributeError) as exc:
                # Last line of defence: a request the checks above should have refused crashed an operation.
                # Logged with its traceback (it names a missing check); answered like any refusal, so the
                # service stays up.
                log.error("server 1 refused a request that crashed an operation: %r", exc, exc_info=True)
                return encode_frame("error", {"reason": f"internal error: {type(exc).__name__}"})

    def _open(self, box: np.ndarray, context: bytes) -> bytes:
        return open_sealed(self._private, box.tobytes(), context)

    # ---------------------------------------------------------- operations
    def _op_hello(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]):
        return {}, {"public_key": np.frombuffer(self.public_key, dtype=np.uint8)}

    def _op_set_model(self, meta, arrays):
        self.ring_dtype = ring_dtype(int(meta["ring_bits"]))
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
        """A training retrieval: the training party keeps the keys' paths for this round's aggregation."""
        return self._retrieve(self._training_party(), meta, arrays, "retrieve", "shares")

    def _training_party(self) -> SecEmbParty:
        """The party training retrievals use, kept from round to round like server 0's.

        Its evaluator reuses the buffers of last round's paths (up to ``max_cache_bytes``); a party
        made afresh every round first-touches them again: about 0.2 s per GiB here, at every round.
        A new table size or ring (``set_model``) gets a new party.
        """
        m = self._table().shape[0]
        if self.party is None or self.party.n_items != m or self.party.ring_dtype != self.ring_dtype:
            self.party = SecEmbParty(1, m, self.ring_dtype, self.max_cache_bytes)
        return self.party

    def _op_retrieve_eval(self, meta, arrays):
        """An evaluation retrieval (the rows of users' test items): a party of its own, whose paths go with
        it, so the round's training paths stay and nothing can be aggregated from it."""
        return self._retrieve(SecEmbParty(1, self._table().shape[0], self.ring_dtype, 0), meta, arrays,
                              schema.EVAL_BOX, schema.EVAL_SHARES_BOX)

    def _table(self) -> np.ndarray:
        if self.table is None:
            raise WireError("retrieve before set_model")
        return self.table

    def _retrieve(self, party: SecEmbParty, meta, arrays, box_purpose: str, reply_purpose: str):
        """Open each user's sealed keys (sealed for ``box_purpose``), evaluate them over the table and seal
        each user's shares back to its one-round key (for ``reply_purpose``)."""
        table = self._table()
        rnd, run = int(meta["round"]), meta["run"]
        keys, user_pubs, rejected = {}, {}, {}
        for user in meta["users"]:
            try:
                raw = self._open(arrays[f"box_{user}"], schema.context(run, rnd, user, box_purpose))
                keys[user], user_pubs[user] = schema.parse_sealed_retrieval(
                    raw, party=1, n_items=table.shape[0], m_prime=int(meta["m_prime"]),
                    ring_dtype=self.ring_dtype)
            except (SealedMessageError, ValueError, KeyError) as exc:
                rejected[str(user)] = str(exc)
        shares = party.retrieve(keys, table)
        out = {f"box_{u}": np.frombuffer(seal(user_pubs[u], schema.share_bytes(shares[u]),
                                              schema.context(run, rnd, u, reply_purpose)), dtype=np.uint8)
               for u in shares}
        return {"rejected": rejected}, out

    def _op_aggregate(self, meta, arrays):
        if self.party is None:
            raise WireError("aggregate before retrieve")
        rnd, run, width, dense = int(meta["round"]), meta["run"], int(meta["width"]), int(meta["dense_size"])
        self.noise_std(meta)  # with a DP floor, a request without DP parameters is refused before any work
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
        sparse = variant_of("secemb").aggregate(self.party, cws, width)
        return {"rejected": rejected, "users": sorted(cws)}, self._noised(meta, sparse, dense_sum)

    def _op_aggregate_fresh(self, meta, arrays):
        rnd, run, width, dense = int(meta["round"]), meta["run"], int(meta["width"]), int(meta["dense_size"])
        self.noise_std(meta)  # with a DP floor, a request without DP parameters is refused before any work
        keys, dense_sum, rejected = {}, np.zeros(dense, dtype=self.ring_dtype), {}
        n_items = self.table.shape[0] if self.table is not None else int(meta["n_items"])
        variant = variant_of(meta["variant"])
        fresh_shape = variant.key_shape(int(meta["m_prime"]), width)
        for user in meta["users"]:
            try:
                raw = self._open(arrays[f"box_{user}"], schema.context(run, rnd, user, "upload"))
                keys[user], share = schema.parse_sealed_fresh_upload(raw, n_items, fresh_shape, dense, self.ring_dtype)
            except (SealedMessageError, ValueError, KeyError) as exc:
                rejected[str(user)] = str(exc)
                continue
            dense_sum += share
        party = SecEmbParty(1, n_items, self.ring_dtype, self.max_cache_bytes)
        sparse = variant.aggregate(party, keys, width)
        return {"rejected": rejected, "users": sorted(keys)}, self._noised(meta, sparse, dense_sum)

    def _op_sum_metrics(self, meta, arrays):
        """Secure evaluation sums (SecEmb / Secure FedRec): server 1's share of
        sum_u [SSE_u, count_u, hit_u, ndcg_u, ranked_u].

        Each user's box holds its share 1 of a short metric vector, bound to
        (run, round, user, "eval"). One sum per (run, round): a second sum over
        a different user set would let server 0 difference out one user.
        """
        rnd, run, size = int(meta["round"]), meta["run"], int(meta["size"])  # checked by the guard
        done = self.__dict__.setdefault("_metric_sums", set())
        if (run, rnd) in done:
            raise WireError(f"sum_metrics for round {rnd} refused: run {run} already summed it")
        ring = ring_dtype(int(meta["ring_bits"]))
        total, rejected, used = np.zeros(size, dtype=ring), {}, []
        for user in meta["users"]:
            try:
                raw = self._open(arrays[f"box_{user}"], schema.context(run, rnd, user, "eval"))
                total += schema.parse_ring_vector(raw, size, ring)
                used.append(user)
            except (SealedMessageError, ValueError, KeyError) as exc:
                rejected[str(user)] = str(exc)
        done.add((run, rnd))
        return {"rejected": rejected, "users": used}, {"sum": total}

    def noise_std(self, meta: dict[str, Any]) -> float:
        """The std of server 1's noise for this aggregate: server 0's ``noise_std``, raised to server 1's floor.

        A floor with a request that carries no DP parameters (``noise_std``, ``frac_bits``) is refused, and so
        is a ``frac_bits`` other than the operator's (the scale the noise is encoded at).
        """
        if self.min_noise_std > 0:
            missing = [k for k in ("noise_std", "frac_bits") if k not in meta]
            if missing:
                raise WireError(f"server 1 adds DP noise of std >= {self.min_noise_std} to every aggregate; "
                                f"the request lacks {', '.join(missing)}")
            if int(meta["frac_bits"]) != self.frac_bits:
                raise WireError(f"server 1 encodes its DP noise with {self.frac_bits} fraction bits (its operator's "
                                f"--frac-bits); the request says {meta['frac_bits']}")
        return max(float(meta.get("noise_std", 0.0)), self.min_noise_std)

    def _noised(self, meta: dict[str, Any], sparse: np.ndarray, dense: np.ndarray) -> dict[str, np.ndarray]:
        """Central DP: server 1's own fresh noise on its aggregated table and dense shares (not the metric slots)."""
        std, frac = self.noise_std(meta), int(meta.get("frac_bits", 0))
        slots = max(int(meta["dense_size"]) - TRAIN_METRICS, 0)
        return {"sparse": add_noise_share(sparse, std, frac), "dense": add_noise_share(dense, std, frac, slots)}

    def _op_sum_shares(self, meta, arrays):
        rnd, run = int(meta["round"]), meta["run"]
        shape = tuple(int(s) for s in meta["shape"])
        ring = ring_dtype(int(meta["ring_bits"]))
        std = self.noise_std(meta)
        total, rejected, used = np.zeros(shape, dtype=ring), {}, []
        for user in meta["users"]:
            try:
                raw = self._open(arrays[f"box_{user}"], schema.context(run, rnd, user, "secfedrec"))
                total += schema.parse_ring_vector(raw, int(np.prod(shape)), ring).reshape(shape)
                used.append(user)
            except (SealedMessageError, ValueError, KeyError) as exc:
                rejected[str(user)] = str(exc)
        frac = int(meta.get("frac_bits", 0))
        slots = max(int(np.prod(shape)) - TRAIN_METRICS, 0)  # the last TRAIN_METRICS entries are metric sums
        total = add_noise_share(total.reshape(-1), std, frac, slots).reshape(shape)
        return {"rejected": rejected, "users": used}, {"sum": total}
