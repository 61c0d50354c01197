"""Real Gluon models (issue 14): ``model_zoo.vision`` networks built with
``pretrained=False`` (random init, no download), ``rnn.LSTM``/``GRU`` and a
grouped ``Conv2DTranspose``, run through the contract: names and counts equal
Gluon's own listing, canonical shapes, seeded init equal to the NumPy
reference, bit-exact state/save/load round trips, print and summary.

Each model runs one inference pass first (oneDNN on, as installed).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet.gluon import nn, rnn  # noqa: E402
from mxnet.gluon.model_zoo import vision  # noqa: E402

import unified_params as up  # noqa: E402
from unified_params import reference as ref  # noqa: E402


def _zoo(name: str):
    return lambda: (vision.get_model(name, pretrained=False), (1, 3, 64, 64))


def _lstm():
    return rnn.LSTM(6, num_layers=2, input_size=4, bidirectional=True), (5, 2, 4)


def _gru():
    return rnn.GRU(6, num_layers=1, input_size=4), (5, 2, 4)


def _deconv():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, in_channels=4), nn.Conv2DTranspose(6, 3, strides=2, in_channels=8, groups=2))
    return net, (1, 4, 16, 16)


MODELS = {
    "resnet18_v1": _zoo("resnet18_v1"),
    "resnet50_v2": _zoo("resnet50_v2"),
    "mobilenet1.0": _zoo("mobilenet1.0"),
    "mobilenetv2_1.0": _zoo("mobilenetv2_1.0"),
    "lstm": _lstm,
    "gru": _gru,
    "grouped_conv_transpose": _deconv,
}


def _built(name: str):
    net, shape = MODELS[name]()
    net.initialize()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = net(mx.nd.array(x))
    (y[0] if isinstance(y, (list, tuple)) else y).wait_to_read()
    return net, x


def _out(net, x: np.ndarray) -> np.ndarray:
    y = net(mx.nd.array(x))
    return (y[0] if isinstance(y, (list, tuple)) else y).asnumpy()


class _Shapes(ref.Module):
    """A NumPy reference model holding parameters of the given shapes, in order."""

    def __init__(self, shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        for i, s in enumerate(shapes):
            setattr(self, f"p{i}", ref.Parameter(s))


@pytest.mark.parametrize("name", list(MODELS))
def test_real_gluon_model(name: str, tmp_path) -> None:
    net, x = _built(name)
    m = up.wrap(net)
    native = net.collect_params()
    keys = list(native.keys())
    # names and counts: the native listing, parameters and buffers, in Gluon's order
    st = m.state()
    assert len(st) == len(keys)
    assert [m.params[n].native_name if n in m.params else m.buffers[n].native_name for n in st] == keys
    buffers = [k for k in keys if native[k]._differentiable is False]
    assert sorted(b.native_name for b in m.buffers.values()) == sorted(buffers)
    # canonical shapes (Gluon stores PyTorch's layout)
    for n, v in st.items():
        p = m.params[n] if n in m.params else m.buffers[n]
        assert p.layout == "canonical"
        assert v.shape == p.shape == tuple(p.native.shape), n
    # seeded init: the NumPy reference of the same shapes draws the same numbers
    init = up.init.KaimingNormal()
    m.initialize(init, seed=3)
    r = up.wrap(_Shapes([p.shape for p in m.params.distinct().values()]))
    r.initialize(init, seed=3)
    for (n, a), b in zip(m.params.distinct().items(), r.params.values()):
        np.testing.assert_array_equal(a.value, b.value, err_msg=n)
    # state / save / load round trips, bit-exact, with outputs equal
    y = _out(net, x)
    before = m.state()
    other, _ = _built(name)
    o = up.wrap(other)
    o.load_state(before)
    for n, v in before.items():
        np.testing.assert_array_equal(o.state()[n], v, err_msg=n)
    np.testing.assert_array_equal(_out(other, x), y)
    o.initialize(up.init.Normal(), seed=1)
    up.save(m, tmp_path / "m.safetensors")
    up.load(o, tmp_path / "m.safetensors")
    for n, v in before.items():
        np.testing.assert_array_equal(o.state(copy=False)[n], v, err_msg=n)
    # reporting
    text = str(m)
    first = next(iter(st))
    assert first.split(".")[-1] in text and type(net).__name__ in text
    summary = str(m.summary())
    assert first in summary


def test_shapes_of_known_layers() -> None:
    r18 = up.wrap(_built("resnet18_v1")[0])
    assert r18.params["features.0.weight"].shape == (64, 3, 7, 7)
    assert r18.params["output.weight"].shape == (1000, 512)
    deconv = up.wrap(_built("grouped_conv_transpose")[0])
    assert deconv.params["1.weight"].shape == (8, 3, 3, 3)  # (in, out/groups, kh, kw)
    lstm = up.wrap(_built("lstm")[0])
    assert list(lstm.params)[:4] == ["l0_i2h_weight", "l0_h2h_weight", "l0_i2h_bias", "l0_h2h_bias"]
    assert lstm.params["l0_i2h_weight"].shape == (24, 4)  # 4*hidden, in: gates i, f, g, o
    assert lstm.params["l1_i2h_weight"].shape == (24, 12)
