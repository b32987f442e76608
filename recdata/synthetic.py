"""Synthetic ratings: a planted low-rank structure, long-tailed users and long-tailed items.

Used by tests (small, fast) and by benchmarks that need the sizes of datasets
we may not ship (ML-1M, ML-10M, ML-25M, Yelp; ``preset=``, SecEmb Table 7).

- Ratings per user follow a lognormal (sigma 1), like Figure 2(a) of the SecEmb
  paper, clipped to [1, n_items] and scaled so the total is n_users x mean_ratings
  (a preset's total is exactly Table 7's).
- Item popularity is Zipf-like, as in MovieLens: the item of popularity rank r
  (a random permutation of the ids) has weight (r + 1) ** -popularity_exponent
  (0 = uniform). Each user's items are distinct, drawn one after another with
  probability proportional to the weights of the items not yet drawn.
- rating = round_to_half(3.5 + <u, v> + b_u + b_i + noise), clipped to [0.5, 5].

Memory and time are linear in the number of ratings; no users x items matrix is
ever built (ML-25M: about 0.75 GiB peak, of which 0.65 GiB is the result).
Users are processed in blocks of about ``_BLOCK`` ratings: each block draws
candidate items for all its users at once from the popularity distribution (a
Walker alias table: O(1) per draw), keeps each user's first occurrences in draw
order (which is exactly successive sampling without replacement), and tops up
the users still short with further vectorised rounds (see _sample_block). Users
wanting more than a quarter of the items, and the rare ones still short after
``_MAX_ROUNDS``, take the exact dense path (Efraimidis-Spirakis keys over all
items), which costs at most ~4x their own ratings. The output is built directly
as a :class:`Ratings` (ids are already dense 0..n-1: no np.unique re-indexing),
sorted by user then item; the values are float32, the ids int64 as Ratings has them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recdata.ratings import DatasetError, Ratings


@dataclass(frozen=True)
class Preset:
    """Sizes of a dataset in SecEmb Table 7 (features are listed for the conf files; the loader ignores them)."""

    n_users: int
    n_items: int
    n_ratings: int
    n_user_features: int
    n_item_features: int


# SecEmb (Sparsity-aware secure federated recsys), Appendix H, Table 7 "Statistics of the datasets".
PRESETS: dict[str, Preset] = {
    "ml_1m": Preset(6_040, 3_883, 1_000_209, 30, 18),
    "ml_10m": Preset(69_878, 10_681, 10_000_054, 0, 20),
    "ml_25m": Preset(162_541, 62_423, 25_000_095, 0, 20),
    "yelp": Preset(10_000, 93_386, 1_007_956, 0, 16),   # the paper's top-10,000-users subset of Yelp
}

_BLOCK = 1 << 19        # ratings (or dense key cells) handled at once: bounds the working memory
_MAX_ROUNDS = 16        # top-up rounds before a still-short user takes the exact dense path
_MIN_ACCEPT = 0.1       # floor of the expected share of new items when sizing a user's next draw
_SIGMA = 1.0            # lognormal sigma of the per-user counts


def load_synthetic(n_users: int | None = None, n_items: int | None = None, rank: int = 8,
                   mean_ratings: float | None = None, seed: int = 0, n_user_features: int = 0,
                   n_item_features: int = 0, noise: float = 0.3, popularity_exponent: float = 1.0,
                   preset: str | None = None, **_: object) -> Ratings:
    """Planted low-rank ratings; ``preset`` (ml_1m | ml_10m | ml_25m | yelp) gives users, items and ratings.

    Without a preset the defaults are 100 users, 200 items and 20 ratings per user on average.
    With a preset, n_users / n_items / mean_ratings may be omitted or must agree with it
    (mean_ratings up to rounding: the total is Table 7's exact count). Feature widths are
    not part of a preset (the conf/dataset/synthetic_*.yaml files set Table 7's).
    """
    n_users, n_items, n_ratings = _sizes(preset, n_users, n_items, mean_ratings)
    if not _is_int(rank) or rank <= 0:
        raise DatasetError(f"synthetic: rank must be a positive integer, got {rank!r}")
    for key, value in (("n_user_features", n_user_features), ("n_item_features", n_item_features)):
        if not _is_int(value) or value < 0:
            raise DatasetError(f"synthetic: {key} must be an integer >= 0, got {value!r}")
    for key, value in (("noise", noise), ("popularity_exponent", popularity_exponent)):
        if not _is_real(value) or value < 0:
            raise DatasetError(f"synthetic: {key} must be a finite number >= 0, got {value!r}")

    rng = np.random.default_rng([seed, 0x5E7])
    counts = _user_counts(rng, n_users, n_items, n_ratings)
    pop = _Popularity(n_items, float(popularity_exponent), rng.permutation(n_items))
    U = rng.normal(0, 1 / np.sqrt(rank), size=(n_users, rank)).astype(np.float32)
    V = rng.normal(0, 1 / np.sqrt(rank), size=(n_items, rank)).astype(np.float32)
    bu = rng.normal(0, 0.3, n_users).astype(np.float32)
    bi = rng.normal(0, 0.3, n_items).astype(np.float32)
    uf = (rng.random((n_users, n_user_features)) < 0.3).astype(np.float32)
    itf = (rng.random((n_items, n_item_features)) < 0.3).astype(np.float32)

    total = int(counts.sum())
    user = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    item = np.empty(total, dtype=np.int64)
    rating = np.empty(total, dtype=np.float32)
    timestamp = np.empty(total, dtype=np.int64)
    ends = np.cumsum(counts)
    u0 = 0
    while u0 < n_users:   # blocks of consecutive users holding about _BLOCK ratings
        start = int(ends[u0 - 1]) if u0 else 0
        u1 = max(u0 + 1, int(np.searchsorted(ends, start + _BLOCK, side="right")))
        stop = int(ends[u1 - 1])
        keys = _sample_block(rng, counts[u0:u1], pop)      # local_user * n_items + popularity rank
        own = keys // n_items
        keys = own * n_items + pop.item_of_rank[keys - own * n_items]
        keys.sort()                                         # by user, then item id
        sl = slice(start, stop)
        item[sl] = keys - own * n_items                     # own is unchanged by the sort (grouped by user)
        del keys, own
        us, its = user[sl], item[sl]
        raw = np.einsum("ij,ij->i", np.take(U, us, axis=0), np.take(V, its, axis=0))
        raw += 3.5 + np.take(bu, us) + np.take(bi, its) \
            + np.float32(noise) * rng.standard_normal(stop - start, dtype=np.float32)
        rating[sl] = np.clip(np.round(raw * 2) / 2, 0.5, 5.0)
        timestamp[sl] = rng.integers(900_000_000, 1_600_000_000, size=stop - start)
        u0 = u1
    return Ratings(user=user, item=item, rating=rating, timestamp=timestamp, n_users=n_users, n_items=n_items,
                   user_features=uf, item_features=itf, name="synthetic",
                   user_ids=np.arange(n_users, dtype=np.int64), item_ids=np.arange(n_items, dtype=np.int64))


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _sizes(preset: str | None, n_users: int | None, n_items: int | None,
           mean_ratings: float | None) -> tuple[int, int, int]:
    """(n_users, n_items, total ratings) from the preset and/or the explicit sizes."""
    if preset is not None:
        if preset not in PRESETS:
            raise DatasetError(f"synthetic: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        ps = PRESETS[preset]
        hint = (f"; leave it out (with Hydra: dataset=synthetic_{preset}, which sets the preset's sizes) "
                "or set preset to null to choose the sizes")
        for key, given, want in (("n_users", n_users, ps.n_users), ("n_items", n_items, ps.n_items)):
            if given is not None and given != want:
                raise DatasetError(f"synthetic: {key}={given!r} contradicts preset {preset} ({want}){hint}")
        mean = ps.n_ratings / ps.n_users
        if mean_ratings is not None and not (_is_real(mean_ratings) and abs(mean_ratings - mean) <= 0.5):
            raise DatasetError(f"synthetic: mean_ratings={mean_ratings!r} contradicts preset {preset} "
                               f"({mean:.2f}){hint}")
        return ps.n_users, ps.n_items, ps.n_ratings
    n_users = 100 if n_users is None else n_users
    n_items = 200 if n_items is None else n_items
    mean_ratings = 20 if mean_ratings is None else mean_ratings
    for key, value in (("n_users", n_users), ("n_items", n_items)):
        if not _is_int(value) or value <= 0:
            raise DatasetError(f"synthetic: {key} must be a positive integer, got {value!r}")
    if not _is_real(mean_ratings) or mean_ratings <= 0:
        raise DatasetError(f"synthetic: mean_ratings must be a positive number, got {mean_ratings!r}")
    return int(n_users), int(n_items), int(round(n_users * float(mean_ratings)))


def _user_counts(rng: np.random.Generator, n_users: int, n_items: int, n_ratings: int) -> np.ndarray:
    """Lognormal counts clipped to [1, n_items], scaled so that they sum to ``n_ratings`` (clipped to what fits)."""
    target = min(max(n_ratings, n_users), n_users * n_items)
    mean = n_ratings / n_users
    x = rng.lognormal(np.log(mean) - _SIGMA**2 / 2, _SIGMA, size=n_users)

    def total(s: float) -> int:
        return int(np.clip(np.rint(s * x), 1, n_items).sum())

    lo, hi = 0.0, 1.0
    while total(hi) < target:
        hi *= 2
    for _ in range(100):  # bisection on the scale: total() is non-decreasing in s
        mid = (lo + hi) / 2
        if total(mid) <= target:
            lo = mid
        else:
            hi = mid
        if total(lo) == target:
            break
    counts = np.clip(np.rint(lo * x), 1, n_items).astype(np.int64)
    short = target - int(counts.sum())   # >= 0: a few users at most (ties of the rounding)
    while short > 0:
        room = np.flatnonzero(counts < n_items)
        add = rng.choice(room, size=min(short, len(room)), replace=False)
        counts[add] += 1
        short -= len(add)
    return counts


class _Popularity:
    """Item popularity in rank order (rank 0 = most popular): weight (r + 1)^-a, item id ``item_of_rank[r]``."""

    def __init__(self, n_items: int, exponent: float, item_of_rank: np.ndarray) -> None:
        self.n = n_items
        self.item_of_rank = item_of_rank
        self.log_w = -exponent * np.log1p(np.arange(n_items, dtype=np.float64))   # log weights, max 0
        w = np.exp(self.log_w)
        self.p = w / w.sum()
        # tail[r] = P(rank >= r), summed from the tail so that tiny tails keep their relative precision
        self.tail = np.cumsum(self.p[::-1])[::-1].copy()
        self.neg_tail = -self.tail                                          # increasing, for searchsorted
        self.keep, self.alias = _alias_table(self.p)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` ranks from p: Walker alias, O(1) per draw."""
        u = rng.random(size) * self.n
        col = np.minimum(u.astype(np.int64), self.n - 1)
        u -= col                                    # the fractional part picks the column or its alias
        return np.where(u < self.keep[col], col, self.alias[col])

    def draw_from(self, rng: np.random.Generator, first: np.ndarray) -> np.ndarray:
        """One rank per entry of ``first``, drawn from p restricted to ranks >= first (inverse CDF of the tail)."""
        y = self.tail[first] * (1.0 - rng.random(len(first)))            # in (0, tail[first]]
        r = np.searchsorted(self.neg_tail, -y, side="right") - 1          # largest r with tail[r] >= y
        return np.clip(r, first, self.n - 1)


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table of ``p``: draw column j uniformly, keep j with probability keep[j], else alias[j]."""
    n = len(p)
    q = (p * n).tolist()
    alias = list(range(n))
    small = [i for i in range(n) if q[i] < 1.0]
    large = [i for i in range(n) if q[i] >= 1.0]
    while small and large:   # O(n_items), once per call (no loop over users or ratings)
        s, g = small.pop(), large[-1]
        alias[s] = g
        q[g] -= 1.0 - q[s]
        if q[g] < 1.0:
            small.append(large.pop())
    for i in large + small:  # what is left is 1 up to rounding
        q[i] = 1.0
    return np.array(q), np.array(alias, dtype=np.int64)


def _sample_block(rng: np.random.Generator, counts: np.ndarray, pop: _Popularity) -> np.ndarray:
    """Sorted keys local_user * n + rank: ``counts[u]`` distinct ranks per user by successive sampling
    without replacement (each next item drawn with probability p among the items the user lacks).

    Round 1 draws from p for every user at once; each user keeps its first occurrences in draw
    order. A top-up round draws only for the users still short, from p restricted to the ranks
    after the user's complete prefix ("head": ranks 0..h-1 all taken, which under a steep
    popularity is most of what was taken), again keeping first occurrences of items not yet
    taken. Both are exactly successive sampling. Draws are sized by the expected share of new
    items, so the rounds converge geometrically; what is still short after _MAX_ROUNDS (and the
    users wanting over a quarter of the items) is finished by the exact dense path.
    """
    n = pop.n
    m = len(counts)
    need = counts.astype(np.int64)
    dense = need * 4 > n                 # heavy users: the dense path costs < 4x their ratings
    parts = [_sample_dense(rng, np.flatnonzero(dense), need[dense], np.empty(0, np.int64), pop.log_w)] \
        if dense.any() else []
    need[dense] = 0
    acc = np.empty(0, dtype=np.int64)    # sorted keys taken so far by the light users
    head = np.zeros(m, dtype=np.int64)
    for rnd in range(_MAX_ROUNDS):
        short = np.flatnonzero(need > 0)
        if not len(short):
            break
        if rnd:
            head, accept = _head_and_accept(acc, m, pop)
            k = np.ceil(need[short] * 1.1 / np.maximum(accept[short], _MIN_ACCEPT)).astype(np.int64) + 1
        else:
            k = np.ceil(need[short] * 1.1).astype(np.int64) + 1
        owner = np.repeat(short, k)
        ranks = pop.draw_from(rng, head[owner]) if rnd else pop.draw(rng, len(owner))
        keys = owner * n + ranks
        del owner, ranks
        _, first = np.unique(keys, return_index=True)    # stable: each key's first draw
        first.sort()
        keys = keys[first]                               # distinct, still in draw order (grouped by user)
        del first
        if len(acc):
            pos = np.minimum(np.searchsorted(acc, keys), len(acc) - 1)
            keys = keys[acc[pos] != keys]
            del pos
        own = keys // n
        idx = np.arange(len(keys))
        group_start = np.where(np.r_[True, own[1:] != own[:-1]], idx, 0)   # own is grouped (non-decreasing)
        keep = idx - np.maximum.accumulate(group_start) < need[own]        # the first need[u] new ones
        keys, own = keys[keep], own[keep]
        del idx, group_start, keep
        need -= np.bincount(own, minlength=m)
        keys.sort()
        acc = np.concatenate([acc, keys])
        acc.sort(kind="stable")   # two sorted runs: a linear merge
        del keys, own
    still = np.flatnonzero(need > 0)
    if len(still):   # rare: users whose remaining items have little mass; finish them exactly
        parts.append(_sample_dense(rng, still, need[still], acc, pop.log_w))
    parts.append(acc)
    out = np.concatenate(parts)
    out.sort()
    return out


def _head_and_accept(acc: np.ndarray, m: int, pop: _Popularity) -> tuple[np.ndarray, np.ndarray]:
    """Per user of the block: the length h of its complete prefix of ranks (0..h-1 all taken), and the
    chance that a draw from ranks >= h is an item it has not taken yet."""
    n = pop.n
    own = acc // n
    rank = acc - own * n
    taken = np.bincount(own, minlength=m)
    pos = np.arange(len(acc)) - (np.cumsum(taken) - taken)[own]   # position within the user's sorted ranks
    bad = np.flatnonzero(rank != pos)    # per user a suffix of its entries (ranks strictly increase)
    head = taken.copy()
    if len(bad):
        ub = own[bad]
        first = np.r_[True, ub[1:] != ub[:-1]]
        head[ub[first]] = pos[bad[first]]
    beyond = np.bincount(own, weights=np.where(rank >= head[own], pop.p[rank], 0.0), minlength=m)
    accept = 1.0 - beyond / pop.tail[np.minimum(head, n - 1)]
    return head, accept


def _sample_dense(rng: np.random.Generator, users: np.ndarray, need: np.ndarray, taken: np.ndarray,
                  log_w: np.ndarray) -> np.ndarray:
    """Keys of ``need[j]`` more ranks for each of ``users`` (local ids, ascending), excluding the keys in
    ``taken`` (sorted): Efraimidis-Spirakis, i.e. the ``need`` smallest log(-log U) - log w per user."""
    n = len(log_w)
    rows = max(1, _BLOCK // n)
    out = []
    for a in range(0, len(users), rows):   # batches of heavy users: at most _BLOCK key cells at once
        us, nd = users[a:a + rows], need[a:a + rows]
        key = np.log(-np.log1p(-rng.random((len(us), n)))) - log_w
        lo, hi = np.searchsorted(taken, us[0] * n), np.searchsorted(taken, (us[-1] + 1) * n)
        if hi > lo:
            t = taken[lo:hi]
            row = np.searchsorted(us, t // n)
            hit = us[np.minimum(row, len(us) - 1)] == t // n
            key[row[hit], t[hit] % n] = np.inf
        order = np.argsort(key, axis=1)
        chosen = order[np.arange(n)[None, :] < nd[:, None]]
        out.append(np.repeat(us, nd) * n + chosen)
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)
