"""Top-k ranking metrics of the NCF / PFedRec protocol: HR@k and NDCG@k from candidate scores.

Each row of ``scores`` is one user's ranking case: column 0 is the score of the
held-out positive item, columns 1.. the scores of the sampled negatives (the
candidates of :mod:`recdata.ranking`). The positive's 0-based rank is the
number of negatives ranked above it, and

- HR@k = 1 if rank < k else 0,
- NDCG@k = 1 / log2(rank + 2) if rank < k else 0 (one relevant item, so the
  ideal DCG is 1).

Ties are pessimistic: a negative ranks above the positive unless its score is
strictly lower. A constant predictor therefore puts every positive last (HR@k
= 0 for k <= n_neg), instead of first, which an optimistic rule would give and
which would make an untrained model look perfect. A NaN score on either side
counts as a tie (a NaN positive ranks last), for the same reason.

The functions take model scores, not models: how a model scores a user's
candidates is the model's business (models/recommenders.py); these work on
numpy arrays and torch tensors alike and return the same kind, one value per row.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from models.batch import make_batch_flat
from models.fedmf_mf import _predict as _mf_predict
from models.recommenders import predict
from models.spec import ModelSpec

Scores = TypeVar("Scores", np.ndarray, torch.Tensor)


def positive_rank(scores: Scores) -> Scores:
    """0-based rank of column 0 among its row, ties and NaNs counted against it: int64 [B]."""
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be [B, 1 + n_neg], got shape {tuple(scores.shape)}")
    above = ~(scores[:, 1:] < scores[:, :1])  # not strictly below the positive: ranks above it
    return above.sum(1)


def hit_rate_at_k(scores: Scores, k: int) -> Scores:
    """HR@k per row: 1.0 if the positive (column 0) ranks in the top ``k``, else 0.0 (float [B])."""
    rank = positive_rank(scores)
    _check_k(k)
    return (rank < k) * 1.0


def ndcg_at_k(scores: Scores, k: int) -> Scores:
    """NDCG@k per row: 1 / log2(rank + 2) for a 0-based rank < ``k``, else 0.0 (float [B])."""
    rank = positive_rank(scores)
    _check_k(k)
    gain = 1.0 / np.log2(rank + 2.0) if isinstance(rank, np.ndarray) else 1.0 / torch.log2(rank + 2.0)
    return (rank < k) * gain


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def ranking_sums(scores: np.ndarray, k: int) -> np.ndarray:
    """Per-row [hit, ndcg, 1] (float64 [B, 3]): what a user reports, summed over users into [hits, ndcg, n_ranked]."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.stack([hit_rate_at_k(scores, k), ndcg_at_k(scores, k), np.ones(len(scores))], axis=1)


def candidate_scores(spec: ModelSpec, rows: np.ndarray, dense: np.ndarray, private_params: np.ndarray,
                     local_items: np.ndarray, user_x: np.ndarray, item_x: np.ndarray) -> np.ndarray:
    """Model scores [B, C] of B users' C candidates, by the model's own ``predict`` (no re-implementation).

    ``rows`` [B, K, row_dim] are each user's rows, ``local_items`` [B, C] index them (column 0 the
    positive), ``user_x`` [B, l_x], ``item_x`` [B, C, l_y] the candidates' features. Both engines call it.
    """
    n_users, n_cand = np.shape(local_items)
    lengths = np.full(n_users, n_cand, dtype=np.int64)
    item_x = np.asarray(item_x, np.float32).reshape(n_users * n_cand, -1)
    batch = make_batch_flat(lengths, np.asarray(local_items, np.int64).ravel(), np.zeros(n_users * n_cand),
                            np.asarray(user_x, np.float32).reshape(n_users, -1), item_x)
    params = np.asarray(private_params, dtype=np.float32)
    with torch.no_grad():
        pred = predict(spec, torch.from_numpy(np.asarray(rows, np.float32)), torch.from_numpy(params),
                       torch.from_numpy(np.asarray(dense, np.float32)).expand(n_users, -1), batch)
    return pred.numpy()


def mf_candidate_scores(U: np.ndarray, v_rows: np.ndarray) -> np.ndarray:
    """FedMF's predictions <u_b, v_c> [B, C] of B users' C candidate rows ``v_rows`` [B, C, d] (``fedmf`` and
    ``distributed_mf``: their devices and the batched engine), by models.fedmf_mf's own predictor."""
    n_users, n_cand, dim = v_rows.shape
    seg = np.repeat(np.arange(n_users, dtype=np.int64), n_cand)
    return _mf_predict(np.asarray(U, np.float64), np.asarray(v_rows, np.float64).reshape(-1, dim),
                       seg).reshape(n_users, n_cand)
