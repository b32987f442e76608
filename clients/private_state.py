"""User-private parameters and their optimiser state, kept in ``Context.state``.

They never leave the client. Initialisation is deterministic in (seed, user)
so a secure protocol and its plaintext twin start every user identically.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context

from models import init_private
from models.spec import ModelSpec

KEY = "private"


def load_private(context: Context, spec: ModelSpec, user_id: int, seed: int) -> dict[str, np.ndarray]:
    """Private params plus Adam moments (``params``, ``m``, ``v``, ``step``)."""
    if KEY in context.state:
        rec = context.state[KEY]
        return {k: rec[k].numpy() for k in ("params", "m", "v", "step")}
    params = init_private(spec, user_id, seed).astype(np.float32)
    zeros = np.zeros_like(params)
    return {"params": params, "m": zeros, "v": zeros.copy(), "step": np.zeros(1, dtype=np.int64)}


def save_private(context: Context, state: dict[str, np.ndarray]) -> None:
    context.state[KEY] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
