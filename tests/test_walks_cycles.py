"""Issue 13: wrapping and listing a model leaves no cyclic garbage (the
listing cached on the handle refers to its ParamDicts weakly, so Params,
which refer to the handle, make no cycle), while a Block that is listed
again reuses its Params, and an edit of the model is still seen."""

from __future__ import annotations

import gc

import unified_params as up
from unified_params import reference as ref
from unified_params.reference._kit import Parameter


def big(n: int) -> ref.Sequential:
    return ref.Sequential(*[ref.Dense(2, in_units=2) for _ in range(n)])


def listing(m: up.Block) -> list[tuple[str, object, object]]:
    return [(n, p.shape, p.dtype) for d in (m.params, m.buffers) for n, p in d.items()]


def _garbage_per_wrap(n: int) -> int:
    net = big(n)
    listing(up.wrap(net))
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        assert len(listing(up.wrap(net))) == 2 * n
        return gc.collect()
    finally:
        if was:
            gc.enable()


def test_wrap_and_list_leave_no_cyclic_garbage_per_parameter() -> None:
    # The reference handle's recursive walk (a closure) is a few objects of
    # cyclic garbage per walk, whatever the model's size; Params, Leaves and
    # ParamDicts are none.
    small, large = _garbage_per_wrap(20), _garbage_per_wrap(200)
    assert small == large < 10


def test_a_block_listed_again_reuses_its_params_and_sees_edits() -> None:
    net = big(3)
    m = up.wrap(net)
    first = dict(m.params.items())
    again = dict(m.params.items())
    assert all(again[n] is p for n, p in first.items())
    net[0].weight = Parameter((2, 2))  # a new storage: a new listing, new Params
    third = dict(m.params.items())
    assert third["0.weight"].native is net[0].weight and third["0.weight"] is not first["0.weight"]
    net[2]._params["weight"] = net[1].weight  # a native tie
    assert dict(m.params.items())["2.weight"].tied_with == ("1.weight",)
