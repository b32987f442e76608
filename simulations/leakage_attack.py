"""FedMF Section 4: a curious server recovers a user's ratings from two plaintext uploads.

In ``distributed_mf`` user i uploads, for each rated item j,

    G_j^t = gamma (-2 e_j u^t + 2 mu v_j^t),   e_j = r_ij - <u^t, v_j^t>,

and updates u^{t+1} = (1 - 2 lambda gamma) u^t + 2 gamma sum_j v_j^t e_j. The
server knows gamma, lambda, mu and every V it sent. The paper eliminates
unknowns down to one scalar equation (24) per item and solves it numerically.
We solve the same system in closed form, which is exact and needs no starting
point:

* H_j = G_j^t / gamma - 2 mu v_j^t = -2 e_j u^t, so every H_j is parallel to
  u^t: w = H_j* / |H_j*| (largest row) gives u^t = a w with unknown scalar a,
  and c_j = H_j . w = -2 a e_j.
* The next upload gives the direction w' of u^{t+1} = b w' the same way.
* Substituting e_j = -c_j / (2a) into the user update and multiplying by a:
  (1 - 2 lambda gamma) a^2 w - (a b) w' = gamma sum_j c_j v_j^t, which is
  linear in x = a^2 and y = a b: a d-by-2 least-squares problem.
* Then r_ij = e_j + <u^t, v_j^t> = -c_j / (2a) + a <w, v_j^t>, with the sign of
  a fixed by ratings being positive.

Run ``python -m simulations.leakage_attack`` to attack every user of
ml-latest-small (the uploads are produced by the same client code the Flower
client runs) and print the recovery error.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from models.fedmf_mf import MFHyper


@dataclass(frozen=True)
class Observation:
    """What the server saw of one user in one round: the V it sent and the upload."""

    V: np.ndarray       # [m, d] item matrix sent to the user
    items: np.ndarray   # uploaded item ids
    grads: np.ndarray   # uploaded Gradient rows


class AttackFailed(ValueError):
    """The uploads do not determine the ratings (e.g. d = 1 or parallel user vectors)."""


def _direction(obs: Observation, hp: MFHyper) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit direction w of u, the projections c_j and the items with a nonzero row."""
    H = obs.grads / hp.lr - 2.0 * hp.reg_v * obs.V[obs.items]
    norms = np.linalg.norm(H, axis=1)
    if norms.max(initial=0.0) == 0.0:
        raise AttackFailed("upload carries no rated item")
    w = H[np.argmax(norms)] / norms.max()
    rated = norms > 1e-9 * norms.max()
    return w, H @ w, rated


def recover_ratings(first: Observation, second: Observation, hp: MFHyper) -> dict[int, float]:
    """Ratings of the items rated in ``first``, from two consecutive uploads of one user."""
    w, c, rated = _direction(first, hp)
    w2, _, _ = _direction(second, hp)
    items, c = first.items[rated], c[rated]
    Vt = first.V[items]
    z = hp.lr * (c @ Vt)
    A = np.stack([(1.0 - 2.0 * hp.reg_u * hp.lr) * w, -w2], axis=1)
    (x, _y), *_ = np.linalg.lstsq(A, z, rcond=None)
    if x <= 0:
        raise AttackFailed("the two uploads are inconsistent with one user (a^2 <= 0)")
    a = np.sqrt(x)
    ratings = -c / (2.0 * a) + a * (Vt @ w)
    if ratings.mean() < 0:  # u = a w and u = (-a)(-w) are indistinguishable; ratings are positive
        ratings = -ratings
    return {int(j): float(r) for j, r in zip(items, ratings)}


def attack_error(recovered: dict[int, float], items: np.ndarray, ratings: np.ndarray) -> float:
    """Mean absolute error of the recovered ratings against the true training ratings."""
    truth = dict(zip(items.tolist(), ratings.tolist()))
    missing = set(truth) - set(recovered)
    if missing:
        raise AttackFailed(f"{len(missing)} rated items not recovered")
    return float(np.mean([abs(recovered[j] - truth[j]) for j in truth]))


def _simulate_all_users(dim: int, hp: MFHyper, seed: int) -> list[float]:
    """Every ml-latest-small user takes two FedMF steps; attack each from its uploads.

    The uploads come from :func:`clients.fedmf_common.compute_upload`, the
    function the Flower client's ``distributed_mf`` handler runs (PartText),
    so the attack sees exactly what that client would send.
    """
    from clients.fedmf_common import compute_upload, rated_items_of
    from models.fedmf_mf import init_item_matrix, init_user_vector
    from recdata import load_ratings, split_users

    split = split_users(load_ratings("ml_latest_small"), method="last_k", k=3, seed=seed)
    V1 = init_item_matrix(split.n_items, dim, seed, 0.1)
    users = [split.user(u) for u in range(split.n_users)]
    state = {}
    obs1, total = {}, np.zeros_like(V1)
    for ud in users:  # round t: every user uploads against V1
        items_r, r = rated_items_of(ud)
        up = compute_upload(V1, items_r, r, init_user_vector(dim, ud.user_id, seed, 0.1), hp, "parttext", 0)
        state[ud.user_id] = (items_r, r, up.u)
        obs1[ud.user_id] = Observation(V1, up.items, up.rows)
        np.add.at(total, up.items, up.rows)
    V2 = V1 - total
    errors = []
    for ud in users:  # round t+1 against V2, then attack
        items_r, r, u = state[ud.user_id]
        up2 = compute_upload(V2, items_r, r, u, hp, "parttext", 0)
        rec = recover_ratings(obs1[ud.user_id], Observation(V2, up2.items, up2.rows), hp)
        errors.append(attack_error(rec, items_r, r))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--reg-u", type=float, default=0.001)
    parser.add_argument("--reg-v", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    errors = np.array(_simulate_all_users(args.dim, MFHyper(args.lr, args.reg_u, args.reg_v), args.seed))
    print(f"users attacked: {len(errors)}  (ml-latest-small, d={args.dim}, gamma={args.lr})")
    print(f"mean absolute error of recovered training ratings: {errors.mean():.3e}")
    print(f"max per-user MAE: {errors.max():.3e}; users with MAE <= 1e-3: {(errors <= 1e-3).sum()}")


if __name__ == "__main__":
    main()
