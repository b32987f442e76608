"""FedMF Table 1: time per iteration, packed Paillier vs. the paper and vs. the naive one-value-per-ciphertext path.

Setting of the paper: 610 users of ml-latest-small, the N most-rated items
(N = 40 ... 2560), d = 100, a 1024-bit key (then 2048), one iteration = every
user uploads once and the server updates C_V. Per-iteration time as the paper
defines it: max user time + server time + communication at 1 Gb/s.

* User time (packed): decrypt C_V (identical work for every user), the FedMF
  step, encrypt the upload and the metric ciphertext; measured on the user
  with the most ratings among the N items (the slowest under PartText), with
  the product's user type (:class:`crypto.packed_matrix.PackedMatrixPrivate`).
  Printed twice: with its obfuscators r^n precomputed off the critical path
  (the pool is filled first, outside the timing: what a user that fills its
  pool between rounds pays), and with every r^n counted (user time + the
  time to fill exactly the r^n this upload consumes: what a user without a
  precomputed pool pays). r^n is almost all of an encryption: at 2,560 items
  the difference is the better part of a minute.
* Server time (packed): multiply every user's real packed upload (parsed and
  range-checked as it arrived, untimed) into C_V and remove the offsets, with
  the server's type (:class:`crypto.packed_matrix.PackedMatrixPublic`, public
  key only) and the same code the strategy runs. To keep the benchmark short the other users'
  uploads are encrypted with obfuscators recycled from 512 (benchmark only:
  the server's work does not depend on them); the timed user's own
  encryption uses fresh ones.
* Communication: the users' uploads at 1 Gb/s, as the paper counts it (its
  "~80 MB of gradient data ... 1.25 seconds"); the download of C_V by every
  user is printed beside it but, like in the paper, not added.
* Naive path: the prototype's one float per phe ciphertext — phe encrypt,
  decrypt and EncryptedNumber subtraction — timed per operation on a sample and
  scaled to the iteration's operation counts (stated as such).

    python -m benchmarks.bench_fedmf --items 40,80,160,320,640,1280,2560 --key-bits 1024
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from phe import paillier

from crypto.packed_matrix import PackedMatrixPrivate, PackedMatrixPublic
from crypto.paillier import ObfuscatorPool, generate_keypair
from models.fedmf_mf import MFHyper, init_item_matrix, init_user_vector, user_step
from recdata import load_ratings, split_users
from schemas.fedmf import pack_metrics

PAPER = {40: (34.39, 90.94), 50: (44.05, 113.34), 60: (46.34, 141.52), 80: (52.91, 182.27), 160: (92.81, 374.85),
         320: (140.51, 725.72), 640: (178.24, 1479.40), 1280: (264.10, 2919.91), 2560: (334.79, 5786.01)}
BANDWIDTH = 1e9 / 8  # bytes per second
CODEC = {"frac_bits": 24, "value_bound": 16.0}  # the packing codec's fixed point (max_summands: the round's users)


class RecycledPool(ObfuscatorPool):
    """Benchmark only: hands out a fixed set of obfuscators over and over (never do this in the product:
    a reused r links ciphertexts). The server's work does not depend on the obfuscators, so the other
    users' uploads, which only feed the server's timing, use it to skip 13 ms of r^n per ciphertext."""

    def __init__(self, n: int, distinct: int = 512) -> None:
        super().__init__(n)
        self.fill(distinct)
        self._cycle = itertools.cycle(ObfuscatorPool.from_export(n, self.export())._items)

    def take(self):
        return next(self._cycle)


def users_of(n_items: int) -> list[tuple[np.ndarray, np.ndarray]]:
    split = split_users(load_ratings("ml_latest_small", max_items=n_items), method="last_k", k=3, seed=0)
    out = []
    for u in range(split.n_users):
        ud = split.user(u)
        order = np.argsort(ud.train_items)
        out.append((ud.train_items[order].astype(np.int64), ud.train_ratings[order].astype(np.float64)))
    return out


def packed_iteration(n_items: int, mode: str, key, dim: int = 100) -> dict:
    pub, priv = key
    users = users_of(n_items)
    params = {"dim": dim, "n_rows": n_items, **CODEC, "max_summands": len(users)}
    server = PackedMatrixPublic(pub.n, **params)  # the server's type: public key only
    hp = MFHyper(0.01, 0.001, 0.001)
    V = init_item_matrix(n_items, dim, 0, 0.1)
    cv = server.encrypt_matrix(V)
    cv_bytes = server.to_bytes(cv)
    # user time, on the user with the most ratings, with its own pool of fresh obfuscators
    slow = int(np.argmax([len(i) for i, _ in users]))
    items, ratings = users[slow]
    user = PackedMatrixPrivate(pub.n, priv.p, priv.q, **params)
    n_up = n_items if mode == "fulltext" else len(items)
    t = time.perf_counter()
    user.scheme.pool.fill(n_up * user.cts_per_row + 1)  # exactly the r^n of this upload and its metric ciphertext
    pool_seconds = time.perf_counter() - t
    t = time.perf_counter()
    V_user = user.decrypt_matrix(cv_bytes)
    _u, grads, loss = user_step(init_user_vector(dim, slow, 0, 0.1), V_user[items], ratings, hp)
    rows = np.zeros((n_items, dim)) if mode == "fulltext" else grads
    if mode == "fulltext":
        rows[items] = grads
    upload = user.encrypt_gradient_rows(rows)
    user.scheme.to_array(user.scheme.encrypt_batch([pack_metrics([loss * len(items), len(items)])]))
    user_seconds = time.perf_counter() - t
    assert user.scheme.pool.computed_on_demand == 0  # every r^n of the timed part was precomputed
    # every user's real upload (obfuscators recycled: the server's cost does not depend on them)
    others = PackedMatrixPublic(pub.n, **params, pool=RecycledPool(pub.n))  # users encrypt with the public key
    uploads, up_bytes = [], 0
    for uid, (it, r) in enumerate(users):
        _u, g, _ = user_step(init_user_vector(dim, uid, 0, 0.1), V[it], r, hp)
        full_items = np.arange(n_items) if mode == "fulltext" else it
        rows = np.zeros((len(full_items), dim))
        rows[np.searchsorted(full_items, it)] = g
        arr = others.encrypt_gradient_rows(rows)
        up_bytes += arr.nbytes + full_items.nbytes
        uploads.append((full_items, server.from_bytes(arr)))
    t = time.perf_counter()
    cv = server.apply_updates(cv, uploads)
    server_seconds = time.perf_counter() - t
    down_bytes = cv_bytes.nbytes * len(users)
    return {"user": user_seconds, "user_rn": user_seconds + pool_seconds, "server": server_seconds,
            "comm": up_bytes / BANDWIDTH, "down": down_bytes / BANDWIDTH, "up_mb": up_bytes / 1e6,
            "pool": pool_seconds, "users": len(users), "max_rated": len(items), "cts_per_row": server.cts_per_row,
            "upload_cts": upload.shape[0] * upload.shape[1]}


def naive_costs(key_bits: int, samples: int = 60) -> dict:
    """Per-operation cost of the prototype's path: phe encrypt / decrypt / EncryptedNumber '-'."""
    pub, priv = paillier.generate_paillier_keypair(n_length=key_bits)
    vals = np.random.default_rng(0).normal(0, 0.1, samples)
    t = time.perf_counter()
    enc = [pub.encrypt(float(v)) for v in vals]
    e = (time.perf_counter() - t) / samples
    t = time.perf_counter()
    _ = [priv.decrypt(x) for x in enc]
    d = (time.perf_counter() - t) / samples
    t = time.perf_counter()
    _ = [a - b for a, b in zip(enc, enc[::-1])]
    s = (time.perf_counter() - t) / samples
    return {"encrypt": e, "decrypt": d, "sub": s, "ct_bytes": 2 * key_bits // 8}


def naive_iteration(n_items: int, mode: str, c: dict, dim: int = 100) -> float:
    users = users_of(n_items)
    counts = [n_items if mode == "fulltext" else len(i) for i, _ in users]
    user = n_items * dim * c["decrypt"] + max(counts) * dim * c["encrypt"]
    server = sum(counts) * dim * c["sub"]
    comm = sum(counts) * dim * c["ct_bytes"] / BANDWIDTH  # uploads, as the paper counts communication
    return user + server + comm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", default="40,80,160,320,640,1280,2560")
    parser.add_argument("--key-bits", type=int, default=1024)
    parser.add_argument("--modes", default="parttext,fulltext")
    args = parser.parse_args()
    key = generate_keypair(args.key_bits)
    naive = naive_costs(args.key_bits)
    print(f"\nFedMF per-iteration seconds, 610 users of ml-latest-small, d=100, {args.key_bits}-bit key, 1 Gb/s")
    print(f"naive per-op (phe, measured on 60 values): encrypt {naive['encrypt'] * 1e3:.2f} ms, decrypt "
          f"{naive['decrypt'] * 1e3:.2f} ms, subtract {naive['sub'] * 1e6:.0f} us")
    print("user s: the slowest user with its r^n precomputed (pool filled off the critical path); "
          "with r^n: the same user computing every r^n it consumes (user s + pool s)")
    print("items | mode     | user s | user s with r^n | server s | up comm s | packed total s | total with r^n s |"
          " naive total s (scaled) | paper s | x naive | x paper | x paper with r^n | pool s |"
          " C_V download s (all users, not in total) | cts/row")
    for n_items in [int(x) for x in args.items.split(",")]:
        for mode in args.modes.split(","):
            r = packed_iteration(n_items, mode, key)
            total = r["user"] + r["server"] + r["comm"]
            total_rn = r["user_rn"] + r["server"] + r["comm"]
            nv = naive_iteration(n_items, mode, naive)
            paper = PAPER.get(n_items, (float("nan"), float("nan")))[0 if mode == "parttext" else 1]
            print(f"{n_items:5d} | {mode:8} | {r['user']:6.2f} | {r['user_rn']:15.2f} | {r['server']:8.2f} | "
                  f"{r['comm']:9.2f} | {total:14.2f} | {total_rn:16.2f} | {nv:22.1f} | {paper:7.1f} | "
                  f"{nv / total:7.0f} | {paper / total:7.0f} | {paper / total_rn:16.0f} | {r['pool']:6.2f} | "
                  f"{r['down']:40.2f} | {r['cts_per_row']}", flush=True)


if __name__ == "__main__":
    main()
