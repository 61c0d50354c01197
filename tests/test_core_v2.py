"""The core without a framework: kernel-last layouts, rollback of every
transaction when a write fails midway, the size-gated paths with their
thresholds lowered, buffer ties, lookups that do not walk the model, and the
gradients the core adds up. The test adapters are in
``unified_params.testing.fakes`` (NumPy only)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import _limits
from unified_params import reference as ref
from unified_params._block import Block
from unified_params.reference._backend import NumpyBackend, NumpyHandle
from unified_params.testing.fakes import FaultyHandle, InjectedFault, KernelLastHandle, faulty, kernel_last


def mlp() -> ref.Sequential:
    return ref.Sequential(ref.Dense(8, in_units=4), ref.ReLU(), ref.Dense(3, in_units=8))


def cnn() -> ref.Sequential:
    return ref.Sequential(ref.Conv2d(4, 3, in_channels=2), ref.ReLU(), ref.GlobalAvgPool2d(), ref.Dense(2, in_units=4))


def norm2() -> ref.Sequential:
    return ref.Sequential(ref.Dense(4, in_units=4), ref.BatchNorm(4), ref.BatchNorm(4), ref.Dense(1, in_units=4))


def values(m: Block) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in m.state().items()}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- kernel-last layouts without a framework -----------------------------------


@pytest.mark.parametrize("make", [mlp, cnn])
def test_kernel_last_shapes_seeds_and_outputs(make: Any) -> None:
    k, r = kernel_last(make()), up.wrap(make())
    w = k.params["0.weight"]
    assert w.layout if hasattr(w, "layout") else True
    assert w.shape == r.params["0.weight"].shape
    assert w.native_shape == tuple(reversed(w.shape[:2])) if len(w.shape) == 2 else w.native_shape[-2:] == (
        w.shape[1], w.shape[0])
    k.initialize(up.init.KaimingNormal(), seed=3)
    r.initialize(up.init.KaimingNormal(), seed=3)
    assert_same(values(k), values(r))  # same numbers in canonical layout
    x = np.random.default_rng(0).normal(size=(2, 4) if make is mlp else (2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(k(x), r(x), rtol=1e-6)


def test_kernel_last_writes_reach_the_native_layout() -> None:
    k = kernel_last(mlp())
    value = np.arange(32, dtype=np.float32).reshape(8, 4)
    k.params["0.weight"].set(value)
    native = k._handle.read(k.params["0.weight"]._leaf)
    np.testing.assert_array_equal(native, value.T)
    k.params["0.weight"][1, 2] = -1
    assert k.params["0.weight"].value[1, 2] == -1 and k.native[0].weight.data[1, 2] == -1


def test_kernel_last_files_and_ports_both_ways(tmp_path: Any) -> None:
    k, r = kernel_last(cnn()), up.wrap(cnn())
    k.initialize(up.init.Normal(0, 1), seed=1)
    up.port(k, r)
    assert_same(values(k), values(r))
    r.initialize(up.init.Normal(0, 1), seed=2)
    up.save(r, tmp_path / "r.safetensors")
    up.load(k, tmp_path / "r.safetensors")
    assert_same(values(k), values(r))
    up.save(k, tmp_path / "k.safetensors")
    r2 = up.wrap(cnn())
    up.load(r2, tmp_path / "k.safetensors")
    assert_same(values(r2), values(r))


def test_kernel_last_tiled_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiled transpose (large kernels) gives the same values as NumPy's."""
    monkeypatch.setattr(_limits, "TILED_BYTES", 0)
    monkeypatch.setattr(_limits, "TILE", 8)
    net = ref.Sequential(ref.Dense(37, in_units=53), ref.Conv2d(19, 3, in_channels=23))
    k = kernel_last(net)
    k.initialize(up.init.Normal(0, 1), seed=0)
    for name in ("0.weight", "1.weight"):
        native = k._handle.read(k.params[name]._leaf)
        expected = np.transpose(native, (native.ndim - 1, native.ndim - 2, *range(native.ndim - 2)))
        got = k.params[name].value
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected)


def test_kernel_last_fans_follow_the_canonical_shape() -> None:
    net = ref.Sequential(ref.Conv2d(64, 3, in_channels=32))
    k = kernel_last(net)
    k.initialize(up.init.KaimingNormal(), seed=0)
    std = k.params["0.weight"].value.std()
    assert abs(std - np.sqrt(2 / (32 * 9))) < 0.01  # fan_in = in * prod(kernel), not the native first dims


def test_kernel_last_gradients_are_canonical() -> None:
    k, r = kernel_last(mlp()), up.wrap(mlp())
    k.initialize(up.init.Normal(0, 1), seed=0)
    r.initialize(up.init.Normal(0, 1), seed=0)
    x = np.ones((2, 4), np.float32)
    k.backward(x)
    r.backward(x)
    for n in r.params:
        np.testing.assert_allclose(k.params[n].grad, r.params[n].grad, rtol=1e-6, err_msg=n)


# -- rollback when a write fails midway -----------------------------------------


def _faulty(fail_at: int) -> tuple[Block, dict[str, np.ndarray]]:
    m = faulty(mlp())
    m.initialize(up.init.Normal(0, 1), seed=0)
    m._handle.writes = 0
    m._handle.fail_at = fail_at
    return m, values(m)


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_load_state_rolls_back(fail_at: int) -> None:
    m, before = _faulty(fail_at)
    with pytest.raises(up.UnifiedParamsError, match="fake backend"):
        m.load_state({k: v + 1 for k, v in before.items()})
    m._handle.fail_at = None
    assert_same(values(m), before)


@pytest.mark.parametrize("fail_at", [1, 3])
def test_initialize_port_and_load_roll_back(fail_at: int, tmp_path: Any) -> None:
    src = up.wrap(mlp())
    src.initialize(up.init.Normal(0, 1), seed=9)
    up.save(src, tmp_path / "src.safetensors")
    for action in (
        lambda m: m.initialize(up.init.Normal(0, 1), seed=5),
        lambda m: m.initialize(lambda shape, rng, p: rng.normal(size=shape)),
        lambda m: up.port(src, m),
        lambda m: up.load(m, tmp_path / "src.safetensors"),
    ):
        m, before = _faulty(fail_at)
        with pytest.raises(up.UnifiedParamsError):
            action(m)
        m._handle.fail_at = None
        assert_same(values(m), before)


def test_large_writes_keep_no_backups_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the backup threshold a host-memory write copies nothing first
    (the model may not fit twice); a source that can fail midway (a custom
    initializer) still gets backups and a rollback."""
    monkeypatch.setattr(_limits, "LARGE_BYTES", 0)
    m, before = _faulty(None)  # type: ignore[arg-type]
    m._handle.reads = 0
    m.load_state({k: v + 1 for k, v in before.items()})
    assert m._handle.reads == 0
    m._handle.fail_at = m._handle.writes + 2
    with pytest.raises(up.UnifiedParamsError):
        m.initialize(lambda shape, rng, p: np.full(shape, 7.0))
    m._handle.fail_at = None
    assert_same(values(m), {k: v + 1 for k, v in before.items()})
    monkeypatch.setattr(_limits, "LARGE_BYTES", 1 << 40)
    m._handle.reads = 0
    m.load_state(before)
    assert m._handle.reads == len(before)  # small: one backup per storage


# -- buffer ties ------------------------------------------------------------------


def test_buffer_ties() -> None:
    m = up.wrap(norm2())
    m.tie("2.running_mean", "1.running_mean")
    assert ("1.running_mean", "2.running_mean") in m.tied()
    m.buffers["1.running_mean"].set(np.full(4, 3.0))
    np.testing.assert_array_equal(m.buffers["2.running_mean"].value, np.full(4, 3.0))
    st = m.state()
    assert st["1.running_mean"] is st["2.running_mean"]
    with pytest.raises(up.StateError):
        m.load_state({**st, "1.running_mean": np.zeros(4), "2.running_mean": np.ones(4)})
    del st["2.running_mean"]
    m.load_state({**st, "1.running_mean": np.full(4, 5.0)})  # one name of the group suffices
    np.testing.assert_array_equal(m.buffers["2.running_mean"].value, np.full(4, 5.0))


def test_tie_refuses_a_parameter_to_a_buffer() -> None:
    m = up.wrap(norm2())
    before = values(m)
    with pytest.raises(up.TieError, match="buffer"):
        m.tie("1.weight", "1.running_mean")
    assert m.tied() == [] and values(m).keys() == before.keys()


# -- one walk per call; lookups that do not walk ----------------------------------


class CountingHandle(NumpyHandle):
    def __init__(self, model: Any):
        super().__init__(NumpyBackend(), model)
        self.walks = 0

    def tree(self) -> Any:
        self.walks += 1
        return super().tree()


def big(n: int) -> ref.Sequential:
    return ref.Sequential(*[ref.Dense(2, in_units=2) for _ in range(n)])


def test_a_name_is_looked_up_without_walking_the_model() -> None:
    h = CountingHandle(big(50))
    m = Block(h)
    m.params["30.weight"][0, 0] = 1.0
    m.params["30.weight"] += 1
    assert m.params["30.weight"].value[0, 0] == 2.0 and "30.bias" in m.params
    assert h.walks == 0
    assert m.params["30.weight"].tied_with == () and h.walks == 1  # asked for: one walk


@pytest.mark.parametrize("n", [10, 100])
def test_public_calls_walk_a_bounded_number_of_times(n: int, tmp_path: Any) -> None:
    h = CountingHandle(big(n))
    m = Block(h)
    counts = {}
    for name, call in {
        "state": lambda: m.state(),
        "load_state": lambda: m.load_state(m.state()),
        "initialize": lambda: m.initialize(up.init.Normal(), seed=0),
        "tied": lambda: m.tied(),
        "port": lambda: up.port(m, Block(CountingHandle(big(n)))),
        "save": lambda: up.save(m, tmp_path / "m.safetensors"),
        "load": lambda: up.load(m, tmp_path / "m.safetensors"),
        "backward": lambda: m.backward(np.ones((1, 2), np.float32)),
        "summary": lambda: m.summary(),
    }.items():
        h.walks = 0
        call()
        counts[name] = h.walks
    assert max(counts.values()) <= 4, counts


# -- gradients added up by the core ---------------------------------------------------


def test_gradients_add_up_until_zero_grad_of_a_sub_block() -> None:
    net = mlp()
    m = up.wrap(net)
    m.initialize(up.init.Normal(0, 1), seed=0)
    x = np.ones((2, 4), np.float32)
    m.backward(x)
    first = {n: p.grad for n, p in m.params.items()}
    m.backward(x)
    for n, p in m.params.items():
        np.testing.assert_allclose(p.grad, 2 * first[n], rtol=1e-6)
    assert up.wrap(net).params["0.weight"].grad is not None  # a second wrap of one model sees them
    m[2].zero_grad()
    assert m.params["2.weight"].grad is None and m.params["0.weight"].grad is not None
    m.zero_grad()
    assert all(p.grad is None for p in m.params.values())


# -- API cases of the robustness round ---------------------------------------------------


def test_integers_that_would_wrap_are_refused() -> None:
    net = ref.Sequential(ref.Dense(2, in_units=2, dtype=np.int64))
    m = up.wrap(net)
    with pytest.raises(up.DTypeError, match="within"):
        m.params["0.bias"].set(np.array([2**63, 0], dtype=np.uint64))
    with pytest.raises(up.DTypeError):
        m.params["0.bias"].set([2**64, 0])
    assert m.params["0.bias"].value.tolist() == [0, 0]


def test_ragged_lists_and_big_seeds_are_contract_errors() -> None:
    m = up.wrap(mlp())
    before = values(m)
    with pytest.raises(up.ShapeMismatchError, match="ragged|cannot make"):
        m.load_state({**before, "0.bias": [[1, 2], [3]]})
    with pytest.raises(up.ArgumentError):
        m.initialize(up.init.Normal(), seed=2**200)
    m.initialize(up.init.Normal(), seed=2**64)  # a large but valid seed
    assert not np.array_equal(values(m)["0.weight"], before["0.weight"])


def test_swapped_zero_copy_state_loads_both_layers() -> None:
    net = ref.Sequential(ref.Dense(4, in_units=4), ref.Dense(4, in_units=4))
    m = up.wrap(net)
    m.initialize(up.init.Normal(0, 1), seed=0)
    before = values(m)
    views = m.state(copy=False)
    m.load_state({"0.weight": views["1.weight"], "1.weight": views["0.weight"],
                  "0.bias": views["1.bias"], "1.bias": views["0.bias"]})
    np.testing.assert_array_equal(m.params["0.weight"].value, before["1.weight"])
    np.testing.assert_array_equal(m.params["1.weight"].value, before["0.weight"])


def test_initialize_is_atomic_and_checks_its_keys() -> None:
    m = up.wrap(mlp())
    m.initialize(up.init.Normal(0, 1), seed=0)
    before = values(m)
    with pytest.raises(up.UnifiedParamsError):
        m.initialize(up.init.Orthogonal())  # weights first, then a bias it cannot fill
    assert_same(values(m), before)

    class WrongShape(up.init.Initializer):
        def __call__(self, shape: Any, rng: Any, param: Any = None) -> Any:
            return np.zeros((1, *shape))

    with pytest.raises(up.ShapeMismatchError):
        m.initialize(WrongShape())
    assert_same(values(m), before)
    with pytest.raises(up.UnifiedParamsError):
        m.initialize(lambda shape, rng, p: np.zeros(shape) + 1j)
    assert_same(values(m), before)
    with pytest.raises(up.ParamNotFoundError, match="allow_unmatched"):
        m.initialize({r".*weigth": up.init.Zeros()})
    assert_same(values(m), before)
    m.initialize({r".*weigth": up.init.Zeros(), r".*bias": up.init.Ones()}, allow_unmatched=True)
    assert values(m)["0.bias"].tolist() == [1.0] * 8


def test_a_strict_load_with_no_common_name_suggests_match_order() -> None:
    m = up.wrap(mlp())
    with pytest.raises(up.StateError, match="match='order'"):
        m.load_state({f"layers_{i}.kernel": v for i, v in enumerate(values(m).values())})


def test_reports_are_bounded_in_length() -> None:
    m = up.wrap(mlp())
    with pytest.raises(up.StateError) as info:
        m.load_state({f"extra.{i}": np.zeros(1) for i in range(100_000)})
    assert len(str(info.value)) < 2000 and "99995 more" in str(info.value)


# -- threads (contract 14) ---------------------------------------------------------


def test_threads_lose_no_update_and_never_see_half_a_write() -> None:
    net = ref.Sequential(ref.Dense(256, in_units=256))
    m = up.wrap(net)
    m.params["0.bias"].fill(0)
    p = m.params["0.bias"]

    def add() -> None:
        for _ in range(200):
            p.__iadd__(1)

    threads = [threading.Thread(target=add) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.value.tolist() == [1600.0] * 256

    a, b = np.zeros((256, 256), np.float32), np.ones((256, 256), np.float32)
    m.params["0.weight"].set(a)
    seen: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            v = up.wrap(net).params["0.weight"].value  # another wrap of the same model: same lock
            seen.append(float(v.min()) - float(v.max()))

    def writer() -> None:
        for i in range(100):
            m.load_state({"0.weight": a if i % 2 else b, "0.bias": np.zeros(256)})

    r = threading.Thread(target=reader)
    r.start()
    writer()
    stop.set()
    r.join()
    assert seen and all(d == 0 for d in seen)


def test_blocks_of_different_models_do_not_share_a_lock() -> None:
    a, b = up.wrap(mlp()), up.wrap(mlp())
    assert a._shared.lock is not b._shared.lock
    assert up.wrap(a.native)._shared.lock is a._shared.lock


def test_fault_type_is_exported() -> None:
    assert issubclass(InjectedFault, RuntimeError) and FaultyHandle and KernelLastHandle


def test_a_child_is_found_by_key_without_walking_the_model() -> None:
    h = CountingHandle(big(50))
    m = Block(h)
    child = m["30"]
    assert child.path == "30" and child.params["weight"].shape == (2, 2)
    assert h.walks == 0
    with pytest.raises(up.ParamNotFoundError):
        m["nope"]
