"""Fuzz every parser of a received message: only the parser's own error type may escape.

Why: server 0 drops a user whose reply raises ``ValueError`` (``MessageError``,
``WireError``, crypto's key errors) and the round goes on; any other exception
(``TypeError`` from a non-numpy ``Array``, ``OverflowError`` from a huge number,
``AttributeError``...) escapes ``Exchange.phase`` and stops the ServerApp. The same
holds for users parsing what the server sends.

Every ``parse_*`` function of every module of :mod:`schemas` is found with
:mod:`inspect` (new parsers are covered automatically) and given plausible
non-content arguments from ``SCENARIOS``. Two generators:

* noise: RecordDicts of random records (ArrayRecord / ConfigRecord /
  MetricRecord) with random names and keys, drawn mostly from the parser's own
  record names and keys; Arrays from random numpy arrays of many dtypes and
  shapes, or built field by field with corrupted data, wrong stype, wrong
  declared shape or dtype, hostile ``.npy`` headers; config and metric values of
  every allowed type, including NaN, inf and huge ints;
* mutation of valid messages built with the schemas' own builders (real DPF
  keys from :func:`crypto.dpf_gen.gen`): records and fields dropped, renamed,
  retyped, arrays corrupted or re-encoded with another dtype, shape or extreme
  values. Byte parsers (sealed payloads) get mutated valid frames.

One hypothesis example is applied to every parser (slots resolve against each
parser's own sample), so each parser sees every example; ``test_zz_case_counts``
prints the number of cases per parser (run with ``-s``) and checks each >= TARGET.
"""

from __future__ import annotations

import importlib
import inspect
import io
import math
import pkgutil
import zipfile
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import given
from hypothesis import strategies as st

import schemas
from models.compression import make_codec
from schemas.validation import NUMPY_STYPE, MessageError
from schemas.wire import WireError
from tests.fuzz_support import assert_case_counts
from tests.test_fuzz_wire import (
    ANY_DTYPES, DpfKeyBatch, Payloads, crypto_error, dpf_gen, frame_ops, fuzz, mutate_frame, seeds,
)

TARGET = 2000
N_EXAMPLES = TARGET + 100
CASES: Counter[str] = Counter()
ACCEPTED: Counter[str] = Counter()
NOT_PARSERS = {"validation", "wire", "config"}  # helpers and the app config, not messages

# ----------------------------------------------------------- the parsers
N_USERS, N_ITEMS, DIM, ROW_DIM, DENSE, M_PRIME, K, KEY_BITS, CTS, PAD_TO, SIZE = 3, 12, 3, 4, 5, 3, 3, 1024, 2, 6, 7
CT_BYTES = 2 * KEY_BITS // 8
SCENARIOS: list[dict[str, Any]] = [
    {"ring": np.uint32, "ring_bits": 32, "variant": "secemb", "mode": "parttext", "expected_count": None,
     "kind": "train", "codec": "svd", "rank": 2},
    {"ring": np.uint64, "ring_bits": 64, "variant": "rowenc", "mode": "fulltext", "expected_count": N_ITEMS,
     "kind": "eval", "codec": "tern", "rank": None},
    {"ring": np.uint32, "ring_bits": 32, "variant": "init", "mode": "padded", "expected_count": PAD_TO,
     "kind": "train", "codec": "colr", "rank": 2},
]
for _sc in SCENARIOS:
    _sc.update(n_users=N_USERS, n_items=N_ITEMS, dim=DIM, row_dim=ROW_DIM, dense_size=DENSE, m_prime=M_PRIME, k=K,
               max_items=M_PRIME + 2, key_bits=KEY_BITS, cts_per_row=CTS, pad_to=PAD_TO, party=1, users=N_USERS,
               size=SIZE, ring_dtype=_sc["ring"], shape=(M_PRIME, ROW_DIM),
               key_shape={"secemb": None, "rowenc": (M_PRIME, ROW_DIM), "init": (M_PRIME * ROW_DIM, 1)}[_sc["variant"]],
               fresh_shape=(M_PRIME * ROW_DIM, 1) if _sc["variant"] == "init" else (M_PRIME, ROW_DIM))


def discover_parsers() -> dict[str, Callable[..., Any]]:
    """``module.parse_x`` -> function, for every parser defined in a module of :mod:`schemas`."""
    found = {}
    for info in pkgutil.iter_modules(schemas.__path__):
        if info.name in NOT_PARSERS:
            continue
        module = importlib.import_module(f"schemas.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("parse_") and fn.__module__ == module.__name__:
                found[f"{info.name}.{name}"] = fn
    return found


PARSERS = discover_parsers()


@cache
def input_kind(fn: Callable[..., Any]) -> str:
    """``content`` (a RecordDict) or ``raw`` (the bytes of a sealed payload)."""
    return next(iter(inspect.signature(fn).parameters))


@cache
def call_args(pid: str, sc_index: int) -> dict[str, Any]:
    """The parser's non-content arguments in a scenario (a parameter with no value fails loudly)."""
    sc = SCENARIOS[sc_index]
    params = list(inspect.signature(PARSERS[pid]).parameters.values())[1:]
    missing = [p.name for p in params if p.name not in sc and p.default is inspect.Parameter.empty]
    assert not missing, f"{pid} takes {missing}: give them plausible values in SCENARIOS"
    return {p.name: sc[p.name] for p in params if p.name in sc}


# ------------------------------------------------------ valid messages
BOX = bytes(range(80))
PUB = bytes(range(32))


def _ring(sc: dict[str, Any], *shape: int) -> np.ndarray:
    return (np.arange(math.prod(shape), dtype=np.uint64) * 2654435761).astype(sc["ring"]).reshape(shape)


def _keys(sc: dict[str, Any], fresh: bool) -> tuple[DpfKeyBatch, DpfKeyBatch]:
    """Real DPF keys: retrieval keys (beta = 1), or the fresh upload keys of the variant."""
    items = np.array([1, 6, 11])
    if not fresh:
        k0, k1, _ = dpf_gen(items, np.ones((M_PRIME, 1), dtype=sc["ring"]), N_ITEMS, domain=0)
    elif sc["variant"] == "init":
        k0, k1, _ = dpf_gen(np.repeat(items, ROW_DIM), _ring(sc, M_PRIME * ROW_DIM, 1), N_ITEMS, domain=1)
    else:
        k0, k1, _ = dpf_gen(items, _ring(sc, M_PRIME, ROW_DIM), N_ITEMS, domain=1)
    return k0, k1


def _count(sc: dict[str, Any]) -> int:
    return sc["expected_count"] or 4


def _sample_builders() -> dict[str, Callable[[dict[str, Any]], Any]]:
    """Parser -> a function building a message it accepts in a scenario, with the schema's own builders."""
    m = {name: importlib.import_module(f"schemas.{name}") for name in
         ("common", "plaintext", "distributed_mf", "fedmf", "secemb", "secfedrec", "two_server", "dp_fedrec", "compressed")}
    f32 = lambda *s: np.linspace(-1, 1, math.prod(s), dtype=np.float32).reshape(s)  # noqa: E731
    n_bytes = np.full(KEY_BITS // 8, 0xA5, dtype=np.uint8)
    ct = np.full((1, CT_BYTES), 7, dtype=np.uint8)
    fm, se, ts = m["fedmf"], m["secemb"], m["two_server"]
    return {
        "common.parse_register_reply": lambda sc: m["common"].register_reply(1),
        "common.parse_addressee": lambda sc: m["common"].addressed(m["common"].eval_request_message(2), 1),
        "common.parse_evaluation_reply": lambda sc: m["common"].evaluation_reply(2.5, 4, 0.1),
        "common.parse_train_metrics": lambda sc: RecordDict({"metrics": m["common"].train_metrics(0.5, 3, 0.1)}),
        "plaintext.parse_request_message": lambda sc: m["plaintext"].request_message(3, M_PRIME),
        "plaintext.parse_request_reply": lambda sc: m["plaintext"].request_reply(np.array([1, 4, 9])),
        "plaintext.parse_update_message": lambda sc: m["plaintext"].update_message(3, f32(3, ROW_DIM), f32(DENSE)),
        "plaintext.parse_grads": lambda sc: RecordDict({"grads": m["plaintext"].grads_record(f32(K, ROW_DIM),
                                                                                             f32(DENSE))}),
        "plaintext.parse_update_reply": lambda sc: m["plaintext"].update_reply(f32(K, ROW_DIM), f32(DENSE), 0.5, 3,
                                                                               0.1),
        "plaintext.parse_model_content": lambda sc: m["plaintext"].model_content(f32(N_ITEMS, ROW_DIM), f32(DENSE)),
        "dp_fedrec.parse_update_message": lambda sc: m["dp_fedrec"].update_message(2, f32(N_ITEMS, ROW_DIM),
                                                                                    f32(DENSE), 1.0),
        "dp_fedrec.parse_update_reply": lambda sc: m["dp_fedrec"].update_reply(f32(N_ITEMS, ROW_DIM), f32(DENSE),
                                                                                0.1),
        "compressed.parse_update_message": lambda sc: m["compressed"].update_message(2, f32(N_ITEMS, ROW_DIM),
                                                                                      f32(DENSE)),
        "compressed.parse_update_reply": lambda sc: m["compressed"].update_reply(
            make_codec(sc["codec"], sc["rank"]).compress(f32(N_ITEMS, ROW_DIM), np.random.default_rng(0), 2),
            f32(DENSE), 0.5, 3, 0.1),
        "distributed_mf.parse_update_message": lambda sc: m["distributed_mf"].update_message(2, f32(N_ITEMS, DIM)),
        "distributed_mf.parse_update_reply": lambda sc: m["distributed_mf"].update_reply(
            np.arange(_count(sc)), f32(_count(sc), DIM), 0.5, 3, 0.1),
        "distributed_mf.parse_evaluate_message": lambda sc: m["distributed_mf"].round_message(
            2, m["distributed_mf"].model_record(f32(N_ITEMS, DIM))),
        "fedmf.parse_setup_message": lambda sc: fm.setup_message(KEY_BITS, "run1"),
        "fedmf.parse_public_key_reply": lambda sc: fm.public_key_reply(n_bytes),
        "fedmf.parse_key_message": lambda sc: fm.key_message("seal", "run1", n_bytes,
                                                             publics=np.zeros((N_USERS, 32), np.uint8)),
        "fedmf.parse_announce_reply": lambda sc: fm.announce_reply(PUB),
        "fedmf.parse_seal_reply": lambda sc: fm.seal_reply(np.zeros((N_USERS, 100), np.uint8)),
        "fedmf.parse_ack_reply": lambda sc: fm.ack_reply(),
        "fedmf.parse_model_message": lambda sc: fm.update_message(2, np.ones((N_ITEMS, CTS, CT_BYTES), np.uint8)),
        "fedmf.parse_round": lambda sc: fm.update_message(2, np.ones((N_ITEMS, CTS, CT_BYTES), np.uint8)),
        "fedmf.parse_telemetry": lambda sc: RecordDict(fm.telemetry_record(0.3)),
        "fedmf.parse_metric_ct": lambda sc: fm.evaluation_reply(ct, None),
        "fedmf.parse_evaluation_reply": lambda sc: fm.evaluation_reply(ct, 0.2),
        "fedmf.parse_decrypt_message": lambda sc: fm.decrypt_message("train", 3, 4, ct),
        "fedmf.parse_decrypt_reply": lambda sc: fm.decrypt_reply(np.arange(len(fm.METRIC_KINDS[sc["kind"]])) + 1.5,
                                                                 N_USERS),
        "fedmf.parse_update_reply": lambda sc: fm.update_reply(
            np.arange(_count(sc)), np.ones((_count(sc), CTS, CT_BYTES), np.uint8), ct, 0.1),
        "secemb.parse_count_reply": lambda sc: se.count_reply(np.array([3]), BOX),
        "secemb.parse_count_share": lambda sc: se.count_share_bytes(np.array([3])),
        "secemb.parse_retrieve_message": lambda sc: se.retrieve_message(2, M_PRIME, PUB, "run1", sc["ring_bits"],
                                                                        sc["variant"]),
        "secemb.parse_retrieve_reply": lambda sc: se.retrieve_reply(_keys(sc, False)[0], BOX),
        "secemb.parse_sealed_retrieval": lambda sc: se.sealed_retrieval_bytes(_keys(sc, False)[1], PUB),
        "secemb.parse_share_bytes": lambda sc: se.share_bytes(_ring(sc, M_PRIME, ROW_DIM)),
        "secemb.parse_upload_message": lambda sc: se.upload_message(2, _ring(sc, M_PRIME, ROW_DIM),
                                                                    np.frombuffer(BOX, np.uint8), f32(DENSE)),
        "secemb.parse_upload_reply": lambda sc: se.upload_reply(
            _ring(sc, M_PRIME, ROW_DIM) if sc["variant"] == "secemb" else _keys(sc, True)[0], _ring(sc, DENSE), BOX,
            0.1),
        "secemb.parse_sealed_fresh_upload": lambda sc: se.sealed_fresh_upload_bytes(_keys(sc, True)[1],
                                                                                    _ring(sc, DENSE)),
        "secfedrec.parse_update_reply": lambda sc: m["secfedrec"].update_reply(_ring(sc, SIZE), BOX, 0.1),
        "secfedrec.parse_round": lambda sc: m["secfedrec"].update_message(2, f32(N_ITEMS, ROW_DIM), f32(DENSE), PUB,
                                                                          "run1", sc["ring_bits"]),
        "two_server.parse_server_info": lambda sc: se.count_message(PUB, "run1"),
        "two_server.parse_ring_vector": lambda sc: ts.ring_vector_bytes(_ring(sc, SIZE)),
        "two_server.parse_eval_message": lambda sc: ts.eval_message(
            m["plaintext"].model_content(f32(N_ITEMS, ROW_DIM), f32(DENSE)), 2, PUB, "run1"),
        "two_server.parse_secure_eval_reply": lambda sc: ts.secure_eval_reply(_ring(sc, ts.EVAL_METRICS), BOX, 0.1),
        "two_server.parse_telemetry": lambda sc: RecordDict({"telemetry": ts.telemetry_record(0.3)}),
    }


@cache
def valid_samples() -> tuple[dict[tuple[str, int], Any], dict[str, str]]:
    """(parser, scenario) -> a valid input, and parser -> why no sample could be built."""
    samples, problems = {}, {}
    try:
        builders = _sample_builders()
    except Exception as exc:  # a schema module was renamed: reported by test_every_parser_has_a_valid_sample
        return {}, {pid: f"builders unavailable: {exc!r}" for pid in PARSERS}
    for pid in PARSERS:
        if pid not in builders:
            problems[pid] = "no builder in _sample_builders"
            continue
        for i, sc in enumerate(SCENARIOS):
            try:
                samples[pid, i] = builders[pid](sc)
            except Exception as exc:  # a builder's signature changed
                problems[pid] = f"building a sample failed: {exc!r}"
    return samples, problems


# ------------------------------------------------------------- records as data
Msg = list[tuple[str, str, dict[str, Any]]]  # (record name, "array" | "config" | "metric", entries)
KINDS = {"array": ArrayRecord, "config": ConfigRecord, "metric": MetricRecord}


def to_msg(content: RecordDict) -> Msg:
    kind_of = {ArrayRecord: "array", ConfigRecord: "config", MetricRecord: "metric"}
    return [(name, kind_of[type(rec)], dict(rec.items())) for name, rec in content.items()]


def _record(kind: str, entries: dict[str, Any]) -> ArrayRecord | ConfigRecord | MetricRecord:
    """A record of ``kind`` holding the entries flwr accepts in it (others are left out)."""
    try:
        return KINDS[kind](entries)
    except (TypeError, ValueError):
        ok = {}
        for key, value in entries.items():
            try:
                KINDS[kind]({key: value})
                ok[key] = value
            except (TypeError, ValueError):
                pass
        return KINDS[kind](ok)


def to_content(msg: Msg) -> RecordDict:
    return RecordDict({name: _record(kind, entries) for name, kind, entries in msg})


@cache
def vocabulary(pid: str) -> tuple[list[str], list[str]]:
    """Record names and keys of a parser's valid samples (what its noise mostly uses)."""
    samples, _ = valid_samples()
    names, keys = {"cfg", "x"}, {"round", "x"}
    for (p, _i), sample in samples.items():
        if p == pid and isinstance(sample, RecordDict):
            for name, _kind, entries in to_msg(sample):
                names.add(name)
                keys.update(entries)
    return sorted(names), sorted(keys)


# ------------------------------------------------------------- random values
WEIRD_DTYPE_NAMES = ["uint8", "uint32", "uint64", "int64", "float32", "float64", "object", "<u4", ">u4", "|O", "",
                     "x" * 100, "int8", "U3", "V8", "float16", "[('a', '<u4')]"]
WEIRD_STYPES = [NUMPY_STYPE, NUMPY_STYPE, "torch.Tensor", "", "numpy.ndarray ", "pickle", "\x00"]
WEIRD_SHAPES: list[tuple[int, ...]] = [(), (0,), (1,), (3,), (2, 3), (2**40,), (-1,), (2**63 - 1,), (2**70,),
                                       (2**31, 2**31), (1,) * 9, (3, 4, 256), (-3, -4)]
NPY_DESCRS = ["'<u4'", "'|u1'", "'<f8'", "'<i8'", "'|O'", "'>u8'", "'<U3'", "[('a', '<u4')]", "'x'", "1", "'<f4'",
              "('<u1', (3,))"]
NPY_SHAPES = ["(3,)", "(1099511627776,)", "(-1,)", "(9223372036854775808,)", "(1e300,)", "'x'", "(2, 3)", "()",
              "(0,)", "(True,)", "(" * 50, "(12, 4)", "(3, 2, 256)"]
INT_EDGES = [0, -1, 1, 2, N_ITEMS - 1, N_ITEMS, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30,
             -(10**30), 10**400]
FLOAT_EDGES = [0.0, -0.0, 1.5, -1.5, 1e308, -1e308, float("nan"), float("inf"), -float("inf"), 5e-324]


class Values(Payloads):
    """Flower record values and Arrays from one seed (see :class:`tests.test_fuzz_wire.Payloads`)."""

    def npy_bytes(self) -> bytes:
        """A ``.npy`` payload with a hostile header: huge, negative, malformed shapes, object dtypes, bad lengths."""
        r = self.rng
        version = r.choice([b"\x01\x00", b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"])
        header = (f"{{'descr': {r.choice(NPY_DESCRS)}, 'fortran_order': {r.choice(['False', 'True', '1', 'x'])}, "
                  f"'shape': {r.choice(NPY_SHAPES)}, }}")
        if r.random() < 0.2:
            header = r.choice(["{}", "[" * 200, "{'descr': '<u4'}", "__import__('os')", ""])
        raw = header.encode("latin1")
        raw += b" " * (-(len(raw) + 11) % 64) + b"\n"
        length = len(raw) if r.random() < 0.8 else r.randint(0, 2**16 - 1)
        prefix = b"\x93NUMPY" + version + (length.to_bytes(2, "little") if version == b"\x01\x00"
                                           else length.to_bytes(4, "little"))
        return prefix + raw + self.blob(48)

    def data(self) -> bytes:
        r = self.rng.random()
        if r < 0.5:
            return self.npy_bytes()
        if r < 0.6:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                z.writestr("a.npy", self.blob())
            return buf.getvalue()
        if r < 0.8:
            buf = io.BytesIO()
            np.save(buf, self.array(ANY_DTYPES), allow_pickle=False)
            return buf.getvalue()
        return self.blob(64)

    def flwr_array(self) -> Array:
        """An Array from a random numpy array, or built field by field with corrupted fields."""
        r = self.rng
        if r.random() < 0.5:
            return Array(self.array(ANY_DTYPES, max_dim=5))
        return Array(dtype=r.choice(WEIRD_DTYPE_NAMES), shape=r.choice(WEIRD_SHAPES), stype=r.choice(WEIRD_STYPES),
                     data=self.data())

    def scalar(self, kind: str) -> Any:
        r = self.rng
        if kind == "int":
            return r.choice(INT_EDGES) if r.random() < 0.7 else r.randint(-(2**64), 2**64)
        if kind == "float":
            return r.choice(FLOAT_EDGES) if r.random() < 0.7 else r.uniform(-1e6, 1e6)
        if kind == "bool":
            return r.random() < 0.5
        if kind == "str":
            return r.choice(["", "run1", "seal", "announce", "deliver", "train", "eval", "secemb", "x" * 5000,
                             "\udcff", "é"])
        return r.choice([b"", PUB, b"\x00" * 31, b"\xff" * 33, self.blob(64)])

    def config_value(self) -> Any:
        kind = self.rng.choice(["int", "float", "bool", "str", "bytes"])
        if self.rng.random() < 0.2:
            return [self.scalar(kind) for _ in range(self.rng.randint(0, 3))]
        return self.scalar(kind)

    def metric_value(self) -> Any:
        kind = self.rng.choice(["int", "float"])
        if self.rng.random() < 0.25:
            return [self.scalar(kind) for _ in range(self.rng.randint(0, 3))]
        return self.scalar(kind)

    def value(self, kind: str) -> Any:
        return {"array": self.flwr_array, "config": self.config_value, "metric": self.metric_value}[kind]()


# ---------------------------------------------------------- content mutation
def _pick(items: list[Any], slot: int) -> Any:
    return items[slot % len(items)] if items else None


def _numpy(value: Any) -> np.ndarray | None:
    """The array an Array holds, if it still is a plain .npy payload."""
    try:
        arr = value.numpy()
    except Exception:  # corrupted by an earlier mutation
        return None
    return arr if isinstance(arr, np.ndarray) else None


def _array_edit(arr: np.ndarray, j: int, v: Values) -> np.ndarray:
    """Re-encodable edits of an array: dtype, shape, values (duplicates, negatives, out of range, NaN)."""
    code = j % 9
    flat = arr.reshape(-1).copy()
    with np.errstate(all="ignore"):
        if code == 0 and arr.dtype.kind in "biuf":
            return arr.astype(v.rng.choice(["uint8", "uint32", "uint64", "int64", "float32", "float64", "int32",
                                            "bool"]))
        if code == 1:
            return arr[:-1] if arr.ndim and arr.shape[0] else arr[None]
        if code == 2:
            return np.concatenate([arr, arr[:1]]) if arr.ndim and arr.shape[0] else arr.reshape(1, *arr.shape)
        if code == 3:
            return flat if arr.ndim != 1 else arr[:, None]
        if code == 4:
            return np.asfortranarray(arr.T) if arr.ndim >= 2 else arr.astype(arr.dtype.newbyteorder(">"))
        if code == 5 and flat.size >= 2:
            flat[1] = flat[0]  # duplicate ids
        elif flat.size and arr.dtype.kind in "iuf":
            info = np.finfo(arr.dtype) if arr.dtype.kind == "f" else np.iinfo(arr.dtype)
            edge = [info.max, info.min, -1, N_ITEMS, N_ITEMS + 1, 0] + (
                [np.nan, np.inf, -np.inf] if arr.dtype.kind == "f" else [])
            flat[v.rng.randrange(flat.size)] = np.asarray(v.rng.choice(edge)).astype(arr.dtype)
    return flat.reshape(arr.shape)


def _corrupt_array(value: Array, j: int, v: Values) -> Array:
    """Field-level corruption of a (valid) Array: bytes, stype, declared dtype and shape, header."""
    data, dtype, shape, stype = value.data, value.dtype, value.shape, value.stype
    code = j % 8
    if code == 0 and data:
        b = bytearray(data)
        b[v.rng.randrange(len(b))] ^= v.rng.randint(1, 255)
        data = bytes(b)
    elif code == 1:
        data = data[:v.rng.randint(0, len(data))]
    elif code == 2:
        data = data + v.blob(40)
    elif code == 3:
        stype = v.rng.choice(WEIRD_STYPES[2:])
    elif code == 4:
        dtype = v.rng.choice(WEIRD_DTYPE_NAMES)
    elif code == 5:
        shape = v.rng.choice(WEIRD_SHAPES)
    elif code == 6:
        data = v.npy_bytes()
    else:
        data = v.data()
    return Array(dtype=dtype, shape=tuple(shape), stype=stype, data=data)


def _config_edit(value: Any, v: Values) -> Any:
    """A boundary value of the same kind as ``value`` (or of another kind)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return v.rng.choice(INT_EDGES + [value + 1, value - 1, -value])
    if isinstance(value, float):
        return v.rng.choice(FLOAT_EDGES)
    if isinstance(value, (str, bytes, list)):
        return v.rng.choice([value[:-1], value + value[:1], type(value)(), [value] if not isinstance(value, list)
                             else value * 2])
    return v.config_value()


content_op = st.tuples(st.integers(0, 10), st.integers(0, 2**16), st.integers(0, 2**16), seeds)
content_ops = st.lists(content_op, min_size=1, max_size=3)


def apply_content_op(msg: Msg, op: tuple[int, int, int, int], vocab: tuple[list[str], list[str]]) -> None:
    """One mutation of a message, in place; slots ``i``/``j`` are taken modulo what the message holds."""
    code, i, j, seed = op
    v = Values(seed)
    names, keys = vocab
    if code == 6 or not msg:  # add a record
        kind = v.rng.choice(list(KINDS))
        msg.append((_pick(names, j), kind, {_pick(keys, i + n): v.value(kind) for n in range(v.rng.randint(0, 3))}))
        return
    r = i % len(msg)
    name, kind, entries = msg[r]
    key = _pick(list(entries), j)
    if code == 0:
        msg.pop(r)
    elif code == 1:
        new_kind = v.rng.choice([k for k in KINDS if k != kind])
        msg[r] = (name, new_kind, {k: (val if v.rng.random() < 0.5 else v.value(new_kind))
                                   for k, val in entries.items()})
    elif code == 10:
        msg[r] = (_pick(names, j), kind, entries)
    elif code == 5 or key is None:
        base = _pick(keys, j)
        entries[v.rng.choice([base, base + "x", "k0_" + base, "k1_" + base, base.upper()])] = v.value(kind)
    elif code == 2:
        del entries[key]
    elif code == 3:
        entries[key] = v.value(kind)
    elif code == 7:
        entries[_pick(keys, i)] = entries.pop(key)
    elif code == 4 and isinstance(entries[key], Array):
        entries[key] = _corrupt_array(entries[key], v.rng.randrange(1 << 16), v)
    elif code in (8, 9) and isinstance(entries[key], Array):
        arr = _numpy(entries[key])
        if arr is not None:
            entries[key] = Array(np.ascontiguousarray(_array_edit(arr, v.rng.randrange(1 << 16), v))
                                 if v.rng.random() < 0.9 else _array_edit(arr, 4, v))
    else:
        entries[key] = _config_edit(entries[key], v)


# ------------------------------------------------------------------- running
def run_parser(pid: str, data: Any, sc_index: int, label: str) -> None:
    """Call the parser; success or its own error type is fine, anything else fails the test."""
    CASES[f"{pid} [{label}]"] += 1
    try:
        PARSERS[pid](data, **call_args(pid, sc_index))
    except (MessageError, WireError):
        return
    except ValueError as exc:
        if crypto_error(exc):
            return
        raise AssertionError(f"{pid} raised a ValueError that is not its own error type: {exc!r}") from exc
    except Exception as exc:
        raise AssertionError(f"{pid} let {type(exc).__name__} escape: {exc!r}") from exc
    ACCEPTED[f"{pid} [{label}]"] += 1


def test_every_parser_is_found_and_has_a_valid_sample():
    """Discovery sees the known schema modules, and every parser has a message it accepts (the mutation seed)."""
    modules = {pid.split(".")[0] for pid in PARSERS}
    assert {"common", "plaintext", "distributed_mf", "fedmf", "secemb", "secfedrec"} <= modules
    assert Array(np.zeros(1)).stype == NUMPY_STYPE
    samples, problems = valid_samples()
    assert not problems, f"parsers without a valid sample (add one to _sample_builders): {problems}"
    for (pid, i), sample in samples.items():
        PARSERS[pid](sample, **call_args(pid, i))  # must not raise


@fuzz(N_EXAMPLES)
@given(st.integers(0, len(SCENARIOS) - 1),
       st.lists(st.tuples(st.integers(0, 63), st.sampled_from(list(KINDS)), st.integers(0, 4), seeds), max_size=4),
       seeds)
def test_every_parser_on_noise(sc_index, records, raw_seed):
    """Random records (names and keys mostly the parser's own) of random kinds and values."""
    drawn = []  # values are drawn once per example and shared; only names and keys depend on the parser
    for slot, kind, n_entries, seed in records:
        v = Values(seed)
        drawn.append((slot, kind, [(v.rng.random() < 0.8, v.rng.choice(["", "k0_x"]), v.value(kind))
                                   for _ in range(n_entries)]))
    raw = Values(raw_seed).data()
    for pid, fn in PARSERS.items():
        if input_kind(fn) != "content":
            run_parser(pid, raw, sc_index, "noise")
            continue
        names, keys = vocabulary(pid)
        msg: Msg = [(_pick(names, slot) if slot < 48 else f"r{slot}", kind,
                     {(_pick(keys, slot + n) if own else other): value
                      for n, (own, other, value) in enumerate(entries)})
                    for slot, kind, entries in drawn]
        run_parser(pid, to_content(msg), sc_index, "noise")


@fuzz(N_EXAMPLES)
@given(st.integers(0, len(SCENARIOS) - 1), content_ops, frame_ops)
def test_every_parser_on_mutated_valid_messages(sc_index, ops, fops):
    """Valid messages built with the schemas' builders, then fields dropped, retyped, corrupted."""
    samples, _ = valid_samples()
    for pid in PARSERS:
        sample = samples.get((pid, sc_index))
        if sample is None:
            continue
        if isinstance(sample, bytes):
            run_parser(pid, mutate_frame(sample, fops), sc_index, "mutated")
            continue
        msg = [(name, kind, dict(entries)) for name, kind, entries in to_msg(sample)]  # a copy to mutate
        vocab = vocabulary(pid)
        for op in ops:
            apply_content_op(msg, op, vocab)
        run_parser(pid, to_content(msg), sc_index, "mutated")


# ------------------------------------------------------- the cases named in the issue
def _npy(header: str, payload: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    raw = header.encode("latin1")
    raw += b" " * (-(len(raw) + 11) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(raw).to_bytes(2, "little") + raw + payload


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.npy", b"x")
    return buf.getvalue()


U8 = Array(np.zeros(3, np.uint8)).data  # a valid uint8 [3] payload
HOSTILE_ARRAYS = {
    "torch stype": Array(dtype="uint8", shape=(3,), stype="torch.Tensor", data=U8),
    "zip archive (np.load returns an NpzFile)": Array(dtype="uint8", shape=(3,), stype=NUMPY_STYPE, data=_zip()),
    "garbage bytes": Array(dtype="uint8", shape=(3,), stype=NUMPY_STYPE, data=b"\x00garbage"),
    "declared shape differs": Array(dtype="uint8", shape=(4,), stype=NUMPY_STYPE, data=U8),
    "declared dtype differs": Array(dtype="float32", shape=(3,), stype=NUMPY_STYPE, data=U8),
    "non-numpy dtype string": Array(dtype="torch.uint8", shape=(3,), stype=NUMPY_STYPE, data=U8),
    "huge declared shape": Array(dtype="uint8", shape=(2**40,), stype=NUMPY_STYPE,
                                 data=_npy("{'descr': '|u1', 'fortran_order': False, 'shape': (1099511627776,), }",
                                           b"\x00" * 8)),
    "negative declared shape": Array(dtype="uint8", shape=(-1,), stype=NUMPY_STYPE, data=b""),
    "object dtype header": Array(dtype="object", shape=(1,), stype=NUMPY_STYPE,
                                 data=_npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"\x80" * 8)),
    "evaluated header": Array(dtype="uint8", shape=(1,), stype=NUMPY_STYPE, data=_npy("__import__('os')", b"\x00")),
    "truncated payload": Array(dtype="uint8", shape=(3,), stype=NUMPY_STYPE, data=U8[:-1]),
    "trailing bytes": Array(dtype="uint8", shape=(3,), stype=NUMPY_STYPE, data=U8 + b"\x00"),
    "big-endian": Array(np.zeros(3, dtype=">u4")),
    "npy version 3": Array(dtype="uint8", shape=(1,), stype=NUMPY_STYPE,
                           data=_npy("{'descr': '|u1', 'fortran_order': False, 'shape': (1,), }", b"\x00",
                                     b"\x03\x00")),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ARRAYS))
def test_get_array_refuses_hostile_arrays(name):
    from schemas.validation import get_array, get_arrays_with_prefix
    record = ArrayRecord({"k0_a": HOSTILE_ARRAYS[name]})
    with pytest.raises(MessageError):
        get_array(record, "k0_a", np.uint8 if "big-endian" not in name else np.uint32)
    with pytest.raises(MessageError):
        get_arrays_with_prefix(record, "k0_", (np.uint8, np.uint32))


def test_get_arrays_with_prefix_checks_every_array_and_only_those():
    from schemas.validation import get_arrays_with_prefix
    record = ArrayRecord({"k0_a": Array(np.arange(3, dtype=np.uint8)), "k0_b": Array(np.arange(2, dtype=np.uint32)),
                          "box": Array(dtype="x", shape=(1,), stype="torch", data=b"")})
    got = get_arrays_with_prefix(record, "k0_", (np.uint8, np.uint32))
    assert sorted(got) == ["k0_a", "k0_b"] and got["k0_b"].dtype == np.uint32
    with pytest.raises(MessageError, match="k0_b"):
        get_arrays_with_prefix(record, "k0_", (np.uint8,))


@pytest.mark.parametrize("value,kind", [
    (10**400, float), (2**63, int), (-(2**63) - 1, int), (True, int), (1, bool), ([1], int), (float("nan"), float),
    (float("inf"), float), (b"x", str), ("x", bytes), (1.5, int), ([1.5], float), (10**30, int),
])
def test_get_scalar_refuses_wrong_kinds(value, kind):
    from schemas.validation import get_scalar
    with pytest.raises(MessageError):
        get_scalar(ConfigRecord({"v": value}), "v", kind)


@pytest.mark.parametrize("values", [[10**400], [float("nan")], [True], 3.0, [1.0] * 3])
def test_get_float_list_refuses_bad_lists(values):
    from schemas.validation import get_float_list
    with pytest.raises(MessageError):
        get_float_list(ConfigRecord({"v": values}), "v", length=2)


def test_zz_case_counts():
    """The exact number of cases per parser and generator (printed with ``-s``); each >= TARGET."""
    assert_case_counts(CASES, ACCEPTED, TARGET)
    ran = {name.split(" [")[0] for name in CASES}
    assert not set(PARSERS) - ran, f"parsers never fuzzed: {sorted(set(PARSERS) - ran)}"


def test_values_of_the_right_type_and_range_that_no_party_can_use_are_refused():
    """Fields a range check passed but the receiver could not use: a low-order X25519 key (nothing can be
    sealed to it), a Paillier key size phe cannot generate (1025 bits never ends, 1026 overflows), a ring
    that is not Z_2^32 or Z_2^64. Each is the parser's own MessageError."""
    from flwr.app import ConfigRecord, RecordDict

    from schemas import fedmf as fm
    from schemas import secfedrec as sfr
    from schemas import two_server as ts
    from schemas.validation import MessageError

    zero = bytes(32)
    cases = {
        "announce key": lambda: fm.parse_announce_reply(fm.announce_reply(zero)),
        "server 1 key": lambda: ts.parse_server_info(RecordDict({"cfg": ts.server_info_record(zero, "r")})),
        "key bits": lambda: fm.parse_setup_message(fm.setup_message(1025, "r")),
        "ring bits": lambda: sfr.parse_round(RecordDict({"cfg": ConfigRecord({"round": 1, "ring_bits": 48})})),
    }
    for name, parse in cases.items():
        with pytest.raises(MessageError):
            parse()
    assert fm.parse_setup_message(fm.setup_message(2048, "r"))[0] == 2048
