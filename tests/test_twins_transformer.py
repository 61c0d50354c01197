"""Transformer twins (issue 14, deliver 3): one encoder block (post-norm:
self-attention, add & LayerNorm, ReLU feed-forward, add & LayerNorm) as
PyTorch's ``nn.TransformerEncoderLayer(batch_first=True)``, in Keras
(``MultiHeadAttention`` + ``LayerNormalization`` + ``Dense``) and in Flax NNX
(``nnx.MultiHeadAttention`` + ``LayerNorm`` + ``Linear``), seeded once in
one, ported in memory (``up.port(src, dst, check=x)``) and through a file
(``up.save``, then ``up.load(..., match="order", check=(x, y))``), outputs
equal to float32 tolerance, both directions.

PyTorch fuses query, key and value in ``in_proj_weight`` ``(3E, E)`` and
``in_proj_bias``; Keras and Flax keep three projections with per-head
kernels ``(E, heads, head_dim)``, read as ``(heads*head_dim, E)``: ports
split the fused tensors one way and stack them the other (``FUSED`` in the
layout table). Runs where torch, keras and flax import (tox env ``interop``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

import unified_params as up  # noqa: E402
from unified_params import PortError  # noqa: E402
from unified_params.testing.twins import assert_carried  # noqa: E402

TOL = {"rtol": 1e-4, "atol": 1e-5}
N, T, E, HEADS, FF = 2, 5, 8, 2, 16
EPS = 1e-5  # PyTorch's LayerNorm default; Keras and Flax are told to use it
INIT = up.init.Uniform(-0.5, 0.5)


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (N, T, E)).astype(np.float32)


def _torch() -> Any:
    layer = torch.nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.0, batch_first=True)
    return up.wrap(layer.eval())


class KerasBlock(keras.Model):
    """Layers created in PyTorch's registration order (attention, linear1,
    linear2, norm1, norm2): ports pair by order."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = keras.layers.MultiHeadAttention(HEADS, E // HEADS)
        self.linear1 = keras.layers.Dense(FF, activation="relu")
        self.linear2 = keras.layers.Dense(E)
        self.norm1 = keras.layers.LayerNormalization(epsilon=EPS)
        self.norm2 = keras.layers.LayerNormalization(epsilon=EPS)

    def call(self, x: Any) -> Any:
        x = self.norm1(x + self.self_attn(x, x))
        return self.norm2(x + self.linear2(self.linear1(x)))


def _keras() -> Any:
    block = KerasBlock()
    block(_x())  # build
    return up.wrap(block)


class NnxBlock(nnx.Module):
    def __init__(self, rngs: Any) -> None:
        self.self_attn = nnx.MultiHeadAttention(HEADS, E, decode=False, rngs=rngs)
        self.linear1 = nnx.Linear(E, FF, rngs=rngs)
        self.linear2 = nnx.Linear(FF, E, rngs=rngs)
        self.norm1 = nnx.LayerNorm(E, epsilon=EPS, rngs=rngs)
        self.norm2 = nnx.LayerNorm(E, epsilon=EPS, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.linear2(jax.nn.relu(self.linear1(x))))


def _nnx() -> Any:
    return up.wrap(NnxBlock(nnx.Rngs(0)))


def _one_way(make_src: Callable[[], Any], make_dst: Callable[[], Any], tmp_path: Path, seed: int) -> None:
    src = make_src()
    src.initialize(INIT, seed=seed)
    assert_carried(src, make_dst, _x(seed), _x(seed), tmp_path, TOL)


def _both(make_a: Callable[[], Any], make_b: Callable[[], Any], tmp_path: Path) -> None:
    _one_way(make_a, make_b, tmp_path, 0)
    _one_way(make_b, make_a, tmp_path, 1)


def test_canonical_shapes_line_up() -> None:
    """The Keras and Flax projections read as Linear weights (E, E), the
    output projection too: PyTorch's fused (3E, E) is three of them."""
    t = [tuple(p.shape) for p in _torch().params.values()]
    assert t[:4] == [(3 * E, E), (3 * E,), (E, E), (E,)]
    for make in (_keras, _nnx):
        shapes = [tuple(p.shape) for p in make().params.values()]
        assert shapes[:8] == [(E, E), (E,)] * 4
        assert shapes[8:] == t[4:]


def test_torch_keras(tmp_path: Path) -> None:
    _both(_torch, _keras, tmp_path)


def test_torch_nnx(tmp_path: Path) -> None:
    _both(_torch, _nnx, tmp_path)


def test_keras_nnx(tmp_path: Path) -> None:
    _both(_keras, _nnx, tmp_path)


def test_mismatched_heads_size_names_both_sides() -> None:
    """A fused projection of another embedding size: PortError naming both
    sides, nothing changed."""
    src = up.wrap(torch.nn.TransformerEncoderLayer(E + 2, HEADS, FF, dropout=0.0, batch_first=True))
    dst = _nnx()
    before = dst.state()
    with pytest.raises(PortError) as info:
        up.port(src, dst)
    text = str(info.value)
    assert "self_attn.in_proj_weight" in text and "self_attn.query.weight" in text
    after = dst.state()
    assert all(np.array_equal(before[k], after[k]) for k in before)
