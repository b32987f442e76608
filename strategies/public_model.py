"""The public model the server side holds: the item table and the dense parameters.

Clients upload gradients; the server averages them over the round's
contributing users and takes one optimiser step (Adam, as in SecEmb
Appendix I). Plaintext, SecEmb and Secure FedRec all step this same object,
so the only difference between twins is how the averaged gradient reached it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models import init_dense, init_item_table
from models.training import denormals_flushed
from models.spec import ModelSpec
from recdata.dataset import DatasetMeta
from schemas.config import model_spec
from strategies.base import RecStrategy
from schemas.config import AppConfig


class PublicModel:
    def __init__(self, spec: ModelSpec, n_items: int, seed: int, lr: float, optimizer: str = "adam",
                 global_bias: float = 0.0, adam_eps: float = 1e-8) -> None:
        self.spec = spec
        self.n_items = n_items
        self.table = torch.nn.Parameter(torch.from_numpy(init_item_table(spec, n_items, seed).astype(np.float32)))
        self.dense = torch.nn.Parameter(torch.from_numpy(init_dense(spec, seed, global_bias).astype(np.float32)))
        params = [self.table, self.dense]
        self.opt = (torch.optim.Adam(params, lr=lr, eps=adam_eps) if optimizer == "adam"
                    else torch.optim.SGD(params, lr=lr))

    @property
    def row_dim(self) -> int:
        return int(self.table.shape[1])

    @property
    def dense_size(self) -> int:
        return int(self.dense.shape[0])

    def table_numpy(self) -> np.ndarray:
        return self.table.detach().numpy()

    def dense_numpy(self) -> np.ndarray:
        return self.dense.detach().numpy()

    def rows(self, items: np.ndarray) -> np.ndarray:
        return self.table_numpy()[items]

    def step(self, table_grad_sum: np.ndarray, dense_grad_sum: np.ndarray, n_users: int) -> None:
        """Apply the mean of the round's gradients (sums over ``n_users`` users)."""
        if n_users <= 0:
            return
        if table_grad_sum.shape != tuple(self.table.shape) or dense_grad_sum.shape != tuple(self.dense.shape):
            raise ValueError("aggregated gradient has the wrong shape")
        self.table.grad = torch.from_numpy(np.asarray(table_grad_sum, dtype=np.float32) / n_users)
        self.dense.grad = torch.from_numpy(np.asarray(dense_grad_sum, dtype=np.float32) / n_users)
        with denormals_flushed():  # as the users' local steps (models.training.denormals_flushed says why)
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Table, dense parameters and optimiser moments as plain numpy arrays (checkpoints never pickle).

        Torch's optimiser state (Adam: ``step``, ``exp_avg``, ``exp_avg_sq`` per
        parameter) is flattened to ``opt.<param index>.<name>``.
        """
        arrays = {"table": self.table_numpy().copy(), "dense": self.dense_numpy().copy()}
        for index, values in self.opt.state_dict()["state"].items():
            for name, value in values.items():
                tensor = value if torch.is_tensor(value) else torch.tensor(value)
                arrays[f"opt.{index}.{name}"] = tensor.detach().cpu().numpy().copy()
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_arrays` produced (shapes are checked)."""
        for name, param in (("table", self.table), ("dense", self.dense)):
            value = np.asarray(arrays[name], dtype=np.float32)
            if value.shape != tuple(param.shape):
                raise ValueError(f"checkpoint {name} has shape {value.shape}, the model {tuple(param.shape)}")
            with torch.no_grad():
                param.copy_(torch.from_numpy(value))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in arrays.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = torch.from_numpy(np.array(value))
        current = self.opt.state_dict()
        self.opt.load_state_dict({"state": state, "param_groups": current["param_groups"]})


class ModelStrategy(RecStrategy):
    """Base of the strategies that train a :class:`PublicModel` (plaintext, SecEmb, Secure FedRec)."""

    def __init__(self, cfg: AppConfig, meta: DatasetMeta) -> None:
        super().__init__(cfg, meta)
        self.spec = model_spec(cfg, meta.n_user_features, meta.n_item_features)
        self.model = PublicModel(self.spec, meta.n_items, int(cfg.seed), float(cfg.model.lr),
                                 cfg.train.server_optimizer, global_bias=meta.rating_midpoint,
                                 adam_eps=float(cfg.train.server_adam_eps))

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The server-side state a resumed run needs: the public model and its optimiser moments."""
        return self.model.state_arrays()

    def restore_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Load :meth:`checkpoint_state`'s arrays (before the loop starts)."""
        self.model.load_state_arrays(arrays)
