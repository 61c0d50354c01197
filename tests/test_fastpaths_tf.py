"""Keras on TensorFlow, issues 13 and 18: reads and writes of one op each
(``unified_params_tensorflow._fast``), without the copies TensorFlow does not
need, batched over many variables, and still exact and atomic.

What these tests pin down (each can fail): kernel-last values bit-exact
through state, set, save/load and port, equal to the native ``numpy()``;
``read(copy=False)`` the variable's own buffer, read-only, keeping its value
after a write; a write of the caller's array never aliasing it; a write of a
core-made array handing its memory over (aligned) or copied (not aligned);
one ``ReadVariableOp``/``AssignVariableOp`` per variable and no Keras
``Variable.assign`` on these routes; one ``read_many``/``write_many`` per
batch of small variables; a failing op midway or a refused ``check=``
restoring every variable; Keras' own route inside a ``StatelessScope``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("unified_params_tensorflow")

import tensorflow as tf  # noqa: E402

import unified_params as up  # noqa: E402

if keras.backend.backend() != "tensorflow":  # pragma: no cover - set by KERAS_BACKEND
    pytest.skip("these tests run Keras on TensorFlow", allow_module_level=True)

from unified_params_tensorflow import _fast  # noqa: E402
from unified_params_tensorflow import _handle as handle_mod  # noqa: E402


def _bits(a: np.ndarray) -> np.ndarray:
    """The raw bytes of an array: equal bits, not just equal values (-0.0, NaN payloads)."""
    return np.ascontiguousarray(a).view(np.uint8)


def _odd_values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random float32 values with a -0.0, a NaN with a payload and an inf."""
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    flat = a.reshape(-1)
    flat[0] = -0.0
    flat[1] = np.uint32(0x7FC0_1234).view(np.float32)
    flat[2] = np.inf
    return a


def _canonical(v: Any) -> np.ndarray:
    """A Keras kernel in PyTorch's layout, from TensorFlow's own read."""
    a = v.numpy()
    if a.ndim == 2:
        return a.T
    return np.moveaxis(a, (-1, -2), (0, 1)) if a.ndim > 2 else a


def _cnn() -> keras.Sequential:
    net = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3), keras.layers.Flatten(),
                            keras.layers.Dense(5)])
    for i, v in enumerate(net.weights):
        v.assign(_odd_values(tuple(v.shape), i))
    return net


def _pointer(v: Any) -> int:
    """Where the variable's current buffer lies (DLPack of a fresh read)."""
    view = _fast.host_view(_fast.read_tensor(v.value), np.dtype(v.dtype))
    assert view is not None
    return int(view.ctypes.data)


class Stack(keras.Model):  # type: ignore[misc]
    """``n`` Dense(2) layers built directly (the issue-13 scale model)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.blocks = [keras.layers.Dense(2) for _ in range(n)]

    def call(self, x):  # type: ignore[no-untyped-def]
        for b in self.blocks:
            x = b(x)
        return x


def _stack(n: int, seed: int) -> Stack:
    net = Stack(n)
    for b in net.blocks:
        b.build((None, 2))
    net.built = True
    for i, v in enumerate(net.weights):
        v.assign(np.random.default_rng(seed + i).standard_normal(tuple(v.shape)).astype(np.float32))
    return net


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts of the raw ops ``_fast`` runs and of Keras' own ``assign``."""
    counts = {"read": 0, "assign": 0, "keras_assign": 0}
    read, assign = _fast._read_op, _fast._assign_op
    keras_assign = keras.Variable.assign

    def counted_read(*a: Any, **k: Any) -> Any:
        counts["read"] += 1
        return read(*a, **k)

    def counted_assign(*a: Any, **k: Any) -> Any:
        counts["assign"] += 1
        return assign(*a, **k)

    def counted_keras_assign(self: Any, value: Any) -> Any:
        counts["keras_assign"] += 1
        return keras_assign(self, value)

    monkeypatch.setattr(_fast, "_read_op", counted_read)
    monkeypatch.setattr(_fast, "_assign_op", counted_assign)
    monkeypatch.setattr(keras.Variable, "assign", counted_keras_assign)
    yield counts


# -- exact values ---------------------------------------------------------------------------


def test_kernel_last_values_are_bit_exact_and_equal_native() -> None:
    net = _cnn()
    m = up.wrap(net)
    state = m.state()
    for (name, value), v in zip(state.items(), net.weights):
        np.testing.assert_array_equal(_bits(value), _bits(_canonical(v)), err_msg=name)
    # set, load_state and a reload of the same values leave every bit as it was
    native = [v.numpy().copy() for v in net.weights]
    m.load_state(state)
    m.params["0.weight"].set(state["0.weight"])
    for v, before in zip(net.weights, native):
        np.testing.assert_array_equal(_bits(v.numpy()), _bits(before))


def test_save_load_and_port_are_bit_exact(tmp_path: Any) -> None:
    src, dst = _cnn(), keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3),
                                         keras.layers.Flatten(), keras.layers.Dense(5)])
    f = tmp_path / "cnn.safetensors"
    up.save(up.wrap(src), f)
    up.load(up.wrap(dst), f)
    for a, b in zip(src.weights, dst.weights):
        np.testing.assert_array_equal(_bits(a.numpy()), _bits(b.numpy()))
    other = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3), keras.layers.Flatten(),
                              keras.layers.Dense(5)])
    up.port(up.wrap(src), up.wrap(other))
    for a, b in zip(src.weights, other.weights):
        np.testing.assert_array_equal(_bits(a.numpy()), _bits(b.numpy()))
    # the file holds PyTorch's layout: the conv kernel as (out, in, kh, kw)
    from safetensors.numpy import load_file

    stored = load_file(str(f))
    np.testing.assert_array_equal(_bits(stored["0.weight"]), _bits(_canonical(src.weights[0])))


def test_bfloat16_and_int_variables_round_trip() -> None:
    """dtypes DLPack does not carry in NumPy (bfloat16) take the copying route."""
    import ml_dtypes

    layer = keras.layers.Dense(3, dtype="bfloat16")
    layer.build((None, 2))
    m = up.wrap(layer)
    w = np.arange(6, dtype=np.float32).reshape(3, 2).astype(ml_dtypes.bfloat16)
    m.params["weight"].set(w)
    np.testing.assert_array_equal(m.params["weight"].value.astype(np.float32), w.astype(np.float32))
    assert m.params["weight"].read(copy=False).dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(layer.kernel.numpy().astype(np.float32), w.T.astype(np.float32))


# -- copies: none the framework does not need ---------------------------------------------------


def test_read_without_copy_is_the_variables_buffer_and_keeps_its_value() -> None:
    net = _cnn()
    m = up.wrap(net)
    p = m.params["2.weight"]
    kernel = net.layers[2].kernel
    view = p.read(copy=False)
    assert not view.flags.writeable
    native_view = m._handle.read(p._leaf, copy=False)
    assert native_view.ctypes.data == _pointer(kernel)  # no copy: the variable's own buffer
    kept = view.copy()
    p.set(np.zeros(p.shape, np.float32))
    np.testing.assert_array_equal(_bits(view), _bits(kept))  # copy-on-write: the view keeps its value
    assert not np.any(kernel.numpy())
    kernel.assign_add(np.ones(kernel.shape, np.float32))  # an in-place update (an optimizer's)
    np.testing.assert_array_equal(_bits(view), _bits(kept))
    assert not np.shares_memory(p.value, native_view)  # p.value is a private copy


def test_write_of_the_callers_array_never_aliases_it() -> None:
    net = _cnn()
    m = up.wrap(net)
    state = m.state()
    m.load_state(state)
    for a in state.values():
        a[...] = 7
    for v in net.weights:
        assert not np.any(v.numpy() == 7)
    w = np.ones((5, 48), np.float32)
    m.params["2.weight"].set(w)
    w[...] = 3
    np.testing.assert_array_equal(net.layers[2].kernel.numpy(), np.ones((48, 5), np.float32))
    big = np.ones((600, 500), np.float32)  # aligned (TensorFlow would adopt it as it is)
    layer = keras.layers.Dense(600)
    layer.build((None, 500))
    q = up.wrap(layer).params["weight"]
    q.set(big)
    big[...] = 2
    np.testing.assert_array_equal(layer.kernel.numpy(), np.ones((500, 600), np.float32))
    from unified_params.adapter import empty_aligned

    c = empty_aligned((600,), np.float32)  # aligned: TensorFlow's op wrappers would adopt it
    c[...] = 1
    up.wrap(layer).params["bias"].set(c)  # a plain (canonical) storage: the caller's array as it is
    c[...] = 9
    np.testing.assert_array_equal(layer.bias.numpy(), np.ones((600,), np.float32))


def test_write_owned_hands_aligned_memory_over_and_copies_the_rest() -> None:
    from unified_params.adapter import empty_aligned

    layer = keras.layers.Dense(64)
    layer.build((None, 32))
    m = up.wrap(layer)
    h, leaf = m._handle, m.params["weight"]._leaf
    aligned = empty_aligned((32, 64), np.float32)
    aligned[...] = _odd_values((32, 64), 1)
    expected = aligned.copy()
    h.write_owned(leaf, aligned)
    assert _pointer(layer.kernel) == aligned.ctypes.data  # no copy
    np.testing.assert_array_equal(_bits(layer.kernel.numpy()), _bits(expected))
    buf = empty_aligned((32 * 64 + 1,), np.float32)
    unaligned = buf[1:].reshape(32, 64)
    unaligned[...] = 5
    h.write_owned(leaf, unaligned)
    assert _pointer(layer.kernel) != unaligned.ctypes.data  # Eigen wants 64 bytes: copied
    unaligned[...] = 6
    np.testing.assert_array_equal(layer.kernel.numpy(), np.full((32, 64), 5, np.float32))
    # the variable still works as one: forward, in-place update
    layer.kernel.assign_add(np.ones((32, 64), np.float32))
    np.testing.assert_array_equal(layer.kernel.numpy(), np.full((32, 64), 6, np.float32))
    y = layer(np.ones((1, 32), np.float32))
    np.testing.assert_allclose(np.asarray(y), np.full((1, 64), 6 * 32, np.float32) + layer.bias.numpy())


def test_load_of_kernel_last_tensors_copies_nothing_after_the_transpose(tmp_path: Any) -> None:
    """A file's kernel arrives transposed into a core-made array that becomes
    the variable's buffer: the variable's data is at an address TensorFlow
    did not allocate for a conversion of its own (it is 64-byte aligned and
    changes with every load)."""
    src = keras.layers.Dense(600)
    src.build((None, 500))
    src.kernel.assign(_odd_values((500, 600), 3))
    f = tmp_path / "d.safetensors"
    up.save(up.wrap(src), f)
    dst = keras.layers.Dense(600)
    dst.build((None, 500))
    m = up.wrap(dst)
    seen: list[int] = []
    owned = _fast.assign_owned

    def spy(tv: Any, value: np.ndarray) -> None:
        owned(tv, value)
        if tv is dst.kernel.value:
            seen.append(int(value.ctypes.data))

    import unittest.mock

    with unittest.mock.patch.object(_fast, "assign_owned", spy):
        up.load(m, f)
    assert seen == [_pointer(dst.kernel)]
    np.testing.assert_array_equal(_bits(dst.kernel.numpy()), _bits(src.kernel.numpy()))


# -- one op per variable, one call per batch --------------------------------------------------


def test_small_variables_take_one_op_each_and_no_keras_assign(ops: dict[str, int], tmp_path: Any) -> None:
    src, dst = _stack(50, 0), _stack(50, 1000)
    a, b = up.wrap(src), up.wrap(dst)
    n = len(src.weights)
    f = tmp_path / "s.safetensors"
    ops.update(read=0, assign=0, keras_assign=0)  # building assigned through Keras
    up.save(a, f)
    assert ops == {"read": n, "assign": 0, "keras_assign": 0}
    ops.update(read=0)
    up.load(b, f)  # small: every variable snapshotted (one read) and written (one assign)
    assert ops == {"read": n, "assign": n, "keras_assign": 0}
    for x, y in zip(src.weights, dst.weights):
        np.testing.assert_array_equal(_bits(x.numpy()), _bits(y.numpy()))
    c = _stack(50, 2000)
    ops.update(read=0, assign=0, keras_assign=0)
    up.port(b, up.wrap(c))
    assert ops["keras_assign"] == 0 and ops["assign"] == n and ops["read"] == 2 * n  # source + undo
    for x, y in zip(src.weights, c.weights):
        np.testing.assert_array_equal(_bits(x.numpy()), _bits(y.numpy()))


def test_batches_of_small_variables_are_one_call_each(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    net = _stack(40, 0)
    m = up.wrap(net)
    h = m._handle
    calls: dict[str, int] = {}
    for name in ("read", "write", "write_owned", "snapshot", "restore", "read_many", "write_many",
                 "snapshot_many"):
        original = getattr(h, name)

        def counted(*a: Any, _name: str = name, _f: Any = original, **k: Any) -> Any:
            calls[_name] = calls.get(_name, 0) + 1
            return _f(*a, **k)

        monkeypatch.setattr(h, name, counted)
    f = tmp_path / "s.safetensors"
    up.save(m, f)
    up.load(m, f)
    up.port(m, up.wrap(_stack(40, 1)))
    assert calls.get("read", 0) == calls.get("write", 0) == calls.get("write_owned", 0) == 0, calls
    assert calls.get("snapshot", 0) == 0, calls
    assert 1 <= calls["read_many"] <= 3 and 1 <= calls["write_many"] <= 2, calls


# -- atomic --------------------------------------------------------------------------------------


def test_a_failing_assign_midway_restores_every_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    src, dst = _stack(30, 0), _stack(30, 500)
    f = tmp_path / "s.safetensors"
    up.save(up.wrap(src), f)
    before = [v.numpy().copy() for v in dst.weights]
    assign = _fast._assign_op
    count = [0]

    def failing(*a: Any, **k: Any) -> Any:
        count[0] += 1
        if count[0] == 25:
            raise tf.errors.InternalError(None, None, "disk on fire")
        return assign(*a, **k)

    monkeypatch.setattr(_fast, "_assign_op", failing)
    with pytest.raises(up.UnifiedParamsError):
        up.load(up.wrap(dst), f)
    assert count[0] > 25  # 24 written, then the undo assigned them back
    for v, b in zip(dst.weights, before):
        np.testing.assert_array_equal(_bits(v.numpy()), _bits(b))


def test_a_refused_check_restores_kernel_last_variables(tmp_path: Any) -> None:
    net = _cnn()
    m = up.wrap(net)
    before = [v.numpy().copy() for v in net.weights]
    other = up.wrap(_cnn())
    other.initialize(up.init.Normal(0, 1), seed=3)
    f = tmp_path / "o.safetensors"
    up.save(other, f)
    x = np.ones((1, 6, 6, 2), np.float32)
    with pytest.raises(up.PortError):
        up.load(m, f, check=(x, np.full((1, 5), 1e6, np.float32)))
    for v, b in zip(net.weights, before):
        np.testing.assert_array_equal(_bits(v.numpy()), _bits(b))


# -- Keras' own route where raw ops would be wrong ----------------------------------------------


def test_stateless_scope_goes_through_keras(ops: dict[str, int]) -> None:
    from keras.src.backend.common.stateless_scope import StatelessScope

    layer = keras.layers.Dense(2)
    layer.build((None, 2))
    m = up.wrap(layer)
    before = layer.kernel.numpy().copy()
    ops.update(read=0, assign=0, keras_assign=0)
    with StatelessScope() as scope:
        m.params["weight"].set(np.full((2, 2), 4, np.float32))
        recorded = scope.get_current_value(layer.kernel)
        np.testing.assert_array_equal(m.params["weight"].value, np.full((2, 2), 4, np.float32))
    assert ops["keras_assign"] >= 1 and ops["assign"] == 0
    np.testing.assert_array_equal(np.asarray(recorded), np.full((2, 2), 4, np.float32))
    np.testing.assert_array_equal(layer.kernel.numpy(), before)  # Keras recorded it, did not write it


def test_not_a_plain_resource_variable_goes_through_keras(ops: dict[str, int]) -> None:
    layer = keras.layers.Dense(2)
    layer.build((None, 2))
    m = up.wrap(layer)
    v = layer.kernel
    assert _fast.storage(v) is v.value
    ops.update(read=0, assign=0, keras_assign=0)

    class Other(type(v.value)):  # type: ignore[misc]
        """A subclass stands for a distributed or mirrored variable."""

    v.value.__class__ = Other
    try:
        assert _fast.storage(v) is None
        m.params["weight"].set(np.full((2, 2), 2, np.float32))
        np.testing.assert_array_equal(m.params["weight"].value, np.full((2, 2), 2, np.float32))
        assert ops["keras_assign"] == 1 and ops["assign"] == 0
    finally:
        v.value.__class__ = type(v.value).__mro__[1]
    assert handle_mod._TF


# -- saves of large kernel-last variables: TensorFlow transposes ---------------------------------


def test_large_kernels_are_saved_through_tensorflows_transpose(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Any) -> None:
    """Views of large variables are remembered with their tensor, so the
    save's conversion to PyTorch's layout is one ``tf.transpose`` (dense and
    convolution kernels), with the same bytes NumPy's strips would write."""
    from safetensors.numpy import load_file

    from unified_params import _layout

    net = keras.Sequential([keras.Input((8, 8, 128)), keras.layers.Conv2D(256, 3),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2100)])
    for i, v in enumerate(net.weights):
        v.assign(_odd_values(tuple(v.shape), 10 + i))
    m = up.wrap(net)
    made: list[tuple[int, ...]] = []
    transpose = _fast.transpose_view

    def counted(value: np.ndarray) -> np.ndarray | None:
        out = transpose(value)
        if out is not None:
            made.append(out.shape)
        return out

    monkeypatch.setattr(_layout, "_TRANSPOSERS", [counted])
    f = tmp_path / "big.safetensors"
    up.save(m, f)
    assert sorted(made) == [(256, 128, 3, 3), (2100, 256)]  # both kernels (> 1 MiB), no bias
    stored = load_file(str(f))
    for (name, value), v in zip(stored.items(), net.weights):
        np.testing.assert_array_equal(_bits(value), _bits(_canonical(v)), err_msg=name)
    monkeypatch.setattr(_layout, "_TRANSPOSERS", [])  # NumPy's strips: the same bytes
    g = tmp_path / "strips.safetensors"
    up.save(m, g)
    assert f.read_bytes() == g.read_bytes()


def test_transposer_refuses_views_it_did_not_make() -> None:
    a = np.ones((1024, 512), np.float32)
    assert _fast.transpose_view(a.T) is None  # a NumPy array of its own
    layer = keras.layers.Dense(600)
    layer.build((None, 500))
    view = _fast.host_view(_fast.read_tensor(layer.kernel.value), np.dtype(np.float32))
    assert view is not None
    out = _fast.transpose_view(view.T)
    assert out is not None and out.flags.c_contiguous
    np.testing.assert_array_equal(out, layer.kernel.numpy().T)
    assert _fast.transpose_view(view.T[1:]) is None  # not the whole buffer
    assert _fast.transpose_view(view[:, :10].T) is None
    key = id(view)
    del view, out
    import gc

    gc.collect()
    assert key not in _fast._SOURCES  # an entry goes with its view
