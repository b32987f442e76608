"""Local step of one user for the model-based protocols (plaintext, SecEmb, Secure FedRec).

The user holds only the item rows it fetched (``rows``, in a local order) and
the dense parameters. It computes the loss on its training ratings of those
items, the gradients of all three parameter groups at the downloaded point
(the public ones are uploaded, as in SecEmb Algorithm 3), and then updates its
private parameters with Adam for ``local_user_steps`` steps. The same function
serves every protocol, so twins train identically by construction; it is
models.training on a batch of one user, the code the batched engine runs on a
whole round.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from models.batch import make_batch
from models.dp_training import train_batch_clipped
from models.spec import ModelSpec
from models.training import PrivateState, evaluate_batch, train_batch


@dataclass
class LocalResult:
    row_grads: np.ndarray   # float32 [k, row_dim]
    dense_grad: np.ndarray  # float32 [dense_size]
    loss: float             # training loss at the downloaded model
    n_ratings: int
    private: dict[str, np.ndarray]


def train_locally(
    spec: ModelSpec,
    rows: np.ndarray,
    dense: np.ndarray,
    private: dict[str, np.ndarray],
    local_items: np.ndarray,
    ratings: np.ndarray,
    user_x: np.ndarray,
    item_x: np.ndarray,
    lr: float,
    reg: float,
    steps: int,
    clip: float | None = None,
) -> LocalResult:
    """One participation of one user. ``local_items`` index ``rows``; ``item_x`` is per rating.

    ``clip`` (differential privacy on): the uploaded gradients are the record-level clipped sum
    (:func:`models.dp_training.train_batch_clipped`, what the batched engine runs too).
    """
    batch = make_batch([local_items], [ratings], np.asarray(user_x, np.float32).reshape(1, -1), [item_x])
    train = train_batch if clip is None else partial(train_batch_clipped, clip=float(clip))
    result = train(spec, np.asarray(rows, np.float32)[None], dense, PrivateState.from_dicts([private]),
                   batch, lr, reg, steps)
    return LocalResult(row_grads=result.row_grads[0], dense_grad=result.dense_grads[0], loss=float(result.loss[0]),
                       n_ratings=int(result.n_ratings[0]), private=result.private.to_dicts()[0])


def evaluate_locally(spec: ModelSpec, table: np.ndarray, dense: np.ndarray, private_params: np.ndarray,
                     test_items: np.ndarray, test_ratings: np.ndarray, user_x: np.ndarray,
                     item_features: np.ndarray) -> tuple[float, int]:
    """Sum of squared errors of this user's test ratings under the public model."""
    if len(test_items) == 0:
        return 0.0, 0
    uniq, local = np.unique(test_items, return_inverse=True)
    batch = make_batch([local], [test_ratings], np.asarray(user_x, np.float32).reshape(1, -1),
                       [item_features[test_items]])
    sse, count = evaluate_batch(spec, table[uniq][None], dense, np.asarray(private_params)[None], batch)
    return float(sse[0]), int(count[0])
