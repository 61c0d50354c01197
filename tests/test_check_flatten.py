"""The flatten trap (contract 12.3): a CNN whose convolution feeds a dense
layer through a flatten, built in PyTorch (channels first) and in Keras
(channels last), pairs right by order and shape and wrong in meaning;
``check=`` catches it, and permuting the dense weight's input columns fixes
it (docs/library-authors.md)."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras")

import unified_params as up  # noqa: E402

C, H, W, OUT = 2, 4, 4, 3


def models() -> tuple[up.Block, up.Block]:
    torch.manual_seed(0)
    src = torch.nn.Sequential(
        torch.nn.Conv2d(1, C, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(C * H * W, OUT)
    )
    dst = keras.Sequential([
        keras.Input((6, 6, 1)), keras.layers.Conv2D(C, 3), keras.layers.ReLU(), keras.layers.Flatten(),
        keras.layers.Dense(OUT),
    ])
    return up.wrap(src), up.wrap(dst)


def test_check_catches_the_flatten_and_the_permutation_fixes_it() -> None:
    s, d = models()
    x = np.random.default_rng(0).normal(size=(2, 1, 6, 6)).astype(np.float32)
    x_nhwc = x.transpose(0, 2, 3, 1)
    before = d.state()
    with pytest.raises(up.PortError, match="max \\|dy\\|"):
        up.port(s, d, check=(x, x_nhwc))
    for k, v in before.items():
        np.testing.assert_array_equal(d.state()[k], v)

    up.port(s, d)  # right by shape: it goes through, and the outputs differ
    dense = list(d.params.distinct())[2]
    w = s.params["3.weight"].value  # (out, c*h*w) in torch's flatten order
    d.params[dense].set(w.reshape(OUT, C, H, W).transpose(0, 2, 3, 1).reshape(OUT, C * H * W))
    y_src = up.asnumpy(s(x))
    y_dst = up.asnumpy(d(x_nhwc))
    np.testing.assert_allclose(y_dst, y_src, rtol=1e-4, atol=1e-5)
