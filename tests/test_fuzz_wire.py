"""Fuzz the frame codec of the server 0 <-> server 1 link and the DPF key batch decoder.

Why: a user's sealed box for server 1 is itself a frame, so :func:`schemas.wire.decode_frame`
parses bytes written by users; it must turn *any* input into :class:`WireError` and
nothing else (a ``TypeError`` or ``OverflowError`` would escape server 1's handlers).
:meth:`DpfKeyBatch.from_arrays` rebuilds a user's keys from received arrays and must
raise its own ``ValueError`` for anything malformed.

Inputs are random bytes, random JSON headers, and above all *mutations of valid
frames* (header fields replaced by wrong types or huge numbers, specs dropped or
duplicated, payloads truncated or extended, arrays re-encoded with another dtype or
shape). Each test counts its cases; ``test_zz_case_counts`` prints the table and
checks every test ran at least its target.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.wire import ALLOWED_DTYPES, MAX_FRAME, WireError, decode_frame, encode_frame

from crypto.dpf_gen import gen as dpf_gen
from crypto.dpf_keys import DpfKeyBatch, depth
from tests.fuzz_support import assert_case_counts

TARGET = 2000
CASES: Counter[str] = Counter()
ACCEPTED: Counter[str] = Counter()
CRYPTO_DIR = str(Path(__file__).resolve().parents[1] / "crypto")
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.large_base_example, HealthCheck.filter_too_much])


def fuzz(n: int = TARGET + 200) -> settings:
    return settings(FUZZ, max_examples=n)


# ------------------------------------------------------------------ weird values
WEIRD_JSON: list[Any] = [
    None, True, False, 0, -1, 1, 7, 2**31, 2**32, 2**40, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**300,
    1e300, -1e300, 1.5, 0.0, float("nan"), float("inf"), "", "x", "uint8", "uint64", "float32", "object", "<u4",
    "x" * 300, [], [1], [[1]], [2**40], [1e300], [-1], [True], [None], [1, 2, 3], ["a"], {}, {"a": 1}, {"users": []},
]
WIRE_DTYPES = sorted(ALLOWED_DTYPES)
ANY_DTYPES = WIRE_DTYPES + ["int8", "bool", ">u4", ">f8", "float16", "complex64", "U2", "S3", "V4", "M8[s]"]
ARRAY_NAMES = ["share", "shares", "user_public", "k1_seeds", "k1_cw_seeds", "k1_tbits", "k1_cw_out", "box_1",
               "cw_1", "table", "sum", "public_key", "x"]
SPECIAL_FLOATS = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e38, -1e308]


class Payloads:
    """Bulk random content from one seed: cheap to generate, reproducible from the seed hypothesis shrinks.

    Why a seed: drawing every byte and array element through hypothesis costs about 1 ms per draw on
    this loaded 2-core machine; the structure of a case (which field, which mutation) is drawn by
    hypothesis, the bytes it writes come from here.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def blob(self, limit: int = 24) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, limit))

    def array(self, dtypes: list[str] = WIRE_DTYPES, max_dim: int = 4) -> np.ndarray:
        """A small array of one of ``dtypes``: random bytes, or extreme values."""
        dtype = np.dtype(self.rng.choice(dtypes))
        shape = tuple(self.rng.randint(0, max_dim) for _ in range(self.rng.randint(0, 3)))
        n = math.prod(shape)
        arr = np.frombuffer(self.rng.randbytes(n * dtype.itemsize), dtype=dtype).reshape(shape).copy()
        if n and self.rng.random() < 0.3 and dtype.kind in "fiu" and dtype.isnative:
            info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
            choices = [info.max, info.min, 0, 1] + (SPECIAL_FLOATS if dtype.kind == "f" else [])
            with np.errstate(all="ignore"):
                arr.reshape(-1)[:] = [self.rng.choice(choices) for _ in range(n)]
        return arr

    def json(self, depth: int = 2) -> Any:
        roll = self.rng.random()
        if roll < 0.6 or depth == 0:
            return self.rng.choice(WEIRD_JSON)
        if roll < 0.75:
            return self.rng.randint(-(2**70), 2**70)
        if roll < 0.9:
            return [self.json(depth - 1) for _ in range(self.rng.randint(0, 3))]
        return {self.rng.choice(["a", "round", "users", "shape", ""]): self.json(depth - 1)
                for _ in range(self.rng.randint(0, 3))}


seeds = st.integers(0, 2**32 - 1)


# ------------------------------------------------------------- frame mutation
def split_frame(frame: bytes) -> tuple[dict[str, Any], bytes]:
    (hlen,) = struct.unpack(">I", frame[:4])
    return json.loads(frame[4:4 + hlen]), frame[4 + hlen:]


def join_frame(header: Any, payload: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + payload


frame_op = st.tuples(st.integers(0, 21), st.integers(0, 2**16), st.integers(0, 2**16), seeds)
frame_ops = st.lists(frame_op, min_size=1, max_size=3)


def _reencoded(frame: bytes, edit: Callable[[dict[str, np.ndarray], list[str]], None]) -> bytes:
    """Decode a (still valid) frame, edit its arrays, encode it again; unchanged if it no longer decodes."""
    try:
        op, meta, arrays = decode_frame(frame)
    except WireError:
        return frame
    arrays = dict(arrays)
    edit(arrays, list(arrays))
    try:
        return encode_frame(op, meta, arrays)
    except WireError:
        return frame


def _reshaped(a: np.ndarray, j: int) -> np.ndarray:
    choice = j % 4
    if choice == 0 and a.ndim and a.shape[0]:
        return a[:-1]
    if choice == 1:
        return np.concatenate([a, a[:1]]) if a.ndim and a.shape[0] else a.reshape(1, *a.shape)
    if choice == 2:
        return a.reshape(-1)
    return a[None]


def _extreme(a: np.ndarray, i: int, j: int) -> np.ndarray:
    a = a.copy()
    if a.size:
        info = np.finfo(a.dtype) if a.dtype.kind == "f" else np.iinfo(a.dtype)
        a.reshape(-1)[j % a.size] = [info.max, info.min, 0, 1][i % 4]
    return a


def _semantic_op(frame: bytes, code: int, i: int, j: int, rnd: Payloads) -> bytes:
    """Edits whose result is a well-formed frame carrying other arrays (what a careful attacker sends)."""
    def edit(arrays: dict[str, np.ndarray], names: list[str]) -> None:
        if code == 19 or not names:
            arrays[ARRAY_NAMES[i % len(ARRAY_NAMES)]] = rnd.array()
            return
        name = names[i % len(names)]
        if code == 15:
            with np.errstate(all="ignore"):
                arrays[name] = arrays[name].astype(WIRE_DTYPES[j % len(WIRE_DTYPES)])
        elif code == 16:
            arrays[name] = _reshaped(arrays[name], j)
        elif code == 17:
            arrays[ARRAY_NAMES[j % len(ARRAY_NAMES)]] = arrays.pop(name)
        elif code == 18:
            del arrays[name]
        elif code == 20:
            arrays[name] = rnd.array()
        else:  # 21: extreme values, same dtype and shape
            arrays[name] = _extreme(arrays[name], i, j)
    return _reencoded(frame, edit)


def _split_or_none(frame: bytes) -> tuple[Any, bytes]:
    try:
        return split_frame(frame)
    except (ValueError, struct.error, RecursionError):
        return None, frame[4:]


def _header_op(header: dict[str, Any], code: int, i: int, j: int, rnd: Payloads) -> None:
    """Edit the JSON header in place: fields replaced by wrong types, huge numbers, dropped, duplicated."""
    specs = header.get("arrays") if isinstance(header.get("arrays"), list) else []
    meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
    if code == 0:
        header[["op", "meta", "arrays", "extra"][i % 4]] = rnd.json()
    elif code == 1:
        header.pop(["op", "meta", "arrays"][i % 3], None)
    elif code == 2 and specs and isinstance(specs[i % len(specs)], list) and specs[i % len(specs)]:
        spec = specs[i % len(specs)]
        spec[j % len(spec)] = rnd.json()
    elif code == 3 and specs:
        specs.pop(i % len(specs))
    elif code == 4 and specs:
        specs.append(specs[i % len(specs)])
    elif code == 5 and specs:
        specs[i % len(specs)] = rnd.json()
    elif code == 6:
        keys = sorted(meta)
        meta[keys[i % len(keys)] if keys and j % 3 else f"k{j % 5}"] = rnd.json()
        header.setdefault("meta", meta)
    elif code == 7 and meta:
        meta.pop(sorted(meta)[i % len(meta)])
    elif code == 14 and specs:
        spec = specs[i % len(specs)]
        if isinstance(spec, list) and len(spec) == 4 and isinstance(spec[2], list):
            if spec[2]:
                spec[2][j % len(spec[2])] = rnd.json()
            else:
                spec[2].append(rnd.json())


def apply_frame_op(frame: bytes, op: tuple[int, int, int, int]) -> bytes:
    """One mutation of a frame; slots ``i``/``j`` are taken modulo what the frame holds."""
    code, i, j, seed = op
    rnd = Payloads(seed)
    if code >= 15:
        return _semantic_op(frame, code, i, j, rnd)
    if code == 8:
        return frame[:i % (len(frame) + 1)]
    if code == 9:
        return frame + rnd.blob()
    if code == 10:
        if not frame:
            return frame
        b = bytearray(frame)
        b[i % len(b)] ^= (j % 255) + 1
        return bytes(b)
    if code == 11:
        return struct.pack(">I", [(i * 65537 + j) % 2**32, (i * 65537 + j) % 64, 2**32 - 1][j % 3]) + frame[4:]
    header, payload = _split_or_none(frame)
    if code == 12:
        return join_frame(rnd.blob(40), payload)
    if code == 13:
        return join_frame(b"[" * (1000 * (i % 50 + 1)), payload)
    if not isinstance(header, dict):
        return frame
    header = json.loads(json.dumps(header))  # a copy we may edit
    _header_op(header, code, i, j, rnd)
    try:
        return join_frame(header, payload)
    except (TypeError, ValueError, RecursionError):
        return frame


def mutate_frame(frame: bytes, ops: list[tuple[int, int, int, int]]) -> bytes:
    for op in ops:
        frame = apply_frame_op(frame, op)
    return frame


# ------------------------------------------------------------------- checks
def raised_in(exc: BaseException, directory: str) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is in ``directory``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.startswith(directory)


def crypto_error(exc: BaseException) -> bool:
    """A ``ValueError`` that crypto's own validation raised (its documented error for bad keys)."""
    return isinstance(exc, ValueError) and not isinstance(exc, UnicodeError) and (
        type(exc).__module__.startswith("crypto") or raised_in(exc, CRYPTO_DIR))


def expect_wire_error(name: str, call: Callable[[], Any]) -> Any:
    CASES[name] += 1
    try:
        out = call()
    except WireError:
        return None
    ACCEPTED[name] += 1
    return out


# ----------------------------------------------------------------- corpus
def _dpf_frame(ring: type, width: int, party: int) -> bytes:
    k0, k1, _ = dpf_gen(np.array([1, 7, 11]), np.ones((3, width), dtype=ring), 12, domain=1)
    keys = k1 if party else k0
    return encode_frame("upload", {}, {**{f"k1_{k}": v for k, v in keys.to_arrays().items()},
                                       "share": np.arange(5, dtype=ring)})


VALID_FRAMES = [
    encode_frame("op", {"run": "r", "round": 3, "users": [1, 2], "shape": [4]},
                 {"a": np.arange(6, dtype=np.uint32).reshape(2, 3), "b": np.zeros(0, dtype=np.float64)}),
    encode_frame("count", {}, {"share": np.array([5], dtype=np.uint64)}),
    encode_frame("shares", {}, {"shares": np.arange(12, dtype=np.uint64).reshape(3, 4)}),
    encode_frame("hello", {}, {}),
    _dpf_frame(np.uint32, 4, 1),
    _dpf_frame(np.uint64, 1, 0),
]


# -------------------------------------------------------------------- tests
@fuzz()
@given(st.integers(0, 2), st.integers(0, 2**32 - 1), seeds)
def test_decode_frame_random_bytes(shape, length, seed):
    rnd = Payloads(seed)
    frame = [rnd.blob(64), struct.pack(">I", length) + rnd.blob(64),
             struct.pack(">I", length % 41) + rnd.blob(40)][shape]
    expect_wire_error("decode_frame random bytes", lambda: decode_frame(frame))


@fuzz()
@given(st.integers(0, 15), st.integers(0, 3), seeds)
def test_decode_frame_random_headers(fields, n_specs, seed):
    """Headers with any subset of the fields, each a random JSON value; specs of random length and content."""
    rnd = Payloads(seed)
    header = {name: rnd.json() for bit, name in enumerate(["op", "meta", "arrays", "x"]) if fields >> bit & 1}
    if fields & 8:
        header = {"op": "x", "meta": {}, "arrays": [[rnd.json() for _ in range(rnd.rng.randint(0, 5))]
                                                    for _ in range(n_specs)]}
    frame = join_frame(header, rnd.blob(48))
    expect_wire_error("decode_frame random headers", lambda: decode_frame(frame))


@fuzz()
@given(st.sampled_from(range(len(VALID_FRAMES))), frame_ops)
def test_decode_frame_mutated_valid_frames(which, ops):
    frame = mutate_frame(VALID_FRAMES[which], ops)
    out = expect_wire_error("decode_frame mutated frames", lambda: decode_frame(frame))
    if out is not None:  # whatever is accepted is self-consistent
        op, meta, arrays = out
        assert isinstance(op, str) and isinstance(meta, dict)
        assert all(a.dtype.name in ALLOWED_DTYPES for a in arrays.values())
        assert 4 + sum(a.nbytes for a in arrays.values()) <= len(frame) <= MAX_FRAME


class _Unserialisable:
    pass


BAD_META_VALUES: list[Any] = [b"bytes", {1, 2}, np.int64(3), np.float32(1.5), _Unserialisable(), (1, 2), {(1, 2): 3},
                              np.zeros(2)]
BAD_OPS: list[Any] = [None, 3, b"op", ["op"], "", "o" * 65, "ok", "retrieve"]
BAD_ARRAYS: list[Any] = [np.zeros(2, dtype=np.int8), np.array([object()]), np.zeros(2, dtype=">u4"),
                         np.zeros(3, dtype=bool), np.zeros((1,) * 9, dtype=np.uint8)]


@fuzz()
@given(st.integers(0, len(BAD_OPS)), st.integers(0, 4), st.lists(st.integers(0, 3), max_size=3), seeds)
def test_encode_frame_refuses_what_it_cannot_send(op_slot, meta_kind, array_kinds, seed):
    """encode_frame either produces a frame that decodes to the same content, or raises WireError."""
    rnd = Payloads(seed)
    op = BAD_OPS[op_slot] if op_slot < len(BAD_OPS) else "op"
    meta: Any = [None, {}, [], "m", {}][meta_kind]
    if meta_kind == 4:
        meta = {rnd.rng.choice(["a", "b", "round"]): rnd.rng.choice([rnd.json(), rnd.rng.choice(BAD_META_VALUES)])
                for _ in range(rnd.rng.randint(1, 3))}
    arrays: dict[Any, Any] = {}
    for kind in array_kinds:
        name = rnd.rng.choice(ARRAY_NAMES + ["", "n" * 300, 3])
        arrays[name] = rnd.rng.choice(BAD_ARRAYS) if kind == 0 else rnd.array()
    frame = expect_wire_error("encode_frame", lambda: encode_frame(op, meta, arrays))
    if frame is not None:
        op2, meta2, arrays2 = decode_frame(frame)
        assert op2 == op and set(arrays2) == set(arrays)
        for k, v in arrays.items():
            assert arrays2[k].dtype == v.dtype.newbyteorder("=") and np.array_equal(arrays2[k], v, equal_nan=True)


# ------------------------------------------------------------- DPF key batches
DPF_DOMAIN, DPF_WIDTH = 12, 3
_K0, _K1, _ = dpf_gen(np.array([0, 5, 11, 5]), np.ones((4, DPF_WIDTH), dtype=np.uint32), DPF_DOMAIN, domain=1)
DPF_FIELDS = ("seeds", "cw_seeds", "tbits", "cw_out")
dpf_edit = st.tuples(st.integers(0, 8), st.sampled_from(DPF_FIELDS), st.integers(0, 64), seeds)


def _edit_dpf(arrays: dict[str, Any], edit: tuple[int, str, int, int]) -> None:
    code, field, j, seed = edit
    a = np.asarray(arrays.get(field, np.zeros(0, np.uint8)))
    if code == 0:
        arrays.pop(field, None)
    elif code == 1:
        arrays[field] = Payloads(seed).array(ANY_DTYPES, max_dim=5)
    elif code == 2:
        arrays[field] = a[:-1] if a.ndim and a.shape[0] else a[None]
    elif code == 3 and a.dtype.kind in "biuf":
        with np.errstate(all="ignore"):
            arrays[field] = a.astype([np.uint8, np.uint32, np.uint64, np.int64, np.float32][j % 5])
    elif code == 4:
        arrays[field] = a.reshape(-1)
    elif code == 5 and a.ndim >= 1:
        arrays[field] = a[..., :-1] if a.shape[-1] else np.concatenate([a, a], axis=-1)
    elif code == 6:
        arrays[field] = a.reshape(-1)[:4].tolist() if j % 2 else float(j)  # not even an array
    elif code == 7 and a.dtype.kind in "iu" and a.size:
        arrays[field] = _extreme(a, seed, j)
    else:
        arrays[field] = np.concatenate([a, a]) if a.ndim else a


def keys_from_arrays(arrays: dict[str, Any], party: int, domain: int, width: int, ring: type) -> DpfKeyBatch:
    """``DpfKeyBatch.from_arrays`` with the key family given as ``DpfParams`` or as separate arguments."""
    if "params" in inspect.signature(DpfKeyBatch.from_arrays).parameters:
        from crypto.dpf_keys import DpfParams
        return DpfKeyBatch.from_arrays(arrays, party=party, params=DpfParams(domain, width, ring))
    return DpfKeyBatch.from_arrays(arrays, party=party, domain_size=domain, width=width, ring_dtype=ring)


@fuzz()
@given(st.sampled_from([0, 1]), st.lists(dpf_edit, min_size=1, max_size=3),
       st.sampled_from([(DPF_DOMAIN, DPF_WIDTH, np.uint32), (DPF_DOMAIN, DPF_WIDTH, np.uint64), (2, 1, np.uint32),
                        (DPF_DOMAIN + 5, DPF_WIDTH, np.uint32), (1 << 20, DPF_WIDTH, np.uint32)]))
def test_dpf_key_batch_from_arrays(party, edits, world):
    """Random and mutated key arrays give a consistent DpfKeyBatch or crypto's own ValueError."""
    domain, width, ring = world
    arrays: dict[str, Any] = dict((_K1 if party else _K0).to_arrays())
    for edit in edits:
        _edit_dpf(arrays, edit)
    CASES["DpfKeyBatch.from_arrays"] += 1
    try:
        keys = keys_from_arrays(arrays, party, domain, width, ring)
    except ValueError as exc:
        assert crypto_error(exc), f"{type(exc).__name__} not from crypto's own checks: {exc}"
        return
    ACCEPTED["DpfKeyBatch.from_arrays"] += 1
    n = depth(domain)
    assert keys.seeds.shape == (keys.n_keys, 16) and keys.cw_seeds.shape == (keys.n_keys, n, 16)
    assert keys.cw_out.shape == (keys.n_keys, width) and keys.cw_out.dtype == np.dtype(ring)


def _spec_frame(spec: list[Any], payload: bytes = b"\x00" * 4) -> bytes:
    return join_frame({"op": "x", "meta": {}, "arrays": [spec]}, payload)


@pytest.mark.parametrize("frame", [
    _spec_frame([["a"], "uint8", [4], 4]),                                  # list-valued name
    _spec_frame(["a", ["uint8"], [4], 4]),                                  # list-valued dtype
    _spec_frame(["a", "uint8", [1e300], 4]),                                # float shape entry
    _spec_frame(["a", "uint8", [2**64], 2**64]),                            # huge shape entry
    _spec_frame(["a", "uint8", [True, 4], 4]),                              # bool shape entry
    _spec_frame(["a", "uint8", [4], 4.0]),                                  # float nbytes
    _spec_frame(["a", "uint8", [2**31, 2**31, 2**31], 2**93]),              # product far beyond any frame
    _spec_frame(["a" * (MAX_FRAME // 2**22), "uint8", [4], 4]),             # very long name
    join_frame({"op": "x", "meta": {}, "arrays": [["a", "uint8", [2], 2], ["a", "uint8", [2], 2]]}, b"\x00" * 4),
    join_frame(b"[" * 100_000, b""),                                        # nesting deeper than the recursion limit
    join_frame({"op": "x", "meta": [], "arrays": []}, b""),
    struct.pack(">I", 2**31) + b"{}",                                       # header length over MAX_HEADER
])
def test_decode_frame_refuses_the_cases_named_in_the_issue(frame):
    with pytest.raises(WireError):
        decode_frame(frame)


@pytest.mark.parametrize("meta", [{"a": b"bytes"}, {"a": {1, 2}}, {"a": np.int64(1)}, {(1, 2): 3}, [1]])
def test_encode_frame_refuses_meta_that_is_not_json(meta):
    with pytest.raises(WireError):
        encode_frame("op", meta)


def test_zz_case_counts():
    """The exact number of generated cases per fuzzed decoder (printed with ``-s``); each >= TARGET."""
    assert_case_counts(CASES, ACCEPTED, TARGET)
