"""``p.shards()`` (contract 15.1) without a framework: the core places an
adapter's pieces (native index boxes) in the canonical array through the
parameter's layout, and refuses layouts whose pieces are not boxes there."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import reference as ref
from unified_params._shards import ShardedValue
from unified_params.testing import fakes


def _mlp() -> Any:
    net = ref.Sequential(ref.Dense(6, in_units=4), ref.Dense(2, in_units=6))
    up.wrap(net).initialize(up.init.Uniform(-1, 1), seed=0)
    return net


def test_a_parameter_that_is_not_sharded_is_one_piece() -> None:
    m = up.wrap(_mlp())
    (piece,) = m.params["0.weight"].shards()
    assert piece.index == (slice(0, 6), slice(0, 4)) and piece.shape == (6, 4)
    assert piece.device == m.params["0.weight"].device
    np.testing.assert_array_equal(piece.value, m.params["0.weight"].value)


def _shard_native_axis(m: up.Block, axis: int, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the handle report every 2-D storage as ``n`` pieces along native ``axis``."""
    h = m._handle

    def boxes(leaf: Any) -> list[tuple[slice, ...]]:
        shape = tuple(int(d) for d in h.shape(leaf))
        if len(shape) != 2:
            return [tuple(slice(0, d) for d in shape)]
        step = shape[axis] // n
        return [tuple(slice(k * step, (k + 1) * step) if a == axis else slice(0, shape[a]) for a in range(2))
                for k in range(n)]

    monkeypatch.setattr(h, "shards", lambda leaf: [(b, f"dev:{k}") for k, b in enumerate(boxes(leaf))])
    monkeypatch.setattr(h, "read_shard", lambda leaf, k: h.read(leaf)[boxes(leaf)[k]])


def test_pieces_are_placed_in_canonical_axes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel-last (in, out) storage sharded on its native axis 1 (out) is
    sharded on canonical axis 0: the boxes follow the layout's permutation."""
    m = fakes.kernel_last(_mlp())
    p = m.params["0.weight"]
    assert p.layout == "kernel_last" and p.native_shape == (4, 6)
    _shard_native_axis(m, axis=1, n=3, monkeypatch=monkeypatch)
    pieces = p.shards()
    assert [s.index for s in pieces] == [(slice(0, 2), slice(0, 4)), (slice(2, 4), slice(0, 4)),
                                         (slice(4, 6), slice(0, 4))]
    assert [s.device for s in pieces] == ["dev:0", "dev:1", "dev:2"]
    whole = p.value
    for s in pieces:
        assert s.shape == (2, 4)
        np.testing.assert_array_equal(s.value, whole[s.index])
        assert s.value.flags.c_contiguous and s.value.flags.writeable  # a private copy
    out = np.empty_like(whole)
    for s in pieces:  # the pieces tile the global array
        out[s.index] = s.value
    np.testing.assert_array_equal(out, whole)


def test_pieces_of_a_layout_that_merges_axes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attention kernel (in, heads, head_dim) is (heads*head_dim, in) in
    canonical layout: a piece along head_dim is no box there, so the core
    refuses merged layouts rather than guess, and changes nothing."""
    net = ref.Sequential(ref.Dense(6, in_units=4))
    m = fakes.with_layouts(net, {"0.weight": ("general:1", (4, 2, 3), "")})
    p = m.params["0.weight"]
    assert p.shape == (6, 4)
    monkeypatch.setattr(m._handle, "shards", lambda leaf: [((slice(0, 4), slice(0, 1), slice(0, 3)), "d0")])
    before = p.value
    with pytest.raises(up.ShapeMismatchError, match="p.value"):
        p.shards()
    np.testing.assert_array_equal(p.value, before)


def test_state_without_copy_gives_the_local_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Contract 15.1: ``m.state(copy=False)`` of a sharded model never reads
    the whole value (``Handle.read`` of a sharded storage gathers): its entry
    is a ShardedValue of the pieces, read once each, with their canonical
    boxes; unsharded storages stay read-only arrays (contract 7.1)."""
    m = fakes.kernel_last(_mlp())
    whole = {k: v.copy() for k, v in m.state().items()}
    _shard_native_axis(m, axis=1, n=3, monkeypatch=monkeypatch)
    h = m._handle
    listed = h.shards
    monkeypatch.setattr(h, "shards", lambda leaf: listed(leaf) if len(h.shape(leaf)) == 2 else None)  # biases: plain
    real_read = h.read
    reads: list[str] = []
    pieces_read: list[str] = []
    monkeypatch.setattr(h, "read", lambda leaf, copy=True: reads.append(leaf.storage) or real_read(leaf, copy))
    monkeypatch.setattr(h, "read_shard",  # the piece alone, not through the (gathering) read
                        lambda leaf, k: pieces_read.append(leaf.storage) or real_read(leaf)[listed(leaf)[k][0]])
    state = m.state(copy=False)
    sharded = [k for k, v in state.items() if isinstance(v, up.ShardedValue)]
    assert sharded == ["0.weight", "1.weight"], sharded
    assert not set(reads) & {m.params[k]._leaf.storage for k in sharded}, reads  # nothing gathered
    assert len(pieces_read) == 6  # each piece read once, when the state was taken
    v = state["0.weight"]
    assert v.shape == (6, 4) and v.dtype == whole["0.weight"].dtype and v.ndim == 2
    assert [s.index for s in v.shards] == [(slice(0, 2), slice(0, 4)), (slice(2, 4), slice(0, 4)),
                                           (slice(4, 6), slice(0, 4))]
    for s in v.shards:
        assert s.shape == s.data.shape == (2, 4) and not s.data.flags.writeable
        np.testing.assert_array_equal(s.data, whole["0.weight"][s.index])
    assert len(pieces_read) == 6  # .data is what was read then
    for k in ("0.bias", "1.bias"):
        assert isinstance(state[k], np.ndarray) and not state[k].flags.writeable
    # every piece is here (one process, several devices): np.asarray assembles without gathering
    np.testing.assert_array_equal(np.asarray(v), whole["0.weight"])
    assert "ShardedValue(shape=(6, 4)" in repr(v)


def test_a_state_of_pieces_loads_back_without_gathering(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_state(m.state(copy=False))`` of a process that holds only some
    pieces writes them (each write gets the pieces it holds, placed by box);
    pieces that do not cover what the target holds are a StateError before
    any write; ``np.asarray`` of such a value says how to gather."""
    m = up.wrap(_mlp())
    h = m._handle
    rows = {2: slice(0, 3)}  # this "process" holds rows 0:3 of each 2-D storage

    def box(leaf: Any) -> tuple[slice, ...]:
        shape = tuple(int(d) for d in h.shape(leaf))
        return (rows[2], slice(0, shape[1])) if len(shape) == 2 else tuple(slice(0, d) for d in shape)

    monkeypatch.setattr(h, "shards", lambda leaf: [(box(leaf), "cpu:0")] if len(h.shape(leaf)) == 2 else None)
    monkeypatch.setattr(h, "read_shard", lambda leaf, k: np.asarray(h.read(leaf))[box(leaf)])
    state = m.state(copy=False)
    v = state["0.weight"]
    with pytest.raises(up.StateError, match="p.value or m.state"):
        np.asarray(v)
    held = {k: np.array(s.data) for k, s in ((k, x.shards[0]) for k, x in state.items()
                                             if isinstance(x, ShardedValue))}
    m.load_state(state)
    for k, piece in held.items():  # the fake handle stores the whole value it is given: the pieces, zeros
        got = m.params[k].value
        np.testing.assert_array_equal(got[box(m.params[k]._leaf)], piece, err_msg=k)
        np.testing.assert_array_equal(got[3:], 0, err_msg=k)
    # another target sharding: rows 3:6 are not held here
    before = {k: np.array(p.value) for k, p in m.params.items()}
    rows[2] = slice(3, 6)
    with pytest.raises(up.StateError, match="up.save"):
        m.load_state(state)
    for k, p in m.params.items():
        np.testing.assert_array_equal(p.value, before[k])


def test_a_tied_sharded_state_loads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tied names share one ShardedValue in ``state(copy=False)``; loading it
    back compares nothing (one object), so it needs no whole value."""
    net = ref.Sequential(ref.Dense(4, in_units=4), ref.Dense(4, in_units=4))
    m = up.wrap(net)
    m.initialize(up.init.Uniform(-1, 1), seed=1)
    m.tie("1.weight", "0.weight")
    h = m._handle

    def box(leaf: Any) -> tuple[slice, ...]:
        return (slice(0, 2), slice(0, 4))

    monkeypatch.setattr(h, "shards", lambda leaf: [(box(leaf), "cpu:0")] if len(h.shape(leaf)) == 2 else None)
    monkeypatch.setattr(h, "read_shard", lambda leaf, k: np.asarray(h.read(leaf))[box(leaf)])
    state = m.state(copy=False)
    assert state["0.weight"] is state["1.weight"] and isinstance(state["0.weight"], ShardedValue)
    piece = np.array(state["0.weight"].shards[0].data)
    m.load_state(state)
    np.testing.assert_array_equal(m.params["1.weight"].value[:2], piece)
