"""Issue 13 on Gluon: a first listing is one walk (``tree_and_stamp``), its
stamp is the one ``stamp()`` computes, and the listing kept under it sees
edits of ``m.native`` (a block added, ``grad_req`` switched, a parameter
replaced by another block's: a tie)."""

from __future__ import annotations

import pytest

mx = pytest.importorskip("mxnet")

import unified_params as up  # noqa: E402


def net() -> object:
    from mxnet.gluon import nn

    n = nn.Sequential()
    n.add(nn.Dense(4, in_units=3), nn.BatchNorm(in_channels=4), nn.Dense(4, in_units=4))
    n.initialize()
    return n


def test_one_walk_gives_the_stamp_of_stamp() -> None:
    model = net()
    h = up.wrap(model)._handle
    root, stamp = h.tree_and_stamp()  # type: ignore[attr-defined]
    assert stamp == h.stamp()
    assert [c.key for c in root.children] == ["0", "1", "2"]
    model[2].weight.grad_req = "null"
    assert h.tree_and_stamp()[1] == h.stamp() != stamp  # type: ignore[attr-defined]


def test_cached_listing_sees_native_edits() -> None:
    from mxnet.gluon import nn

    model = net()
    m = up.wrap(model)
    assert list(m.params)[:2] == ["0.weight", "0.bias"] and len(list(m.buffers.items())) == 2
    extra = nn.Dense(2, in_units=4)
    extra.initialize()
    model.add(extra)
    assert list(m.params)[-2:] == ["3.weight", "3.bias"]
    model[2].weight.grad_req = "null"
    assert not dict(m.params.items())["2.weight"].trainable
    assert m.tied() == []
    model[2]._reg_params["bias"] = model[0].bias  # a tie made natively
    assert m.tied() == [("0.bias", "2.bias")]
    assert dict(m.params.items())["2.bias"].tied_with == ("0.bias",)
