"""Checkpoints written by the frameworks' own save functions, loaded with
``match='structure'`` into a NumPy reference twin (issue 15.3); each test
runs where its framework is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import reference as ref

X = np.linspace(-1, 1, 2 * 6, dtype=np.float32).reshape(2, 6)


def twin() -> Any:
    """6 -> 8 -> 8 -> 3 (a square layer in the middle)."""
    m = up.wrap(ref.Sequential(ref.Dense(8, in_units=6), ref.ReLU(), ref.Dense(8, in_units=8), ref.ReLU(),
                               ref.Dense(3, in_units=8)))
    m.initialize(up.init.Normal(0, 1), seed=9)
    return m


def test_keras_save_weights(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                            keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    f = tmp_path / "net.weights.h5"
    net.save_weights(str(f))
    y = np.asarray(net(X))
    m = twin()
    report = up.load(m, f, match="structure", check=(X, y))
    assert len(report.pairs) == 6 and {lay for *_, lay in report.pairs} >= {"kernel_last"}
    np.testing.assert_allclose(m(X), y, rtol=1e-5, atol=1e-6)


def test_flax_to_bytes(tmp_path: Path) -> None:
    jax = pytest.importorskip("jax")
    nn = pytest.importorskip("flax.linen")
    serialization = pytest.importorskip("flax.serialization")

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.relu(nn.Dense(8, name="up")(x))
            x = nn.relu(nn.Dense(8, name="mid")(x))
            return nn.Dense(3, name="down")(x)

    variables = jax.jit(MLP().init)(jax.random.PRNGKey(0), X)  # keys sorted: down, mid, up
    f = tmp_path / "mlp.msgpack"
    f.write_bytes(serialization.to_bytes(variables))
    y = np.asarray(MLP().apply(variables, X))
    m = twin()
    report = up.load(m, f, match="structure", check=(X, y))  # shapes place the sorted layers
    assert ("params/up/kernel", "0.weight", "kernel_last") in report.pairs
    np.testing.assert_allclose(m(X), y, rtol=1e-5, atol=1e-6)
    names = {r"^params/up/kernel$": "0.weight", r"^params/up/bias$": "0.bias",
             r"^params/mid/kernel$": "2.weight", r"^params/mid/bias$": "2.bias",
             r"^params/down/kernel$": "4.weight", r"^params/down/bias$": "4.bias"}
    m2 = twin()
    report = up.load(m2, f, match="structure", names=names, check=(X, y))
    assert len(report.pairs) == 6
    np.testing.assert_allclose(m2(X), y, rtol=1e-5, atol=1e-6)


def test_gluon_save_parameters(tmp_path: Path) -> None:
    mx = pytest.importorskip("mxnet")
    from mxnet.gluon import nn

    net = nn.HybridSequential()
    net.add(nn.Dense(8, activation="relu", in_units=6), nn.Dense(8, activation="relu", in_units=8),
            nn.Dense(3, in_units=8))
    net.initialize(mx.init.Normal(1.0))
    y = net(mx.nd.array(X)).asnumpy()
    f = tmp_path / "net.params"
    net.save_parameters(str(f))
    m = twin()
    report = up.load(m, f, match="structure", check=(X, y))
    assert len(report.pairs) == 6
    np.testing.assert_allclose(m(X), y, rtol=1e-5, atol=1e-6)
