"""Local step of one user for the model-based protocols (plaintext, SecEmb, Secure FedRec).

The user holds only the item rows it fetched (``rows``, in a local order) and
the dense parameters. It computes the loss on its training ratings of those
items, the gradients of all three parameter groups at the downloaded point
(the public ones are uploaded, as in SecEmb Algorithm 3), and then updates its
private parameters with Adam for ``local_user_steps`` steps. The same function
serves every protocol, so twins train identically by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models import build_model
from models.spec import ModelSpec


@dataclass
class LocalResult:
    row_grads: np.ndarray   # float32 [k, row_dim]
    dense_grad: np.ndarray  # float32 [dense_size]
    loss: float             # training loss at the downloaded model
    n_ratings: int
    private: dict[str, np.ndarray]


def _batch(spec: ModelSpec, local_items: np.ndarray, user_x: np.ndarray, item_x: np.ndarray):
    return (torch.from_numpy(local_items.astype(np.int64)), torch.from_numpy(user_x.astype(np.float32)),
            torch.from_numpy(item_x.astype(np.float32)))


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
) -> LocalResult:
    """One participation of one user. ``local_items`` index ``rows``; ``item_x`` is per rating."""
    torch.manual_seed(0)  # no randomness is used, but keep torch deterministic
    model = build_model(spec, rows.shape[0])
    model.set_rows(rows)
    model.set_dense(dense)
    model.set_private(private["params"])
    items_t, user_t, item_x_t = _batch(spec, local_items, user_x, item_x)
    target = torch.from_numpy(ratings.astype(np.float32))

    def loss_fn() -> torch.Tensor:
        pred = model(items_t, user_t, item_x_t)
        return torch.mean((pred - target) ** 2) + reg * model.regularizer()

    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    row_grads = model.item_rows.grad.detach().numpy().astype(np.float32).copy()
    dense_params = model.dense_parameters()
    dense_grad = (torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                             for p in dense_params]).numpy().astype(np.float32)
                  if dense_params else np.zeros(0, dtype=np.float32))
    new_private = _update_private(model, private, loss_fn, lr, steps)
    return LocalResult(row_grads=row_grads, dense_grad=dense_grad, loss=float(loss.detach()),
                       n_ratings=int(len(ratings)), private=new_private)


def _update_private(model, private: dict[str, np.ndarray], loss_fn, lr: float, steps: int) -> dict[str, np.ndarray]:
    """Adam on the private parameters only, resuming the moments kept in Context.state."""
    params = model.private_parameters()
    opt = torch.optim.Adam(params, lr=lr)
    sizes = [p.numel() for p in params]
    step = int(private["step"][0])
    if step > 0:
        m = np.split(private["m"], np.cumsum(sizes)[:-1])
        v = np.split(private["v"], np.cumsum(sizes)[:-1])
        for p, mi, vi in zip(params, m, v):
            opt.state[p] = {"step": torch.tensor(float(step)), "exp_avg": torch.from_numpy(mi.copy()).view_as(p),
                            "exp_avg_sq": torch.from_numpy(vi.copy()).view_as(p)}
    private_ids = {id(p) for p in params}
    for p in model.parameters():  # later backward passes need only the private gradients
        if id(p) not in private_ids:
            p.requires_grad_(False)
    for i in range(steps):
        if i > 0:  # the first step reuses the gradient computed for the upload
            opt.zero_grad()
            loss_fn().backward()
        opt.step()
    state_m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params]).numpy().astype(np.float32)
    state_v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params]).numpy().astype(np.float32)
    return {"params": model.get_private().astype(np.float32), "m": state_m, "v": state_v,
            "step": np.array([step + steps], dtype=np.int64)}


def evaluate_locally(spec: ModelSpec, table: np.ndarray, dense: np.ndarray, private_params: np.ndarray,
                     test_items: np.ndarray, test_ratings: np.ndarray, user_x: np.ndarray,
                     item_features: np.ndarray) -> tuple[float, int]:
    """Sum of squared errors of this user's test ratings under the public model."""
    if len(test_items) == 0:
        return 0.0, 0
    uniq, local = np.unique(test_items, return_inverse=True)
    model = build_model(spec, len(uniq))
    model.set_rows(table[uniq])
    model.set_dense(dense)
    model.set_private(private_params)
    items_t, user_t, item_x_t = _batch(spec, local, user_x, item_features[test_items])
    with torch.no_grad():
        pred = model(items_t, user_t, item_x_t).numpy().astype(np.float64)
    return float(np.sum((pred - test_ratings) ** 2)), int(len(test_items))
