"""Batched-engine drivers of the model protocols: ``plaintext``, ``secemb`` (all variants), ``secfedrec``.

Each driver holds the protocol's own Flower strategy object (its public model,
optimiser, codecs and sampling) and every user's private state as arrays
indexed by user. A round is: each sampled user's item request (the clients'
own truncation code), one batched local step of all of them
(:func:`models.training.train_batch`, what every Flower client runs as a batch
of one), then the protocol's aggregation arithmetic - the same functions its
Flower strategy and clients call:

* plaintext: :meth:`strategies.plaintext.PlaintextStrategy.apply_gradients`;
* SecEmb / Secure FedRec: each user's contribution encoded in Z_2^k with R_u
  clipping (:func:`clients.two_server.encode_upload`), summed in the ring (what
  the two servers' shares reconstruct to), decoded and stepped by
  :meth:`strategies.two_server.TwoServerStrategy.step_from_ring`. SecEmb users
  train on rows retrieved through the ring (:meth:`SecEmbStrategy.ring_table`).

There are no messages and no cryptography: the secret sharing, DPF and
sealing are lossless, so they change nothing that is learned. Bytes per
client are computed by each protocol's schema size function.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from clients.item_selection import evaluation_items, ratings_of_many, truncate_items
from clients.two_server import encode_upload, released_loss, user_ring_codec
from engine.driver import Driver, restore_array, restore_server, server_arrays
from models.dp_training import train_batch_clipped
from models import ModelSpec, PrivateState, evaluate_batch, gather_rows, make_batch_flat, train_batch
from models.batch import concat_ranges, pad_flat
from models.ranking import candidate_scores, ranking_sums
from recdata import FederatedSplit
from recdata.ranking import ranking_candidates, user_candidates
from recdata.dataset import DatasetMeta
from schemas import plaintext as plain_schema
from schemas import secemb as secemb_schema
from schemas import secfedrec as secfedrec_schema
from schemas.config import AppConfig
from schemas.sizes import int_width
from strategies.base import mean_train_loss
from strategies.plaintext import PlaintextStrategy, scatter_rows
from strategies.secemb import SecEmbStrategy, count_sample, m_prime_of
from strategies.secfedrec import SecFedRecStrategy
from strategies.two_server import TwoServerStrategy
from twoserver.variants import variant_of

# Float32 elements one torch sub-batch may hold in its per-user copies (dense vector and its gradient,
# rows, ratings). Users are independent, so how a round is cut into sub-batches changes results only by
# float rounding: torch sums a user's padded ratings in blocks that depend on the padded length.
CHUNK_ELEMENTS = 1 << 24
ENCODE_CHUNK_ELEMENTS = 1 << 22  # values one chunk of users encodes into the ring at once (float64 + int64 copies)
PAD_ALLOWANCE = 1 << 17  # padded elements a group may waste regardless of its size (fewer, larger batches; README)


PRIVATE_FIELDS = ("params", "m", "v", "step")  # :class:`PrivateState`'s arrays, as checkpointed


class RoundBatch(NamedTuple):
    """The round's users' requests and what their local step returned (users in sampling order)."""

    items: list[np.ndarray]  # each user's requested item ids (real rows only)
    row_mask: np.ndarray     # bool [B, K]: real rows of the padded row tensor
    row_grads: np.ndarray    # float32 [B, K, row_dim]
    dense_grads: np.ndarray  # float32 [B, dense_size]
    loss: np.ndarray         # float64 [B]
    n_ratings: np.ndarray    # int64 [B]


def secemb_round_bytes(cfg: AppConfig, rnd: int, m_prime: int, n_items: int, spec: ModelSpec) -> tuple[int, int]:
    """(bytes down, bytes up) of one SecEmb user's round under ``cfg``'s ring, variant and telemetry."""
    return secemb_schema.round_bytes(rnd, m_prime, n_items, spec.row_dim, spec.dense_size, int(cfg.strategy.ring_bits),
                                     variant_of(cfg.strategy.variant).upload_key_shape(m_prime, spec.row_dim),
                                     bool(cfg.simulation.telemetry))


def groups(sizes: np.ndarray, fixed: int) -> list[np.ndarray]:
    """The round's users cut into sub-batches (index arrays) of similar padded size.

    ``sizes`` [B] are the users' padded-dimension element counts (rows x width + ratings x features),
    ``fixed`` the per-user elements that do not pad (the dense copy and its gradient). Users are taken
    shortest first and a group closes when padding every member to its longest would waste more than
    a quarter (plus PAD_ALLOWANCE), or when it would exceed CHUNK_ELEMENTS. Users are independent,
    so the grouping changes only how much padding the batch computes (and float rounding, see above).
    Each group costs a fixed ~1.9 ms of torch dispatch (6 passes of ~160 small ops) against ~1.5 us per
    padded rating of MF on ml_100k, so the allowance is about a group's fixed cost in padded elements.
    """
    order = np.argsort(sizes, kind="stable")
    out, start, total = [], 0, 0
    for j, b in enumerate(order):  # O(users in round)
        members, longest = j - start + 1, int(sizes[b])
        total += longest
        if members > 1 and (members * longest > 1.25 * total + PAD_ALLOWANCE
                            or members * (longest + fixed) > CHUNK_ELEMENTS):
            out.append(order[start:j])
            start, total = j, longest
    if len(order):
        out.append(order[start:])
    return out


class ModelDriver(Driver):
    """What the model protocols' drivers share: private state, the batched local step, evaluation."""

    strategy_class: Callable[[AppConfig, DatasetMeta], Any]

    def __init__(self, cfg: AppConfig, split: FederatedSplit, meta: DatasetMeta) -> None:
        self.cfg, self.split, self.meta = cfg, split, meta
        self.strategy = self.strategy_class(cfg, meta)
        self.strategy.users = list(range(meta.n_users))
        self.spec = self.strategy.spec
        self.seed = int(cfg.seed)
        n, p = meta.n_users, self.spec.private_size
        # Every user's private parameters and Adam moments, initialised (seeded as the client does) the first
        # time the user is sampled or evaluated, so start-up does not depend on the population.
        self.private = PrivateState(params=np.zeros((n, p), np.float32), m=np.zeros((n, p), np.float32),
                                    v=np.zeros((n, p), np.float32), step=np.zeros(n, np.int64))
        self.initialised = np.zeros(n, dtype=bool)
        self.last_sizes: dict[str, float] = {"bytes_down": 0.0, "bytes_up": 0.0}
        self._size_cache: dict[tuple[int, ...], tuple[int, int]] = {}
        self._size_tables: dict[int, np.ndarray] = {}  # varint width -> float64 [k, 2] (NaN: not yet measured)
        self._dense_grads_buffer = np.zeros((0, self.spec.dense_size), dtype=np.float32)

    # ---------------------------------------------------------- interface
    def sampler(self) -> Any:
        return self.strategy

    checkpointable = True

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The strategy's own checkpoint (public model, server optimiser, SecEmb's m') under ``server.``, and
        every user's private parameters, Adam moments and step count, and who has started, under ``private.``."""
        arrays = server_arrays(self.strategy)
        arrays.update({f"private.{name}": getattr(self.private, name) for name in PRIVATE_FIELDS})
        arrays["private.initialised"] = self.initialised
        return arrays

    def restore_state(self, arrays: dict[str, np.ndarray]) -> None:
        private = {name: restore_array(arrays, f"private.{name}", getattr(self.private, name))
                   for name in PRIVATE_FIELDS}
        initialised = restore_array(arrays, "private.initialised", self.initialised)
        restore_server(self.strategy, arrays)
        self.private, self.initialised = PrivateState(**private), initialised

    def message_sizes(self, users: np.ndarray | None = None) -> dict[str, float]:
        if users is None:
            return dict(self.last_sizes)
        items = [self.request(1, int(u)) for u in users]
        return self.round_sizes(1, items)

    def evaluate(self, users: np.ndarray) -> tuple[float, int]:
        sse, count = self.user_test_errors(np.asarray(users, dtype=np.int64))
        return float(sse.sum()), int(count.sum())

    def train_round(self, rnd: int, users: np.ndarray) -> dict[str, Any]:
        users = np.asarray(users, dtype=np.int64)
        items = [self.request(rnd, int(u)) for u in users]
        self.last_sizes = self.round_sizes(rnd, items)
        refused = self.refused_before_training(users)
        metrics = {"train_loss": None, "refused": refused} if refused else self.aggregate(
            self.local_steps(users, items))
        return {**metrics, **self.last_sizes}

    def refused_before_training(self, users: np.ndarray) -> str | None:
        """Why the Flower path would stop this round before any user trains (default: never)."""
        return None

    def cached_bytes(self, key: tuple[int, ...], measure: Callable[[], tuple[int, int]]) -> tuple[int, int]:
        """A size function's (down, up) per client, measured once per ``key`` (sizes depend on shapes, and
        on the round number only through its varint width, so keys use :func:`schemas.sizes.int_width`)."""
        if key not in self._size_cache:
            self._size_cache[key] = measure()
        return self._size_cache[key]

    def mean_bytes_by_count(self, rnd: int, items: list[np.ndarray],
                            measure: Callable[[int], tuple[int, int]]) -> dict[str, float]:
        """Mean (down, up) bytes per client when a client's sizes depend on its request only through its
        length k (and on the round only through its varint width): ``measure(k)`` once per (width, k),
        kept in a [k, 2] table so a round is one array lookup, not a call per client."""
        ks = np.fromiter((len(i) for i in items), dtype=np.int64, count=len(items))
        if not len(ks):
            return {"bytes_down": 0.0, "bytes_up": 0.0}
        width = int_width(rnd)
        table = self._size_tables.setdefault(width, np.full((0, 2), np.nan))
        if len(table) <= ks.max():
            table = self._size_tables[width] = np.concatenate(
                [table, np.full((int(ks.max()) + 1 - len(table), 2), np.nan)])
        for k in np.unique(ks[np.isnan(table[ks, 0])]).tolist():  # new lengths only
            table[k] = measure(k)
        mean = table[ks].mean(axis=0)
        return {"bytes_down": float(mean[0]), "bytes_up": float(mean[1])}

    # ------------------------------------------------------ per protocol
    def request(self, rnd: int, user: int) -> np.ndarray:
        """The items whose rows ``user`` fetches and trains on in round ``rnd`` (the client's choice).

        Default (plaintext, SecEmb): its rated items, truncated to the strategy's m' as the clients do."""
        return truncate_items(self.train_items(user), self.strategy.m_prime, self.seed, rnd, user)

    def train_items(self, user: int) -> np.ndarray:
        return self.split.train_item[self.split.train_ptr[user]:self.split.train_ptr[user + 1]]

    def user_table(self) -> np.ndarray:
        """The table the users' rows come from, as users receive it (float32)."""
        return self.strategy.model.table_numpy()

    def eval_table(self) -> np.ndarray:
        """The table evaluated users' rows come from, as they receive them (float32)."""
        return self.strategy.model.table_numpy()

    def evaluated_test_ratings(self, users: np.ndarray) -> np.ndarray | None:
        """Which of the split's test ratings (a mask over ``split.test_item``) ``users`` evaluate, when the
        protocol leaves some out; None: all of them (default)."""
        return None

    def aggregate(self, batch: RoundBatch) -> dict[str, Any]:
        """The protocol's aggregation and server step; returns the round's metrics (train_loss, ...)."""
        raise NotImplementedError

    def round_sizes(self, rnd: int, items: list[np.ndarray]) -> dict[str, float]:
        """Mean bytes down / up per client of a round with these requests (the schema's size function)."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared
    def ensure_initialised(self, users: np.ndarray) -> None:
        new = np.unique(users[~self.initialised[users]])
        if len(new):
            self.private.put(new, PrivateState.initial(self.spec, new, self.seed))
            self.initialised[new] = True

    def local_steps(self, users: np.ndarray, items: list[np.ndarray]) -> RoundBatch:
        """Every user's local step (the clients' ``local_step``), batched; private states are kept."""
        self.ensure_initialised(users)
        sp = self.split
        starts = sp.train_ptr[users]
        local, ratings, n_rat = ratings_of_many(items, starts, sp.train_ptr[users + 1] - starts, sp.train_item,
                                                sp.train_rating)
        k = np.fromiter((len(i) for i in items), dtype=np.int64, count=len(users))
        rating_start = np.cumsum(n_rat) - n_rat
        rated_items = np.concatenate(items)[np.repeat(np.cumsum(k) - k, n_rat) + local] if len(users) else local
        table, dense = self.user_table(), self.strategy.model.dense_numpy()
        spec, m = self.spec, self.cfg.model
        row_grads = np.zeros((len(users), int(k.max(initial=0)), spec.row_dim), dtype=np.float32)
        dense_grads = self.dense_grads_buffer(len(users))  # every row is written below
        loss = np.zeros(len(users))
        train = partial(train_batch_clipped, clip=float(self.cfg.dp.clip)) if self.cfg.dp.enabled else train_batch
        for g in groups(k * spec.row_dim + n_rat * (4 + spec.n_item_features), 2 * spec.dense_size):
            mine = concat_ranges(rating_start[g], n_rat[g])  # the group's ratings, user by user
            batch = make_batch_flat(n_rat[g], local[mine], ratings[mine], sp.user_features[users[g]],
                                    sp.item_features[rated_items[mine]])
            rows, _ = gather_rows(table, [items[i] for i in g])
            res = train(spec, rows, dense, self.private.take(users[g]), batch, float(m.lr), float(m.reg),
                        int(self.cfg.train.local_user_steps))
            self.private.put(users[g], res.private)
            row_grads[g, :rows.shape[1]] = res.row_grads
            dense_grads[g], loss[g] = res.dense_grads, res.loss
        return RoundBatch(items=items, row_mask=np.arange(row_grads.shape[1]) < k[:, None], row_grads=row_grads,
                          dense_grads=dense_grads, loss=loss, n_ratings=n_rat)

    def dense_grads_buffer(self, n_users: int) -> np.ndarray:
        """A reused float32 [n_users, dense_size] array for the round's dense gradients.

        A fresh array of that size costs its page faults every round (0.5 s of DeepFM's 2.6 s round on
        ml_100k: 100 users x 1.76M floats). Reusing it is safe because a RoundBatch is consumed by
        ``aggregate`` within its round and nothing keeps it.
        """
        if self._dense_grads_buffer.shape[0] < n_users:
            self._dense_grads_buffer = np.zeros((n_users, self.spec.dense_size), dtype=np.float32)
        return self._dense_grads_buffer[:n_users]

    def user_test_errors(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each user's test SSE and count on the current public model (the clients' evaluate_locally)."""
        self.ensure_initialised(users)
        sp = self.split
        starts = sp.test_ptr[users]
        lengths = (sp.test_ptr[users + 1] - starts).astype(np.int64)
        table, dense = self.eval_table(), self.strategy.model.dense_numpy()
        evaluated = self.evaluated_test_ratings(users)
        sse, count = np.zeros(len(users)), np.zeros(len(users), dtype=np.int64)
        for g in groups(lengths * (self.spec.row_dim + 4 + self.spec.n_item_features), self.spec.row_dim):
            flat, lens = concat_ranges(starts[g], lengths[g]), lengths[g]
            if evaluated is not None:  # only the test ratings each user evaluates under the protocol
                keep = evaluated[flat]
                lens = np.bincount(np.repeat(np.arange(len(g)), lens)[keep], minlength=len(g)).astype(np.int64)
                flat = flat[keep]
            items = sp.test_item[flat]
            positions = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)  # each rating its own row
            batch = make_batch_flat(lens, positions, sp.test_rating[flat], sp.user_features[users[g]],
                                    sp.item_features[items])
            rows = pad_flat(table[items], lens, batch.local_items.shape[1])
            sse[g], count[g] = evaluate_batch(self.spec, rows, dense, self.private.params[users[g]], batch)
        return sse, count

    def user_ranking(self, users: np.ndarray) -> np.ndarray:
        """Per-user [hit, ndcg, 1] of the users that have a ranking case (the clients' scoring, batched):
        the same candidates (recdata.ranking) and scoring (models.ranking.candidate_scores) as a device."""
        self.ensure_initialised(users)
        train = self.cfg.train
        case = ranking_candidates(self.split, self.seed, int(train.ranking_negatives), users)
        table, dense = self.eval_table(), self.strategy.model.dense_numpy()
        n_cand = case.items.shape[1]
        step = max(1, CHUNK_ELEMENTS // (n_cand * (self.spec.row_dim + self.spec.n_item_features + 4)))
        out = np.zeros((len(case.users), 3))
        for lo in range(0, len(case.users), step):
            u, items = case.users[lo:lo + step], case.items[lo:lo + step]
            scores = candidate_scores(self.spec, table[items], dense, self.private.params[u],
                                      np.broadcast_to(np.arange(n_cand), items.shape), self.split.user_features[u],
                                      self.split.item_features[items])
            out[lo:lo + step] = ranking_sums(scores, int(train.ranking_k))
        return out

    def ranking(self, users: np.ndarray) -> np.ndarray | None:
        if not self.cfg.train.ranking:
            return None
        return self.user_ranking(np.asarray(users, dtype=np.int64)).sum(axis=0)

    @staticmethod
    def real_rows(batch: RoundBatch, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item ids [T], per-row values [T, ...]) of all users' real rows, users concatenated in order."""
        items = np.concatenate(batch.items) if batch.items else np.zeros(0, np.int64)
        return items, values[batch.row_mask]


class PlaintextDriver(ModelDriver):
    strategy_class = PlaintextStrategy


    def aggregate(self, batch: RoundBatch) -> dict[str, Any]:
        items, grads = self.real_rows(batch, batch.row_grads)
        self.strategy.apply_gradients(items, grads, batch.dense_grads)
        return {"train_loss": mean_train_loss(batch.loss)}

    def round_sizes(self, rnd: int, items: list[np.ndarray]) -> dict[str, float]:
        return self.mean_bytes_by_count(rnd, items, lambda k: plain_schema.round_bytes(
            rnd, k, self.strategy.m_prime, self.spec.row_dim, self.spec.dense_size))


class TwoServerDriver(ModelDriver):
    """SecEmb and Secure FedRec: contributions encoded in Z_2^k, summed in the ring, decoded, stepped."""

    strategy: TwoServerStrategy

    def __init__(self, cfg: AppConfig, split: FederatedSplit, meta: DatasetMeta) -> None:
        super().__init__(cfg, split, meta)
        self.user_codec, self.ring = user_ring_codec(cfg)

    def aggregate(self, batch: RoundBatch) -> dict[str, Any]:
        st = self.strategy
        refused = st.too_few(batch.items, "aggregation")
        if refused:
            return {"train_loss": None, "refused": refused}
        n_users = len(batch.items)
        per_user = batch.row_grads.shape[1] * self.spec.row_dim + self.spec.dense_size
        step = max(1, ENCODE_CHUNK_ELEMENTS // max(per_user, 1))
        table_sum = np.zeros((self.meta.n_items, self.spec.row_dim), dtype=self.ring)
        dense_sum = None
        for lo in range(0, n_users, step):  # users in chunks: DeepFM's dense gradients are 873K values per user
            part = slice(lo, lo + step)
            rows_ring, dense_metrics = encode_upload(batch.row_grads[part], batch.dense_grads[part],
                                                     released_loss(self.cfg, batch.loss[part]), self.user_codec,
                                                     self.ring, st.train_metrics)
            items = np.concatenate(batch.items[part]) if n_users else np.zeros(0, np.int64)
            # uint arrays wrap in Z_2^k, like the shares' sum; sums in the ring are exact, so chunking changes nothing
            table_sum += scatter_rows(self.meta.n_items, items, rows_ring[batch.row_mask[part]], self.ring)
            chunk_dense = dense_metrics.sum(axis=0, dtype=self.ring)
            dense_sum = chunk_dense if dense_sum is None else dense_sum + chunk_dense
        for _server in range(2):  # central DP: each server's own fresh noise on its share, not the metric slots
            table_sum, dense_sum = st.noised_share(table_sum), st.noised_share(dense_sum, self.spec.dense_size)
        return {"train_loss": st.step_from_ring(table_sum, dense_sum, n_users)}

    def evaluate(self, users: np.ndarray) -> tuple[float, int]:
        """The users' [SSE, count] encoded with the evaluation metric codec (per-user clipping included),
        summed in the ring and decoded, as server 0 reconstructs them from the shares."""
        sse, count = self.user_test_errors(np.asarray(users, dtype=np.int64))
        codec = self.strategy.eval_metrics
        encoded = [codec.encode(float(s), int(c), "test error") for s, c in zip(sse, count)]
        total = np.sum(encoded, axis=0, dtype=codec.ring) if encoded else np.zeros(2, dtype=codec.ring)
        return codec.decode(total)

    def ranking(self, users: np.ndarray) -> np.ndarray | None:
        """Each ranked user's [hit, ndcg, 1] through the evaluation codec, summed in the ring and decoded, as
        server 0 reconstructs the last 3 elements of the evaluation shares (users without a case add zeros)."""
        if not self.cfg.train.ranking:
            return None
        codec = self.strategy.eval_metrics
        encoded = [codec.encode_ranking(r) for r in self.user_ranking(np.asarray(users, dtype=np.int64))]
        return codec.decode_ranking(np.sum(encoded, axis=0, dtype=codec.ring) if encoded
                                    else np.zeros(3, dtype=codec.ring))

    def round_sizes(self, rnd: int, items: list[np.ndarray]) -> dict[str, float]:
        down, up = self.cached_bytes((int_width(rnd),), lambda: self.protocol_bytes(rnd))
        return {"bytes_down": float(down), "bytes_up": float(up)}

    def protocol_bytes(self, rnd: int) -> tuple[int, int]:
        raise NotImplementedError


class SecEmbDriver(TwoServerDriver):
    strategy_class = SecEmbStrategy
    strategy: SecEmbStrategy

    def __init__(self, cfg: AppConfig, split: FederatedSplit, meta: DatasetMeta) -> None:
        super().__init__(cfg, split, meta)
        st = self.strategy
        if st.m_prime is None:  # Appendix C: the secure sum of the sampled users' distinct rated items
            users = np.asarray(count_sample(list(range(split.n_users)), cfg.strategy.count_users, self.seed),
                               dtype=np.int64)
            counts = np.diff(split.train_ptr)
            pairs = np.repeat(np.arange(split.n_users, dtype=np.int64), counts) * split.n_items + split.train_item
            chosen = np.repeat(np.isin(np.arange(split.n_users), users), counts)
            total = len(np.unique(pairs[chosen]))
            st.m_prime = m_prime_of(total, len(users), float(cfg.strategy.alpha))
        st.m_prime = min(int(st.m_prime), meta.n_items)


    def refused_before_training(self, users: np.ndarray) -> str | None:
        """SecEmb refuses a round at retrieval, before users train, when fewer than min_users take part."""
        return self.strategy.too_few(users, "retrieval")

    def user_table(self) -> np.ndarray:
        return self.user_codec.from_ring(self.strategy.ring_table()).astype(np.float32)

    def eval_table(self) -> np.ndarray:
        """Evaluated users retrieve their rows through the ring too (clients/secemb_evaluation.py)."""
        return self.user_table()

    def evaluated_test_ratings(self, users: np.ndarray) -> np.ndarray | None:
        """A user whose test items and ranking case exceed the evaluation m' evaluates a seeded sample of
        them (:func:`clients.item_selection.evaluation_items`, what the device calls)."""
        sp, train, m_eval = self.split, self.cfg.train, self.strategy.eval_m_prime()
        n_test = sp.test_ptr[users + 1] - sp.test_ptr[users]
        over = users[n_test + self.strategy.ranking_case_size() > m_eval]  # the others keep every test rating (distinct items <= count)
        if not len(over):
            return None
        keep = np.ones(len(sp.test_item), dtype=bool)
        for u in over.tolist():  # only users with more test ratings than the evaluation m' holds
            a, b = sp.test_ptr[u], sp.test_ptr[u + 1]
            rated = sp.train_item[sp.train_ptr[u]:sp.train_ptr[u + 1]]
            case = (user_candidates(u, rated, sp.test_item[a:b], sp.n_items, self.seed, int(train.ranking_negatives))
                    if train.ranking else None)
            keep[a:b] = np.isin(sp.test_item[a:b], evaluation_items(sp.test_item[a:b], case, m_eval, self.seed, u))
        return keep

    def aggregate(self, batch: RoundBatch) -> dict[str, Any]:
        return {**super().aggregate(batch), "m_prime": self.strategy.m_prime}

    def protocol_bytes(self, rnd: int) -> tuple[int, int]:
        return secemb_round_bytes(self.cfg, rnd, int(self.strategy.m_prime), self.meta.n_items, self.spec)

    def summary(self) -> dict[str, Any]:
        return {"m_prime": self.strategy.m_prime}


class SecFedRecDriver(TwoServerDriver):
    strategy_class = SecFedRecStrategy

    def request(self, rnd: int, user: int) -> np.ndarray:
        """Secure FedRec users download the full model and train on all their rated items."""
        return np.unique(self.train_items(user))

    def protocol_bytes(self, rnd: int) -> tuple[int, int]:
        return secfedrec_schema.round_bytes(rnd, self.meta.n_items, self.spec.row_dim, self.spec.dense_size,
                                            self.strategy.ring_bits, bool(self.cfg.simulation.telemetry))
