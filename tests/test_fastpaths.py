"""The fast paths of issue 18 give the plain paths' values and keep the
contract's aliasing rules: strip-by-strip transposes for odd shapes and
sizes above the thresholds (lowered here), aligned arrays, canonical copies
that never alias the model, loads read straight into a storage's memory and
still atomic, zero-copy views read-only and unchanged by later writes,
arrays handed to JAX never the caller's. No timings."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import unified_params as up
from unified_params import _format, _limits
from unified_params import reference as ref
from unified_params._io import read_file
from unified_params._layout import ALIGN, contiguous, contiguous_into, copy_canonical, empty, to_canonical
from unified_params.testing.fakes import kernel_last

SHAPES = [(37, 53), (1, 9), (64, 8), (129, 513), (8, 1000)]
DTYPES = [np.float32, np.float64, np.float16, np.int8, np.bool_]


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every path tiles, in strips much smaller than the arrays."""
    monkeypatch.setattr(_limits, "TILED_BYTES", 0)
    monkeypatch.setattr(_limits, "STRIP_ROWS", 7)
    monkeypatch.setattr(_limits, "STRIP_BYTES", 5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_strips_equal_numpy_transpose(small_tiles: None, shape: tuple[int, int], dtype: type) -> None:
    a = (np.arange(np.prod(shape)).reshape(shape) % 97).astype(dtype)
    view = a.T
    got = contiguous(view)
    assert got.flags.c_contiguous and got.dtype == a.dtype
    np.testing.assert_array_equal(got, np.ascontiguousarray(view))
    out = np.full(view.shape, 0, dtype)
    assert contiguous_into(view, out) is out
    np.testing.assert_array_equal(out, view)


def test_strips_at_default_thresholds() -> None:
    """Above the default threshold (1 MiB), with the default strips."""
    a = np.random.default_rng(0).standard_normal((700, 1031)).astype(np.float32)
    np.testing.assert_array_equal(contiguous(a.T), np.ascontiguousarray(a.T))


@pytest.mark.parametrize("shape", [(0,), (3,), (5, 7), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_empty_is_aligned(shape: tuple[int, ...], dtype: type) -> None:
    a = empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.size == 0 or a.ctypes.data % ALIGN == 0


@pytest.mark.parametrize("layout,shape", [("kernel_last", (5, 7)), ("kernel_last", (3, 3, 4, 6)),
                                          ("merged", (2, 3, 4)), ("canonical", (4, 5))])
def test_copy_canonical_never_aliases(layout: str, shape: tuple[int, ...]) -> None:
    native = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    native.flags.writeable = False  # as a zero-copy view of a framework's buffer is
    got = copy_canonical(native, layout)
    np.testing.assert_array_equal(got, to_canonical(native, layout))
    assert not np.may_share_memory(got, native) and got.flags.writeable
    got[...] = -1
    assert native.min() >= 0


def test_kernel_last_value_is_a_private_copy(small_tiles: None) -> None:
    k = kernel_last(ref.Sequential(ref.Dense(37, in_units=53), ref.Conv2d(19, 3, in_channels=23)))
    k.initialize(up.init.Normal(0, 1), seed=0)
    for name in ("0.weight", "1.weight"):
        p = k.params[name]
        before = p.read(copy=False).copy()
        v = p.value
        np.testing.assert_array_equal(v, before)
        v[...] = 0
        np.testing.assert_array_equal(p.read(copy=False), before)


def test_save_of_strided_views_equals_plain_bytes(small_tiles: None, tmp_path: object) -> None:
    """A kernel-last model's file, written through the strips and the reused
    scratch buffer, holds the canonical values; a plain NumPy twin with the
    same values writes the very same tensors."""
    net = ref.Sequential(ref.Dense(37, in_units=53), ref.Dense(53, in_units=37), ref.Conv2d(5, 3, in_channels=4))
    k = kernel_last(net)
    k.initialize(up.init.Normal(0, 1), seed=1)
    twin = up.wrap(ref.Sequential(ref.Dense(37, in_units=53), ref.Dense(53, in_units=37),
                                  ref.Conv2d(5, 3, in_channels=4)))
    twin.load_state(k.state())
    f1, f2 = tmp_path / "k.safetensors", tmp_path / "n.safetensors"  # type: ignore[operator]
    up.save(k, f1)
    up.save(twin, f2)
    a, _ = read_file(f1)
    b, _ = read_file(f2)
    assert a.keys() == b.keys()
    for n in a:
        np.testing.assert_array_equal(a[n], b[n])
        np.testing.assert_array_equal(a[n], twin.params[n].value if n in twin.params else twin.buffers[n].value)


def test_load_reads_into_the_storage_itself(tmp_path: object) -> None:
    """The NumPy reference offers its arrays as host buffers: a load fills
    them in place (the same array objects, new values)."""
    src = up.wrap(ref.Sequential(ref.Dense(8, in_units=4), ref.Dense(3, in_units=8)))
    src.initialize(up.init.Normal(0, 1), seed=2)
    dst_net = ref.Sequential(ref.Dense(8, in_units=4), ref.Dense(3, in_units=8))
    dst = up.wrap(dst_net)
    arrays = {n: p.read(copy=False).base if p.read(copy=False).base is not None else p.read(copy=False)
              for n, p in dst.params.items()}
    f = tmp_path / "m.safetensors"  # type: ignore[operator]
    up.save(src, f)
    up.load(dst, f)
    for n, p in dst.params.items():
        np.testing.assert_array_equal(p.value, src.params[n].value)
        assert np.shares_memory(p.read(copy=False), arrays[n])


def test_load_into_host_buffers_is_atomic(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file cut short after the first tensor was read straight into the
    model: FileFormatError, and every value as it was."""
    src = up.wrap(ref.Sequential(ref.Dense(8, in_units=4), ref.Dense(3, in_units=8)))
    src.initialize(up.init.Normal(0, 1), seed=3)
    dst = up.wrap(ref.Sequential(ref.Dense(8, in_units=4), ref.Dense(3, in_units=8)))
    dst.initialize(up.init.Ones())
    before = {n: v.copy() for n, v in dst.state().items()}
    f = tmp_path / "m.safetensors"  # type: ignore[operator]
    up.save(src, f)
    original = _format.Reader.read_into
    calls = []

    def cut_after_first(self: _format.Reader, e: _format.Entry, out: np.ndarray) -> None:
        calls.append(e.name)
        if len(calls) == 2:
            with open(f, "r+b") as fh:
                fh.truncate(self.header.size - 4)
        original(self, e, out)

    monkeypatch.setattr(_format.Reader, "read_into", cut_after_first)
    monkeypatch.setattr(_limits, "BATCH_BYTES", 0)  # one tensor at a time: small ones are read in spans
    with pytest.raises(up.FileFormatError):
        up.load(dst, f)
    assert len(calls) >= 2
    for n, v in dst.state().items():
        np.testing.assert_array_equal(v, before[n])


# -- frameworks ----------------------------------------------------------------------


def test_torch_load_fills_the_parameter_and_bumps_its_version(tmp_path: object) -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 2))
    m = up.wrap(net)
    m.initialize(up.init.Normal(0, 1), seed=4)
    f = tmp_path / "t.safetensors"  # type: ignore[operator]
    up.save(m, f)
    expected = {n: v.copy() for n, v in m.state().items()}
    m.initialize(up.init.Zeros())
    ptr = net[0].weight.data_ptr()
    version = net[0].weight._version
    up.load(m, f)
    assert net[0].weight.data_ptr() == ptr
    assert net[0].weight._version > version
    for n, v in m.state().items():
        np.testing.assert_array_equal(v, expected[n])


def test_tensorflow_views_keep_their_value(tmp_path: object) -> None:
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    m = up.wrap(net)
    m.initialize(up.init.Normal(0, 1), seed=5)
    p = m.params["0.weight"]
    view = p.read(copy=False)
    assert not view.flags.writeable and view.shape == (4, 3)
    kept = view.copy()
    value = p.value
    value[...] = 9  # a copy: the model does not change
    np.testing.assert_array_equal(p.read(copy=False), kept)
    p.set(np.ones((4, 3), np.float32))
    np.testing.assert_array_equal(view, kept)  # copy-on-write: the view keeps what it read
    np.testing.assert_array_equal(p.value, np.ones((4, 3)))
    # an undo through the variables' own snapshots: a failed check restores them
    f = tmp_path / "k.safetensors"  # type: ignore[operator]
    other = up.wrap(keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)]))
    other.initialize(up.init.Normal(0, 1), seed=6)
    up.save(other, f)
    before = {n: v.copy() for n, v in m.state().items()}
    x = np.ones((1, 3), np.float32)
    with pytest.raises(up.PortError):
        up.load(m, f, check=(x, np.full((1, 4), 1e6, np.float32)))
    for n, v in m.state().items():
        np.testing.assert_array_equal(v, before[n])


def test_jax_writes_never_alias_the_callers_array(tmp_path: object) -> None:
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from flax import linen as nn

    module = nn.Sequential([nn.Dense(5), nn.Dense(3)])
    import jax

    m = up.wrap(module, module.init(jax.random.key(0), jnp.zeros((1, 4))))
    m.initialize(up.init.Normal(0, 1), seed=7)
    state = m.state()
    kept = {n: v.copy() for n, v in state.items()}
    m.load_state(state)
    for v in state.values():
        v[...] = 123  # the caller's arrays change afterwards
    for n, v in m.state().items():
        np.testing.assert_array_equal(v, kept[n])
    w = np.full((5, 4), 2.0, np.float32)
    m.params["layers_0.weight"].set(w)
    w[...] = 0
    np.testing.assert_array_equal(m.params["layers_0.weight"].value, np.full((5, 4), 2.0))
    view = m.params["layers_0.weight"].read(copy=False)
    assert not view.flags.writeable
    f = tmp_path / "j.safetensors"  # type: ignore[operator]
    up.save(m, f)
    m.initialize(up.init.Zeros())
    up.load(m, f)
    np.testing.assert_array_equal(m.params["layers_0.weight"].value, np.full((5, 4), 2.0))


def test_a_kernel_last_load_reads_through_one_reused_buffer(tmp_path: pathlib.Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel-last storages of a file (no framework needed: the reference kit
    seen through a kernel-last adapter) are read into one reused buffer and
    converted from it: every storage gets its own values, bit-exact, though
    the buffer is refilled for each; above ``READ_BUFFER_BYTES`` the buffer
    is not used."""
    from unified_params import _fastpath, _limits

    def net() -> ref.Sequential:
        return ref.Sequential(ref.Dense(37, in_units=53), ref.Dense(29, in_units=37),
                              ref.Conv2d(19, 3, in_channels=23))

    src = up.wrap(net())
    src.initialize(up.init.Normal(1.0), seed=5)
    f = tmp_path / "k.safetensors"
    up.save(src, f)
    given: list[tuple[int, ...]] = []
    real = _fastpath._read_buffer

    def counted(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
        buf = real(dtype, shape)
        if buf is not None:
            given.append(shape)
        return buf

    monkeypatch.setattr(_fastpath, "_read_buffer", counted)
    monkeypatch.setattr(_limits, "READ_BUFFER_FROM", 1)
    monkeypatch.setattr(_limits, "BATCH_BYTES", 1)  # one storage per write: the one-value route
    k = kernel_last(net())
    up.load(k, f)
    weights = sorted(n for n in src.params if n.endswith("weight"))
    assert sorted(given) == sorted(src.params[n].shape for n in weights)
    for n, p in src.params.items():
        np.testing.assert_array_equal(k.params[n].value, p.value, err_msg=n)
    given.clear()
    monkeypatch.setattr(_limits, "READ_BUFFER_BYTES", 8)
    again = kernel_last(net())
    up.load(again, f)
    assert given == []
    for n, p in src.params.items():
        np.testing.assert_array_equal(again.params[n].value, p.value, err_msg=n)
