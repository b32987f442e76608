"""What each server receives (its view) and what it reveals; plus the leakage attack on the plaintext twin.

The views are captured from real simulations: ``RecordingGrid`` keeps every
reply content the ServerApp (FedMF's server, SecEmb's server 0) receives; a
recording wrapper around the in-process link keeps every frame server 1
receives. Secrets to look for are taken from the plaintext twin run with the
same seed (its uploads are the secure run's gradients) and, for FedMF's
secret key, from the key holder's own device through a Flower client mod.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from crypto.fixed_point import FixedPointCodec
from twoserver import transport as secemb_server1
from strategies.exchange import content_nbytes
from tests.sim_utils import SMALL, run_sim

pytestmark = pytest.mark.slow
FEDMF = ["+experiment=fedmf_small", "rounds=2", "train.eval_every=1", "strategy.key_bits=1024", "strategy=fedmf"]


def _all_bytes(content) -> bytes:
    out = []
    for record in content.values():
        if isinstance(record, ArrayRecord):
            out.extend(record[k].numpy().tobytes() for k in record)
        else:
            out.extend(v if isinstance(v, bytes) else str(v).encode() for v in record.values())
    return b"".join(out)


def _key_spy(folder: Path):
    """Client mod: the key holder writes its secret primes to a file (what the server must never see)."""

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        if "paillier" in context.state and msg.metadata.message_type == "query.paillier_setup":
            rec = context.state["paillier"]
            (folder / "secret.json").write_text(json.dumps({"p": bytes(rec["p"]).hex(), "q": bytes(rec["q"]).hex()}))
        return reply

    return mod


@pytest.mark.parametrize("mode", ["fulltext", "parttext"])
def test_fedmf_server_view(tmp_path, mode):
    res, grid = run_sim(tmp_path, FEDMF + [f"strategy.mode={mode}"], client_mods=[_key_spy(tmp_path)], record=True)
    secret = json.loads((tmp_path / "secret.json").read_text())
    p, q = bytes.fromhex(secret["p"]), bytes.fromhex(secret["q"])
    for _type, _node, content in grid.received:
        blob = _all_bytes(content)
        assert p not in blob and q not in blob, "the server received the Paillier secret key"
    uploads = [(node, content) for t, node, content in grid.received if t == "train.fedmf_update"]
    assert uploads
    for _node, content in uploads:  # only item ids and ciphertexts: no float gradient anywhere
        rec = content["grad"]
        assert set(rec) == {"items", "cts"} and rec["cts"].numpy().dtype == np.uint8
    sizes = {}
    for node, content in uploads:
        sizes.setdefault(len(content["grad"]["items"].numpy()), set()).add(content_nbytes(content))
    all_sizes = {s for v in sizes.values() for s in v}
    if mode == "fulltext":
        assert len(all_sizes) == 1  # users with different rated sets upload identical sizes
    else:
        assert len(sizes) > 1 and len(all_sizes) > 1  # PartText: size reveals the count (known leak)
        by_count = sorted((k, max(v)) for k, v in sizes.items())
        assert all(a[1] < b[1] for a, b in zip(by_count, by_count[1:]))
    _assert_replies_untimed(grid)


def _assert_replies_untimed(grid) -> None:
    """Every reply server 0 got carries its instruction's created_at and ttl, not the moment its user finished."""
    assert grid.stamps and len(grid.stamps) == len(grid.received)
    for msg_type, sent_at, ttl, replied_at, reply_ttl in grid.stamps:
        assert (replied_at, reply_ttl) == (sent_at, ttl), f"a {msg_type} reply is stamped with its own time"


def _record_server1_frames(monkeypatch) -> list[bytes]:
    """Every frame server 1 receives in this test (its view), through the in-process link."""
    frames: list[bytes] = []
    original = secemb_server1.InProcessLink.request

    def recording(self, frame):
        frames.append(frame)
        return original(self, frame)

    monkeypatch.setattr(secemb_server1.InProcessLink, "request", recording)
    return frames


def test_secemb_views_reveal_neither_indices_nor_gradient_rows(tmp_path, monkeypatch):
    server1_frames = _record_server1_frames(monkeypatch)
    base = SMALL + ["model=mf", "rounds=2", "clients_per_round=12", "strategy.m_prime=10"]
    _, secure = run_sim(tmp_path / "s", base + ["strategy=secemb"], record=True)
    _, plain = run_sim(tmp_path / "p", base + ["strategy=plaintext"], record=True)

    # secrets of the same users in the same rounds, from the plaintext twin's view
    items = [c["req"]["items"].numpy() for t, _n, c in plain.received if t == "query.plain_request"]
    test_items = [c["req"]["items"].numpy() for t, _n, c in plain.received if t == "query.eval_items"]
    assert test_items  # the twin's users named their test items; SecEmb's retrieve them privately
    items += test_items
    rows = [c["grads"]["rows"].numpy() for t, _n, c in plain.received if t == "train.plain_update"]
    codec = FixedPointCodec(16, 327.0)
    needles = [i.astype(np.int64).tobytes() for i in items if len(i) >= 3]
    needles += [codec.to_ring(r[0].astype(np.float64), np.uint32).tobytes() for r in rows]
    needles += [r[0].astype(np.float32).tobytes() for r in rows]
    views = {"server 0": [_all_bytes(c) for _t, _n, c in secure.received], "server 1": server1_frames}
    for who, blobs in views.items():
        for blob in blobs:
            for needle in needles:
                assert needle not in blob, f"{who} received a rated index list or a gradient row"

    # identical sizes for users with different numbers of rated items
    for msg_type in ("query.secemb_retrieve", "train.secemb_upload", "query.secemb_eval_retrieve",
                     "evaluate.secemb_shares"):
        sizes = {content_nbytes(c) for t, _n, c in secure.received if t == msg_type}
        assert len(sizes) == 1, (msg_type, sizes)
    counts = {len(i) for i in items}
    assert len(counts) > 1  # the users really differ in how many items they rated
    retrieve_frames = [f for f in server1_frames if b'"retrieve"' in f[:200]]
    assert retrieve_frames
    from schemas.wire import decode_frame

    box_sizes = {a.size for f in retrieve_frames for k, a in decode_frame(f)[2].items() if k.startswith("box_")}
    assert len(box_sizes) == 1
    eval_frames = [f for f in server1_frames if b'"retrieve_eval"' in f[:200]]
    assert eval_frames  # evaluation went through the retrieval, not a full-model download
    assert len({a.size for f in eval_frames for k, a in decode_frame(f)[2].items() if k.startswith("box_")}) == 1


def test_leakage_attack_recovers_real_users_ratings(tmp_path):
    """FedMF Section 4 on the server's real view of a distributed_mf simulation of ml-latest-small users."""

    from models.fedmf_mf import MFHyper
    from simulations.config import compose_config, to_app_config
    from recdata.dataset import load_split
    from simulations.leakage_attack import Observation, attack_error, recover_ratings
    from strategies import distributed_mf

    kept = {}
    original = distributed_mf.DistributedMFStrategy.train_round

    def keep_strategy(self, rnd, users):
        kept["strategy"] = self
        return original(self, rnd, users)

    overrides = ["dataset=ml_latest_small", "dataset.max_users=25", "dataset.split=last_k", "model.dim=10",
                 "strategy=distributed_mf", "strategy.mode=parttext", "strategy.record_uploads=true",
                 "clients_per_round=25", "rounds=2", "train.eval_every=0"]
    import pytest as _pytest

    mp = _pytest.MonkeyPatch()
    mp.setattr(distributed_mf.DistributedMFStrategy, "train_round", keep_strategy)
    try:
        run_sim(tmp_path, overrides)
    finally:
        mp.undo()
    view = kept["strategy"].view
    cfg = to_app_config(compose_config(overrides))
    split = load_split(cfg)
    s = cfg.strategy
    hp = MFHyper(s.lr, s.reg_u, s.reg_v)
    errors = []
    for user in range(split.n_users):
        first, second = [v for v in view if v["user"] == user]
        rec = recover_ratings(Observation(first["V"], first["items"], first["grads"]),
                              Observation(second["V"], second["items"], second["grads"]), hp)
        ud = split.user(user)
        errors.append(attack_error(rec, ud.train_items, ud.train_ratings.astype(float)))
    assert len(errors) == 25 and max(errors) <= 1e-3


# ---------------------------------------------------------------- SecEmb / Secure FedRec: values
_PROTOCOL_META = {"run", "round", "users", "width", "dense_size", "variant", "m_prime", "n_items", "ring_bits",
                  "shape", "min_users", "size"}  # server 0's own protocol parameters, not users' data
_VALUE_BASE = SMALL + ["model=mf", "rounds=2", "clients_per_round=12", "train.ranking_negatives=20"]  # 40 items
_M_PRIME = ["strategy.m_prime=10"]  # SecEmb and its twin pad/truncate; Secure FedRec's twin uses every item
_value_runs: dict[str, tuple] = {}


def _plausible(arr: np.ndarray) -> np.ndarray | None:
    """Elements worth comparing: every float, and the elements of small integer arrays (not bytes)."""
    if arr.dtype.kind == "f":
        return arr.reshape(-1).astype(np.float64)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize >= 2 and arr.size <= 64:
        return arr.reshape(-1)
    return None


def _view_values(content) -> tuple[list[float], list[np.ndarray]]:
    """Scalars of every Config/MetricRecord and the plausible arrays of a received Flower content."""
    scalars, arrays = [], []
    for record in content.values():
        if isinstance(record, ArrayRecord):
            arrays.extend(a for a in (_plausible(record[k].numpy()) for k in record) if a is not None)
        else:
            for v in record.values():
                for x in (v if isinstance(v, list) else [v]):
                    if isinstance(x, (int, float)) and not isinstance(x, bool):
                        scalars.append(x)
    return scalars, arrays


def _frame_values(frame: bytes) -> tuple[list[float], list[np.ndarray]]:
    from schemas.wire import decode_frame

    _op, meta, arrays = decode_frame(frame)
    scalars = [v for k, v in meta.items() if k not in _PROTOCOL_META and isinstance(v, (int, float))
               and not isinstance(v, bool)]
    return scalars, [a for a in (_plausible(x) for x in arrays.values()) if a is not None]


def _matches(values: np.ndarray, ints: np.ndarray, floats: np.ndarray) -> bool:
    """Ints compare exactly, floats within 1e-6 relative."""
    values = np.asarray(values)
    if values.size == 0:
        return False
    if values.dtype.kind in "iu":
        return bool(np.isin(values.astype(np.int64), ints).any())
    v = values.astype(np.float64)[:, None]
    hit_int = np.isclose(v, ints[None, :].astype(np.float64), rtol=1e-6, atol=0).any()
    hit_float = np.isclose(v, floats[None, :], rtol=1e-6, atol=0).any()
    return bool(hit_int or hit_float)


def _secret_values(tmp_path_factory, twin: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user rated counts, test counts, training losses (and loss sums), test SSEs and ranking NDCGs, from the
    plaintext twin."""
    key = " ".join(twin)
    if key not in _value_runs:
        _, plain = run_sim(tmp_path_factory.mktemp("plain"), _VALUE_BASE + ["strategy=plaintext"] + twin,
                           record=True)
        _value_runs[key] = plain
    plain = _value_runs[key]
    from recdata.dataset import load_split
    from simulations.config import compose_config, to_app_config

    split = load_split(to_app_config(compose_config(_VALUE_BASE)))
    ints = {len(np.unique(split.user(u).train_items)) for u in range(split.n_users)}
    ints |= {len(split.user(u).test_items) for u in range(split.n_users)}
    floats: set[float] = set()
    for t, _n, c in plain.received:
        if t == "train.plain_update":
            loss, n = float(c["metrics"]["loss"]), int(c["metrics"]["n_ratings"])
            ints.add(n)
            floats |= {loss, loss * n}
        elif t in ("evaluate", "evaluate.rows"):  # plaintext evaluates by item request (evaluate.rows)
            ints.add(int(c["eval"]["count"]))
            floats.add(float(c["eval"]["sse"]))
            floats.add(float(c["eval"]["ndcg"]))  # the user's ranking case (hit/ranked are 0/1: no fingerprint)
    floats = {f for f in floats if f not in (0.0, 1.0)}
    ints.discard(0)
    return np.array(sorted(ints), dtype=np.int64), np.array(sorted(floats), dtype=np.float64)


@pytest.mark.parametrize("protocol", ["secemb", "rowenc", "init", "secfedrec"])
def test_secure_views_hold_no_per_user_metric_value(tmp_path_factory, monkeypatch, protocol):
    """No value either server receives equals a user's rated count, test count, training loss or test SSE, and no
    reply's metadata says when its user finished (Flower stamps a reply when it is made: the user's work time)."""
    server1_frames = _record_server1_frames(monkeypatch)
    twin = [] if protocol == "secfedrec" else _M_PRIME
    ints, floats = _secret_values(tmp_path_factory, twin)
    assert ints.size >= 3 and floats.size >= 10
    overrides = ["strategy=secfedrec"] if protocol == "secfedrec" else ["strategy=secemb",
                                                                        f"strategy.variant={protocol}", *twin]
    results, secure = run_sim(tmp_path_factory.mktemp(protocol), _VALUE_BASE + overrides, record=True)
    # registration replies name the node's user (partition id): server 0 must know whom it addresses
    views = {"server 0": [(t, *_view_values(c)) for t, _n, c in secure.received if t != "query.register"],
             "server 1": [("frame", *_frame_values(f)) for f in server1_frames]}
    assert views["server 0"] and views["server 1"]
    for who, entries in views.items():
        for msg_type, scalars, arrays in entries:
            assert not _matches(np.array(scalars, dtype=np.float64), ints, floats), \
                f"{who} received a per-user metric value among {scalars} in a {msg_type} message"
            for arr in arrays:
                assert not _matches(arr, ints, floats), \
                    f"{who} received a per-user metric value in {arr[:8]} in a {msg_type} message"
    _assert_replies_untimed(secure)
    # the metrics still arrive, as sums: train loss and test RMSE are reported every round
    for rec in results["records"]:
        assert np.isfinite(rec["train_loss"]) and rec["test_rmse"] is not None
        assert rec["client_seconds_mean"] is None  # no telemetry: no per-user timing either


def _spy_train_sums(monkeypatch) -> list[tuple[np.ndarray, int]]:
    """Server 0's decoded training-metric sums of each round, beside the number of users they sum.

    Wraps the product's methods and passes their results through unchanged: two-server protocols
    decode their metric slots in ``step_from_ring``; FedMF's server gets its decrypted ``secure_sum``.
    """
    from strategies.fedmf import FedMFStrategy
    from strategies.two_server import TwoServerStrategy

    seen: list[tuple[np.ndarray, int]] = []
    step, secure_sum = TwoServerStrategy.step_from_ring, FedMFStrategy.secure_sum

    def spy_step(self, table_sum, dense_metrics_sum, n_users):
        loss_sum, count = self.train_metrics.decode(dense_metrics_sum[self.spec.dense_size:])
        seen.append((np.array([loss_sum, count]), int(n_users)))
        return step(self, table_sum, dense_metrics_sum, n_users)

    def spy_sum(self, kind, rnd, cts):
        sums, why = secure_sum(self, kind, rnd, cts)
        if kind == "train" and sums is not None:
            seen.append((np.asarray(sums), len(cts)))
        return sums, why

    monkeypatch.setattr(TwoServerStrategy, "step_from_ring", spy_step)
    monkeypatch.setattr(FedMFStrategy, "secure_sum", spy_sum)
    return seen


@pytest.mark.parametrize("protocol", ["secemb", "secemb_dp", "secemb_no_loss", "secfedrec", "fedmf", "fedmf_no_loss"])
def test_training_metric_sums_cover_users_not_ratings(tmp_path, monkeypatch, protocol):
    """Each round server 0 learns its users' loss sum and how many users it sums, not their rating count.

    Why across rounds: one round's sum of rating counts hides each user's, but server 0 picks every
    round's users, so the sums of enough rounds are a linear system whose solution is each user's count
    (a least-squares attack on 30 rounds of 12 users recovered all 12 exactly, before this change).
    The number of users summed is a count server 0 already has. Under central DP the loss slot is 0:
    the servers' noise does not cover the metric slots, so the users release no loss there; nor with
    ``train.release_loss=false`` (FedMF then asks for no training sum at all).
    """
    seen = _spy_train_sums(monkeypatch)
    overrides = {"secemb": ["strategy=secemb", *_M_PRIME],
                 "secemb_dp": ["strategy=secemb", *_M_PRIME, "dp.enabled=true", "dp.clip=0.5",
                               "dp.noise_multiplier=1.0"],
                 "secemb_no_loss": ["strategy=secemb", *_M_PRIME, "train.release_loss=false"],
                 "secfedrec": ["strategy=secfedrec"], "fedmf": [],
                 "fedmf_no_loss": ["train.release_loss=false"]}[protocol]
    base = FEDMF if protocol.startswith("fedmf") else SMALL + ["model=mf", "train.eval_every=0"]
    results, _ = run_sim(tmp_path, [*base, "rounds=3", *overrides])
    records = results["records"]
    if protocol == "fedmf_no_loss":
        assert seen == [] and len(records) == 3 and all(r["train_loss"] is None for r in records)
        return
    assert len(seen) == len(records) == 3
    for (sums, users), rec in zip(seen, records):
        assert users == rec["clients"] >= 2
        if protocol == "fedmf":  # the decrypted aggregate holds the loss sum alone; the counter checked `users`
            assert sums.shape == (1,)
            assert rec["train_loss"] == pytest.approx(sums[0] / users, rel=1e-12)
            continue
        loss_sum, count = sums
        assert count == users  # the second slot sums a 1 per user, never a rating count
        if protocol in ("secemb_dp", "secemb_no_loss"):
            assert loss_sum == 0.0 and rec["train_loss"] is None
        else:
            assert loss_sum > 0 and rec["train_loss"] == pytest.approx(loss_sum / users, rel=1e-12)
