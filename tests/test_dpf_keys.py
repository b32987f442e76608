"""DPF keys as plain data: parameters checked once, the transport form, its validation, the generator state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.dpf_gen import gen
from crypto.dpf_keys import DpfKeyBatch, DpfParams, GenState, depth, t_of, to_bytes, to_words, with_t


@given(m=st.integers(2, 2**20), a=st.integers(0, 2**20), b=st.integers(0, 2**20))
@settings(max_examples=30, deadline=None)
def test_key_size_does_not_depend_on_the_point(m, a, b):
    ka, _, _ = gen(np.array([a % m]), np.ones((1, 1), np.uint32), m)
    kb, _, _ = gen(np.array([b % m]), np.ones((1, 1), np.uint32), m)
    assert ka.nbytes == kb.nbytes
    n = depth(m)
    assert ka.nbytes == 16 + 16 * n + (1 + 2 * n + 7) // 8 + 4  # lambda + 1 + (lambda + 2) n + 32 bits, packed


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(cw_seeds=d["cw_seeds"][:, :-1]), "correction seeds"),
    (lambda d: d.update(seeds=d["seeds"].astype(np.uint16)), "seeds"),
    (lambda d: d.update(cw_out=d["cw_out"].astype(np.uint64)), "output correction"),
    (lambda d: d.update(tbits=d["tbits"][:-1]), "t bits"),
    (lambda d: d.pop("cw_out"), "lack"),
])
def test_received_keys_are_validated(mutate, needle):
    k0, _, _ = gen(np.array([1, 2, 3]), np.ones((3, 1), np.uint32), 1000)
    arrays = dict(k0.to_arrays())
    mutate(arrays)
    with pytest.raises(ValueError, match=needle):
        DpfKeyBatch.from_arrays(arrays, party=0, params=DpfParams(1000, 1, np.uint32))


def test_keys_for_another_depth_are_refused():
    k0, _, _ = gen(np.array([1]), np.ones((1, 1), np.uint32), 100)
    with pytest.raises(ValueError, match="depth"):
        DpfKeyBatch.from_arrays(k0.to_arrays(), party=0, params=DpfParams(5000, 1, np.uint32))


@settings(max_examples=20, deadline=None)
@given(m=st.integers(2, 5000), k=st.integers(1, 9), width=st.integers(1, 5), party=st.sampled_from([0, 1]),
       ring=st.sampled_from([np.uint32, np.uint64]))
def test_transport_form_round_trips_every_field(m, k, width, party, ring):
    keys = gen(np.arange(k) % m, np.ones((k, width), ring), m)[party]
    back = DpfKeyBatch.from_arrays(keys.to_arrays(), party=party, params=DpfParams(m, width, ring))
    for f in ("seeds", "t0", "cw_seeds", "cw_t", "cw_out"):
        assert np.array_equal(getattr(back, f), getattr(keys, f))
    assert back.party == party and back.domain_size == m and back.params == keys.params


@pytest.mark.parametrize("args,needle", [
    ((1, 1, np.uint32), "domain"), ((2**62 + 1, 1, np.uint32), "domain"), ((10, 0, np.uint32), "width"),
    ((10, 1, np.int32), "ring dtype"), ((10, 1, ">u4"), "ring dtype"), ((10.0, 1, np.uint32), "integer"),
    ((True, 1, np.uint32), "integer"),
])
def test_parameters_are_checked_once_at_construction(args, needle):
    with pytest.raises(ValueError, match=needle):
        DpfParams(*args)


def test_parameters_compute_depth_and_normalise_the_ring():
    p = DpfParams(np.int64(3883), 65, np.uint32)
    assert p.depth == 12 == depth(3883) and p.domain_size == 3883 and isinstance(p.domain_size, int)
    assert p.ring == np.dtype(np.uint32) and p.tbits_per_key == 25 and p.tbits_bytes(3) == 10
    assert DpfParams(2, 1, np.uint64).depth == 1 and DpfParams(1 << 20, 1, np.uint64).depth == 20


def test_a_key_batch_is_refused_for_a_party_other_than_0_or_1():
    k0, _, _ = gen(np.array([1]), np.ones((1, 1), np.uint32), 10)
    with pytest.raises(ValueError, match="party"):
        DpfKeyBatch.from_arrays(k0.to_arrays(), party=2, params=DpfParams(10, 1, np.uint32))


def test_concatenate_and_select_keep_keys_in_order():
    a0, _, _ = gen(np.array([1, 2]), np.ones((2, 1), np.uint32), 10)
    b0, b1, _ = gen(np.array([3]), np.ones((1, 1), np.uint32), 10)
    both = DpfKeyBatch.concatenate([a0, b0])
    assert both.n_keys == 3 and np.array_equal(both.seeds[2], b0.seeds[0])
    assert np.array_equal(both.select(slice(0, 2)).cw_seeds, a0.cw_seeds)
    with pytest.raises(ValueError, match="different parties"):
        DpfKeyBatch.concatenate([a0, b1])


def test_gen_state_round_trips_and_is_checked():
    _, _, state = gen(np.array([1, 5]), np.ones((2, 1), np.uint32), 10)
    back = GenState.from_arrays(state.to_arrays())
    assert all(np.array_equal(getattr(back, f), getattr(state, f)) for f in ("t1", "s0", "s1"))
    with pytest.raises(ValueError, match="lacks"):
        GenState.from_arrays({"t1": state.t1, "s0": state.s0})
    with pytest.raises(ValueError, match="s1"):
        GenState.from_arrays({**state.to_arrays(), "s1": state.s1[:1]})


@given(raw=st.integers(1, 10).flatmap(lambda n: st.binary(min_size=16 * n, max_size=16 * n)), t=st.integers(0, 1))
@settings(max_examples=20, deadline=None)
def test_node_blocks_carry_the_control_bit_in_their_lowest_bit(raw, t):
    seeds = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16)
    words = to_words(seeds)
    assert np.array_equal(to_bytes(words), seeds)  # the bytes AES reads, both ways
    marked = with_t(words, np.full(len(seeds), t, np.uint8))
    assert np.array_equal(t_of(marked), np.full(len(seeds), t))
    assert np.array_equal(marked[:, 0] >> np.uint64(1), words[:, 0] >> np.uint64(1)) and np.array_equal(
        marked[:, 1], words[:, 1])
