"""Issues 13 and 18 on Flax: the batched handle calls (``read_many``,
``write_many``, ``snapshot_many``, ``restore_many``) of linen and NNX, the
cheap device transfer they use, zero-copy JAX -> JAX ports, and the NNX
stamp that lets listings reuse one walk.

Every check compares bits (``uint32`` views), the native arrays Flax holds,
or call counts: a batch is one update of the linen variables, one transfer
call per array and no ``jax.device_put``; a batch that fails changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402
from unified_params_jax import _common  # noqa: E402

import unified_params as up  # noqa: E402

LAYERS = 24  # 48 small storages: batches of many


def _bits(a: object) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a)).view(np.uint32)


def _linen(seed: int, layers: int = LAYERS) -> up.Block:
    rng = np.random.default_rng(seed)
    net = nn.Sequential([nn.Dense(3) for _ in range(layers)])
    params = {f"layers_{i}": {"kernel": jnp.asarray(rng.standard_normal((3, 3), np.float32)),
                              "bias": jnp.asarray(rng.standard_normal(3, np.float32))} for i in range(layers)}
    return up.wrap(net, {"params": params})


def _nnx(seed: int, layers: int = LAYERS) -> up.Block:
    rngs = nnx.Rngs(seed)
    return up.wrap(nnx.Sequential(*[nnx.Linear(3, 3, rngs=rngs) for _ in range(layers)]))


def _native_kernels(m: up.Block) -> list[np.ndarray]:
    """Each layer's kernel as Flax holds it (``(in, out)``)."""
    if hasattr(m._handle, "variables"):  # linen
        ps = m.variables["params"]
        return [np.asarray(ps[f"layers_{i}"]["kernel"]) for i in range(len(ps))]
    return [np.asarray(layer.kernel.get_value()) for layer in m.native.layers]


def _random_state(m: up.Block, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(p.shape).astype(np.float32) for n, p in m.params.items()}


MODELS = {"linen": _linen, "nnx": _nnx}


def _count_device_puts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of ``jax.device_put`` from now on (the batched paths make none)."""
    device_puts = [0]
    real = jax.device_put

    def counted(*a: object, **k: object) -> object:
        device_puts[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(jax, "device_put", counted)
    return device_puts


@pytest.mark.parametrize("kind", ["linen", "nnx"])

def test_batched_round_trips_are_bit_exact_and_kernel_last_natively(kind: str, tmp_path: object) -> None:
    make = MODELS[kind]
    src, dst = make(0), make(1)
    state = _random_state(src, 7)
    src.load_state(state)
    for (n, v), k in zip(((n, v) for n, v in state.items() if n.endswith("weight")), _native_kernels(src)):
        # canonical (out, in) in, Flax's (in, out) held: bit for bit the transpose
        np.testing.assert_array_equal(_bits(k), _bits(v.T), err_msg=n)
    f = str(tmp_path) + "/m.safetensors"  # type: ignore[operator]
    up.save(src, f)
    up.load(dst, f)
    for n, v in dst.state().items():
        np.testing.assert_array_equal(_bits(v), _bits(state[n]), err_msg=n)
    for a, b in zip(_native_kernels(src), _native_kernels(dst)):
        np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize(("a", "b"), [("linen", "nnx"), ("nnx", "linen"), ("linen", "linen"), ("nnx", "nnx")])
def test_ports_between_flax_models_are_bit_exact(a: str, b: str) -> None:
    src, dst = MODELS[a](0), MODELS[b](1)
    src.load_state(_random_state(src, 3))
    up.port(src, dst)
    for (n, x), (_, y) in zip(src.state().items(), dst.state().items()):
        np.testing.assert_array_equal(_bits(x), _bits(y), err_msg=n)
    for x, y in zip(_native_kernels(src), _native_kernels(dst)):
        np.testing.assert_array_equal(_bits(x), _bits(y))


def test_jax_to_jax_port_transposes_nothing_and_shares_no_array(monkeypatch: pytest.MonkeyPatch) -> None:
    from unified_params import _layout

    def no_transpose(*a: object, **k: object) -> None:
        raise AssertionError("a kernel-last -> kernel-last port transposed a kernel")

    monkeypatch.setattr(_layout, "_strips", no_transpose)
    rng = np.random.default_rng(0)
    net = nn.Sequential([nn.Dense(512), nn.Dense(512)])  # 1 MiB kernels: the tiled/strip path's size

    def variables() -> dict:
        return {"params": {f"layers_{i}": {"kernel": jnp.asarray(rng.standard_normal((512, 512), np.float32)),
                                           "bias": jnp.zeros(512, jnp.float32)} for i in range(2)}}

    src, dst = up.wrap(net, variables()), up.wrap(net, variables())
    up.port(src, dst)
    for i in range(2):
        a, b = src.variables["params"][f"layers_{i}"]["kernel"], dst.variables["params"][f"layers_{i}"]["kernel"]
        np.testing.assert_array_equal(_bits(a), _bits(b))
        assert b is not a and not np.shares_memory(np.asarray(a), np.asarray(b))
    for leaf in jax.tree_util.tree_leaves(src.variables):
        leaf.delete()  # what donating src's variables to a jitted step does
    assert dst.params["layers_1.weight"].value.shape == (512, 512)  # dst's own arrays


def test_writing_a_parameter_its_own_value_keeps_its_array() -> None:
    m = _linen(0, 2)
    arr = m.variables["params"]["layers_0"]["kernel"]
    m._handle.write(m.params["layers_0.weight"]._leaf, np.asarray(arr))
    assert m.variables["params"]["layers_0"]["kernel"] is arr


def test_a_writable_array_is_never_adopted() -> None:
    m = _linen(0, 2)
    v = np.ones((3, 3), np.float32)
    m.load_state({**m.state(), "layers_0.weight": v})
    v[...] = 5.0  # the caller reuses its array: the parameter keeps what was written
    np.testing.assert_array_equal(m.params["layers_0.weight"].value, np.ones((3, 3), np.float32))
    # a read-only view of a whole JAX buffer is recognized; one of part of it is not
    arr = jnp.arange(9.0, dtype=jnp.float32).reshape(3, 3)
    assert _common._jax_array_of(np.asarray(arr)) is arr
    assert _common._jax_array_of(np.asarray(arr)[1:]) is None
    assert _common._jax_array_of(np.asarray(arr).T) is None  # not C-contiguous: a layout view


@pytest.mark.parametrize("dtype", [np.float32, np.int32, jnp.bfloat16, np.float16])
@pytest.mark.parametrize("owned", [False, True])
def test_the_cheap_transfer_gives_what_device_put_gives(dtype: object, owned: bool) -> None:
    like = jax.device_put(jnp.zeros((2, 3), dtype), jax.devices("cpu")[0])
    values = [_common._aligned_copy(np.arange(6).reshape(2, 3).astype(dtype) + k) for k in range(3)]
    got = _common.from_numpy_many(values, [like] * 3, owned=owned)
    ref = [jax.device_put(v, like.sharding) for v in values]
    for g, r, v in zip(got, ref, values):
        assert g.dtype == r.dtype and g.shape == r.shape and g.sharding == r.sharding
        assert g.committed == r.committed and not g.weak_type
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
        shares = np.shares_memory(np.asarray(g), v)
        # adopted when made for this write alone (one pass: XLA keeps an aligned
        # float32 array as it is), never otherwise
        assert shares == owned if dtype is np.float32 else not (shares and not owned)
    values[0][...] = 0  # the caller's array changes: a copy made without owned does not
    if not owned:
        assert not (np.asarray(got[0]) == 0).all()


def _calls(obj: object, name: str) -> list[int]:
    count = [0]
    fn = getattr(obj, name)

    def counted(*a: object, **k: object) -> object:
        count[0] += 1
        return fn(*a, **k)

    setattr(obj, name, counted)
    return count


def test_linen_write_many_is_one_update_of_the_variables_and_no_device_put(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _common._fast_put_setup() is not None, "the cheap transfer no longer matches jax.device_put"
    m = _linen(0)
    h = m._handle
    leaves = [p._leaf for p in m.params.values()]
    values = [_common._aligned_copy(np.full(np.shape(h.read(lf)), i, np.float32)) for i, lf in enumerate(leaves)]
    puts = _calls(h, "_put")
    device_puts = _count_device_puts(monkeypatch)
    old = h.variables
    h.write_many(list(zip(leaves, values)), owned=True)
    assert puts[0] == 1 and device_puts[0] == 0
    for i, lf in enumerate(leaves):
        np.testing.assert_array_equal(h.read(lf), np.full(values[i].shape, i, np.float32))
    assert old["params"]["layers_0"]["kernel"] is not h.variables["params"]["layers_0"]["kernel"]
    snaps = h.snapshot_many(leaves)
    assert all(s is h._array(lf, "read") for s, lf in zip(snaps, leaves))  # immutable: no copies
    h.write_many([(lf, np.zeros_like(v)) for lf, v in zip(leaves, values)])
    h.restore_many(list(zip(leaves, snaps)))
    assert puts[0] == 3
    for i, lf in enumerate(leaves):
        np.testing.assert_array_equal(h.read(lf, copy=False), np.full(values[i].shape, i, np.float32))
    assert [a.tolist() for a in h.read_many(leaves)] == [h.read(lf).tolist() for lf in leaves]


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_a_failing_batch_changes_nothing(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    m = MODELS[kind](0)
    h = m._handle
    leaves = [p._leaf for p in m.params.values()]
    before = [h.read(lf) for lf in leaves]
    natives = [h.native_of(lf) for lf in leaves]
    if kind == "nnx":
        natives = [v.get_value() for v in natives]
    calls = [0]
    real = _common._put_one_device

    def flaky(*a: object, **k: object) -> object:
        calls[0] += 1
        if calls[0] == len(leaves) - 1:
            raise MemoryError("no memory for the next array")
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(_common, "_put_one_device", flaky)
    with pytest.raises(MemoryError):
        h.write_many([(lf, np.full(b.shape, 9.0, b.dtype)) for lf, b in zip(leaves, before)])
    for lf, b, nat in zip(leaves, before, natives):
        now = h.native_of(lf)
        assert (now.get_value() if kind == "nnx" else now) is nat  # not one storage replaced
        np.testing.assert_array_equal(h.read(lf), b)


def test_a_failing_load_through_the_core_restores_every_storage(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: object) -> None:
    m = _linen(0)
    f = str(tmp_path) + "/m.safetensors"  # type: ignore[operator]
    up.save(_linen(5), f)
    before = m.state()
    real = _common._put_one_device
    calls = [0]

    def flaky(*a: object, **k: object) -> object:
        calls[0] += 1
        if calls[0] == LAYERS:
            raise MemoryError("no memory for the next array")
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(_common, "_put_one_device", flaky)
    with pytest.raises((MemoryError, up.UnifiedParamsError)):
        up.load(m, f)
    for n, v in m.state().items():
        np.testing.assert_array_equal(_bits(v), _bits(before[n]), err_msg=n)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_save_load_and_port_reach_flax_in_batches(kind: str, tmp_path: object,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = MODELS[kind](0), MODELS[kind](1)
    src.load_state(_random_state(src, 11))
    one = ("read", "write", "write_owned")
    calls = {(side, name): _calls(m._handle, name) for side, m in (("src", src), ("dst", dst))
             for name in (*one, "read_many", "write_many")}
    puts = _calls(dst._handle, "_put") if kind == "linen" else [0]
    device_puts = _count_device_puts(monkeypatch)
    f = str(tmp_path) + "/m.safetensors"  # type: ignore[operator]
    up.save(src, f)
    up.load(dst, f)
    up.port(src, dst)
    n = 2 * LAYERS  # 48 small storages: a batch each time
    assert all(calls[side, name][0] == 0 for side in ("src", "dst") for name in one), "a one-storage call"
    assert 1 <= calls["src", "read_many"][0] <= 3 and 1 <= calls["dst", "write_many"][0] <= 4
    if kind == "linen":  # one update of the variables per batch, not per storage
        assert puts[0] == calls["dst", "write_many"][0]
    assert device_puts[0] == 0  # every array through the cheap transfer
    for (name, a), b in zip(src.state().items(), dst.state().values()):
        np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=name)
    assert len(src.state()) == n


# -- the NNX stamp ---------------------------------------------------------------


def _walks(m: up.Block) -> list[int]:
    return _calls(m._handle, "tree")


def test_nnx_listings_reuse_one_walk_until_the_graph_changes() -> None:
    rngs = nnx.Rngs(0)
    net = nnx.Sequential(nnx.Linear(4, 4, rngs=rngs), nnx.relu, nnx.Linear(4, 4, rngs=rngs))
    m = up.wrap(net)
    walks = _walks(m)
    for _ in range(4):
        assert [p.shape for p in m.params.values()] == [(4, 4), (4,), (4, 4), (4,)]
        m.params["2.weight"][0, 0] = 3.0  # a write keeps the graph
        m.load_state(m.state())
    assert walks[0] == 1
    assert m.params["2.weight"].value[0, 0] == 3.0
    net.layers[2].kernel.set_value(jnp.ones((4, 4)))  # a native write of a value: same graph
    assert list(m.params) == ["0.weight", "0.bias", "2.weight", "2.bias"] and walks[0] == 1
    np.testing.assert_array_equal(m.params["2.weight"].value, np.ones((4, 4)))


def test_nnx_native_edits_are_seen_after_caching() -> None:
    rngs = nnx.Rngs(0)
    net = nnx.Sequential(nnx.Linear(4, 4, rngs=rngs), nnx.relu, nnx.Linear(4, 4, rngs=rngs))
    m = up.wrap(net)
    walks = _walks(m)

    def listed(expected_walks: int) -> list[tuple[str, tuple[int, ...]]]:
        out = [(n, p.shape) for n, p in m.params.items()]
        assert [(n, p.shape) for n, p in m.params.items()] == out  # asked again: the same walk
        assert walks[0] == expected_walks
        return out

    assert [n for n, _ in listed(1)] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    net.layers[2] = nnx.Linear(4, 6, rngs=rngs)  # a layer replaced
    assert [s for _, s in listed(2)] == [(4, 4), (4,), (6, 4), (6,)]
    net.layers[2].kernel = net.layers[0].kernel  # a variable assigned: a tie
    assert listed(3)[2] == ("2.weight", (4, 4)) and m.tied() == [("0.weight", "2.weight")]
    net.layers.append(nnx.Linear(6, 2, rngs=rngs))  # a layer appended
    assert [n for n, _ in listed(4)][-2:] == ["3.weight", "3.bias"]
    net.layers[3].bias = nnx.BatchStat(jnp.zeros(2))  # a parameter turned into a buffer
    assert [n for n, _ in listed(5)][-1] == "3.weight" and list(m.buffers) == ["3.bias"]
    net.layers[3].use_bias = False  # a plain attribute: seen too (a stamp errs on the side of walking)
    listed(6)
    net.layers[3].kernel = nnx.Param(jnp.zeros((2, 6, 1)))  # another rank: (*k, in, out) -> (out, in, *k)
    assert listed(7)[-1] == ("3.weight", (1, 6, 2))
    del net.layers[3]
    assert [n for n, _ in listed(8)][-1] == "2.bias"


def test_nnx_stamp_is_much_cheaper_than_a_walk() -> None:
    import time

    m = _nnx(0, 200)
    h = m._handle

    def best(f: object) -> float:
        out = []
        for _ in range(5):
            t = time.perf_counter()
            f()  # type: ignore[operator]
            out.append(time.perf_counter() - t)
        return min(out)

    assert best(h.stamp) * 3 < best(h.tree)


class _Doubled(nnx.Param):  # type: ignore[type-arg]
    """A variable type with its own get_value/set_value, as NNX advises."""

    def get_value(self, **kw: object) -> object:  # type: ignore[override]
        return super().get_value(**kw) * 2  # type: ignore[operator]

    def set_value(self, value: object, **kw: object) -> None:  # type: ignore[override]
        super().set_value(value / 2, **kw)  # type: ignore[operator]


def test_nnx_variable_types_with_their_own_get_and_set_are_respected(tmp_path: object) -> None:
    class M(nnx.Module):
        def __init__(self) -> None:
            self.w = _Doubled(jnp.ones(3))

        def __call__(self, x: object) -> object:
            return x

    mod = M()
    m = up.wrap(mod)
    np.testing.assert_array_equal(m.params["w"].value, np.full(3, 2.0, np.float32))
    m.load_state({"w": np.full(3, 8.0, np.float32)})
    np.testing.assert_array_equal(np.asarray(mod.w.get_raw_value()), np.full(3, 4.0, np.float32))
    np.testing.assert_array_equal(m.state()["w"], np.full(3, 8.0, np.float32))
