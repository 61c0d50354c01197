"""MXNet writes in one copy (issue 18): a load, ``load_state`` or ``set``
copies the value straight into the Gluon array's own memory (a writable
DLPack view) instead of making a new NDArray and ``set_data``-ing it. These
tests fail if that route is not taken where it should be, if it writes
wrong bytes, or if Gluon (a hybridized cached op, oneDNN, a Trainer's
kvstore) misses the new values; and a sharded safetensors directory loads
into a Gluon model by its structural names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

import unified_params as up  # noqa: E402


@pytest.fixture(params=["nd", "np"])
def interface(request: pytest.FixtureRequest) -> Any:
    if request.param == "np":
        mx.npx.set_np()
    try:
        yield request.param
    finally:
        if request.param == "np":
            mx.npx.reset_np()


def _array(x: np.ndarray) -> Any:
    return mx.np.array(x) if mx.util.is_np_array() else mx.nd.array(x)


def _mlp(seed: int, dtype: str = "float32", hybrid: bool = False) -> Any:
    """Two large layers (each weight above the core's batch size: the
    one-storage route) and small ones (one batched write)."""
    net = nn.HybridSequential()
    net.add(nn.Dense(600, in_units=600), nn.Dense(3, in_units=600), nn.Dense(3, in_units=3))
    net.initialize(mx.init.Zero())
    net.cast(dtype)
    rng = np.random.default_rng(seed)
    for p in net.collect_params().values():
        p.set_data(_array(rng.standard_normal(p.shape).astype(dtype)))
    if hybrid:
        net.hybridize()
    return net


def _bytes(net: Any) -> dict[str, bytes]:
    return {k: p.data().asnumpy().tobytes() for k, p in net._collect_params_with_prefix().items()}


class _Counts:
    """Calls of the two-copy route: new arrays from NumPy and ``set_data``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        for owner, name in ((mx.nd, "array"), (mx.np, "array"), (gluon.Parameter, "set_data")):
            real = getattr(owner, name)

            def counted(*a: Any, _real: Any = real, **k: Any) -> Any:
                self.n += 1
                return _real(*a, **k)

            monkeypatch.setattr(owner, name, counted)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_load_copies_into_the_arrays_own_memory(
    interface: str, dtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = _mlp(1, dtype), _mlp(2, dtype)
    f = up.save(up.wrap(src), tmp_path / "m.safetensors")
    m = up.wrap(dst)
    arrays = [p._data[0] for p in dst.collect_params().values()]
    dst2 = _mlp(3, dtype)
    m2 = up.wrap(dst2)
    state = up.wrap(src).state()
    counts = _Counts(monkeypatch)
    up.load(m, f)
    assert counts.n == 0  # no new NDArray, no set_data
    assert _bytes(dst) == _bytes(src)
    assert [p._data[0] for p in dst.collect_params().values()] == arrays  # the same arrays, written in place
    # load_state and a single set take the same route.
    m2.load_state(state)
    w = np.full((3, 3), 0.5, dtype)
    m2.params["2.weight"].set(w)
    assert counts.n == 0
    want = _bytes(src)
    want["2.weight"] = w.tobytes()
    assert _bytes(dst2) == want


def test_a_large_storage_is_read_from_the_file_into_the_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A storage above the batch size: the file's bytes go into the array
    (``host_buffer``), not through ``write``."""
    from unified_params_mxnet._handle import MXNetHandle

    src, dst = _mlp(4), _mlp(5)
    f = up.save(up.wrap(src), tmp_path / "m.safetensors")
    m = up.wrap(dst)
    m.initialize(up.init.Constant(0.0))
    writes: list[str] = []
    for name in ("write", "write_many"):
        real = getattr(MXNetHandle, name)

        def spy(self: Any, *a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            writes.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(MXNetHandle, name, spy)
    up.load(m, f)
    assert writes.count("write") == 0  # 0.weight: straight from the file
    assert _bytes(dst) == _bytes(src)


def test_a_hybridized_model_computes_with_the_loaded_values(tmp_path: Path) -> None:
    src, dst = _mlp(6, hybrid=True), _mlp(7, hybrid=True)
    x = mx.nd.array(np.random.default_rng(0).standard_normal((2, 600)).astype(np.float32))
    want = src(x).asnumpy()
    dst(x).wait_to_read()  # the cached op exists and holds dst's arrays
    up.load(up.wrap(dst), up.save(up.wrap(src), tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(dst(x).asnumpy(), want)


def _cnn(seed: int) -> Any:
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, in_channels=3), nn.Activation("relu"),
            nn.Conv2D(4, 3, padding=1, in_channels=8), nn.GlobalAvgPool2D(), nn.Flatten())
    net.initialize(mx.init.Xavier())
    up.wrap(net).initialize(up.init.Normal(0.0, 0.5), seed=seed)
    net.hybridize()
    return net


def test_onednn_convolutions_compute_with_values_written_through_a_view(tmp_path: Path) -> None:
    """After a training pass oneDNN's weights are in MXNet's layout again and
    a view is granted: the next inference pass (oneDNN re-lays the weights
    out from the new bytes) computes with the written values; after an
    inference pass MXNet refuses the view and the write takes set_data."""
    x = mx.nd.array(np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32))
    src = _cnn(1)
    want = src(x).asnumpy()
    f = up.save(up.wrap(src), tmp_path / "cnn.safetensors")
    for mode in ("train", "predict"):
        dst = _cnn(2)
        dst(x).wait_to_read()  # inference: oneDNN holds the weights
        if mode == "train":
            with autograd.record():
                y = dst(x)
            y.backward()
            for p in dst.collect_params().values():
                mx.nd.to_dlpack_for_read(p.data())  # the premise: views are granted now
        up.load(up.wrap(dst), f)
        np.testing.assert_array_equal(dst(x).asnumpy(), want, err_msg=mode)
        assert _bytes(dst) == _bytes(src)


def test_a_trainer_on_one_context_sees_a_load(tmp_path: Path) -> None:
    """A Trainer on one context (no kvstore: Gluon updates the arrays in
    place) steps from the values written through the view, exactly as after
    Gluon's own set_data. (Two contexts with a kvstore: test_batched_mxnet.)"""

    def step(net: Any, trainer: Any) -> None:
        with autograd.record():
            y = net(mx.nd.ones((1, 3))).sum()
        y.backward()
        trainer.step(1)

    def small(seed: int) -> Any:
        net = nn.Sequential()
        net.add(nn.Dense(3, in_units=3), nn.Dense(2, in_units=3))
        net.initialize(mx.init.Zero())
        up.wrap(net).initialize(up.init.Normal(0.0, 1.0), seed=seed)
        return net

    src = small(1)
    f = up.save(up.wrap(src), tmp_path / "m.safetensors")
    runs = []
    for how in ("ours", "gluon"):
        net = small(2)
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
        step(net, trainer)
        if how == "ours":
            up.load(up.wrap(net), f)
        else:
            for p, q in zip(net.collect_params().values(), src.collect_params().values()):
                p.set_data(q.data())
        assert _bytes(net) == _bytes(src)
        step(net, trainer)
        runs.append(_bytes(net))
    assert runs[0] == runs[1]


def test_a_sharded_directory_loads_into_a_gluon_model_by_name(interface: str, tmp_path: Path) -> None:
    """The index and its shards hold Gluon's structural names (``0.weight``,
    what ``save_parameters`` writes), not the prefixed global ones; a load
    of the directory moves every value bit-exactly, as Gluon's own
    ``set_data`` by those names does."""
    from safetensors.numpy import load_file

    src, dst, native = _mlp(8), _mlp(9), _mlp(10)
    nbytes = sum(p.data().size * 4 for p in src.collect_params().values())
    folder = tmp_path / "sharded"
    up.save(up.wrap(src), folder, max_shard_size=nbytes // 3)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(src._collect_params_with_prefix())
    assert len(set(index["weight_map"].values())) >= 2
    up.load(up.wrap(dst), folder)
    assert _bytes(dst) == _bytes(src)
    params = native._collect_params_with_prefix()
    for shard in dict.fromkeys(index["weight_map"].values()):
        for k, v in load_file(str(folder / shard)).items():
            params[k].set_data(_array(v))
    assert _bytes(native) == _bytes(src)
