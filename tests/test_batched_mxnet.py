"""MXNet's batched writes (issue 13): many Gluon parameters written from one
stacked host array. Bit-exact against Gluon's own values, a failure midway
restores every parameter, a Trainer that keeps values in its kvstore still
sees what a load wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

import unified_params as up  # noqa: E402

N = 60  # Dense layers: 120 parameters, two shapes


def _net(seed: int, n: int = N, units: int = 3, ctx: Any = None) -> Any:
    from mxnet.gluon import nn

    net = nn.Sequential()
    for _ in range(n):
        net.add(nn.Dense(units, in_units=2))
    net.initialize(mx.init.Zero(), ctx=ctx)
    rng = np.random.default_rng(seed)
    for p in net.collect_params().values():
        p.set_data(mx.nd.array(rng.standard_normal(p.shape).astype(np.float32)))
    return net


def _native(net: Any) -> dict[str, bytes]:
    return {k: p.data().asnumpy().tobytes() for k, p in net.collect_params().items()}


def _values(net: Any) -> list[bytes]:
    return [p.data().asnumpy().tobytes() for p in net.collect_params().values()]


def test_load_and_port_are_bit_exact(tmp_path: Path) -> None:
    src, dst, other = _net(1), _net(2), _net(3)
    f = up.save(up.wrap(src), tmp_path / "m.safetensors")
    up.load(up.wrap(dst), f)
    assert _values(dst) == _values(src)
    up.port(up.wrap(src), up.wrap(other))
    assert _values(other) == _values(src)
    for p in other.collect_params().values():  # Gluon's own reads agree with ours
        assert p.data().shape == p.shape


def test_a_write_failing_midway_restores_every_parameter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-copy route (a writable DLPack view of each array) failing at
    the N-th parameter: every parameter is as before."""
    src, dst = _net(4), _net(5)
    f = up.save(up.wrap(src), tmp_path / "m.safetensors")
    before = _native(dst)
    real = mx.nd.to_dlpack_for_write
    calls = [0]

    def failing(arr: Any) -> Any:
        calls[0] += 1
        if calls[0] == N:  # half way through the batch, once
            raise OSError("injected: a copy failed")
        return real(arr)

    monkeypatch.setattr(mx.nd, "to_dlpack_for_write", failing)
    with pytest.raises(up.UnifiedParamsError, match="injected"):
        up.load(up.wrap(dst), f)
    assert calls[0] >= N
    monkeypatch.setattr(mx.nd, "to_dlpack_for_write", real)
    assert _native(dst) == before


def test_a_stacked_write_failing_midway_restores_every_parameter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stacked route (parameters on two contexts: no one-array view)
    failing midway: every parameter on every context is as before."""
    ctx = [mx.cpu(0), mx.cpu(1)]
    src, dst = _net(4), _net(5, ctx=ctx)
    f = up.save(up.wrap(src), tmp_path / "m.safetensors")
    before = _native(dst)
    real = mx.nd.NDArray.copyto
    calls = [0]

    def failing(self: Any, other: Any) -> Any:
        calls[0] += 1
        if calls[0] == N:
            raise mx.base.MXNetError("injected: a copy failed")
        return real(self, other)

    monkeypatch.setattr(mx.nd.NDArray, "copyto", failing)
    with pytest.raises(up.UnifiedParamsError, match="injected"):
        up.load(up.wrap(dst), f)
    assert calls[0] >= N
    monkeypatch.setattr(mx.nd.NDArray, "copyto", real)
    assert _native(dst) == before
    for p in dst.collect_params().values():
        assert p.data(mx.cpu(1)).asnumpy().tobytes() == p.data(mx.cpu(0)).asnumpy().tobytes()


def test_a_trainer_kvstore_sees_a_load(tmp_path: Path) -> None:
    """With update_on_kvstore the Trainer keeps the weights in its kvstore:
    after a load, the next step starts from the loaded values (as after
    Gluon's own set_data), not from the kvstore's stale copy. Two CPU
    contexts: every context's copy is written."""
    from mxnet import autograd, gluon

    def step(net: Any, trainer: Any) -> None:
        ctxs = net[0].weight.list_ctx()
        with autograd.record():
            ys = [net(mx.nd.ones((1, 2), ctx=c)).sum() for c in ctxs]
        autograd.backward(ys)
        trainer.step(len(ctxs))

    src = _net(6, 3, units=2)
    f = up.save(up.wrap(src), tmp_path / "m.safetensors")
    runs = []
    for how in ("ours", "gluon"):
        net = _net(7, 3, units=2, ctx=[mx.cpu(0), mx.cpu(1)])
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5}, kvstore="local",
                                update_on_kvstore=True)
        step(net, trainer)  # the kvstore now holds the weights
        if how == "ours":
            up.load(up.wrap(net), f)
        else:
            for p, q in zip(net.collect_params().values(), src.collect_params().values()):
                p.set_data(q.data())
        assert _values(net) == _values(src)
        for p in net.collect_params().values():
            assert p.data(mx.cpu(1)).asnumpy().tobytes() == p.data(mx.cpu(0)).asnumpy().tobytes()
        step(net, trainer)
        runs.append(_values(net))
    assert runs[0] == runs[1]
