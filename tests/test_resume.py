"""Nothing lost: rounds appended as they end, checkpoints every K rounds, ``resume=true`` ends as the uninterrupted run.

The simulation tests run a protocol for 6 rounds in one go, and in another
folder for 4 rounds with checkpoints every 2 and then again with
``resume=true rounds=6`` (the only change a resume accepts), and compare the
records. Users' private state crosses the restart only through their own
device folder (``simulation.device_state_dir``), as on a real device.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from clients.private_state import load_private, oldest_needed, restore_arrays, save_private, store_arrays
from models.spec import ModelSpec
from schemas.config import AppConfig, to_dict
from simulations.checkpoint import (ResumeError, check_resumable, checkpoint_dir, config_differences,
                                    latest_checkpoint_head, load_latest_checkpoint, open_run_folder,
                                    prepare_simulation, save_checkpoint)
from simulations.config import compose_config, to_app_config
from simulations.results import RUN_OUTPUTS, append_record, read_records
from simulations.run import simulate_batched
from recdata.dataset import DatasetMeta
from strategies.base import RecStrategy
from strategies.plaintext import PlaintextStrategy
from strategies.public_model import PublicModel
from twoserver.link import Server1Unavailable
from tests.sim_utils import SMALL, run_sim


# ------------------------------------------------------------ fast unit tests
def _stepped_model(seed: int = 0) -> PublicModel:
    spec = ModelSpec(name="mf", dim=4, n_user_features=0, n_item_features=0, init_std=0.1)
    return PublicModel(spec, n_items=7, seed=seed, lr=0.05)


def _grads(model: PublicModel, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(k)
    return (rng.normal(size=tuple(model.table.shape)).astype(np.float32),
            rng.normal(size=tuple(model.dense.shape)).astype(np.float32))


def test_public_model_checkpoint_restores_adam_moments_exactly(tmp_path):
    a = _stepped_model()
    for k in range(3):
        a.step(*_grads(a, k), n_users=2)
    save_checkpoint(tmp_path, 3, a.state_arrays(), AppConfig())
    ckpt = load_latest_checkpoint(tmp_path)
    assert ckpt.round == 3 and {"opt.0.exp_avg", "opt.0.exp_avg_sq", "opt.0.step"} <= set(ckpt.arrays)
    b = _stepped_model(seed=99)  # a different init: everything must come from the checkpoint
    b.load_state_arrays(ckpt.arrays)
    for k in range(3, 6):  # without the moments the next Adam steps would differ
        a.step(*_grads(a, k), n_users=2)
        b.step(*_grads(b, k), n_users=2)
    np.testing.assert_array_equal(a.table_numpy(), b.table_numpy())
    np.testing.assert_array_equal(a.dense_numpy(), b.dense_numpy())


def test_checkpoints_keep_the_last_two_and_no_pickles(tmp_path):
    for rnd in (2, 4, 6):
        save_checkpoint(tmp_path, rnd, {"x": np.full(3, rnd, dtype=np.float32)}, AppConfig())
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["round-4.json", "round-4.npz", "round-6.json", "round-6.npz"]
    np.load(tmp_path / "checkpoint" / "round-6.npz", allow_pickle=False)["x"]  # loads without pickle
    with pytest.raises(TypeError, match="not numeric"):
        save_checkpoint(tmp_path, 8, {"bad": np.array([object()])}, AppConfig())


def test_a_damaged_checkpoint_falls_back_to_the_one_before_or_is_refused_in_one_line(tmp_path, caplog):
    for rnd in (2, 4):
        save_checkpoint(tmp_path, rnd, {"x": np.full(3, rnd, dtype=np.float32), "done": np.ones(2, bool)}, AppConfig())
    folder = tmp_path / "checkpoint"
    npz = (folder / "round-4.npz").read_bytes()
    (folder / "round-4.npz").write_bytes(npz[: len(npz) // 2])  # a copy cut short
    ckpt = load_latest_checkpoint(tmp_path)
    assert ckpt.round == 2 and ckpt.arrays["x"].tolist() == [2, 2, 2] and "round-4" in caplog.text
    (folder / "round-4.npz").write_bytes(npz)
    sidecar = json.loads((folder / "round-4.json").read_text())
    (folder / "round-4.json").write_text(json.dumps({**sidecar, "arrays": ["x"]}))  # not what the archive holds
    assert load_latest_checkpoint(tmp_path).round == 2
    (folder / "round-4.json").write_text(json.dumps({**sidecar, "round": 3}))  # names another round
    assert load_latest_checkpoint(tmp_path).round == 2
    (folder / "round-2.json").write_text("{not json")
    with pytest.raises(ResumeError, match=r"can be read: round-4.*round 4.*; round-2: JSONDecodeError"):
        load_latest_checkpoint(tmp_path)
    (folder / "round-4.json").write_text(json.dumps(sidecar))  # whole again: the newest is used
    assert load_latest_checkpoint(tmp_path).arrays["x"].tolist() == [4, 4, 4]


def test_the_pre_run_check_reads_no_array_and_picks_the_checkpoint_the_full_load_picks(tmp_path, caplog):
    """The checks before a run starts read each checkpoint's sidecar and archive structure only
    (``latest_checkpoint_head``); whatever is wrong with the newest one's structure, it picks the round the
    full load picks. Damaged array data is found only by reading it: the full load then falls back."""
    x4 = np.arange(4096, dtype=np.float64)
    for rnd, x in ((2, np.zeros(3)), (4, x4)):
        save_checkpoint(tmp_path, rnd, {"x": x}, AppConfig(rounds=8))
    folder = tmp_path / "checkpoint"
    npz = (folder / "round-4.npz").read_bytes()
    head = latest_checkpoint_head(tmp_path)
    assert (head.round, head.config["rounds"]) == (4, 8) and not hasattr(head, "arrays")

    def damaged(content: bytes) -> int:
        (folder / "round-4.npz").write_bytes(content)
        picked = latest_checkpoint_head(tmp_path).round
        assert load_latest_checkpoint(tmp_path).round == picked
        return picked

    np.save(folder / "bare.npy", x4)  # a bare .npy under the archive's name
    assert damaged((folder / "bare.npy").read_bytes()) == 2
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # a zip whose member is no .npy
        z.writestr("x.npy", b"not an array")
    assert damaged(buf.getvalue()) == 2
    buf = io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}], dtype=object))  # an object array: refused from its header, never unpickled
    assert damaged(buf.getvalue()) == 2 and "non-numeric" in caplog.text
    assert damaged(npz[:-30]) == 2  # cut short: the zip directory is gone
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x4)
    deflated = bytearray(buf.getvalue())
    # the member's data begins after its 30-byte local header, its name and its extra field (zip64 sizes)
    start = 30 + int.from_bytes(deflated[26:28], "little") + int.from_bytes(deflated[28:30], "little")
    deflated[start:start + 8] = b"\xff" * 8  # a damaged deflate stream: zlib.error on the first read
    assert damaged(bytes(deflated)) == 2
    assert damaged(npz) == 4
    data_byte = npz.index(x4[2000].tobytes())
    flipped = npz[:data_byte] + bytes([npz[data_byte] ^ 1]) + npz[data_byte + 1:]
    (folder / "round-4.npz").write_bytes(flipped)  # one array byte changed: the structure still reads
    assert latest_checkpoint_head(tmp_path).round == 4
    assert load_latest_checkpoint(tmp_path).round == 2 and "CRC" in caplog.text


def test_resume_refuses_a_changed_config_and_a_folder_without_checkpoint(tmp_path):
    with pytest.raises(ResumeError, match="no checkpoint"):
        load_latest_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 2, {"x": np.zeros(1)}, AppConfig(rounds=4))
    ckpt = load_latest_checkpoint(tmp_path)
    check_resumable(AppConfig(rounds=6, resume=True), ckpt)  # rounds and resume may change
    changed = AppConfig(rounds=6, resume=True, seed=1)
    changed.model.lr = 0.5
    with pytest.raises(ResumeError, match=r"seed.*model\.lr|model\.lr.*seed"):
        check_resumable(changed, ckpt)
    with pytest.raises(ResumeError, match="nothing to resume"):
        check_resumable(AppConfig(rounds=2, resume=True), ckpt)


def test_a_moved_run_folder_and_changed_execution_settings_resume(tmp_path):
    """How the simulation runs (timeouts, CPUs, node pool) may change on resume, and a run folder moved whole
    keeps its devices, so their folder may be the new run folder's ``devices``; a devices folder elsewhere
    would start the users from scratch and is refused."""
    saved = AppConfig(rounds=4)
    saved.simulation.device_state_dir = "/old/place/run/devices"
    save_checkpoint(tmp_path, 2, {"x": np.zeros(1)}, saved)
    ckpt = load_latest_checkpoint(tmp_path)
    moved = AppConfig(rounds=6, resume=True)
    moved.simulation.device_state_dir = str(tmp_path / "devices")
    moved.simulation.reply_timeout, moved.simulation.node_pool, moved.simulation.num_cpus_per_client = 60.0, 4, 2.0
    check_resumable(moved, ckpt)
    moved.simulation.device_state_dir = str(tmp_path / "states")
    with pytest.raises(ResumeError, match="device_state_dir"):
        check_resumable(moved, ckpt)


def test_a_fresh_run_in_a_used_folder_removes_the_earlier_runs_results(tmp_path):
    """A fresh run clears the earlier run's checkpoints and records, and now its results.json and plot too,
    which the report would otherwise read as this run's until the new run writes its own."""
    for name in RUN_OUTPUTS:
        (tmp_path / name).write_text("an earlier run's")
    append_record(tmp_path, {"round": 1})
    assert open_run_folder(AppConfig(rounds=2), tmp_path) is None
    assert not any((tmp_path / name).exists() for name in RUN_OUTPUTS) and read_records(tmp_path) == []


def test_a_fresh_run_over_an_earlier_runs_checkpoints_warns_before_clearing_them(tmp_path, caplog):
    """Forgetting resume=true in a folder that holds a resumable run loses that run: the log says so, with the
    round it could have continued from; a folder without checkpoints is cleared silently."""
    save_checkpoint(tmp_path, 4, {"x": np.zeros(1)}, AppConfig(rounds=6))
    with caplog.at_level("WARNING", logger="secrec"):
        assert open_run_folder(AppConfig(rounds=6), tmp_path) is None
    assert "last: round 4" in caplog.text and "resume=true" in caplog.text
    assert not list(checkpoint_dir(tmp_path).glob("round-*"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="secrec"):
        open_run_folder(AppConfig(rounds=6), tmp_path)
    assert caplog.text == ""


def test_a_config_field_added_since_a_run_is_no_difference_at_its_default():
    """A run saved before train.server_adam_eps existed resumes (and its Table 3 cell is reused) while the field
    keeps its default, which is what runs did before it; set to anything else, or a field the saved run has
    and today's config lacks, is a difference."""
    saved = to_dict(AppConfig())
    del saved["train"]["server_adam_eps"]
    assert config_differences(saved, to_dict(AppConfig())) == []
    other = AppConfig()
    other.train.server_adam_eps = 1e-3
    assert config_differences(saved, to_dict(other)) == ["train.server_adam_eps (run: '<missing>', now: 0.001)"]
    assert config_differences({**saved, "gone": 1}, to_dict(AppConfig())) == ["gone (run: 1, now: '<missing>')"]


def test_the_server_adam_eps_is_adams_eps():
    """One Adam step from zero moments moves a value by lr g / (|g| + eps) (bias-corrected): with g = eps = 1e-3
    half the step lr; ``train.server_adam_eps`` reaches the public model's optimiser."""
    spec = ModelSpec(name="mf", dim=4, n_user_features=0, n_item_features=0, init_std=0.1)
    for eps, expected in ((1e-3, 0.5), (1e-8, 1.0)):
        model = PublicModel(spec, n_items=7, seed=0, lr=0.05, adam_eps=eps)
        before = model.table_numpy().copy()
        model.step(np.full((7, model.row_dim), 1e-3, np.float32), np.zeros(model.dense_size, np.float32), 1)
        np.testing.assert_allclose(before - model.table_numpy(), 0.05 * expected, rtol=1e-4)
    cfg = AppConfig()
    cfg.train.server_adam_eps = 1e-3
    strategy = PlaintextStrategy(cfg, DatasetMeta("toy", 4, 7, 0, 0))
    assert strategy.model.opt.param_groups[0]["eps"] == 1e-3


def test_fedmf_resume_is_refused_with_a_reason():
    cfg = AppConfig(resume=True)
    cfg.strategy.name = "fedmf"
    with pytest.raises(ResumeError, match="Paillier"):
        prepare_simulation(cfg, "/nonexistent-run-folder")


def test_records_jsonl_is_appended_and_a_torn_last_line_is_ignored(tmp_path):
    append_record(tmp_path, {"round": 1, "test_rmse": 1.5})
    append_record(tmp_path, {"round": 2, "test_rmse": float("nan")})
    with open(tmp_path / "records.jsonl", "a") as fh:
        fh.write('{"round": 3, "te')  # the process died mid-write
    recs = read_records(tmp_path)
    assert [r["round"] for r in recs] == [1, 2] and math.isnan(recs[1]["test_rmse"])


def test_device_state_survives_a_new_context_only_through_the_device_folder(tmp_path):
    spec = ModelSpec(name="mf", dim=4, n_user_features=0, n_item_features=0, init_std=0.1)
    first = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    initial = load_private(first, spec, user_id=3, seed=0, device_dir=tmp_path, before=1)
    state = {**initial, "params": initial["params"] + 1, "step": initial["step"] + 1}
    save_private(first, state, 1, 2, user_id=3, device_dir=tmp_path)
    fresh = Context(run_id=2, node_id=1, node_config={}, state=RecordDict(), run_config={})
    again = load_private(fresh, spec, user_id=3, seed=0, device_dir=tmp_path, before=2)
    np.testing.assert_array_equal(again["params"], state["params"])
    assert int(again["step"][0]) == 1
    without = load_private(fresh, spec, user_id=3, seed=0, device_dir=None)  # no device storage: fresh init
    np.testing.assert_array_equal(without["params"], initial["params"])
    store_arrays(tmp_path, 3, "mf_user", {"u": np.ones(4)}, 1, 0)  # another key in the same file keeps the first
    assert restore_arrays(tmp_path, 3, "private") is not None and restore_arrays(tmp_path, 3, "mf_user") is not None


def test_a_device_keeps_the_states_a_resume_can_need_and_rolls_back_to_them(tmp_path):
    """checkpoint_every=4 (the server keeps the last 2): in round 11 a resume can restart after round 4 or 8, so
    the device keeps its newest state of a round <= 4 and every later one; a round redone after a resume
    starts from the newest state before it, and writing it drops the abandoned timeline's later states."""
    spec = ModelSpec(name="mf", dim=4, n_user_features=0, n_item_features=0, init_std=0.1)
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    base = load_private(ctx, spec, user_id=5, seed=0, device_dir=tmp_path, before=1)

    def state_of(rnd: int) -> dict[str, np.ndarray]:
        return {**base, "params": base["params"] + rnd, "step": np.array([rnd], dtype=np.int64)}

    assert [oldest_needed(r, 4) for r in (1, 4, 5, 8, 9, 11, 13)] == [0, 0, 0, 0, 4, 4, 8]
    assert oldest_needed(7, 0) == 7  # no checkpoints: only the newest state is kept
    for rnd in (2, 3, 6, 9, 11):  # the rounds this user took part in
        save_private(ctx, state_of(rnd), rnd, 4, user_id=5, device_dir=tmp_path)
    with np.load(tmp_path / "user-5.npz") as kept:
        assert sorted({int(n.split("@")[1].split(".")[0]) for n in kept.files}) == [3, 6, 9, 11]

    def step_before(before: int, context: Context) -> int:
        return int(load_private(context, spec, 5, 0, tmp_path, before=before)["step"][0])

    assert step_before(12, ctx) == 11  # the newest, from Context.state
    fresh = Context(run_id=2, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert [step_before(b, fresh) for b in (4, 5, 9, 10, 12)] == [3, 3, 6, 9, 11]  # resumed after 4 or 8
    assert step_before(10, ctx) == 9  # Context.state's newest is round 11: older ones come from the disk
    save_private(fresh, state_of(9), 9, 4, user_id=5, device_dir=tmp_path)  # round 9 redone after resuming at 8
    assert step_before(12, fresh) == 9 and step_before(100, Context(3, 1, {}, RecordDict(), {})) == 9


# --------------------------------------------------------- Flower simulations
def _records(folder: Path) -> list[dict]:
    return json.loads((folder / "results.json").read_text())["records"]


def _resume_matches_uninterrupted(tmp_path: Path, extra: list[str], stop: int = 4) -> None:
    """A Flower run stopped after round ``stop`` (checkpoints every 2 rounds) and resumed to round 6 ends as
    the uninterrupted 6-round run; with ``stop=5``, round 5 ran after the last checkpoint and is redone.

    The uninterrupted trajectory is computed by the batched engine, which tests/test_batched_engine.py and
    tests/test_batched_fedmf.py tie to the Flower path within 1e-5 (this test allows 1e-4): one Flower
    start-up fewer per protocol.
    """
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    base = SMALL + ["train.eval_every=1", "checkpoint_every=2", *extra]

    def run(folder: Path, *more: str) -> dict:
        res, _ = run_sim(folder, base + [f"simulation.device_state_dir={folder / 'devices'}", *more])
        return res

    simulate_batched(to_app_config(compose_config(base + ["rounds=6", "checkpoint_every=0", "engine=batched"])),
                     str(whole))
    first = run(parted, f"rounds={stop}")
    assert [r["round"] for r in first["records"]] == list(range(1, stop + 1))
    assert len(read_records(parted)) == stop and load_latest_checkpoint(parted).round == 4
    resumed = run(parted, "rounds=6", "resume=true")
    assert resumed["final"]["resumed_from_round"] == 4
    a, b = _records(whole), _records(parted)
    assert [r["round"] for r in b] == list(range(1, 7)) == [r["round"] for r in read_records(parted)]
    assert [r["clients"] for r in a] == [r["clients"] for r in b]
    for ra, rb in zip(a, b):
        assert abs(ra["test_rmse"] - rb["test_rmse"]) <= 1e-4, (ra["round"], ra["test_rmse"], rb["test_rmse"])
    # Without the users' device folders the resumed users would restart from their initial embeddings.
    assert any((parted / "devices").iterdir())


@pytest.mark.slow
def test_plaintext_resume_ends_as_the_uninterrupted_run(tmp_path):
    _resume_matches_uninterrupted(tmp_path, ["strategy=plaintext", "model=mf"])


@pytest.mark.slow
def test_a_round_run_after_the_last_checkpoint_is_redone_from_the_users_states_before_it(tmp_path):
    """Round 5's users already moved their private state on when the run stopped; the redone round 5 must start
    them from their states before it (the device keeps those), or the resumed run drifts from the
    uninterrupted one."""
    _resume_matches_uninterrupted(tmp_path, ["strategy=plaintext", "model=mf"], stop=5)


@pytest.mark.slow
def test_distributed_mf_resume_ends_as_the_uninterrupted_run(tmp_path):
    _resume_matches_uninterrupted(tmp_path, ["strategy=distributed_mf", "strategy.mode=parttext", "model=mf"])


@pytest.mark.slow
def test_secemb_resume_ends_as_the_uninterrupted_run(tmp_path):
    # m' is checkpointed, so the resumed run keeps it (and skips the secure count); fixed point is lossless here.
    _resume_matches_uninterrupted(tmp_path, ["strategy=secemb", "model=mf"])


class _DiesAtRound3(RecStrategy):
    """A strategy whose server 1 dies in round 3 (no Flower needed: registration is given)."""

    name = "dies"

    def _register(self, grid, timeout):
        return {u: 100 + u for u in range(4)}

    def train_round(self, rnd, users):
        if rnd == 3:
            raise Server1Unavailable("connection refused by 127.0.0.1:9400")
        return {"train_loss": 1.0 / rnd}

    def evaluation_content(self):
        return RecordDict()


def test_server1_dying_mid_run_keeps_the_finished_rounds_and_names_server1():
    cfg = AppConfig(rounds=5, clients_per_round=2)
    cfg.train.eval_every = 0  # evaluation only after round 5, never reached
    seen: list[int] = []
    run = _DiesAtRound3(cfg, DatasetMeta("toy", 4, 3, 0, 0)).start(None, on_round=lambda r: seen.append(r["round"]))
    assert seen == [1, 2] and [r["round"] for r in run["records"]] == [1, 2]
    assert "server 1" in run["stopped"] and "round 3" in run["stopped"]
