"""A batch of users' local data, padded to rectangles so the models run on all of them at once.

Users rate different numbers of items and fetch different numbers of item
rows, so each user's arrays are padded to the batch's longest: ratings with a
``mask`` (1 real, 0 padding) and rows with zeros. Padding is built so that it
contributes nothing: a padded rating has mask 0 (its squared error is
multiplied by 0 and its gradient is exactly 0), and a padded row is zero and
referenced by no real rating (its regulariser term and gradient are 0).

The builders pad without per-element Python loops: the ragged arrays are
concatenated once and scattered to (user, position) coordinates computed from
the lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class UserBatch:
    """B users' ratings of their fetched rows (torch tensors, CPU)."""

    local_items: torch.Tensor  # int64 [B, N]: index into the user's K rows; 0 where padded
    ratings: torch.Tensor      # float32 [B, N]
    mask: torch.Tensor         # float32 [B, N]: 1 real rating, 0 padding
    user_x: torch.Tensor       # float32 [B, l_x]
    item_x: torch.Tensor       # float32 [B, N, l_y]: the rated item's features, per rating
    n_ratings: torch.Tensor    # int64 [B]

    def __len__(self) -> int:
        return int(self.n_ratings.shape[0])


def lengths_of(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Lengths (first dimension) of B ragged arrays, int64 [B]."""
    return np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))


def pad_flat(flat: np.ndarray, lengths: np.ndarray, width: int | None = None) -> np.ndarray:
    """Scatter ``flat`` (the B ragged arrays concatenated, [sum(lengths), ...]) into [B, width, ...], zero-padded.

    ``width`` defaults to the longest length (0 for an empty batch).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(flat) != int(lengths.sum()):
        raise ValueError(f"{len(flat)} flat entries but the lengths add up to {int(lengths.sum())}")
    longest = int(lengths.max(initial=0))
    width = longest if width is None else int(width)
    if width < longest:  # on the flat view a longer user would spill into the next user's slots
        raise ValueError(f"width {width} is shorter than the longest array ({longest})")
    out = np.zeros((len(lengths), width) + flat.shape[1:], dtype=flat.dtype)
    if len(lengths) == 1:  # one user (the Flower client): its entries are the first row's prefix
        out[0, :len(flat)] = flat
        return out
    # entry j of user b goes to flat slot b * width + (j - start_b): one index array, not a (user, position) pair
    starts = np.cumsum(lengths) - lengths
    target = np.arange(len(flat)) + np.repeat(np.arange(len(lengths)) * width - starts, lengths)
    out.reshape((len(lengths) * width,) + flat.shape[1:])[target] = flat
    return out


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices start[b] .. start[b] + lengths[b] - 1 for every b, concatenated (CSR row slices)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.repeat(np.asarray(starts, dtype=np.int64) - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(int(lengths.sum()), dtype=np.int64)


def _concat(arrays: Sequence[np.ndarray], dtype, trailing: tuple[int, ...]) -> np.ndarray:
    if not arrays:
        return np.zeros((0,) + trailing, dtype=dtype)
    return np.concatenate([np.asarray(a, dtype=dtype).reshape((len(a),) + trailing) for a in arrays])


def make_batch_flat(lengths: np.ndarray, local_items: np.ndarray, ratings: np.ndarray, user_x: np.ndarray,
                    item_x: np.ndarray) -> UserBatch:
    """A batch from concatenated per-user arrays: user b owns the next ``lengths[b]`` entries.

    ``local_items`` int [R], ``ratings`` [R], ``item_x`` [R, l_y], ``user_x`` [B, l_x].
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    user_x = np.asarray(user_x, dtype=np.float32)
    if user_x.ndim != 2 or user_x.shape[0] != len(lengths):
        raise ValueError(f"user_x has shape {user_x.shape}, expected ({len(lengths)}, l_x)")
    item_x = np.asarray(item_x, dtype=np.float32)
    if item_x.ndim != 2 or len(item_x) != len(ratings):
        raise ValueError(f"item_x has shape {item_x.shape}, expected ({len(ratings)}, l_y)")
    items = pad_flat(np.asarray(local_items, dtype=np.int64), lengths)
    mask = pad_flat(np.ones(len(ratings), dtype=np.float32), lengths)
    return UserBatch(local_items=torch.from_numpy(items),
                     ratings=torch.from_numpy(pad_flat(np.asarray(ratings, dtype=np.float32), lengths)),
                     mask=torch.from_numpy(mask), user_x=torch.from_numpy(user_x),
                     item_x=torch.from_numpy(pad_flat(item_x, lengths, items.shape[1])),
                     n_ratings=torch.from_numpy(lengths.copy()))


def make_batch(local_items: Sequence[np.ndarray], ratings: Sequence[np.ndarray], user_x: np.ndarray,
               item_x: Sequence[np.ndarray]) -> UserBatch:
    """A batch from B users' arrays: ``local_items[b]`` indexes user b's rows, ``item_x[b]`` is [N_b, l_y]."""
    if not len(local_items) == len(ratings) == len(item_x):
        raise ValueError("local_items, ratings and item_x must hold one array per user")
    lengths = lengths_of(ratings)
    l_y = next((int(np.shape(x)[1]) for x in item_x if np.ndim(x) == 2), 0)
    return make_batch_flat(lengths, _concat(local_items, np.int64, ()), _concat(ratings, np.float32, ()),
                           user_x, _concat(item_x, np.float32, (l_y,)))


def gather_rows(table: np.ndarray, items: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each user's rows ``table[items[b]]`` padded to the longest: (rows [B, K, row_dim], row_mask [B, K] float32)."""
    lengths = lengths_of(items)
    flat = _concat(items, np.int64, ())
    rows = pad_flat(np.asarray(table[flat], dtype=np.float32), lengths)
    return rows, pad_flat(np.ones(len(flat), dtype=np.float32), lengths)


def length_buckets(lengths: np.ndarray, max_pad_ratio: float) -> list[np.ndarray]:
    """Split B users into groups whose padded size is at most ``max_pad_ratio`` x their real ratings.

    A batch costs (users x longest length), so one batch of users with very
    different rating counts is mostly padding (ml_100k's first 100 users:
    5.8x). Sorting by length and cutting greedily from the longest, a group
    keeps taking the next shorter user while ``len(group) x longest <=
    max_pad_ratio x sum(lengths in group)``. Users are independent, so
    training the groups separately gives every user the same result as one
    batch. Returns index arrays into ``lengths`` (longest group first), which
    together hold every user once.
    """
    if max_pad_ratio < 1.0:
        raise ValueError(f"max_pad_ratio must be at least 1, got {max_pad_ratio}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    while start < len(order):  # one iteration per group, not per user
        longest = int(lengths[order[start]])
        if longest <= 0:  # the rest rate nothing: one group, no padding
            groups.append(order[start:])
            break
        # with the group [start, end): padded = (end - start) x longest, real = cumulative sum of lengths
        real = np.cumsum(lengths[order[start:]])
        fits = np.arange(1, len(real) + 1) * longest <= max_pad_ratio * real
        size = int(np.argmin(fits)) if not fits.all() else len(fits)
        groups.append(order[start:start + max(size, 1)])
        start += max(size, 1)
    return groups
