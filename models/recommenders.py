"""MF, NCF, FM and DeepFM (SecEmb Appendix I), each written as ONE user's local view.

A client holds only its own user parameters, the k item rows it fetched
(``item_rows``, indexed 0..k-1 locally) and the dense parameters. The three
groups are kept apart because the protocols treat them differently:
user-private parameters never leave the device, item rows travel sparsely
(DPF / packed Paillier), dense parameters are secret-shared as one vector.

Item row layout: [embedding(s) | bias]. User layout mirrors it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.spec import ModelSpec


class RecModel(nn.Module):
    """Base: parameter groups, flat get/set, regulariser."""

    def __init__(self, spec: ModelSpec, n_rows: int) -> None:
        super().__init__()
        self.spec = spec
        self.item_rows = nn.Parameter(torch.zeros(n_rows, spec.row_dim))
        self.user = nn.Parameter(torch.zeros(spec.private_size))
        self.global_bias = nn.Parameter(torch.zeros(1))

    # groups ---------------------------------------------------------------
    def private_parameters(self) -> list[nn.Parameter]:
        return [self.user]

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n not in ("item_rows", "user")]

    # flat access ----------------------------------------------------------
    def get_dense(self) -> np.ndarray:
        params = self.dense_parameters()
        if not params:
            return np.zeros(0, dtype=np.float32)
        return torch.cat([p.detach().reshape(-1) for p in params]).numpy().astype(np.float32)

    def set_dense(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat, dtype=np.float32)
        if flat.shape != (self.spec.dense_size,):
            raise ValueError(f"dense vector has shape {flat.shape}, expected ({self.spec.dense_size},)")
        offset = 0
        with torch.no_grad():
            for p in self.dense_parameters():
                p.copy_(torch.from_numpy(flat[offset:offset + p.numel()]).view_as(p))
                offset += p.numel()

    def get_private(self) -> np.ndarray:
        return self.user.detach().numpy().astype(np.float32).copy()

    def set_private(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat, dtype=np.float32)
        if flat.shape != tuple(self.user.shape):
            raise ValueError(f"private vector has shape {flat.shape}, expected {tuple(self.user.shape)}")
        with torch.no_grad():
            self.user.copy_(torch.from_numpy(flat))

    def set_rows(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        if rows.shape != tuple(self.item_rows.shape):
            raise ValueError(f"rows have shape {rows.shape}, expected {tuple(self.item_rows.shape)}")
        with torch.no_grad():
            self.item_rows.copy_(torch.from_numpy(rows))

    def regularizer(self) -> torch.Tensor:
        """Sum of squares of the user's and the fetched items' embeddings (and feature embeddings)."""
        return (self.user ** 2).sum() + (self.item_rows ** 2).sum()

    def forward(self, local_items: torch.Tensor, user_x: torch.Tensor, item_x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BiasedMF(RecModel):
    """r = <p_u, q_i> + b_u + b_i + mu."""

    def forward(self, local_items, user_x, item_x):
        d = self.spec.dim
        rows = self.item_rows[local_items]
        return rows[:, :d] @ self.user[:d] + rows[:, d] + self.user[d] + self.global_bias[0]


class NCF(RecModel):
    """NeuMF: GMF(p_g * q_g) and MLP(2d -> d -> d/2) on (p_m, q_m), joined by one linear layer."""

    def __init__(self, spec: ModelSpec, n_rows: int) -> None:
        super().__init__(spec, n_rows)
        d = spec.dim
        self.mlp = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d // 2), nn.ReLU())
        self.out = nn.Linear(d + d // 2, 1, bias=False)
        del self.global_bias  # NCF's dense part is exactly the 688 of SecEmb Table 9 at d=16

    def forward(self, local_items, user_x, item_x):
        d = self.spec.dim
        rows = self.item_rows[local_items]
        gmf = rows[:, :d] * self.user[:d]
        mlp = self.mlp(torch.cat([self.user[d:2 * d].expand(len(rows), d), rows[:, d:2 * d]], dim=1))
        return self.out(torch.cat([gmf, mlp], dim=1)).squeeze(1) + rows[:, 2 * d] + self.user[2 * d]


class FM(RecModel):
    """Factorisation machine over user id, item id and the binary user/item features."""

    def __init__(self, spec: ModelSpec, n_rows: int) -> None:
        super().__init__(spec, n_rows)
        self.feat_emb = nn.Parameter(torch.zeros(spec.n_features, spec.dim))
        self.feat_w = nn.Parameter(torch.zeros(spec.n_features))

    def _fields(self, local_items, user_x, item_x):
        """Field embeddings [B, F, d] (user, item, scaled features) and the linear term [B]."""
        d = self.spec.dim
        rows = self.item_rows[local_items]
        b = len(rows)
        x = torch.cat([user_x.expand(b, -1), item_x], dim=1)  # [B, l_x + l_y]
        feats = x.unsqueeze(2) * self.feat_emb.unsqueeze(0)  # [B, F, d]
        fields = torch.cat([self.user[:d].expand(b, 1, d), rows[:, None, :d], feats], dim=1)
        linear = self.global_bias[0] + self.user[d] + rows[:, d] + x @ self.feat_w
        return fields, linear

    def forward(self, local_items, user_x, item_x):
        fields, linear = self._fields(local_items, user_x, item_x)
        s = fields.sum(1)
        return linear + 0.5 * ((s * s).sum(1) - (fields * fields).sum((1, 2)))

    def regularizer(self) -> torch.Tensor:
        return super().regularizer() + (self.feat_emb ** 2).sum()


class DeepFM(FM):
    """FM plus an MLP over the concatenated field embeddings: (l_x+l_y+2)d -> 4d -> 2d -> 1."""

    def __init__(self, spec: ModelSpec, n_rows: int) -> None:
        super().__init__(spec, n_rows)
        d, f = spec.dim, spec.n_features + 2
        self.deep = nn.Sequential(nn.Linear(f * d, 4 * d), nn.LayerNorm(4 * d), nn.ReLU(),
                                  nn.Linear(4 * d, 2 * d), nn.LayerNorm(2 * d), nn.ReLU(), nn.Linear(2 * d, 1))

    def forward(self, local_items, user_x, item_x):
        fields, linear = self._fields(local_items, user_x, item_x)
        s = fields.sum(1)
        fm = linear + 0.5 * ((s * s).sum(1) - (fields * fields).sum((1, 2)))
        return fm + self.deep(fields.reshape(len(fields), -1)).squeeze(1)


MODELS = {"mf": BiasedMF, "ncf": NCF, "fm": FM, "deepfm": DeepFM}


def build_model(spec: ModelSpec, n_rows: int) -> RecModel:
    """One user's model holding ``n_rows`` fetched item rows (values set by the caller)."""
    model = MODELS[spec.name](spec, n_rows)
    if model.get_dense().shape[0] != spec.dense_size:
        raise AssertionError(f"{spec.name}: dense size {model.get_dense().shape[0]} != spec {spec.dense_size}")
    return model
