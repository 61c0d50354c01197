"""Recurrent twins (issue 14, deliver 3): the same LSTM / GRU / simple RNN in
PyTorch, Keras and Flax (linen ``nn.RNN(cell)`` and NNX ``nnx.RNN(cell)``),
seeded once in one, ported in memory (``up.port(src, dst, check=x)``) and
through a file (``up.save``, then ``up.load(..., match="order",
check=(x, y))``), outputs equal to float32 tolerance, both directions.

PyTorch stacks its gates (``weight_ih`` ``(4H, in)`` in gate order i, f, g,
o; two biases), Keras stacks them with one bias, Flax keeps one Dense per
gate: the ports regroup them (``GATE_GROUPS`` in the layout table). A
direction without an exact mapping (PyTorch's GRU ``b_hn`` into NNX's
GRUCell, which has none) is refused with nothing changed.

Gluon <-> PyTorch recurrent twins are in tests/test_twins_gluon.py (MXNet
never shares a process with TensorFlow or JAX, so Gluon <-> Keras/Flax has
no twin here). Runs where torch, keras and flax import (tox env ``interop``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")

import unified_params as up  # noqa: E402
from unified_params import PortError  # noqa: E402
from unified_params.testing.twins import assert_carried  # noqa: E402

TOL = {"rtol": 1e-4, "atol": 1e-5}
N, T, IN, H = 2, 5, 3, 4
INIT = up.init.Uniform(-0.5, 0.5)


class _Seq(torch.nn.Module):
    """A torch recurrent layer (batch first) returning its output sequence
    only, as Keras ``return_sequences=True`` and Flax ``nn.RNN`` do."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.rnn = layer

    def forward(self, x: Any) -> Any:
        return self.rnn(x)[0]


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (N, T, IN)).astype(np.float32)


# -- models: each maker returns a fresh wrapped model -------------------------------------

def _torch(kind: str, layers: int = 1) -> Callable[[], Any]:
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    return lambda: up.wrap(_Seq(cls(IN, H, num_layers=layers, batch_first=True)).eval())


def _keras(kind: str) -> Callable[[], Any]:
    def make() -> Any:
        cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}[kind]
        return up.wrap(keras.Sequential([keras.Input((T, IN)), cls(H, return_sequences=True)]))
    return make


@functools.cache
def _linen_init(kind: str, layers: int) -> tuple[Any, Any]:
    """One module and its ``jit(init)`` variables per configuration (the
    costly part); every model made from them gets its own containers."""
    cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.SimpleCell}[kind]

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            for _ in range(layers):
                x = nn.RNN(cell(H))(x)
            return x

    net = Net()
    return net, jax.jit(net.init)(jax.random.key(0), _x())


def _linen(kind: str, layers: int = 1) -> Callable[[], Any]:
    def make() -> Any:
        net, variables = _linen_init(kind, layers)
        return up.wrap(net, jax.tree.map(lambda a: a, variables))
    return make


def _nnx(kind: str) -> Callable[[], Any]:
    cell = {"lstm": nnx.LSTMCell, "gru": nnx.GRUCell, "rnn": nnx.SimpleCell, "optimized": nnx.OptimizedLSTMCell}[kind]
    return lambda: up.wrap(nnx.RNN(cell(IN, H, rngs=nnx.Rngs(0))))


def _one_way(make_src: Callable[[], Any], make_dst: Callable[[], Any], tmp_path: Path, seed: int) -> None:
    src = make_src()
    src.initialize(INIT, seed=seed)
    assert_carried(src, make_dst, _x(seed), _x(seed), tmp_path, TOL)


def _both(make_a: Callable[[], Any], make_b: Callable[[], Any], tmp_path: Path) -> None:
    _one_way(make_a, make_b, tmp_path, 0)
    _one_way(make_b, make_a, tmp_path, 1)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_torch_keras(kind: str, tmp_path: Path) -> None:
    _both(_torch(kind), _keras(kind), tmp_path)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_torch_linen(kind: str, tmp_path: Path) -> None:
    _both(_torch(kind), _linen(kind), tmp_path)


def test_torch_linen_two_layers(tmp_path: Path) -> None:
    """PyTorch's num_layers=2 (weight_ih_l0 .. bias_hh_l1) against two Flax RNNs."""
    _both(_torch("lstm", layers=2), _linen("lstm", layers=2), tmp_path)


@pytest.mark.parametrize("kind", ["lstm", "rnn", "optimized"])
def test_torch_nnx(kind: str, tmp_path: Path) -> None:
    """NNX OptimizedLSTMCell stacks its gates (dense_i, dense_h) with one bias."""
    _both(_torch("lstm" if kind == "optimized" else kind), _nnx(kind), tmp_path)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_keras_linen(kind: str, tmp_path: Path) -> None:
    """Keras' one (LSTM) or stacked (GRU) bias against Flax's per-gate biases."""
    _both(_keras(kind), _linen(kind), tmp_path)


def test_nnx_gru_to_torch_and_back_refused(tmp_path: Path) -> None:
    """NNX GRUCell keeps no hidden bias of the n gate (PyTorch's b_hn, inside
    r * (W_hn h + b_hn)): NNX -> PyTorch is exact (bias_hh zero), PyTorch ->
    NNX has no exact mapping and is refused before anything is read or
    written, in memory and from a file."""
    _one_way(_nnx("gru"), _torch("gru"), tmp_path, 0)
    src, dst = _torch("gru")(), _nnx("gru")()
    src.initialize(INIT, seed=2)
    before = dst.state()
    with pytest.raises(PortError, match="keeps no bias for PyTorch's bias_hh gate 2") as info:
        up.port(src, dst)
    assert "rnn.weight_ih_l0" in str(info.value) and "'cell'" in str(info.value)  # both sides named
    path = tmp_path / "torch-gru.safetensors"
    up.save(src, path)
    with pytest.raises(PortError, match="bias_hh gate 2"):
        up.load(dst, path, match="order")
    after = dst.state()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_wrong_size_names_both_sides() -> None:
    """A PyTorch LSTM of another hidden size against Flax's gates: a PortError
    naming both sides, nothing changed."""
    src = up.wrap(_Seq(torch.nn.LSTM(IN, H + 1, batch_first=True)))
    dst = _linen("lstm")()
    before = dst.state()
    with pytest.raises(PortError) as info:
        up.port(src, dst)
    text = str(info.value)
    assert "rnn.weight_ih_l0" in text and "LSTMCell_0" in text
    after = dst.state()
    assert all(np.array_equal(before[k], after[k]) for k in before)
