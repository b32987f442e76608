"""Fuzz server 1's whole request handler: ``Server1().handle(frame)`` always answers a frame.

Why: server 1 is a service reached by server 0 (and, inside sealed boxes, by
users); one request that raises kills its connection handler, and a request that
makes it allocate what a meta field declares can take the host down. Every
malformed request must get an ``error`` frame (or an ``ok`` frame with the bad
users in ``rejected``), never an exception.

Every operation ``_op_*`` of :class:`twoserver.operations.Server1` is found
by name. Two generators, each applied to every operation in one example:

* noise: meta dicts of the operations' own keys (and others) holding random
  JSON (wrong types, huge ints, lists, NaN), random arrays and boxes;
* mutated valid requests: a request built exactly as server 0 builds it (users'
  real DPF keys and shares, sealed to server 1 with the right context), then
  meta fields replaced, dropped or added, boxes dropped or corrupted, arrays
  replaced, and the plaintext inside one user's box mutated as a frame and sealed
  again, so the byte-level parsers behind the seal see the mutation; in half the
  cases the whole frame is then mutated too (header fields, specs, payload).

The server is one long-lived instance, as in a deployment: state must stay sound
across garbage. The address space is capped while these tests run, so an
allocation of what a hostile meta field declares fails fast instead of swapping.
"""

from __future__ import annotations

import itertools
import json
import logging
import resource
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.sealed import generate_keypair, seal
from schemas import secemb as schema
from schemas.wire import decode_frame, encode_frame
from tests.test_fuzz_wire import Payloads, dpf_gen, frame_ops, fuzz, mutate_frame, seeds
from twoserver.operations import Server1

TARGET = 2000
N_EXAMPLES = TARGET + 50
CASES: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()
OPS = sorted(name[4:] for name in dir(Server1) if name.startswith("_op_"))
N_ITEMS, WIDTH, M_PRIME, DENSE, SIZE = 12, 4, 3, 5, 6
RING = np.uint32
USERS = [1, 2]
TABLE = (np.arange(N_ITEMS * WIDTH, dtype=np.uint64) * 2654435761).astype(RING).reshape(N_ITEMS, WIDTH)
META_KEYS = ["run", "round", "users", "m_prime", "width", "dense_size", "variant", "n_items", "shape", "ring_bits",
             "size", "min_users", "x"]
_ROUNDS = itertools.count(1)
_RUNS = itertools.count()
_USER_PUBLIC = generate_keypair()[1]


@pytest.fixture(scope="module", autouse=True)
def capped_address_space():
    """Cap this process's address space at its current size + 6 GiB while server 1 is fuzzed.

    Why: a meta field like ``shape=[2**30]`` asks numpy for gigabytes that Linux
    hands out lazily; with the cap numpy raises MemoryError at once (which the
    handler must turn into an error frame) instead of the machine swapping.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    cap = used + (6 << 30)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    server_log = logging.getLogger("secrec.server1")
    level = server_log.level
    server_log.setLevel(logging.ERROR)  # thousands of expected rejections; unexpected errors still show
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        server_log.setLevel(level)


# ------------------------------------------------------- requests as server 0 builds them
def _ring(*shape: int) -> np.ndarray:
    return (np.arange(int(np.prod(shape)), dtype=np.uint64) * 40503 + 7).astype(RING).reshape(shape)


def _keys(fresh: bool, variant: str = "rowenc") -> tuple[Any, Any]:
    items = np.array([0, 5, 11])
    if not fresh:
        return dpf_gen(items, np.ones((M_PRIME, 1), dtype=RING), N_ITEMS, domain=0)[:2]
    if variant == "init":
        return dpf_gen(np.repeat(items, WIDTH), _ring(M_PRIME * WIDTH, 1), N_ITEMS, domain=1)[:2]
    return dpf_gen(items, _ring(M_PRIME, WIDTH), N_ITEMS, domain=1)[:2]


KEYS_RETRIEVE = _keys(False)[1]
KEYS_FRESH = {v: _keys(True, v)[1] for v in ("rowenc", "init")}

# op -> (purpose of the users' boxes, round of their context or None for the request's, inner plaintext)
INNER: dict[str, tuple[str, int | None, Callable[[dict[str, Any]], bytes]]] = {
    "count": ("count", 0, lambda meta: schema.count_share_bytes(np.array([3], dtype=np.uint64))),
    "retrieve": ("retrieve", None, lambda meta: schema.sealed_retrieval_bytes(KEYS_RETRIEVE, _USER_PUBLIC)),
    "retrieve_eval": (schema.EVAL_BOX, None, lambda meta: schema.sealed_retrieval_bytes(KEYS_RETRIEVE, _USER_PUBLIC)),
    "aggregate": ("dense", None, lambda meta: schema.sealed_dense_bytes(_ring(DENSE))),
    "aggregate_fresh": ("upload", None, lambda meta: schema.sealed_fresh_upload_bytes(
        KEYS_FRESH[meta["variant"]], _ring(DENSE))),
    "sum_shares": ("secfedrec", None, lambda meta: encode_frame("secfedrec", {}, {"share": _ring(SIZE)})),
    "sum_metrics": ("eval", None, lambda meta: encode_frame("dense", {}, {"share": _ring(2)})),
}


def valid_meta(op: str, run: str, rnd: int, variant: str) -> dict[str, Any]:
    """The meta server 0 sends for ``op`` (strategies/secemb.py, strategies/secfedrec.py)."""
    return {
        "hello": {},
        "set_model": {"ring_bits": 32},
        "count": {"run": run, "users": USERS, "min_users": 2},
        "retrieve": {"run": run, "round": rnd, "m_prime": M_PRIME, "users": USERS},
        "retrieve_eval": {"run": run, "round": rnd, "m_prime": M_PRIME, "users": USERS, "min_users": 2},
        "aggregate": {"run": run, "round": rnd, "width": WIDTH, "dense_size": DENSE, "users": USERS, "min_users": 2},
        "aggregate_fresh": {"run": run, "round": rnd, "width": 1 if variant == "init" else WIDTH,
                            "dense_size": DENSE, "users": USERS, "min_users": 2, "variant": variant,
                            "m_prime": M_PRIME, "n_items": N_ITEMS},
        "sum_shares": {"run": run, "round": rnd, "users": USERS, "shape": [SIZE], "ring_bits": 32},
        "sum_metrics": {"run": run, "round": rnd, "users": USERS, "size": 2, "ring_bits": 32},
    }.get(op, {"run": run, "round": rnd, "users": USERS})


def valid_arrays(op: str, meta: dict[str, Any], inner: dict[int, bytes]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    if op == "set_model":
        arrays["table"] = TABLE
    if op in INNER:
        purpose, box_round, _ = INNER[op]
        for u in USERS:
            ctx = schema.context(meta["run"], meta["round"] if box_round is None else box_round, u, purpose)
            arrays[f"box_{u}"] = np.frombuffer(seal(SERVER1.public_key, inner[u], ctx), dtype=np.uint8)
    if op == "aggregate":
        for u in USERS:
            arrays[f"cw_{u}"] = _ring(M_PRIME, WIDTH)
    return arrays


def request(op: str, meta: dict[str, Any], inner: dict[int, bytes] | None = None) -> bytes:
    if inner is None and op in INNER:
        inner = {u: INNER[op][2](meta) for u in USERS}
    return encode_frame(op, meta, valid_arrays(op, meta, inner or {}))


SERVER1 = Server1()


def prepare(op: str) -> tuple[str, int, str]:
    """A fresh run and round; the model set, and for aggregations a valid retrieval of that round done."""
    run, rnd = f"fz{next(_RUNS)}", next(_ROUNDS)
    variant = ["rowenc", "init"][rnd % 2]
    SERVER1.handle(request("set_model", valid_meta("set_model", run, rnd, variant)))
    if op in ("aggregate", "aggregate_fresh"):
        status, out, _ = decode_frame(SERVER1.handle(request("retrieve", valid_meta("retrieve", run, rnd, variant))))
        assert status == "ok" and not out["rejected"], out
    return run, rnd, variant


# -------------------------------------------------------------------- the check
def answer(op: str, frame: bytes, label: str) -> None:
    """Server 1 must answer ``frame`` with a well-formed ``ok`` or ``error`` frame and not raise, and refuse
    through its checks: an ``internal error`` is an exception (KeyError, TypeError, ...) that a check missed."""
    CASES[f"{op} [{label}]"] += 1
    try:
        reply = SERVER1.handle(frame)
    except Exception as exc:
        raise AssertionError(f"server 1 raised {type(exc).__name__} on a {op} request: {exc!r}") from exc
    status, meta, _ = decode_frame(reply)
    assert status in ("ok", "error"), status
    assert not str(meta.get("reason", "")).startswith("internal error"), f"{op} [{label}]: {meta['reason']}"
    OUTCOMES[f"{op} [{label}] {status}"] += 1


# ---------------------------------------------------------------- mutations
def _mutate_meta(meta: dict[str, Any], code: int, i: int, rnd: Payloads) -> None:
    key = META_KEYS[i % len(META_KEYS)] if code == 2 or not meta else sorted(meta)[i % len(meta)]
    if code == 0 and meta:
        del meta[key]
    elif code == 3 and isinstance(meta.get(key), list):
        meta[key] = meta[key] + [rnd.json()]
    else:
        meta[key] = rnd.json()


def _mutate_arrays(arrays: dict[str, np.ndarray], code: int, i: int, rnd: Payloads) -> None:
    names = sorted(arrays)
    name = names[i % len(names)] if names else f"box_{USERS[0]}"
    if code == 0:
        arrays.pop(name, None)
    elif code == 1:
        arrays[name] = np.frombuffer(rnd.blob(120), dtype=np.uint8)
    elif code == 2 and name in arrays and arrays[name].nbytes:
        a = arrays[name]
        raw = bytearray(a.tobytes())
        raw[i % len(raw)] ^= 1
        arrays[name] = np.frombuffer(bytes(raw), dtype=a.dtype).reshape(a.shape)
    else:
        arrays[name] = rnd.array()


request_op = st.tuples(st.integers(0, 5), st.integers(0, 2**16), st.integers(0, 2**16), seeds)


def mutated_request(op: str, ops: list[tuple[int, int, int, int]], fops: list[tuple[int, int, int, int]]) -> bytes:
    """A valid request of ``op`` with meta, arrays and one user's sealed plaintext mutated."""
    run, rnd, variant = prepare(op)
    meta = valid_meta(op, run, rnd, variant)
    inner = {u: INNER[op][2](meta) for u in USERS} if op in INNER else {}
    for code, i, j, seed in ops:
        p = Payloads(seed)
        if code <= 1:  # meta field: dropped, replaced by a random JSON value, list extended
            _mutate_meta(meta, j % 4, i, p)
        elif code <= 3 and inner:  # the plaintext inside a user's box, sealed again correctly
            u = USERS[i % len(USERS)]
            inner[u] = mutate_frame(inner[u], fops)
    frame_arrays = valid_arrays(op, meta if "run" in meta and "round" in meta else valid_meta(op, run, rnd, variant),
                                inner)
    for code, i, j, seed in ops:
        if code == 4:
            _mutate_arrays(frame_arrays, j % 4, i, Payloads(seed))
    try:
        return encode_frame(op, meta, frame_arrays)
    except ValueError:  # meta that cannot even be encoded: send it raw
        header = json.dumps({"op": op, "meta": meta, "arrays": []}, default=str).encode()
        return len(header).to_bytes(4, "big") + header


# -------------------------------------------------------------------- tests
@fuzz(N_EXAMPLES)
@given(st.lists(st.tuples(st.integers(0, len(META_KEYS) - 1), seeds), max_size=6),
       st.lists(st.tuples(st.integers(0, 3), seeds), max_size=3))
def test_server1_answers_noise(meta_fields, array_fields):
    """Each operation with a meta of random JSON values under its own keys, and random arrays."""
    for op in OPS:
        meta = {META_KEYS[k]: Payloads(seed).json() for k, seed in meta_fields}
        arrays = {[f"box_{USERS[0]}", f"cw_{USERS[0]}", "table", "x"][k]: Payloads(seed).array()
                  for k, seed in array_fields}
        try:
            frame = encode_frame(op, meta, arrays)
        except ValueError:
            continue
        answer(op, frame, "noise")


@fuzz(N_EXAMPLES)
@given(st.lists(request_op, min_size=1, max_size=3), frame_ops, st.booleans())
def test_server1_answers_mutated_valid_requests(ops, fops, frame_level):
    """Valid requests with meta fields, arrays and sealed plaintexts mutated; in half the cases the
    resulting frame (header JSON, array specs, payload) is mutated as well."""
    for op in OPS:
        frame = mutated_request(op, ops, fops)
        if frame_level:
            frame = mutate_frame(frame, fops)
            OUTCOMES[f"{op} [mutated] frame-level"] += 1
        answer(op, frame, "mutated")


@pytest.mark.parametrize("op", OPS)
def test_valid_requests_succeed(op):
    """The generators start from requests server 1 accepts (so mutations probe its real checks)."""
    run, rnd, variant = prepare(op)
    status, meta, _ = decode_frame(SERVER1.handle(request(op, valid_meta(op, run, rnd, variant))))
    assert status == "ok" and not meta.get("rejected"), meta


@pytest.mark.parametrize("meta", [
    {"run": "r", "round": 1, "users": [1, 2], "shape": [2**40], "ring_bits": 32},
    {"run": "r", "round": 1, "users": [1, 2], "shape": [2**28], "ring_bits": 64},
    {"run": "r", "round": [1], "users": [1, 2], "shape": [4], "ring_bits": 32},
    {"run": ["r"], "round": 1, "users": 5, "shape": 4, "ring_bits": "64"},
    {"run": "r", "round": 1e300, "users": [[1]], "shape": [1e300], "ring_bits": 2**70},
])
def test_hostile_sum_shares_meta(meta):
    """The cases named in the issue: huge shapes, lists for ints, floats for sizes."""
    answer("sum_shares", encode_frame("sum_shares", meta, {}), "named")


def test_rejection_of_a_huge_quoted_meta_key_still_encodes():
    """A refusal quotes the offending field; a 6 MB key of quotes repr-escapes to an 18 MB reason, over the
    frame header limit: the reason must be bounded, or encoding the error frame itself raises."""
    answer("count", encode_frame("count", {"'" * (6 << 20) + '"': [1]}, {}), "named")


def test_zz_case_counts():
    """The exact number of requests per operation and generator (printed with ``-s``); each >= TARGET."""
    if not CASES:
        pytest.skip("no fuzz test ran in this session")
    print("\n" + "\n".join(f"{name:34s} {CASES[name]:6d} cases ({OUTCOMES[name + ' ok']} ok, "
                           f"{OUTCOMES[name + ' error']} error, {OUTCOMES[name + ' frame-level']} also "
                           f"frame-mutated)" for name in sorted(CASES)))
    low = {name: n for name, n in CASES.items() if n < TARGET and "[named]" not in name}
    assert not low, f"fuzz tests ran fewer than {TARGET} cases: {low}"

