"""Client of ``dp_fedrec`` (local DP, the DP-FedRec baseline of SecEmb Figure 7).

The user downloads the full model, trains on all its rated items with
record-level clipping (:func:`clients.plaintext.local_step`, which runs the
clipped step whenever ``dp.enabled``), scatters its row gradients into a full
[n_items, row_dim] update and adds its OWN Gaussian noise of std
``noise_multiplier x clip`` to every row and to the dense gradient before
uploading. The noise multiplier is the server's (it may be calibrated from a
target epsilon), but never below the user's own configured ``dp.noise_multiplier``.

Nothing per-user travels beside the noised gradients: no loss, no rating count
(they are exact and would void the guarantee), and compute seconds only with
``simulation.telemetry`` (schemas/dp_fedrec.py).
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, RecordDict

from clients.environment import ClientEnv
from clients.plaintext import local_step
from clients.two_server import telemetry_seconds
from models.dp import add_gaussian_noise
from schemas import dp_fedrec as schema


def full_rows(n_items: int, items: np.ndarray, row_grads: np.ndarray) -> np.ndarray:
    """Row gradients [..., K, r] of ``items`` scattered into a zero [..., n_items, r] update (float32)."""
    out = np.zeros(row_grads.shape[:-2] + (n_items, row_grads.shape[-1]), dtype=np.float32)
    out[..., items, :] = row_grads
    return out


def noised_upload(rows: np.ndarray, dense: np.ndarray, noise_multiplier: float,
                  clip: float) -> tuple[np.ndarray, np.ndarray]:
    """A user's full rows and dense gradient plus its own fresh Gaussian noise (CSPRNG-seeded).

    Works on one user or a batch (leading dimension): every entry gets independent noise.
    The batched engine calls this too.
    """
    if noise_multiplier == 0:
        return rows, dense
    return add_gaussian_noise(rows, noise_multiplier, clip), add_gaussian_noise(dense, noise_multiplier, clip)


def noise_multiplier_of(env: ClientEnv, offered: float) -> float:
    """The server's noise multiplier, raised to the user's own configured one if that is larger."""
    own = env.cfg.dp.noise_multiplier
    return max(float(offered), float(own)) if own is not None else float(offered)


def on_update(content: RecordDict, context: Context, env: ClientEnv) -> RecordDict:
    start = time.perf_counter()
    rnd, offered, table, dense = schema.parse_update_message(content, env.n_items, env.spec.row_dim,
                                                              env.spec.dense_size)
    items = np.unique(env.user.train_items)
    result = local_step(env, context, items, table[items], dense, rnd)
    rows, dense_grad = noised_upload(full_rows(env.n_items, items, result.row_grads), result.dense_grad,
                                     noise_multiplier_of(env, offered), float(env.cfg.dp.clip))
    return schema.update_reply(rows, dense_grad, telemetry_seconds(env, time.perf_counter() - start))


# This protocol's message types (spelled once, in its schema) -> handler; the ClientApp collects these.
HANDLERS = {
    schema.UPDATE: on_update,
}
