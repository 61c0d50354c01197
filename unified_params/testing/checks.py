"""The conformance checks: plain functions ``check_x(backend)``.

Each check takes a :class:`~unified_params.adapter.Backend` and asserts one
item of the contract (its section number is in the docstring) on the
backend's model zoo. Checks that need a capability declare it with
``@requires``; the pytest plugin turns a missing capability into a skip whose
reason is the flag, and nothing else into a skip. Run without pytest:
``unified_params.testing.run("torch")``.

Cross-backend numbers are checked against the NumPy reference backend, which
is always installed: the same zoo architecture initialized with the same
seed must hold bit-identical canonical values.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import unified_params as up
from unified_params._registry import require
from unified_params.adapter import Backend

__all__ = ["CHECKS", "requires", "iter_checks"]

CHECKS: list[Callable[[Backend], None]] = []

MLP_SHAPES = [(8, 4), (8,), (1, 8), (1,)]
NESTED_SHAPES = [(8, 4), (8,), (4, 8), (4,)] * 4 + [(1, 4), (1,)]
SHARED_DISTINCT = [(8, 4), (8,), (8, 8), (8,), (1, 8), (1,)]
CNN_SHAPES = [(4, 1, 3, 3), (4,), (2, 4), (2,)]
NORM_SHAPES = [(8, 4), (8,), (8,), (8,), (1, 8), (1,)]


def check(fn: Callable[[Backend], None]) -> Callable[[Backend], None]:
    CHECKS.append(fn)
    return fn


def requires(*caps: str) -> Callable[[Callable[[Backend], None]], Callable[[Backend], None]]:
    def deco(fn: Callable[[Backend], None]) -> Callable[[Backend], None]:
        fn.requires = frozenset(caps)  # type: ignore[attr-defined]
        return fn

    return deco


def iter_checks() -> Iterator[Callable[[Backend], None]]:
    return iter(CHECKS)


# -- helpers -------------------------------------------------------------------


def _x(n: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def _out(m: up.Block, x: Any) -> np.ndarray:
    return np.asarray(up.asnumpy(m(x)), dtype=np.float64)


def _shapes(d: up.ParamDict) -> list[tuple[Any, ...]]:
    return [p.shape for p in d.values()]


def _ref() -> Any:
    from unified_params.reference._backend import NumpyZoo

    return NumpyZoo()


def _snapshot(m: up.Block) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in m.state().items()}


def _assert_unchanged(m: up.Block, before: dict[str, np.ndarray]) -> None:
    after = m.state()
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"{k} changed after a failed call")


def _raises(exc: type[BaseException], fn: Callable[[], Any], *words: str) -> BaseException:
    try:
        fn()
    except exc as e:
        msg = str(e)
        assert isinstance(e, up.UnifiedParamsError), f"{type(e).__name__} is not a UnifiedParamsError"
        for w in words:
            assert w in msg, f"{w!r} not in the message {msg!r}"
        return e
    raise AssertionError(f"{exc.__name__} not raised")


def _fd_grad(m: up.Block, x: Any, name: str, idx: tuple[int, ...], eps: float = 1e-2) -> float:
    """Central finite difference of sum(m(x)) in one element of ``name``."""
    p = m.params[name]
    old = p.value
    plus, minus = old.copy(), old.copy()
    plus[idx] += eps
    minus[idx] -= eps
    p.set(plus)
    fp = _out(m, x).sum()
    p.set(minus)
    fm = _out(m, x).sum()
    p.set(old)
    return float((fp - fm) / (2 * eps))


# -- 1. names and structure ------------------------------------------------------


@check
def check_names_order_and_roles(be: Backend) -> None:
    """1.1-1.3: structural dotted names ending in a unified role, definition
    order, weight before bias, the same canonical shapes on every backend."""
    m = be.zoo().mlp()
    assert m.backend == (be.reports_as or be.name)
    names = list(m.params)
    assert _shapes(m.params) == MLP_SHAPES
    assert [m.params[n].role for n in names] == ["weight", "bias", "weight", "bias"]
    for n in names:
        assert n.endswith("." + m.params[n].role), n
    nested = be.zoo().nested()
    assert _shapes(nested.params) == NESTED_SHAPES
    cnn = be.zoo().cnn()
    assert _shapes(cnn.params) == CNN_SHAPES


@check
def check_children_and_indexing(be: Backend) -> None:
    """1.1, 1.4: sub-blocks by position and by key; relative names."""
    m = be.zoo().nested()
    kids = m.children()
    assert len(kids) >= 2
    first_key = next(iter(kids))
    b0 = m[0]
    assert b0.path == m[first_key].path
    assert list(b0.params) == list(kids[first_key].params)
    inner = list(b0.children())
    assert len(inner) == 4, inner
    prefix = f"{first_key}."
    rel = [n[len(prefix):] for n in m.params if n.startswith(prefix)]
    assert list(b0.params) == rel
    assert _shapes(b0[1].params) == [(8, 4), (8,), (4, 8), (4,)]
    assert list(m[0][1].params) == list(m[0][inner[1]].params)
    assert m[0][1].native is not None
    _raises(up.ParamNotFoundError, lambda: m[len(kids) + 5])


def node_matches_tree(handle: Any) -> int:
    """Asserts that ``handle.node(path)`` gives, for every path, the node
    ``handle.tree()`` has there (same native object, key, type and leaves)
    without building its children; returns how many nodes it compared.
    The core looks names up through ``node`` alone (issue 13), so a node that
    differs from the tree's would make ``m['a.b']`` disagree with listing."""
    seen = 0

    def leaves(node: Any) -> list[tuple[Any, ...]]:
        return [(lf.role, lf.storage, lf.native_name, lf.kind, lf.trainable, lf.layout) for lf in node.leaves]

    def visit(node: Any, path: tuple[str, ...]) -> None:
        nonlocal seen
        got = handle.node(path)
        assert got is not None and got.children == [], path
        assert got.native is node.native and got.key == node.key, path
        assert got.type_name == node.type_name, path
        assert leaves(got) == leaves(node), path
        seen += 1
        keys: set[str] = set()
        for child in node.children:
            if child.key not in keys:  # a key names its first child
                keys.add(child.key)
                visit(child, (*path, child.key))

    visit(handle.tree(), ())
    return seen


@check
def check_node_by_path_matches_the_tree(be: Backend) -> None:
    """Protocol 2 (docs/adapters.md): ``Handle.node`` agrees with ``tree``
    on every zoo model, shared and deferred ones included."""
    zoo = be.zoo()
    for make in (zoo.nested, zoo.shared, zoo.norm, zoo.cnn, zoo.lazy):
        m = make()
        if m is None:  # a backend without deferred models
            continue
        assert node_matches_tree(m._handle) > 1, make.__name__


def _shape_of_tree(node: Any) -> tuple[Any, ...]:
    return (node.key, id(node.native), node.type_name,
            [(x.role, x.native_name, x.kind, x.trainable, x.layout, x.persistent, x.rnn_bias, x.storage)
             for x in node.leaves],
            [_shape_of_tree(c) for c in node.children])


@check
def check_one_walk_gives_tree_and_stamp(be: Backend) -> None:
    """Adapter protocol (issue 13): the optional ``tree_and_stamp()`` gives
    what ``tree()`` and ``stamp()`` give, before and after an edit of the
    model (a first listing uses it, later ones trust the stamp)."""
    zoo = be.zoo()
    for make in (zoo.nested, zoo.shared, zoo.norm, zoo.cnn):
        m = make()
        both = getattr(m._handle, "tree_and_stamp", None)
        if both is None:  # optional: the core walks twice
            return
        root, stamp = both()
        assert stamp == m._handle.stamp(), f"{make.__name__}: tree_and_stamp's stamp differs from stamp()"
        assert _shape_of_tree(root) == _shape_of_tree(m._handle.tree()), \
            f"{make.__name__}: tree_and_stamp's tree differs from tree()"


@check
def check_select_distinct_and_missing_names(be: Backend) -> None:
    """1.4: select by re.fullmatch, distinct, ParamNotFoundError with close names."""
    m = be.zoo().mlp()
    biases = m.params.select(r".*\.bias")
    assert [p.role for p in biases.values()] == ["bias", "bias"]
    assert len(m.params.select(r"bias")) == 0  # fullmatch, not search
    assert list(m.params.distinct()) == list(m.params)
    first = next(iter(m.params))
    wrong = first.replace("weight", "wieght")
    e = _raises(up.ParamNotFoundError, lambda: m.params[wrong], first)
    assert isinstance(e, KeyError)
    _raises(up.ParamNotFoundError, lambda: m.params.select("(unclosed"))
    assert first in m.params and wrong not in m.params
    assert len(list(m.params.items())) == len(m.params) == len(list(m.params.values()))


# -- 2. Param ------------------------------------------------------------------------


@check
def check_param_attributes(be: Backend) -> None:
    """2.1: name, role, shape, dtype, size, trainable, native, device, tied_with."""
    m = be.zoo().mlp()
    p = m.params.select(r".*weight")[next(iter(m.params.select(r".*weight")))]
    assert p.shape == (8, 4) and p.size == 32
    assert isinstance(p.dtype, np.dtype) and p.dtype == np.float32
    assert p.trainable is True
    assert p.native is not None
    assert isinstance(p.native_name, str) and p.native_name
    assert isinstance(p.device, str) and p.device
    assert p.tied_with == ()
    assert len(p.native_shape) == 2 and sorted(p.native_shape) == [4, 8]  # type: ignore[type-var]
    assert p.name in repr(p) and p.name in repr(m.params)


@check
def check_reads_are_copies(be: Backend) -> None:
    """2.2: value and np.asarray are canonical copies; writing to them changes nothing."""
    m = be.zoo().mlp()
    x = _x()
    y0 = _out(m, x)
    for p in m.params.values():
        v = p.value
        v[...] = 123.0
        a = np.asarray(p)
        assert not np.all(a == 123.0)
        assert a.shape == p.shape
    np.testing.assert_array_equal(_out(m, x), y0)


@check
def check_writes_reach_the_forward_pass(be: Backend) -> None:
    """2.3, 6.1: set/fill/[idx]=/+= write the framework's storage in place."""
    m = be.zoo().mlp()
    x = _x()
    for p in m.params.values():
        p.fill(0)
    last_bias = list(m.params.select(r".*bias").values())[-1]
    last_bias.set(np.array([3.0], np.float32))
    np.testing.assert_allclose(_out(m, x), 3.0)
    last_bias += 1
    np.testing.assert_allclose(_out(m, x), 4.0)
    name = last_bias.name
    m.params[name] -= 0.5  # ParamDict.__setitem__ path
    np.testing.assert_allclose(_out(m, x), 3.5)
    last_bias *= 2
    last_bias /= 7
    np.testing.assert_allclose(last_bias.value, [1.0])
    w = next(iter(m.params.values()))
    w[0, 1] = 2.5
    w[1] += 1
    v = w.value
    assert v[0, 1] == 2.5 and np.all(v[1] == 1) and v.sum() == 2.5 + 4
    w.set(np.arange(32, dtype=np.float64).reshape(8, 4))  # same_kind cast float64 -> float32
    np.testing.assert_array_equal(w.value, np.arange(32, dtype=np.float32).reshape(8, 4))
    assert w.value.dtype == np.float32


@check
def check_bad_writes_change_nothing(be: Backend) -> None:
    """2.3, 10: ShapeMismatchError, DTypeError; a failed write changes nothing."""
    m = be.zoo().mlp()
    before = _snapshot(m)
    w = next(iter(m.params.values()))
    e = _raises(up.ShapeMismatchError, lambda: w.set(np.zeros((4, 8), np.float32)), "(8, 4)", "(4, 8)")
    assert isinstance(e, ValueError)
    e = _raises(up.DTypeError, lambda: w.set(np.zeros((8, 4), np.complex64)), "complex64", "float32")
    assert isinstance(e, TypeError)

    def idx_write() -> None:
        w[0] = np.zeros(3)

    _raises(up.ShapeMismatchError, idx_write)

    def iadd() -> None:
        p = next(iter(m.params.values()))
        p += np.ones((3, 3))

    _raises(up.ShapeMismatchError, iadd)
    _assert_unchanged(m, before)


# -- 2.4 deferred --------------------------------------------------------------------


@requires("deferred")
@check
def check_deferred_and_materialize(be: Backend) -> None:
    """2.4: deferred dims are None; reading or writing raises NotInitializedError
    saying to materialize; materialize makes every parameter concrete."""
    m = be.zoo().lazy()
    deferred = [p for p in m.params.values() if None in p.shape]
    assert deferred, "the lazy zoo model has no deferred parameter"
    p = deferred[0]
    assert p.size is None
    _raises(up.NotInitializedError, lambda: p.value, "materialize")
    _raises(up.NotInitializedError, lambda: p.set(np.zeros((8, 4))), "materialize")
    _raises(up.NotInitializedError, lambda: m.initialize(up.init.Ones()), "materialize")
    m.materialize(np.zeros((2, 4), np.float32))
    assert _shapes(m.params) == MLP_SHAPES
    assert all(np.isfinite(q.value).all() for q in m.params.values())
    m.initialize(up.init.Constant(0.5))
    hidden = 0.5 * 4 + 0.5  # every unit of relu(0.5 * sum(ones(4)) + 0.5)
    np.testing.assert_allclose(_out(m, np.ones((2, 4), np.float32)), 0.5 * 8 * hidden + 0.5, rtol=1e-6)


# -- 4. initialization -------------------------------------------------------------


@check
def check_builtin_initializers(be: Backend) -> None:
    """4.1, 4.2: initializers, regex mappings (unmatched keep values), sub-blocks, defaults."""
    m = be.zoo().mlp()
    m.initialize(up.init.Constant(0.25))
    assert all(np.all(p.value == 0.25) for p in m.params.values())
    m.initialize({r".*\.weight": up.init.Ones()})
    for p in m.params.values():
        assert np.all(p.value == (1.0 if p.role == "weight" else 0.25)), p.name
    m.initialize({r".*\.bias": up.init.Zeros(), r".*": up.init.Constant(7)})
    for p in m.params.values():
        assert np.all(p.value == (0.0 if p.role == "bias" else 7.0)), p.name
    m.initialize(up.init.XavierUniform(), seed=3)
    for p in m.params.select(r".*weight").values():
        fan_out, fan_in = p.shape
        assert np.abs(p.value).max() <= np.sqrt(6 / (fan_in + fan_out)) + 1e-7
    m.initialize(up.init.Normal(0.0, 0.01), seed=0)
    w = np.concatenate([p.value.ravel() for p in m.params.values()])
    assert 0.001 < w.std() < 0.1 and len(np.unique(w)) > 20
    nested = be.zoo().nested()
    nested.initialize(up.init.Zeros())
    nested[0][1].initialize(up.init.Ones())
    for n, p in nested.params.items():
        sub = nested[0][1].params
        expected = 1.0 if any(p.storage == q.storage for q in sub.values()) else 0.0
        assert np.all(p.value == expected), n
    m.initialize(up.init.Zeros())
    m.initialize(None)  # the framework's own defaults
    assert any(np.any(p.value != 0) for p in m.params.select(r".*weight").values())


@check
def check_seeds_same_numbers_as_reference(be: Backend) -> None:
    """4.4: the same seed gives bit-identical canonical values on every backend
    (compared with the NumPy reference), for built-in and custom initializers."""
    ref = _ref()
    for arch in ("mlp", "nested", "cnn"):
        for init in (up.init.Normal(0, 0.5), up.init.KaimingUniform(), up.init.TruncatedNormal(0, 1, -1, 1),
                     up.init.XavierNormal(), up.init.Orthogonal()):
            if isinstance(init, up.init.Orthogonal):
                init = {r".*weight": init, r".*": up.init.Uniform(-1, 1)}  # type: ignore[assignment]
            a, b = getattr(be.zoo(), arch)(), getattr(ref, arch)()
            a.initialize(init, seed=42)
            b.initialize(init, seed=42)
            sa, sb = a.state(), b.state()
            assert [v.shape for v in sa.values()] == [v.shape for v in sb.values()]
            for (na, va), (nb, vb) in zip(sa.items(), sb.items()):
                np.testing.assert_array_equal(va, vb, err_msg=f"{arch} {init!r}: {na} vs reference {nb}")
    a, b = be.zoo().mlp(), be.zoo().mlp()
    a.initialize(up.init.Normal(), seed=1)
    b.initialize(up.init.Normal(), seed=2)
    assert not np.array_equal(next(iter(a.params.values())).value, next(iter(b.params.values())).value)
    seen: list[tuple[Any, ...]] = []

    def custom(shape: tuple[int, ...], rng: np.random.Generator, param: up.Param) -> np.ndarray:
        seen.append((shape, param.role))
        assert isinstance(rng, np.random.Generator)
        return rng.uniform(-10, 10, shape) * (np.abs(rng.uniform(-10, 10, shape)) >= 5)

    c, r = be.zoo().mlp(), ref.mlp()
    c.initialize(custom, seed=5)
    r.initialize(custom, seed=5)
    assert seen[:4] == [((8, 4), "weight"), ((8,), "bias"), ((1, 8), "weight"), ((1,), "bias")]
    for va, vb in zip(c.state().values(), r.state().values()):
        np.testing.assert_array_equal(va, vb)


@check
def check_failed_custom_initializer_changes_nothing(be: Backend) -> None:
    """4.3, 10: an initializer that fails or returns a wrong shape changes nothing."""
    m = be.zoo().mlp()
    before = _snapshot(m)
    calls = []

    def bad(shape: tuple[int, ...], rng: np.random.Generator, param: up.Param) -> np.ndarray:
        calls.append(shape)
        if len(calls) == 3:
            return np.zeros((5, 5))
        return np.ones(shape)

    _raises(up.ShapeMismatchError, lambda: m.initialize(bad))
    _assert_unchanged(m, before)


# -- 5. ties ----------------------------------------------------------------------


@requires("tie")
@check
def check_shared_layer_is_a_tie(be: Backend) -> None:
    """5.1, 5.3: a reused module is one storage under several names."""
    m = be.zoo().shared()
    groups = m.tied()
    assert len(groups) == 2 and all(len(g) == 2 for g in groups), groups
    assert _shapes(m.params.distinct()) == SHARED_DISTINCT
    assert len(m.params) == len(m.params.distinct()) + 2
    a, b = groups[0]
    assert m.params[a].tied_with == (b,) and m.params[b].tied_with == (a,)
    assert list(m.params.distinct())[2] == a  # first name of the storage
    pa, pb = m.params[a], m.params[b]
    pa[0, 0] = 100.0
    assert pb.value[0, 0] == 100.0
    pb.set(np.full(pb.shape, 0.5, np.float32))
    assert np.all(pa.value == 0.5)
    st = m.state()
    assert st[a] is st[b]


def _untied_reference(arch: str) -> up.Block:
    from unified_params import reference as ref

    if arch == "shared":
        return up.wrap(ref.Sequential(ref.Dense(8, in_units=4), ref.ReLU(), ref.Dense(8, in_units=8), ref.ReLU(),
                                      ref.Dense(8, in_units=8), ref.ReLU(), ref.Dense(1, in_units=8)))
    return getattr(_ref(), arch)()  # type: ignore[no-any-return]


def _check_tied_gradient(m: up.Block, arch: str, x: np.ndarray) -> None:
    """The tied storage's gradient equals the sum of the gradients of its
    uses in an untied copy (the NumPy reference, same values)."""
    m.zero_grad()
    loss = m.backward(x)
    np.testing.assert_allclose(loss, _out(m, x).sum(), rtol=1e-5, atol=1e-5)
    untied = _untied_reference(arch)
    names, ref_names = list(m.params), list(untied.params)
    assert len(names) == len(ref_names)
    untied.load_state({r: m.params[n].value for n, r in zip(names, ref_names)})
    ref_loss = untied.backward(x)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for group in m.tied():
        expected = sum(untied.params[ref_names[names.index(n)]].grad for n in group)  # type: ignore[misc]
        for n in group:
            g = m.params[n].grad
            assert g is not None and g.shape == m.params[n].shape
            np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-5, err_msg=f"gradient of tied {n}")
    for n, r in zip(names, ref_names):
        if not m.params[n].tied_with:
            np.testing.assert_allclose(m.params[n].grad, untied.params[r].grad, rtol=1e-4, atol=1e-5, err_msg=n)


@requires("tie", "grad")
@check
def check_tied_gradient_is_sum_of_uses(be: Backend) -> None:
    """5.2, 6.2: the gradient of a shared storage sums its uses (finite differences)."""
    m = be.zoo().shared()
    m.initialize(up.init.Uniform(-1, 1), seed=7)
    _check_tied_gradient(m, "shared", _x(5))


@requires("tie", "grad")
@check
def check_block_tie(be: Backend) -> None:
    """5.2: m.tie(target, source) shares storage for real: writes are seen
    through both names, the forward uses one storage, gradients add up."""
    m = be.zoo().nested()
    m.initialize(up.init.Uniform(-1, 1), seed=11)
    b2 = m[0]
    keys = list(b2.children())
    b2.tie(keys[1], keys[0])
    groups = m.tied()
    assert len(groups) == 4, groups
    src = list(b2[0].params.values())[0]
    tgt = list(b2[1].params.values())[0]
    assert src.storage == tgt.storage
    tgt[0, 0] = 42.0
    assert src.value[0, 0] == 42.0
    np.testing.assert_array_equal(b2[0].params[list(b2[0].params)[0]].value, tgt.value)
    assert len(m.params.distinct()) == len(m.params) - 4
    src.set(np.random.default_rng(0).uniform(-1, 1, src.shape).astype(np.float32))
    _check_tied_gradient(m, "nested", _x(4))
    # prefixed names work from the root as well
    m2 = be.zoo().nested()
    k0 = list(m2.children())[0]
    names = list(m2[0].children())
    m2.tie(f"{k0}.{names[3]}", f"{k0}.{names[2]}")
    assert len(m2.tied()) == 4


@requires("tie")
@check
def check_bad_ties_change_nothing(be: Backend) -> None:
    """5.2, 10: self, ancestor, descendant, mismatched shapes, already tied -> TieError."""
    m = be.zoo().nested()
    before = _snapshot(m)
    k0 = list(m.children())[0]
    head = list(m.children())[-1]
    inner = list(m[0].children())
    a = f"{k0}.{inner[0]}"
    _raises(up.TieError, lambda: m.tie(a, a))
    _raises(up.TieError, lambda: m.tie(a, k0), "ancestor")
    _raises(up.TieError, lambda: m.tie(k0, a), "descendant")
    _raises(up.TieError, lambda: m.tie(head, a))
    w0 = list(m[0][0].params)[0]
    w0_full = f"{a}.{w0}"
    head_w = [n for n in m.params if n.startswith(head + ".")][0]
    _raises(up.TieError, lambda: m.tie(head_w, w0_full), "shape")
    _raises(up.TieError, lambda: m.tie("no such block", a), "no such block")
    assert m.tied() == []
    _assert_unchanged(m, before)
    m.tie(f"{k0}.{inner[1]}", a)
    _raises(up.TieError, lambda: m.tie(a, f"{k0}.{inner[1]}"), "already")


# -- 6. forward and gradients ------------------------------------------------------


@requires("grad")
@check
def check_backward_and_grads(be: Backend) -> None:
    """6.2: backward returns the loss, grads are canonical and match finite
    differences; they add up over calls; a custom loss; zero_grad clears them."""
    m = be.zoo().mlp()
    m.initialize(up.init.Uniform(-1, 1), seed=3)
    for p in m.params.values():
        assert p.grad is None
    x = _x(6)
    loss = m.backward(x)
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, _out(m, x).sum(), rtol=1e-5)
    w = next(iter(m.params))
    for idx in [(0, 0), (3, 2), (7, 3)]:
        np.testing.assert_allclose(m.params[w].grad[idx], _fd_grad(m, x, w, idx), rtol=2e-2, atol=2e-3)  # type: ignore[index]
    bias = list(m.params)[-1]
    np.testing.assert_allclose(m.params[bias].grad, [6.0], rtol=1e-6)  # d sum / d last bias = batch size
    first = {n: p.grad for n, p in m.params.items()}
    m.backward(x)  # gradients add up until zero_grad, as in PyTorch
    for n, p in m.params.items():
        np.testing.assert_allclose(p.grad, 2 * first[n], rtol=1e-5, atol=1e-6, err_msg=f"{n} accumulates")
    m.zero_grad()
    for p in m.params.values():
        assert p.grad is None or not np.any(p.grad)
    loss2 = m.backward(x, loss=lambda y: (y * y).mean())
    np.testing.assert_allclose(loss2, (_out(m, x) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(m.params[bias].grad, [2 * _out(m, x).mean()], rtol=1e-4, atol=1e-6)


# -- 7. state, files, ports -------------------------------------------------------


@check
def check_state_roundtrip_and_views(be: Backend) -> None:
    """7.1, 7.2: state copies, read-only views, load_state round trip and report."""
    m = be.zoo().mlp()
    st = m.state()
    assert list(st) == list(m.params) + list(m.buffers)
    st[next(iter(st))][...] = 99
    assert not np.all(next(iter(m.params.values())).value == 99)
    views = m.state(copy=False)
    for v in views.values():
        assert not v.flags.writeable
    m2 = be.zoo().mlp()
    m2.initialize(up.init.Normal(), seed=9)
    rep = m.load_state(m2.state())
    assert rep.missing == [] and rep.unexpected == [] and rep.mismatched == []
    for k, v in m2.state().items():
        np.testing.assert_array_equal(m.state()[k], v)
    np.testing.assert_array_equal(_out(m, _x()), _out(m2, _x()))


@check
def check_batched_calls_agree_with_one_storage_calls(be: Backend) -> None:
    """Adapter protocol (issue 13): ``shapes_dtypes_many``, ``read_many``,
    ``write_many``, ``snapshot_many``/``restore_many`` behave as loops over
    ``shape``/``dtype``, ``read``,
    ``write``, ``snapshot``/``restore``: the same values, in order, bit-exact,
    whichever of them the adapter overrides."""
    m = be.zoo().nested()
    m.initialize(up.init.Normal(), seed=21)
    h = m._handle
    leaves = [p._leaf for p in m._all().distinct().values()]
    one = [np.array(h.read(leaf, copy=True)) for leaf in leaves]
    shapes, dtypes = h.shapes_dtypes_many(leaves)
    assert list(shapes) == [h.shape(leaf) for leaf in leaves] and list(dtypes) == [h.dtype(leaf) for leaf in leaves], \
        "shapes_dtypes_many differs from shape and dtype"
    for copy in (True, False):
        many = h.read_many(leaves, copy=copy)
        assert len(many) == len(leaves), f"read_many(copy={copy}) gave {len(many)} values for {len(leaves)} leaves"
        for leaf, a, b in zip(leaves, many, one):
            a = np.asarray(a)
            assert a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes(), \
                f"read_many(copy={copy}) differs from read for {leaf.native_name!r}"
    snaps = h.snapshot_many(leaves)
    assert len(snaps) == len(leaves)
    new = [(np.arange(v.size, dtype=np.float64).reshape(v.shape) * 0.5 - k).astype(v.dtype)
           for k, v in enumerate(one)]
    h.write_many(list(zip(leaves, new)))
    for leaf, v in zip(leaves, new):
        assert np.asarray(h.read(leaf, copy=True)).tobytes() == v.tobytes(), \
            f"write_many did not write {leaf.native_name!r}"
    h.write_many([(leaf, v.copy()) for leaf, v in zip(leaves, one)], owned=True)
    for leaf, v in zip(leaves, one):
        assert np.asarray(h.read(leaf, copy=True)).tobytes() == v.tobytes(), \
            f"write_many(owned=True) did not write {leaf.native_name!r}"
    h.write_many(list(zip(leaves, new)))
    kept = [(leaf, s) for leaf, s in zip(leaves, snaps) if s is not None]
    if kept:
        h.restore_many(kept)
    for leaf, s, v in zip(leaves, snaps, one):
        if s is not None:
            assert np.asarray(h.read(leaf, copy=True)).tobytes() == v.tobytes(), \
                f"restore_many did not put back {leaf.native_name!r}"


@requires("zero_copy")
@check
def check_zero_copy_views(be: Backend) -> None:
    """7.1: state(copy=False) returns views of the framework's host memory
    (two calls share memory), read-only; state() returns fresh copies."""
    m = be.zoo().mlp()
    a, b = m.state(copy=False), m.state(copy=False)
    for n in a:
        assert np.shares_memory(a[n], b[n]), f"{n}: state(copy=False) copied"
        assert not a[n].flags.writeable
    c = m.state()
    for n in a:
        assert not np.shares_memory(c[n], a[n]), f"{n}: state() did not copy"


@check
def check_strict_load_failures_change_nothing(be: Backend) -> None:
    """7.2, 10: strict loads with missing, unexpected or mismatched entries
    raise StateError and change nothing; non-strict loads write what matches."""
    m = be.zoo().mlp()
    before = _snapshot(m)
    names = list(before)
    good = {k: np.full_like(v, 0.5) for k, v in before.items()}
    missing = dict(good)
    del missing[names[0]]
    e = _raises(up.StateError, lambda: m.load_state(missing), names[0])
    assert e.report.missing == [names[0]]  # type: ignore[attr-defined]
    _raises(up.StateError, lambda: m.load_state({**good, "nope.weight": np.zeros(3)}), "nope.weight")
    bad_shape = {**good, names[0]: np.zeros((3, 3), np.float32)}
    e = _raises(up.StateError, lambda: m.load_state(bad_shape), names[0])
    assert e.report.mismatched[0][0] == names[0]  # type: ignore[attr-defined]
    _raises(up.DTypeError, lambda: m.load_state({**good, names[1]: np.zeros(8, np.complex64)}))
    _assert_unchanged(m, before)
    rep = m.load_state(bad_shape, strict=False)
    assert rep.mismatched and rep.mismatched[0][0] == names[0]
    np.testing.assert_array_equal(m.state()[names[0]], before[names[0]])
    np.testing.assert_array_equal(m.state()[names[1]], good[names[1]])


@requires("tie")
@check
def check_state_of_ties(be: Backend) -> None:
    """7.2: one name of a tied group suffices; conflicting values raise."""
    m = be.zoo().shared()
    st = {k: v.copy() for k, v in m.state().items()}
    a, b = m.tied()[0]
    del st[b]
    st[a][...] = 0.125
    m.load_state(st)
    assert np.all(m.params[b].value == 0.125)
    st2 = {k: v.copy() for k, v in m.state().items()}
    st2[b] = st2[b] + 1
    before = _snapshot(m)
    _raises(up.StateError, lambda: m.load_state(st2), a, b)
    _assert_unchanged(m, before)


@check
def check_save_load_file(be: Backend) -> None:
    """7.3: safetensors file, each storage once, metadata, ties, atomic save."""
    safe_open = require("safetensors", "files", "to check that a saved file is plain safetensors").safe_open

    for arch in ("mlp", "shared") if "tie" in be.capabilities else ("mlp",):
        m = getattr(be.zoo(), arch)()
        m.initialize(up.init.Normal(0, 1), seed=4)
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "m.safetensors")
            up.save(m, f)
            with safe_open(f, framework="numpy") as fh:
                keys = list(fh.keys())
                meta = fh.metadata()
            assert sorted(keys) == sorted(m.params.distinct()) + sorted(
                n for n in m.buffers.distinct())
            assert meta["backend"] == m.backend and meta["format"] == "unified_params"
            assert [f for f in os.listdir(d)] == ["m.safetensors"]  # no temporary left
            m2 = getattr(be.zoo(), arch)()
            m2.initialize(up.init.Zeros())
            rep = up.load(m2, f)
            assert rep.ok
            for k, v in m.state().items():
                np.testing.assert_array_equal(m2.state()[k], v)
            if m.tied():
                a, b = m2.tied()[0]
                m2.params[a][0, 0] = 5
                assert m2.params[b].value[0, 0] == 5  # still a tie after load


@check
def check_port_from_and_to_reference(be: Backend) -> None:
    """7.4: port to and from the NumPy reference by order and shape, same outputs."""
    ref = _ref()
    for arch in ("mlp", "nested", "cnn"):
        src = getattr(ref, arch)()
        src.initialize(up.init.Uniform(-1, 1), seed=21)
        dst = getattr(be.zoo(), arch)()
        rep = up.port(src, dst)
        assert len(rep.pairs) == len(src.params.distinct())
        if arch == "cnn":
            x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
            y_ref, y = _out(src, x), _out(dst, be.zoo().cnn_input(x))
        else:
            x = _x()
            y_ref, y = _out(src, x), _out(dst, x)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5, err_msg=arch)
        back = getattr(ref, arch)()
        up.port(dst, back)
        for va, vb in zip(back.state().values(), src.state().values()):
            np.testing.assert_array_equal(va, vb)
    before = _snapshot(be.zoo().mlp())
    dst = be.zoo().mlp()
    dst.load_state(before)
    _raises(up.PortError, lambda: up.port(ref.cnn(), dst))
    _raises(up.PortError, lambda: up.port(ref.nested(), dst))
    _assert_unchanged(dst, before)


@requires("buffers")
@check
def check_buffers_and_running_stats(be: Backend) -> None:
    """1.2, 7.1, 7.4: running statistics are buffers with unified roles, in
    state, used by the forward pass, and ported."""
    m = be.zoo().norm()
    assert _shapes(m.params) == NORM_SHAPES
    roles = [p.role for p in m.buffers.values()]
    assert roles[:2] == ["running_mean", "running_var"], roles
    assert all(n in m.state() for n in m.buffers)
    ref = _ref().norm()
    ref.initialize(up.init.Uniform(0.5, 1.5), seed=2)
    rng = np.random.default_rng(3)
    rs = list(ref.buffers.values())
    rs[0].set(rng.uniform(-1, 1, 8).astype(np.float32))
    rs[1].set(rng.uniform(0.5, 2, 8).astype(np.float32))
    up.port(ref, m)
    for a, b in zip(list(m.buffers.values())[:2], rs):
        np.testing.assert_array_equal(a.value, b.value)
    x = _x()
    np.testing.assert_allclose(_out(m, x), _out(ref, x), rtol=1e-4, atol=1e-5)


# -- 8. reporting, 9. backends --------------------------------------------------------


@check
def check_print_and_summary(be: Backend) -> None:
    """8.1: the tree shows blocks, names and shapes; the summary counts distinct storages once."""
    m = be.zoo().mlp()
    text = repr(m)
    assert "(8, 4)" in text and "weight" in text and "bias" in text
    s = m.summary()
    assert [r["name"] for r in s.rows] == list(m.params) + list(m.buffers)
    assert s.total == 8 * 4 + 8 + 8 + 1
    assert all(col in str(s) for col in ("name", "shape", "dtype", "count", "device", "tied_with"))
    if "tie" in be.capabilities:
        sh = be.zoo().shared().summary()
        assert sh.total == 4 * 8 + 8 + 8 * 8 + 8 + 8 + 1
        assert any(r["tied_with"] for r in sh.rows)


@check
def check_detection_and_registry(be: Backend) -> None:
    """9.1-9.3: the backend is listed with its version and detected from the model."""
    m = be.zoo().mlp()
    assert up.wrap(m.native).backend == m.backend
    assert be.name in up.backends()
    assert isinstance(be.version(), str) and re.match(r"\d", be.version())
    e = _raises(up.UnsupportedModelError, lambda: up.wrap(object()), "numpy")
    assert isinstance(e, TypeError)


@check
def check_threads(be: Backend) -> None:
    """14.1: calls on one model from several threads: no update lost, no
    reader sees half of a load."""
    import threading

    m = be.zoo().mlp()
    bias = m.params.distinct()[list(m.params.distinct())[1]]
    bias.fill(0)

    def add() -> None:
        for _ in range(25):
            bias.__iadd__(1)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(bias.value, np.full(bias.shape, 100.0, dtype=bias.dtype))

    state = m.state()
    zeros = {k: np.zeros_like(v) for k, v in state.items()}
    ones = {k: np.ones_like(v) for k, v in state.items()}
    m.load_state(zeros)
    seen: list[bool] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            s = m.state()
            firsts = {float(np.asarray(v).reshape(-1)[0]) for v in s.values()}
            seen.append(len(firsts) == 1 and all(np.all(v == next(iter(firsts))) for v in s.values()))

    r = threading.Thread(target=reader)
    r.start()
    for i in range(20):
        m.load_state(ones if i % 2 == 0 else zeros)
    stop.set()
    r.join()
    assert seen and all(seen), "a reader saw a state mixing two loads"
