"""The catalogue of bad inputs (README "Errors and safety"), on every installed
backend: each is answered by a contract error whose message says what was
expected, what was received and what to do, and leaves the model unchanged
(its whole ``state()`` compared bit for bit before and after).

Each test is parametrized over the installed backends (``numpy`` always), and
uses that backend's conformance zoo, so the same catalogue runs in every tox
environment. The only skips are capability flags a backend does not declare.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import _registry
from unified_params import reference as ref

BACKENDS = _registry.names()


@pytest.fixture(params=BACKENDS)
def be(request: pytest.FixtureRequest) -> Any:
    """The backend under test (an import failure is an error, not a skip)."""
    return _registry.get_backend(request.param)


def _having(cap: str) -> list[str]:
    """The backends declaring ``cap``: a check of a capability runs on them
    (parametrized, never skipped); what the others declare is tested too."""
    return [n for n in BACKENDS if cap in _registry.get_backend(n).capabilities]


def _snapshot(m: up.Block) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in m.state().items()}


def _assert_unchanged(m: up.Block, before: dict[str, np.ndarray]) -> None:
    after = m.state()
    assert list(after) == list(before), "the names changed after a failed call"
    for k, v in before.items():
        a = np.asarray(after[k])
        assert a.shape == v.shape and a.dtype == v.dtype, k
        assert a.tobytes() == v.tobytes(), f"{k} changed after a failed call"


def _contract(exc: type[up.UnifiedParamsError], fn: Callable[[], Any], *words: str) -> up.UnifiedParamsError:
    """Run ``fn``; it must raise ``exc``, a UnifiedParamsError saying what was
    expected, what was received and what to do, and mentioning ``words``."""
    with pytest.raises(exc) as info:
        fn()
    e = info.value
    assert isinstance(e, up.UnifiedParamsError), f"{type(e).__name__} is not a contract error"
    msg = str(e)
    assert e.expected and e.received and e.todo, f"the message lacks a part: {msg!r}"
    assert "Received:" in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in the message {msg!r}"
    return e


def _mlp(be: Any) -> up.Block:
    m = be.zoo().mlp()
    m.initialize(up.init.Normal(0.0, 1.0), seed=1)
    return m


def _weight(m: up.Block) -> up.Param:
    return next(p for p in m.params.values() if len(p.shape) == 2)


# -- unsupported objects and backends ----------------------------------------------


def test_unsupported_object(be: Any) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    native_param = _weight(m).native
    for obj in (object(), np.zeros((2, 2)), native_param, "model.safetensors"):
        e = _contract(up.UnsupportedModelError, lambda o=obj: up.wrap(o), "installed backends", "numpy")
        assert isinstance(e, TypeError)
    _contract(up.UnsupportedModelError, lambda: up.port(m, object()))
    _contract(up.UnsupportedModelError, lambda: up.port(object(), m))
    _assert_unchanged(m, before)


def test_uninstalled_backend_says_how_to_install(be: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    if be.name == "numpy":  # built in, so never missing: a stand-in for a framework's model
        native, fw = type("Linear", (), {"__module__": "torch.nn.modules.linear"})(), "torch"
    else:
        native, fw = m.native, (getattr(be, "reports_as", None) or be.name)
    monkeypatch.setattr(_registry, "_entry_points", {})
    monkeypatch.setattr(_registry, "_type_cache", {})
    e = _contract(up.BackendNotInstalledError, lambda: up.wrap(native), f"pip install unified-params-{fw}")
    assert isinstance(e, ImportError)
    _contract(up.BackendNotInstalledError, lambda: _registry.get_backend("nosuch"), "pip install")
    monkeypatch.undo()
    _assert_unchanged(m, before)


# -- names -----------------------------------------------------------------------


def test_misspelled_names_list_the_closest(be: Any) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    name = _weight(m).name
    typo = name[:-2] + name[-1] + name[-2]  # "...weigth"
    e = _contract(up.ParamNotFoundError, lambda: m.params[typo], repr(name), repr(typo))
    assert isinstance(e, KeyError) and str(e).startswith("Expected: the name")  # not KeyError's quoted repr
    _contract(up.ParamNotFoundError, lambda: m.params.__setitem__(typo, 0.0), repr(name))
    key = next(iter(m.children()))
    _contract(up.ParamNotFoundError, lambda: m[key + "x"], repr(key))
    _contract(up.ParamNotFoundError, lambda: m[len(m) + 3], "range")
    _contract(up.TieError, lambda: m.tie(typo, name), repr(name))
    _assert_unchanged(m, before)


def test_select_with_an_invalid_regex(be: Any) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    for bad in ("(", "[a-", "*weight", "a{2,1}"):
        _contract(up.ParamNotFoundError, lambda b=bad: m.params.select(b), repr(bad))
    _contract(up.ParamNotFoundError, lambda: m.initialize({"(": up.init.Zeros()}, seed=0), "'('")
    _assert_unchanged(m, before)


# -- shapes ------------------------------------------------------------------------


def test_shape_mismatch_in_set_and_item_writes(be: Any) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    p = _weight(m)
    rows, cols = p.shape
    _contract(up.ShapeMismatchError, lambda: p.set(np.zeros((rows + 1, cols))), str(p.shape), str((rows + 1, cols)))
    _contract(up.ShapeMismatchError, lambda: p.set(np.zeros((cols, rows)) if rows != cols else np.zeros(rows)))
    _contract(up.ShapeMismatchError, lambda: m.params.__setitem__(p.name, np.zeros(3)), p.name)

    def item(idx: Any, v: Any) -> None:
        p[idx] = v

    _contract(up.ShapeMismatchError, lambda: item(0, np.zeros(cols + 1)), p.name)
    _contract(up.ShapeMismatchError, lambda: item(rows, 1.0), p.name)  # index out of range
    _contract(up.ShapeMismatchError, lambda: item((slice(None), slice(0, 1)), np.zeros((rows + 1, 1))))
    with pytest.raises(up.ShapeMismatchError):
        p += np.ones((rows + 1, cols))
    assert isinstance(pytest.raises(up.ShapeMismatchError, lambda: item(0, np.zeros(99))).value, ValueError)
    _assert_unchanged(m, before)


def test_shape_mismatch_in_load_state(be: Any) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    p = _weight(m)
    state = {k: v + 1 for k, v in before.items()}  # every other value would change
    state[p.name] = np.zeros(p.shape[::-1] + (1,), p.dtype)
    e = _contract(up.StateError, lambda: m.load_state(state), p.name, "mismatched", "strict=False")
    assert e.report.mismatched[0][0] == p.name  # type: ignore[attr-defined]
    _assert_unchanged(m, before)


def test_shape_mismatch_in_load(be: Any, tmp_path: Any) -> None:
    from safetensors.numpy import save_file

    m = _mlp(be)
    before = _snapshot(m)
    p = _weight(m)
    state = {k: np.ascontiguousarray(v + 1) for k, v in before.items()}
    state[p.name] = np.zeros((p.shape[0] + 2, p.shape[1]), p.dtype)
    save_file(state, str(tmp_path / "bad.safetensors"))
    _contract(up.StateError, lambda: up.load(m, tmp_path / "bad.safetensors"), p.name, "expected")
    _assert_unchanged(m, before)


def test_shape_mismatch_in_port(be: Any) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    wider = up.wrap(ref.Sequential(ref.Dense(9, in_units=4), ref.ReLU(), ref.Dense(1, in_units=9)))
    wider_before = _snapshot(wider)
    _contract(up.PortError, lambda: up.port(wider, m), "(9, 4)", "(8, 4)")
    _contract(up.PortError, lambda: up.port(m, wider), "(9, 4)", "(8, 4)")
    shorter = up.wrap(ref.Sequential(ref.Dense(8, in_units=4)))
    _contract(up.PortError, lambda: up.port(shorter, m), "number")
    _assert_unchanged(m, before)
    _assert_unchanged(wider, wider_before)


def test_shape_mismatch_in_tie(be: Any) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    names = list(m.params)
    w0, w1 = [n for n in names if m.params[n].role == "weight"][:2]
    _contract(up.TieError, lambda: m.tie(w1, w0), "shape", repr(w1))
    blocks = [n.rsplit(".", 1)[0] for n in (w0, w1)]
    _contract(up.TieError, lambda: m.tie(blocks[1], blocks[0]), "shape")
    assert m.tied() == []
    _assert_unchanged(m, before)


# -- dtypes ------------------------------------------------------------------------


def test_complex_into_float_is_refused(be: Any) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    p = _weight(m)
    z = np.zeros(p.shape, np.complex64)
    _contract(up.DTypeError, lambda: p.set(z), "complex64", str(p.dtype), "astype")
    _contract(up.DTypeError, lambda: p.__setitem__(0, 1j), "complex")
    with pytest.raises(up.DTypeError):
        p += 1j
    state = dict(before)
    state[p.name] = z
    e = _contract(up.DTypeError, lambda: m.load_state(state), "complex")
    assert isinstance(e, TypeError)
    _assert_unchanged(m, before)


def _native_int_model(name: str) -> Any:
    """A small native model holding an integer storage (a counter), built in
    the framework itself; ``None`` for the backends whose zoo has one or that
    use the kit."""
    if name == "tensorflow":
        import keras

        class Counted(keras.layers.Layer):
            def build(self, shape: Any) -> None:
                self.count = self.add_weight(shape=(3,), dtype="int32", initializer="zeros", trainable=False,
                                             name="count")

            def call(self, x: Any) -> Any:
                return x

        net = keras.Sequential([keras.layers.Dense(3), Counted()])
        net.build((None, 2))
        return net
    if name == "jax":
        import jax
        import jax.numpy as jnp
        from flax import linen

        class LinenCounted(linen.Module):
            @linen.compact
            def __call__(self, x: Any) -> Any:
                self.variable("batch_stats", "count", lambda: jnp.zeros((3,), jnp.int32))
                return linen.Dense(3)(x)

        mod = LinenCounted()
        return up.wrap(mod, mod.init(jax.random.key(0), jnp.zeros((1, 2))))
    if name == "jax-nnx":
        import jax.numpy as jnp
        from flax import nnx

        class NnxCounted(nnx.Module):
            def __init__(self) -> None:
                self.dense = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
                self.count = nnx.BatchStat(jnp.zeros((3,), jnp.int32))

            def __call__(self, x: Any) -> Any:
                return self.dense(x)

        return NnxCounted()
    if name == "mxnet":
        from mxnet.gluon import nn

        class GluonCounted(nn.Block):
            def __init__(self) -> None:
                super().__init__()
                self.dense = nn.Dense(3, in_units=2)
                self.count = self.params.get("count", shape=(3,), dtype="int32", grad_req="null", init="zeros")

            def forward(self, x: Any) -> Any:
                return self.dense(x)

        net = GluonCounted()
        net.initialize()
        return net
    return None


def _int_buffer_model(be: Any) -> tuple[up.Block, up.Param]:
    """An integer storage on the backend: the zoo's norm model where it holds
    one (PyTorch's ``num_batches_tracked``), a native counter, or the kit's."""
    candidates = []
    if "buffers" in be.capabilities:
        candidates.append(be.zoo().norm())
    native = _native_int_model(be.name)
    if native is not None:
        candidates.append(native if isinstance(native, up.Block) else up.wrap(native))
    for m in candidates:
        ints = [p for p in {**m.params, **m.buffers}.values() if np.issubdtype(p.dtype, np.integer)]
        if ints:
            return m, ints[0]
    assert be.name == "numpy", f"no integer storage built for backend {be.name!r}"
    layer = ref.Dense(3, in_units=2)
    layer.register_buffer("count", ref.Parameter((3,), np.int64))
    m = up.wrap(ref.Sequential(layer))
    return m, m.buffers["0.count"]


def test_nan_into_an_integer_buffer_is_refused(be: Any) -> None:
    m, p = _int_buffer_model(be)
    assert m.backend == (getattr(be, "reports_as", None) or be.name)
    p.set(np.full(p.shape, 7))
    before = _snapshot(m)
    nan = np.full(p.shape, np.nan)
    _contract(up.DTypeError, lambda: p.set(nan), p.name)
    _contract(up.DTypeError, lambda: p.fill(np.inf), p.name)
    _contract(up.DTypeError, lambda: p.set(np.full(p.shape, 2.5)), "same_kind")
    state = dict(before)
    state[p.name] = nan
    _contract(up.DTypeError, lambda: m.load_state(state))
    _assert_unchanged(m, before)


# -- deferred parameters ------------------------------------------------------------


def test_backends_without_deferred_have_only_concrete_models() -> None:
    """A backend that does not declare ``deferred`` (NNX: modules are built
    with their shapes) has no lazy zoo model and no deferred parameter."""
    for name in sorted(set(BACKENDS) - set(_having("deferred"))):
        zoo = _registry.get_backend(name).zoo()
        assert zoo.lazy() is None, name
        assert not any(p.deferred for m in (zoo.mlp(), zoo.nested(), zoo.cnn()) for p in m.params.values()), name


@pytest.mark.parametrize("be", _having("deferred"), indirect=True)
def test_deferred_parameters_refuse_reads_and_writes(be: Any, tmp_path: Any) -> None:
    m = be.zoo().lazy()
    p = next(q for q in m.params.values() if q.deferred)
    shapes = {n: q.shape for n, q in m.params.items()}
    todo = "m.materialize(x)"
    _contract(up.NotInitializedError, lambda: p.value, todo)
    _contract(up.NotInitializedError, lambda: np.asarray(p), todo)
    _contract(up.NotInitializedError, lambda: p.set(np.zeros((8, 4))), todo)
    _contract(up.NotInitializedError, lambda: p.fill(1.0), todo)
    _contract(up.NotInitializedError, lambda: p.__setitem__(0, 1.0), todo)
    _contract(up.NotInitializedError, lambda: m.state(), todo)
    _contract(up.NotInitializedError, lambda: m.initialize(up.init.Zeros(), seed=0), todo)
    full = be.zoo().mlp().state()
    _contract(up.NotInitializedError, lambda: m.load_state(full), todo)
    _contract(up.NotInitializedError, lambda: up.save(m, tmp_path / "lazy.safetensors"), todo)
    assert not (tmp_path / "lazy.safetensors").exists() and not os.listdir(tmp_path)
    _contract(up.PortError, lambda: up.port(be.zoo().mlp(), m), "materialize")
    assert {n: q.shape for n, q in m.params.items()} == shapes
    m.materialize(np.zeros((2, 4), np.float32))
    assert [q.shape for q in m.params.values()] == [(8, 4), (8,), (1, 8), (1,)]


# -- ties ------------------------------------------------------------------------------


def _nested_keys(m: up.Block) -> tuple[str, list[str]]:
    outer = next(iter(m.children()))
    return outer, [f"{outer}.{k}" for k in m[outer].children()]


def test_tie_to_itself_ancestor_or_descendant(be: Any) -> None:
    m = be.zoo().nested()
    before = _snapshot(m)
    outer, inner = _nested_keys(m)
    _contract(up.TieError, lambda: m.tie(outer, outer), repr(outer))
    _contract(up.TieError, lambda: m.tie(inner[0], inner[0]))
    w = next(n for n in m.params if n.startswith(inner[0] + "."))
    _contract(up.TieError, lambda: m.tie(w, w))
    _contract(up.TieError, lambda: m.tie(inner[0], outer), "ancestor")
    _contract(up.TieError, lambda: m.tie(outer, inner[0]), "descendant")
    assert m.tied() == []
    _assert_unchanged(m, before)


@pytest.mark.parametrize("be", _having("tie"), indirect=True)
def test_tie_in_a_cycle(be: Any) -> None:
    m = be.zoo().nested()
    _, (b0, b1, b2, _b3) = _nested_keys(m)
    m.tie(b1, b0)
    m.tie(b2, b1)
    before, groups = _snapshot(m), m.tied()
    _contract(up.TieError, lambda: m.tie(b0, b1), "cycle")
    _contract(up.TieError, lambda: m.tie(b0, b2), "cycle")
    _contract(up.TieError, lambda: m.tie(b1, b2), "cycle")
    assert m.tied() == groups
    _assert_unchanged(m, before)


# -- state and files ---------------------------------------------------------------------


def test_strict_load_with_missing_or_unexpected_keys(be: Any) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    names = list(before)
    changed = {k: v * 2 + 1 for k, v in before.items()}
    missing = {k: v for k, v in changed.items() if k != names[-1]}
    e = _contract(up.StateError, lambda: m.load_state(missing), "missing", names[-1], "strict=False")
    assert e.report.missing == [names[-1]]  # type: ignore[attr-defined]
    extra = {**changed, "encoder.weight": np.zeros((2, 2), np.float32)}
    e = _contract(up.StateError, lambda: m.load_state(extra), "unexpected", "encoder.weight")
    assert e.report.unexpected == ["encoder.weight"]  # type: ignore[attr-defined]
    _contract(up.StateError, lambda: m.load_state({}), "missing")
    _assert_unchanged(m, before)


def test_file_of_another_architecture(be: Any, tmp_path: Any) -> None:
    m = _mlp(be)
    before = _snapshot(m)
    cnn = be.zoo().cnn()
    up.save(cnn, tmp_path / "cnn.safetensors")
    _contract(up.StateError, lambda: up.load(m, tmp_path / "cnn.safetensors"), "strict load")
    up.save(up.wrap(ref.Sequential(ref.Dense(3, in_units=2))), tmp_path / "other.safetensors")
    _contract(up.StateError, lambda: up.load(m, tmp_path / "other.safetensors"), "missing")
    _contract(up.StateError, lambda: up.load(cnn, tmp_path / "other.safetensors"))
    _assert_unchanged(m, before)
