"""Issue 13 on PyTorch: a first listing is one walk (``tree_and_stamp``), its
stamp is the one ``stamp()`` computes, and the listing kept under it sees
every edit of ``m.native`` (a layer added or removed, a parameter replaced,
a new tie, ``requires_grad`` switched, a buffer made non-persistent)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import unified_params as up  # noqa: E402


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.Linear(4, 4))


def names(m: up.Block) -> list[str]:
    return [*m.params, *m.buffers]


def test_one_walk_gives_the_stamp_of_stamp() -> None:
    model = net()
    h = up.wrap(model)._handle
    root, stamp = h.tree_and_stamp()  # type: ignore[attr-defined]
    assert stamp == h.stamp()
    assert [c.key for c in root.children] == ["0", "1", "2"]
    model[2].weight.requires_grad_(False)
    assert h.tree_and_stamp()[1] == h.stamp() != stamp  # type: ignore[attr-defined]


def test_first_listing_walks_once_and_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    m = up.wrap(net())
    h = type(m._handle)
    calls = {"tree": 0, "both": 0}
    tree, both = h.tree, h.tree_and_stamp

    def count(key: str, fn: object) -> object:
        def inner(self: object) -> object:
            calls[key] += 1
            return fn(self)  # type: ignore[operator]
        return inner

    monkeypatch.setattr(h, "tree", count("tree", tree))
    monkeypatch.setattr(h, "tree_and_stamp", count("both", both))
    assert len(list(m.params.items())) == 5 and len(list(m.buffers.items())) == 3
    assert calls == {"tree": 0, "both": 1}


def test_cached_listing_sees_native_edits() -> None:
    model = net()
    m = up.wrap(model)
    native = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert names(m) == native
    model.append(nn.Linear(4, 2))  # a layer added
    assert "3.weight" in m.params and list(m.params)[-2:] == ["3.weight", "3.bias"]
    del model[3]  # and removed
    assert "3.weight" not in list(m.params)
    new = nn.Parameter(torch.zeros(4, 3))
    model[0].weight = new  # a parameter replaced
    assert m.params["0.weight"].native is new and dict(m.params.items())["0.weight"].native is new
    model[0].register_parameter("extra", nn.Parameter(torch.ones(2)))  # a table edited
    assert list(m.params)[:2] == ["0.weight", "0.extra"]
    model[2].requires_grad_(False)
    assert not dict(m.params.items())["2.weight"].trainable
    model[1].register_buffer("running_var", model[1].running_var.clone(), persistent=False)
    buffers = dict(m.buffers.items())
    assert not buffers["1.running_var"]._leaf.persistent
    assert m.tied() == []
    model[2].bias = model[1].bias  # a new tie
    assert m.tied() == [("1.bias", "2.bias")]
    params = dict(m.params.items())
    assert params["2.bias"].tied_with == ("1.bias",) and params["1.bias"].tied_with == ("2.bias",)
    assert [n for n, _ in model.named_parameters(remove_duplicate=False)] == list(m.params)


def test_rewrap_lists_the_same_entries() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    first = [(n, p.shape, p.dtype) for d in (up.wrap(model).params, up.wrap(model).buffers) for n, p in d.items()]
    again = up.wrap(model)
    assert [(n, p.shape, p.dtype) for d in (again.params, again.buffers) for n, p in d.items()] == first
    assert [e[0] for e in first] == [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]


def test_wrap_and_list_leave_no_cyclic_garbage() -> None:
    import gc

    model = net()
    list(up.wrap(model).params.items())
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(3):
            m = up.wrap(model)
            assert len(names(m)) == 8 and len(list(m.params.items())) == 5
        del m
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()
