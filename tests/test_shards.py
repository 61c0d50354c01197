"""``p.shards()`` (contract 15.1) without a framework: the core places an
adapter's pieces (native index boxes) in the canonical array through the
parameter's layout, and refuses layouts whose pieces are not boxes there."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import reference as ref
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
