"""Keras <-> PyTorch twins (issue 14, deliver 3): for every Keras row of the
layout table with a PyTorch equivalent, the same layer built natively in both
frameworks, seeded once in one, ported in memory (``up.port(src, dst,
check=x)``) and through a file (``up.save``, then ``up.load(...,
match="order", check=(x, y))``), outputs equal to float32 tolerance, both
directions; and a real pair, Keras' ``MobileNetV2`` and torchvision's
``mobilenet_v2``, made to compute the same function.

Images cross in each framework's own layout: PyTorch takes NCHW, Keras NHWC
(``check=(x_src, x_dst)``), and each Keras twin ends in a ``Permute`` to
channels first so both outputs read alike. The recurrent layers alone
(LSTM, GRU, simple RNN) are in tests/test_twins_rnn.py, the transformer block
in tests/test_twins_transformer.py, the flatten trap (contract 12.3: right by
shape, wrong in meaning, caught by ``check=``) in tests/test_check_flatten.py.
Runs where torch and keras import (tox env ``interop``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras")

import unified_params as up  # noqa: E402
from unified_params import PortError  # noqa: E402
from unified_params.testing.twins import assert_carried  # noqa: E402

nn = torch.nn
L = keras.layers
TOL = {"rtol": 1e-4, "atol": 1e-5}
INIT = up.init.Uniform(-0.5, 0.5)
EPS = 1e-5  # PyTorch's norm default; the Keras twins are told to use it
torch.set_num_threads(1)


class _Seq(nn.Module):
    """A torch recurrent layer returning its output sequence only."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.rnn = layer

    def forward(self, x: Any) -> Any:
        return self.rnn(x)[0]


def _keras(shape: tuple[int, ...], *layers: Any, dtype: str = "float32", channels_first: int = 0) -> Any:
    """A Keras Sequential on inputs of ``shape``; ``channels_first=n`` ends it
    in a Permute of an n-D channels-last output to channels first."""
    tail = [L.Permute((channels_first + 1, *range(1, channels_first + 1)))] if channels_first else []
    return keras.Sequential([keras.Input(shape, dtype=dtype), *layers, *tail])


@dataclass
class Twin:
    torch: Callable[[], nn.Module]
    keras: Callable[[], Any]
    x: Callable[[int], np.ndarray]  # PyTorch's input (NC...) for a seed
    spatial: int = 0  # the input's spatial dims: Keras gets it channels last


def _img(*shape: int) -> Callable[[int], np.ndarray]:
    return lambda seed: np.random.default_rng(seed).uniform(-1, 1, (2, *shape)).astype(np.float32)


def _ids(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 11, (2, 5)).astype(np.int64)


TWINS: dict[str, Twin] = {
    "dense": Twin(lambda: nn.Linear(3, 5), lambda: _keras((3,), L.Dense(5)), _img(3)),
    "einsum_dense": Twin(lambda: nn.Linear(3, 5),
                         lambda: _keras((4, 3), L.EinsumDense("abc,cd->abd", (None, 5), bias_axes="d")),
                         _img(4, 3)),
    "conv1d": Twin(lambda: nn.Conv1d(3, 4, 3, stride=2), lambda: _keras((9, 3), L.Conv1D(4, 3, strides=2),
                                                                       channels_first=1), _img(3, 9), 1),
    "conv2d": Twin(lambda: nn.Conv2d(3, 4, 3), lambda: _keras((6, 6, 3), L.Conv2D(4, 3), channels_first=2),
                   _img(3, 6, 6), 2),
    "conv3d": Twin(lambda: nn.Conv3d(2, 3, (2, 3, 3)),
                   lambda: _keras((3, 5, 5, 2), L.Conv3D(3, (2, 3, 3)), channels_first=3), _img(2, 3, 5, 5), 3),
    "grouped": Twin(lambda: nn.Conv2d(6, 4, 3, groups=2),
                    lambda: _keras((6, 6, 6), L.Conv2D(4, 3, groups=2), channels_first=2), _img(6, 6, 6), 2),
    "conv1d_transpose": Twin(lambda: nn.ConvTranspose1d(3, 4, 3, stride=2),
                             lambda: _keras((5, 3), L.Conv1DTranspose(4, 3, strides=2), channels_first=1),
                             _img(3, 5), 1),
    "conv2d_transpose": Twin(lambda: nn.ConvTranspose2d(3, 4, 3, stride=2),
                             lambda: _keras((4, 4, 3), L.Conv2DTranspose(4, 3, strides=2), channels_first=2),
                             _img(3, 4, 4), 2),
    "conv3d_transpose": Twin(lambda: nn.ConvTranspose3d(2, 3, 2, stride=2),
                             lambda: _keras((2, 3, 3, 2), L.Conv3DTranspose(3, 2, strides=2), channels_first=3),
                             _img(2, 2, 3, 3), 3),
    "depthwise2d": Twin(lambda: nn.Conv2d(3, 6, 3, groups=3),
                        lambda: _keras((6, 6, 3), L.DepthwiseConv2D(3, depth_multiplier=2), channels_first=2),
                        _img(3, 6, 6), 2),
    "depthwise1d": Twin(lambda: nn.Conv1d(3, 6, 3, groups=3),
                        lambda: _keras((7, 3), L.DepthwiseConv1D(3, depth_multiplier=2), channels_first=1),
                        _img(3, 7), 1),
    "separable2d": Twin(lambda: nn.Sequential(nn.Conv2d(3, 6, 3, groups=3, bias=False), nn.Conv2d(6, 4, 1)),
                        lambda: _keras((6, 6, 3), L.SeparableConv2D(4, 3, depth_multiplier=2), channels_first=2),
                        _img(3, 6, 6), 2),
    "separable1d": Twin(lambda: nn.Sequential(nn.Conv1d(3, 3, 3, groups=3, bias=False), nn.Conv1d(3, 4, 1)),
                        lambda: _keras((7, 3), L.SeparableConv1D(4, 3), channels_first=1), _img(3, 7), 1),
    "embedding": Twin(lambda: nn.Embedding(11, 4), lambda: _keras((5,), L.Embedding(11, 4), dtype="int64"), _ids),
    "batchnorm": Twin(lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)),
                      lambda: _keras((4, 4, 3), L.Conv2D(4, 1), L.BatchNormalization(epsilon=EPS),
                                     channels_first=2), _img(3, 4, 4), 2),
    "layernorm": Twin(lambda: nn.LayerNorm(6), lambda: _keras((5, 6), L.LayerNormalization(epsilon=EPS)),
                      _img(5, 6)),
    "groupnorm": Twin(lambda: nn.GroupNorm(2, 6, eps=EPS),
                      lambda: _keras((4, 4, 6), L.GroupNormalization(2, epsilon=EPS), channels_first=2),
                      _img(6, 4, 4), 2),
    "rmsnorm": Twin(lambda: nn.RMSNorm(6, eps=1e-6), lambda: _keras((5, 6), L.RMSNormalization(epsilon=1e-6)),
                    _img(5, 6)),
    "lstm_bidirectional": Twin(lambda: _Seq(nn.LSTM(3, 4, batch_first=True, bidirectional=True)),
                               lambda: _keras((5, 3), L.Bidirectional(L.LSTM(4, return_sequences=True))),
                               _img(5, 3)),
    "lstm_two_layers": Twin(lambda: _Seq(nn.LSTM(3, 4, num_layers=2, batch_first=True)),
                            lambda: _keras((5, 3), L.LSTM(4, return_sequences=True), L.LSTM(4, return_sequences=True)),
                            _img(5, 3)),
    "gru_bidirectional": Twin(lambda: _Seq(nn.GRU(3, 4, batch_first=True, bidirectional=True)),
                              lambda: _keras((5, 3), L.Bidirectional(L.GRU(4, return_sequences=True))),
                              _img(5, 3)),
    "simple_rnn_relu": Twin(lambda: _Seq(nn.RNN(3, 4, nonlinearity="relu", batch_first=True)),
                            lambda: _keras((5, 3), L.SimpleRNN(4, activation="relu", return_sequences=True)),
                            _img(5, 3)),
}


def _keras_input(twin: Twin, x: np.ndarray) -> np.ndarray:
    if x.dtype == np.int64:
        return x
    return np.moveaxis(x, 1, -1) if twin.spatial else x


def _seed(m: up.Block, seed: int) -> None:
    """Parameters drawn, running statistics set away from their defaults."""
    m.initialize(INIT, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for p in m.buffers.values():
        if np.issubdtype(p.dtype, np.floating):
            p.set(rng.uniform(0.5, 1.5, p.shape).astype(p.dtype))


def _one_way(make_src: Callable[[], up.Block], make_dst: Callable[[], up.Block], xs: np.ndarray, xd: np.ndarray,
             tmp_path: Path, seed: int) -> None:
    src = make_src()
    _seed(src, seed)
    assert_carried(src, make_dst, xs, xd, tmp_path, TOL)


def _makers(twin: Twin) -> tuple[Callable[[], up.Block], Callable[[], up.Block]]:
    def t() -> up.Block:
        torch.manual_seed(0)
        return up.wrap(twin.torch().eval())

    return t, lambda: up.wrap(twin.keras())


@pytest.mark.parametrize("name", list(TWINS))
def test_torch_keras_both_ways(name: str, tmp_path: Path) -> None:
    twin = TWINS[name]
    t, k = _makers(twin)
    if not isinstance(twin.torch(), _Seq):  # canonical shapes equal, in the same order (recurrent
        # layers differ in their biases: one in Keras, two in PyTorch, paired by the port)
        assert [p.shape for p in t().params.values()] == [p.shape for p in k().params.values()]
    x0, x1 = twin.x(0), twin.x(1)
    _one_way(t, k, x0, _keras_input(twin, x0), tmp_path, 0)
    _one_way(k, t, _keras_input(twin, x1), x1, tmp_path, 1)


def test_a_wrong_pair_is_caught_by_check_and_changes_nothing() -> None:
    """Contract 12.3 on a layer twin: a Keras GroupNormalization with other
    groups pairs by shape with PyTorch's GroupNorm(2, 6) and computes
    something else: PortError, the destination unchanged."""
    src = up.wrap(nn.GroupNorm(2, 6, eps=EPS).eval())
    dst = up.wrap(_keras((4, 4, 6), L.GroupNormalization(3, epsilon=EPS), channels_first=2))
    _seed(src, 0)
    before = dst.state()
    x = _img(6, 4, 4)(0)
    with pytest.raises(PortError, match=r"max \|dy\|"):
        up.port(src, dst, check=(x, np.moveaxis(x, 1, -1)))
    for n, v in dst.state().items():
        np.testing.assert_array_equal(v, before[n])


# -- a real pair: Keras' MobileNetV2 and torchvision's mobilenet_v2 ----------------


def _torchvision() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import torchvision
    return torchvision


def _torch_mobilenet_v2() -> up.Block:
    """torchvision's mobilenet_v2 made to compute what Keras' does: its
    stride-2 3x3 convolutions pad (0, 1) as TensorFlow's "same" and Keras'
    ``correct_pad`` do on even sizes (torchvision pads 1 on each side), and
    batch norm uses Keras' epsilon 1e-3. Names and parameters are
    torchvision's."""
    torch.manual_seed(0)
    net = _torchvision().models.mobilenet_v2(num_classes=10)
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d) and mod.stride == (2, 2) and mod.kernel_size == (3, 3):
            mod.padding = (0, 0)
            mod.register_forward_pre_hook(lambda _m, args: (nn.functional.pad(args[0], (0, 1, 0, 1)),))
        elif isinstance(mod, nn.BatchNorm2d):
            mod.eps = 1e-3
    return up.wrap(net.eval())


def _keras_mobilenet_v2() -> up.Block:
    net = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10,
                                         classifier_activation=None)
    return up.wrap(net)


def test_mobilenet_v2_keras_applications_and_torchvision_both_ways(tmp_path: Path) -> None:
    t, k = _torch_mobilenet_v2(), _keras_mobilenet_v2()
    assert [p.shape for p in t.params.values()] == [p.shape for p in k.params.values()]
    assert [p.shape for p in t.buffers.values() if p.dtype != np.int64] == [p.shape for p in k.buffers.values()]
    dw = k.params["expanded_conv_depthwise.weight"]
    assert dw.shape == t.params["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    xk = np.moveaxis(x, 1, -1)
    _one_way(_torch_mobilenet_v2, _keras_mobilenet_v2, x, xk, tmp_path, 0)
    _one_way(_keras_mobilenet_v2, _torch_mobilenet_v2, xk, x, tmp_path, 1)


def test_mobilenet_v2_as_torchvision_builds_it_is_caught_by_check() -> None:
    """Unmodified, torchvision's padding and epsilon differ from Keras': the
    pair matches by order and shape, and check= refuses it, changing nothing."""
    torch.manual_seed(0)
    src = up.wrap(_torchvision().models.mobilenet_v2(num_classes=10).eval())
    dst = _keras_mobilenet_v2()
    _seed(src, 0)
    before = dst.state()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    with pytest.raises(PortError, match=r"max \|dy\|"):
        up.port(src, dst, check=(x, np.moveaxis(x, 1, -1)))
    for n, v in dst.state().items():
        np.testing.assert_array_equal(v, before[n])
