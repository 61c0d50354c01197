"""Twins (issue 14, deliver 3): the same architecture in Gluon and PyTorch,
seeded once in one, ported in memory (``up.port(..., check=x)``) and through a
file (``up.save``, then ``up.load(..., match="order")``), outputs equal to
float32 tolerance, both directions. MXNet's oneDNN stays on, as installed.

Runs where both mxnet and torch import (tox env ``mxnet-torch``).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
torch = pytest.importorskip("torch")

import unified_params as up  # noqa: E402

TOL = {"rtol": 1e-4, "atol": 1e-4}


def _gluon_out(net, x: np.ndarray) -> np.ndarray:
    y = net(mx.nd.array(x))
    return (y[0] if isinstance(y, (list, tuple)) else y).asnumpy()


def _torch_out(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = net(torch.from_numpy(x))
    return (y[0] if isinstance(y, tuple) else y).numpy()


def _pair(make_gluon, make_torch, x):
    g = make_gluon()
    g.initialize()
    _gluon_out(g, x)  # an inference pass first: oneDNN re-lays weights out
    t = make_torch().eval()
    return g, t


def _seed(m, init, seed: int) -> None:
    """Seeded weights, and non-trivial batch-norm running statistics (so the
    buffers are part of what is compared)."""
    m.initialize(init, seed=seed)
    rng = np.random.default_rng(seed)
    for n, b in m.buffers.items():
        if b.dtype.kind == "f":
            b.set(rng.uniform(0.5, 1.5, b.shape) if n.endswith("running_var") else rng.normal(0, 0.1, b.shape))


def _both_directions(make_gluon, make_torch, x, tmp_path, init) -> None:
    # Gluon seeded -> torch (in memory, then through a file)
    g, t = _pair(make_gluon, make_torch, x)
    mg, mt = up.wrap(g), up.wrap(t)
    _seed(mg, init, 0)
    up.port(mg, mt, check=x)
    np.testing.assert_allclose(_torch_out(t, x), _gluon_out(g, x), **TOL)
    g2, t2 = _pair(make_gluon, make_torch, x)
    up.save(mg, tmp_path / "gluon.safetensors")
    up.load(up.wrap(t2), tmp_path / "gluon.safetensors", match="order")
    np.testing.assert_allclose(_torch_out(t2, x), _gluon_out(g, x), **TOL)
    # torch seeded -> Gluon
    mt2 = up.wrap(t2)
    _seed(mt2, init, 1)
    up.port(mt2, up.wrap(g2), check=x)
    np.testing.assert_allclose(_gluon_out(g2, x), _torch_out(t2, x), **TOL)
    g3, _ = _pair(make_gluon, make_torch, x)
    up.save(mt2, tmp_path / "torch.safetensors")
    up.load(up.wrap(g3), tmp_path / "torch.safetensors", match="order")
    np.testing.assert_allclose(_gluon_out(g3, x), _torch_out(t2, x), **TOL)


class _OutputOnly(torch.nn.Module):
    """A torch recurrent layer returning its output sequence only, as a Gluon
    recurrent layer called without states does (``check=x`` compares outputs)."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.rnn = layer

    def forward(self, x):
        return self.rnn(x)[0]


def test_lstm_twin(tmp_path) -> None:
    from mxnet.gluon import rnn

    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)  # (T, N, C) both
    _both_directions(lambda: rnn.LSTM(6, num_layers=2, input_size=4),
                     lambda: _OutputOnly(torch.nn.LSTM(4, 6, num_layers=2)), x, tmp_path, up.init.Uniform(-0.5, 0.5))


def test_gru_twin(tmp_path) -> None:
    from mxnet.gluon import rnn

    x = np.random.default_rng(1).standard_normal((5, 2, 4)).astype(np.float32)
    _both_directions(lambda: rnn.GRU(6, input_size=4), lambda: _OutputOnly(torch.nn.GRU(4, 6)), x, tmp_path,
                     up.init.Uniform(-0.5, 0.5))


def test_resnet18_twin(tmp_path) -> None:
    """gluon resnet18_v1 and torchvision resnet18: the same layers in the same
    order (conv1/bn1, four stages of two BasicBlocks with a 1x1 downsample
    where the shape changes, fc), so ports pair by order and shape;
    ``check=x`` compares outputs."""
    torchvision = pytest.importorskip("torchvision")
    from mxnet.gluon.model_zoo import vision

    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    g, t = vision.resnet18_v1(pretrained=False), torchvision.models.resnet18()
    g.initialize()
    _gluon_out(g, x)
    mg, mt = up.wrap(g), up.wrap(t.eval())
    shapes_g = [p.shape for p in (*mg.params.values(), *mg.buffers.values())]
    shapes_t = [p.shape for p in (*mt.params.values(), *mt.buffers.values())]
    assert sorted(shapes_g) == sorted(s for s in shapes_t if s != ())  # torch also counts num_batches_tracked
    _both_directions(lambda: vision.resnet18_v1(pretrained=False), torchvision.models.resnet18, x, tmp_path,
                     up.init.KaimingNormal())
