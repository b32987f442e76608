"""Deterministic initial values, identical in every process for the same seed.

The server draws the item table and the dense parameters; each user draws its
own private parameters from (seed, user id). Twins therefore start equal.
"""

from __future__ import annotations

import numpy as np
import torch

from models.recommenders import dense_offsets, initial_dense_values
from models.spec import ModelSpec

# Seed-sequence salts: the server's item-side draws and each user's private draws never share a stream.
ITEM_SALT = 0x17E3
USER_SALT = 0x05E2


def init_item_table(spec: ModelSpec, n_items: int, seed: int) -> np.ndarray:
    """Embeddings ~ N(0, init_std), biases 0."""
    rng = np.random.default_rng([seed, ITEM_SALT])
    table = rng.normal(0.0, spec.init_std, size=(n_items, spec.row_dim)).astype(np.float32)
    table[:, -1] = 0.0
    return table


def init_private(spec: ModelSpec, user_id: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, USER_SALT, user_id])
    user = rng.normal(0.0, spec.init_std, size=spec.private_size).astype(np.float32)
    user[-1] = 0.0
    return user


def init_dense(spec: ModelSpec, seed: int, global_bias: float = 0.0) -> np.ndarray:
    """Torch's default layer init (seeded) for MLPs; feature embeddings ~ N(0, init_std); biases 0,
    except the global bias (MF, FM, DeepFM), which starts at ``global_bias`` (the rating scale's midpoint)."""
    torch.manual_seed(seed)
    dense = initial_dense_values(spec, torch.Generator().manual_seed(seed + 1))
    offsets = dense_offsets(spec)
    if "global_bias" in offsets:
        offset, shape = offsets["global_bias"]
        dense[offset:offset + int(np.prod(shape))] = np.float32(global_bias)
    return dense
