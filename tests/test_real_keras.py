"""Real Keras models (issue 14): ``keras.applications`` backbones and
``keras_hub`` backbones built from configs with ``weights=None`` (nothing
downloaded), and a zoo of every Keras 3 layer type that holds variables.

For each model: names and counts equal Keras' own listing (``model.weights``:
``trainable_weights`` as ``m.params``, ``non_trainable_weights`` such as
BatchNormalization's moving statistics as ``m.buffers``, ``p.native`` the very
``keras.Variable``), canonical (PyTorch) shapes computed here from each
layer's configuration, a seeded ``initialize`` equal to the same call on a
NumPy reference model with the same names and shapes (so fans follow the
canonical shape: a depthwise kernel's fan_in is ``prod(kernel)``), bit-exact
``state``/``load_state``/``save``/``load`` round trips into an independently
built twin, ``print(m)`` and ``m.summary()``, and ``m(x, training=False)``
equal to the native call. Inputs are small (32x32 images, batch 1, tiny
configs) to keep the file fast on two cores.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras")

import unified_params as up  # noqa: E402
from unified_params import reference as ref  # noqa: E402

try:  # installed in the tox tensorflow env (--no-deps: see backends/tensorflow/README.md)
    import keras_hub
except ImportError:  # pragma: no cover - other envs
    keras_hub = None

A = keras.applications
L = keras.layers


@dataclass
class Case:
    build: Callable[[], Any]
    x: Callable[[], Any]
    heavy: bool = False  # big: listing, one draw and one file round trip are enough
    hub: bool = False
    native_ok: frozenset[str] = frozenset()  # layer types whose variables stay native
    only: frozenset[str] = frozenset()  # big models: the checks they run beside listing and calling


def _image(size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)


def _tokens() -> dict[str, np.ndarray]:
    ids = np.random.default_rng(1).integers(1, 99, (1, 6)).astype(np.int32)
    mask = np.ones((1, 6), np.int32)
    mask[0, -2:] = 0
    return {"token_ids": ids, "padding_mask": mask}


def _bert_inputs() -> dict[str, np.ndarray]:
    return {**_tokens(), "segment_ids": np.zeros((1, 6), np.int32)}


def _t5_inputs() -> dict[str, np.ndarray]:
    t = _tokens()
    return {"encoder_token_ids": t["token_ids"], "encoder_padding_mask": t["padding_mask"],
            "decoder_token_ids": t["token_ids"][:, :3], "decoder_padding_mask": np.ones((1, 3), np.int32)}


class Zoo(keras.Model):
    """Every Keras 3 layer type that holds variables, in one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = L.Conv1D(4, 3, padding="same")
        self.conv2d = L.Conv2D(6, 3, padding="same")
        self.grouped = L.Conv2D(6, 3, padding="same", groups=3)
        self.depthwise = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")
        self.separable = L.SeparableConv2D(4, 3, depth_multiplier=2, padding="same")
        self.transposed = L.Conv2DTranspose(3, 2, strides=2)
        self.conv3d = L.Conv3D(2, (1, 3, 3), padding="same")
        self.transposed1d = L.Conv1DTranspose(3, 3)
        self.depthwise1d = L.DepthwiseConv1D(3, depth_multiplier=2)
        self.separable1d = L.SeparableConv1D(4, 3)
        self.bn = L.BatchNormalization()
        self.gn = L.GroupNormalization(3)
        self.ln = L.LayerNormalization()
        self.rms = L.RMSNormalization()
        self.unit = L.UnitNormalization()
        self.embed = L.Embedding(11, 8)
        self.mha = L.MultiHeadAttention(2, 4)
        self.gqa = L.GroupQueryAttention(head_dim=4, num_query_heads=2, num_key_value_heads=1)
        self.einsum = L.EinsumDense("abc,cd->abd", output_shape=(None, 8), bias_axes="d")
        self.lstm = L.LSTM(6, return_sequences=True)
        self.gru = L.GRU(4, return_sequences=True)
        self.bi = L.Bidirectional(L.SimpleRNN(3, return_sequences=True))
        self.conv_lstm = L.ConvLSTM2D(2, 3, padding="same")
        self.prelu = L.PReLU(shared_axes=[1, 2])
        self.dense = L.Dense(1)

    def call(self, x: Any, tokens: Any, training: bool = False) -> Any:
        ops = keras.ops
        a = self.separable1d(self.depthwise1d(self.transposed1d(self.conv1d(ops.mean(x, axis=2)))))
        img = self.separable(self.depthwise(self.grouped(self.conv2d(x))))
        img = self.prelu(self.gn(self.bn(self.transposed(img), training=training)))  # (B, 16, 16, 3)
        vol = self.conv3d(img[:, None])
        seq = self.unit(self.rms(self.ln(self.embed(tokens))))  # (B, T, 8)
        seq = seq + self.mha(seq, seq) + self.gqa(seq, seq)
        seq = self.bi(self.gru(self.lstm(self.einsum(seq))))
        clip = self.conv_lstm(ops.reshape(img[:, :8, :8, :2], (-1, 2, 8, 8, 1)))
        feat = ops.concatenate([ops.mean(seq, axis=1), ops.mean(a, axis=1)[:, :2], ops.mean(vol, axis=(1, 2, 3)),
                                ops.mean(clip, axis=(1, 2))], axis=-1)
        return self.dense(feat)


def _zoo() -> Any:
    z = Zoo()
    z(*_zoo_x())
    return z


def _zoo_x() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 3)).astype(np.float32)
    return x, np.array([[1, 2, 3, 0, 5]] * 2, np.int32)


_HUB = dict(vocabulary_size=99, num_layers=2, hidden_dim=16, intermediate_dim=32)

CASES: dict[str, Case] = {
    "mobilenet_v2": Case(lambda: A.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10),
                         _image),
    "mobilenet_v3_small": Case(lambda: A.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=10),
                               _image),
    "mobilenet": Case(lambda: A.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10), _image),
    "resnet50": Case(lambda: A.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10), _image, heavy=True,
                     only=frozenset({"seeded"})),
    "efficientnet_b0": Case(lambda: A.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=10), _image,
                            native_ok=frozenset({"Normalization"})),
    "convnext_tiny": Case(lambda: A.ConvNeXtTiny(input_shape=(32, 32, 3), weights=None, classes=10), _image,
                          heavy=True, native_ok=frozenset({"LayerScale"}), only=frozenset({"files"})),
    "densenet121": Case(lambda: A.DenseNet121(input_shape=(32, 32, 3), weights=None, classes=10), _image,
                        heavy=True, only=frozenset({"listing"})),
    "xception": Case(lambda: A.Xception(input_shape=(71, 71, 3), weights=None, classes=10), lambda: _image(71),
                     heavy=True, only=frozenset({"seeded"})),
    "zoo": Case(_zoo, _zoo_x, native_ok=frozenset({"ConvLSTMCell", "PReLU"})),
    "hub_bert": Case(lambda: keras_hub.models.BertBackbone(**_HUB, num_heads=2, max_sequence_length=32),
                     _bert_inputs, hub=True),
    "hub_gpt2": Case(lambda: keras_hub.models.GPT2Backbone(**_HUB, num_heads=2, max_sequence_length=32),
                     _tokens, hub=True),
    "hub_llama": Case(lambda: keras_hub.models.LlamaBackbone(**_HUB, num_query_heads=2, num_key_value_heads=1,
                                                              tie_word_embeddings=False), _tokens, hub=True),
    "hub_t5": Case(lambda: keras_hub.models.T5Backbone(**_HUB, num_heads=2, key_value_dim=8), _t5_inputs, hub=True),
    "hub_vit": Case(lambda: keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2,
                                                         num_heads=2, hidden_dim=16, mlp_dim=32), _image, hub=True),
}


def _params(check: str = "listing") -> list[Any]:
    """The cases of one check: every model lists and runs; a big one (whose
    layer types the small ones have) draws or goes through a file only where
    its ``only`` says, to keep the file under three minutes on two cores."""
    out = []
    for key in CASES:
        if CASES[key].heavy and check not in CASES[key].only | {"listing"}:
            continue
        skip = CASES[key].hub and keras_hub is None
        out.append(pytest.param(key, marks=pytest.mark.skipif(skip, reason="keras_hub not installed here "
                                                                          "(the tox tensorflow env has it)")))
    return out


def _build(key: str) -> Any:
    """A fresh model, with Keras' process-wide name counters reset first, so
    two builds name their auto-named layers alike (``normalization``, not
    ``normalization_1``: see test_auto_named_layers_differ_between_builds)."""
    keras.backend.clear_session()
    return CASES[key].build()


_BUILT: dict[str, Any] = {}


def _model(key: str) -> Any:
    """One instance per model for the read-only checks."""
    if key not in _BUILT:
        _BUILT[key] = _build(key)
    return _BUILT[key]


def _call(net: Any, x: Any, **kwargs: Any) -> Any:
    """``net`` on ``x``: several inputs (a tuple) positionally, keras_hub's
    dict of named inputs as the one input it is."""
    return net(*x, **kwargs) if isinstance(x, tuple) else net(x, **kwargs)


# -- canonical shapes, computed from each layer's configuration --------------------


def _flat(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


def _einsum_shape(layer: Any, var: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    inp, ker = layer.equation.replace(" ", "").split("->")[0].split(",")
    if var == "bias":
        return (_flat(shape),)
    n_in = sum(1 for c in ker if c in inp)
    return (_flat(shape[n_in:]), _flat(shape[:n_in]))


def canonical_shape(layer: Any, var: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch layer's shape for Keras ``layer``'s variable ``var``
    (written from the layer types, not from the adapter's table)."""
    names = {c.__name__ for c in type(layer).__mro__}
    k = len(shape) - 2
    if "EinsumDense" in names:
        return _einsum_shape(layer, var, shape)
    if names & {"DepthwiseConv1D", "DepthwiseConv2D"} and var == "kernel" or var == "depthwise_kernel":
        return (shape[-2] * shape[-1], 1, *shape[:-2])  # (*k, C, mult) -> (C*mult, 1, *k)
    if var in ("kernel", "pointwise_kernel") and names & {"BaseConv", "BaseConvTranspose", "BaseSeparableConv"}:
        return (shape[-1], shape[-2], *shape[:k])  # (*k, in, out) -> (out, in, *k); transposed (*k, out, in)
    if names & {"Dense", "LSTMCell", "GRUCell", "SimpleRNNCell"} and len(shape) == 2 and var != "bias":
        return shape[::-1]  # (in, out) -> (out, in); the GRU's stacked bias (2, 3h) stays
    if "ReversibleEmbedding" in names and var == "reverse_embeddings":
        return shape[::-1]
    return shape


def _owner(m: up.Block, name: str) -> Any:
    path = name.rsplit(".", 1)[0] if "." in name else ""
    return m[path].native if path else m.native


def _var_name(p: up.Param) -> str:
    return str(p.native.name)


# -- listing -----------------------------------------------------------------------


@pytest.mark.parametrize("key", _params())
def test_names_counts_and_shapes_equal_keras(key: str) -> None:
    net = _model(key)
    m = up.wrap(net)
    # Keras' own listing: each variable once, trainable ones as params
    assert [p.native for p in m.params.distinct().values()] == list(net.trainable_weights)
    assert [p.native for p in m.buffers.distinct().values()] == list(net.non_trainable_weights)
    assert len(m.params.distinct()) + len(m.buffers.distinct()) == len(net.weights)
    assert {id(v) for v in net.weights} == {id(p.native) for p in (*m.params.values(), *m.buffers.values())}
    allowed = CASES[key].native_ok
    for name, p in (*m.params.items(), *m.buffers.items()):
        v = p.native
        assert p.native_name == v.path, name
        assert p.native_shape == tuple(v.shape), name
        assert p.dtype == np.dtype(keras.backend.standardize_dtype(v.dtype)), name
        layer = _owner(m, name)
        assert p.shape == canonical_shape(layer, _var_name(p), tuple(v.shape)), name
        if p.layout == "native":
            assert allowed & {c.__name__ for c in type(layer).__mro__}, f"{name}: {type(layer).__name__} native"
        # the role is stable: never Keras' process-wide "variable_17"
        assert not re.search(r"(^|\.)variable_\d+$", name), name
    for name, b in m.buffers.items():
        assert not b.trainable and (name.endswith(("running_mean", "running_var")) or "Normalization" in allowed
                                    or b.layout == "native"), name
    s = m.summary()
    assert s.total == sum(int(np.prod(v.shape)) for v in net.weights) - s.buffers
    assert s.trainable == sum(int(np.prod(v.shape)) for v in net.trainable_weights)
    assert s.buffers == sum(int(np.prod(v.shape)) for v in net.non_trainable_weights)
    assert [r["name"] for r in s.rows] == [*m.params, *m.buffers]


def test_auto_named_layers_differ_between_builds_as_in_keras(tmp_path: Path) -> None:
    """Keras names a layer built without a name from a process-wide counter
    (EfficientNet's ``normalization``, then ``normalization_1``); a functional
    child's key is its layer name (contract 1.1), so two builds in one
    process differ there, as their ``model.weights`` paths do. A file still
    loads by order; ``keras.backend.clear_session()`` before building makes
    the names equal."""
    keras.backend.clear_session()
    a = up.wrap(CASES["efficientnet_b0"].build())
    b = up.wrap(CASES["efficientnet_b0"].build())
    assert list(a.params) == list(b.params)  # explicitly named layers
    assert list(a.buffers)[0] == "normalization.mean" and list(b.buffers)[0] == "normalization_1.mean"
    assert b.buffers["normalization_1.mean"].native.path == "normalization_1/mean"
    a.initialize(up.init.Normal(0, 0.1), seed=0)
    path = tmp_path / "effnet.safetensors"
    up.save(a, path)
    with pytest.raises(up.UnifiedParamsError, match="normalization"):
        up.load(b, path)
    up.load(b, path, match="order")
    for x, y in zip(a.state().values(), b.state().values()):
        np.testing.assert_array_equal(x, y)


def test_variables_without_a_name_get_their_attribute_as_role() -> None:
    """Regression: ConvNeXt's LayerScale makes ``gamma`` with ``add_weight``
    and no name; Keras calls it ``variable_17`` (a process-wide counter), so
    names differed between two builds and a file of one did not load into
    the other."""
    a = up.wrap(CASES["convnext_tiny"].build())
    b = up.wrap(CASES["convnext_tiny"].build())
    assert list(a.params) == list(b.params)
    scale = a.params["convnext_tiny_stage_0_block_0_layer_scale.gamma"]
    assert re.fullmatch(r"variable(_\d+)?", scale.native.name)  # Keras' own name is the counter's
    assert scale.layout == "native"


def test_non_trainable_state_is_a_buffer_and_borrowed_variables_are_listed_once() -> None:
    """Regressions: a variable made with ``trainable=False`` (Normalization's
    adapted mean/variance/count) is state, listed in ``m.buffers`` as Keras'
    ``non_trainable_weights`` lists it; a wrapper that tracks its inner
    layer's kernel (SpectralNormalization) does not list it a second time in
    native layout."""
    norm = L.Normalization()
    norm.adapt(np.arange(12, dtype=np.float32).reshape(4, 3))
    m = up.wrap(norm)
    assert list(m.params) == [] and list(m.buffers) == ["mean", "variance", "count"]
    np.testing.assert_allclose(m.buffers["mean"].value, [4.5, 5.5, 6.5])
    sn = L.SpectralNormalization(L.Dense(3))
    sn(np.zeros((2, 4), np.float32))
    s = up.wrap(sn)
    assert list(s.params) == ["layer.weight", "layer.bias"] and list(s.buffers) == ["vector_u"]
    assert s.params["layer.weight"].shape == (3, 4) and s.tied() == []
    # still a frozen layer's variables are parameters (trainable=False), not buffers
    d = L.Dense(2)
    d.build((None, 3))
    d.trainable = False
    f = up.wrap(d)
    assert list(f.params) == ["weight", "bias"] and not f.params["weight"].trainable


# -- values in canonical layout: the zoo, converted by hand here ---------------------


def _gru_gates(a: np.ndarray, axis: int) -> np.ndarray:
    z, r, h = np.split(a, 3, axis=axis)
    return np.concatenate([r, z, h], axis=axis)  # Keras z, r, h -> PyTorch r, z, n


def _by_hand(layer: Any, var: str, v: np.ndarray) -> np.ndarray:
    names = {c.__name__ for c in type(layer).__mro__}
    n = v.ndim
    if "EinsumDense" in names:
        shape = _einsum_shape(layer, var, v.shape)
        return v.reshape(-1) if var == "bias" else v.reshape(shape[::-1]).T
    if names & {"DepthwiseConv1D", "DepthwiseConv2D"} and var == "kernel" or var == "depthwise_kernel":
        return np.moveaxis(v.reshape(*v.shape[:-2], -1), -1, 0)[:, None]
    if var in ("kernel", "pointwise_kernel") and names & {"BaseConv", "BaseConvTranspose", "BaseSeparableConv"}:
        return np.transpose(v, (n - 1, n - 2, *range(n - 2)))
    if "GRUCell" in names:
        return _gru_gates(v, -1).T if var != "bias" else _gru_gates(v, -1)
    if names & {"Dense", "LSTMCell", "SimpleRNNCell"} and n == 2:
        return v.T
    return v


def test_zoo_values_cross_in_canonical_layout_both_ways() -> None:
    m = up.wrap(_zoo())
    layouts = {}
    for name, p in m.params.items():
        layer, native = _owner(m, name), p.native.numpy()
        np.testing.assert_array_equal(p.value, _by_hand(layer, _var_name(p), native), err_msg=name)
        layouts[name] = p.layout
        # a write in canonical layout lands in the variable in Keras' layout
        new = np.random.default_rng(len(layouts)).standard_normal(p.shape).astype(p.dtype)
        p.set(new)
        np.testing.assert_array_equal(_by_hand(layer, _var_name(p), p.native.numpy()), new, err_msg=name)
    assert layouts["depthwise.weight"] == "depthwise_last" and m.params["depthwise.weight"].shape == (12, 1, 3, 3)
    assert m.params["separable.depthwise_weight"].shape == (24, 1, 3, 3)
    assert m.params["separable.pointwise_weight"].shape == (4, 24, 1, 1)
    assert m.params["grouped.weight"].shape == (6, 2, 3, 3)
    assert m.params["transposed.weight"].shape == (4, 3, 2, 2)  # (in, out, *k)
    assert m.params["mha._query_dense.weight"].shape == (8, 8)  # (heads*head_dim, in)
    assert m.params["mha._output_dense.weight"].shape == (8, 8)
    assert m.params["gqa._key_dense.weight"].shape == (4, 8)
    assert m.params["lstm.cell.weight_ih"].shape == (24, 8)
    assert m.params["gru.cell.bias"].shape == (2, 12)  # stacked input/recurrent biases
    assert {layouts[n] for n in layouts if n.startswith(("conv_lstm.", "prelu."))} == {"native"}
    assert not [n for n in layouts if layouts[n] == "native" and not n.startswith(("conv_lstm.", "prelu."))]
    assert "unit" not in m.children() or not list(m["unit"].params)


_MORE = {
    "conv3d_transpose": (lambda: L.Conv3DTranspose(4, 2), (1, 3, 3, 3, 2),
                         {"weight": ((2, 4, 2, 2, 2), "kernel_last"), "bias": ((4,), "canonical")}),
    "gru_reset_before": (lambda: L.GRU(4, reset_after=False), (1, 5, 3),
                         {"cell.weight_ih": ((3, 12), "native"), "cell.weight_hh": ((4, 12), "native"),
                          "cell.bias": ((12,), "native")}),
    "conv_lstm1d": (lambda: L.ConvLSTM1D(2, 3), (1, 2, 6, 3),
                    {"cell.kernel": ((3, 3, 8), "native"), "cell.recurrent_kernel": ((3, 2, 8), "native"),
                     "cell.bias": ((8,), "native")}),
    "time_distributed": (lambda: L.TimeDistributed(L.Dense(3)), (1, 5, 4),
                         {"layer.weight": ((3, 4), "kernel_last"), "layer.bias": ((3,), "canonical")}),
    "stacked_cells": (lambda: L.RNN(L.StackedRNNCells([L.LSTMCell(3), L.SimpleRNNCell(2)])), (1, 5, 4),
                      {"cell.cells.0.weight_ih": ((12, 4), "kernel_last"),
                       "cell.cells.0.weight_hh": ((12, 3), "kernel_last"), "cell.cells.0.bias": ((12,), "canonical"),
                       "cell.cells.1.weight_ih": ((2, 3), "kernel_last"),
                       "cell.cells.1.weight_hh": ((2, 2), "kernel_last"), "cell.cells.1.bias": ((2,), "canonical")}),
    "additive_attention": (lambda: L.AdditiveAttention(), [(1, 5, 6), (1, 5, 6)], {"scale": ((6,), "native")}),
    "layernorm_rms_scaling": (lambda: L.LayerNormalization(rms_scaling=True), (1, 6),
                              {"weight": ((6,), "canonical")}),
    "batchnorm_no_affine": (lambda: L.BatchNormalization(center=False, scale=False), (2, 6), {}),
}


@pytest.mark.parametrize("key", list(_MORE))
def test_more_layer_types_list_as_the_table_says(key: str) -> None:
    make, shape, want = _MORE[key]
    layer = make()
    x = [np.zeros(s, np.float32) for s in shape] if isinstance(shape, list) else np.zeros(shape, np.float32)
    layer(x)
    m = up.wrap(layer)
    assert {n: (p.shape, p.layout) for n, p in m.params.items()} == want
    assert [p.native for p in m.params.values()] == list(layer.trainable_weights)
    assert [p.native for p in m.buffers.values()] == list(layer.non_trainable_weights)
    if key == "batchnorm_no_affine":
        assert list(m.buffers) == ["running_mean", "running_var"]


def test_dense_lora_kernels_are_linear_weights() -> None:
    d = L.Dense(5, lora_rank=2)
    d.build((None, 3))
    m = up.wrap(d)
    assert [(n, p.shape, p.trainable) for n, p in m.params.items()] == [
        ("weight", (5, 3), False), ("bias", (5,), True), ("lora_kernel_a", (2, 3), True),
        ("lora_kernel_b", (5, 2), True)]
    np.testing.assert_array_equal(m.params["lora_kernel_a"].value, d.lora_kernel_a.numpy().T)


# -- seeded draws ------------------------------------------------------------------


def _mirror(m: up.Block) -> ref.Module:
    """A NumPy reference model with ``m``'s names, canonical shapes, dtypes
    and storages (values zero), in ``m``'s tree order."""
    root = ref.Module()
    made: dict[int, ref.Parameter] = {}
    for name in m.state(copy=False):
        buffer = name in m.buffers
        p = m.buffers[name] if buffer else m.params[name]
        *path, role = name.split(".")
        mod = root
        for part in path:
            if part not in mod._children:
                mod._children[part] = ref.Module()
            mod = mod._children[part]
        leaf = made.setdefault(id(p.native), ref.Parameter(p.shape, p.dtype))
        (mod._buffers if buffer else mod._params)[role] = leaf
    return root


_INIT = {r".*(weight|embeddings|bias_attention|class_token)": up.init.KaimingNormal(),
         r".*": up.init.Uniform(-0.1, 0.1)}


@pytest.mark.parametrize("key", _params("seeded"))
def test_seeded_initialize_equals_numpy_reference(key: str) -> None:
    net = _build(key)
    m = up.wrap(net)
    r = up.wrap(_mirror(m))
    assert list(r.params) == list(m.params) and list(r.buffers) == list(m.buffers)
    assert [p.shape for p in r.params.values()] == [p.shape for p in m.params.values()]
    buffers = m.state()
    buffers = {n: buffers[n] for n in m.buffers}
    m.initialize(_INIT, seed=2024, allow_unmatched=True)
    r.initialize(_INIT, seed=2024, allow_unmatched=True)
    want = r.state()
    for n, p in m.params.items():
        np.testing.assert_array_equal(p.value, want[n], err_msg=n)
    for n, v in buffers.items():  # draws touch parameters only
        np.testing.assert_array_equal(m.buffers[n].value, v, err_msg=n)
    if key == "mobilenet_v2":
        # contract 3.4: a depthwise 3x3 kernel's fan_in is 1*3*3 (not 3*3*C), so
        # Kaiming's std is sqrt(2/9) as for torchvision's Conv2d(groups=C)
        w = m.params["expanded_conv_depthwise.weight"]
        assert w.shape == (16, 1, 3, 3)
        big = [p for n, p in m.params.items() if n.endswith("depthwise.weight") and p.size >= 1000]
        std = np.concatenate([p.value.ravel() for p in big]).std()
        assert abs(std - np.sqrt(2 / 9)) < 0.05 * np.sqrt(2 / 9)
    if not CASES[key].heavy and not CASES[key].hub:
        # Keras' own initializers, seeded: reproducible, and not the draw above
        m.initialize(None, seed=5)
        first = m.state()
        assert any(not np.array_equal(first[n], want[n]) for n in m.params)
        m.initialize(up.init.Zeros())
        m.initialize(None, seed=5)
        for n, v in m.state().items():
            np.testing.assert_array_equal(v, first[n], err_msg=n)


def test_keras_own_initializers_reach_every_variable() -> None:
    """Regressions for ``initialize(None)`` (Keras' own initializers): Keras 3
    DepthwiseConv2D keeps ``depthwise_initializer`` for the variable it calls
    ``kernel`` (was left as it was); an LSTM with ``unit_forget_bias`` gets
    ones for the forget gate as its build makes it (was all zeros);
    RMSNormalization's ``scale`` is made with an inline ``ones`` (was left)."""
    net = keras.Sequential([keras.Input((5, 4)), L.LSTM(3, return_sequences=True), L.RMSNormalization(),
                            L.Reshape((5, 3, 1)), L.DepthwiseConv2D(2)])
    m = up.wrap(net)
    m.initialize(up.init.Constant(7.0))
    m.initialize(None, seed=1)
    bias = m.params["0.cell.bias"].value
    np.testing.assert_array_equal(bias, np.r_[np.zeros(3), np.ones(3), np.zeros(6)].astype(np.float32))
    np.testing.assert_array_equal(m.params["1.weight"].value, np.ones(3, np.float32))
    w = m.params["3.weight"].value
    assert w.shape == (1, 1, 2, 2) and not np.any(w == 7.0)
    fresh = keras.Sequential([keras.Input((5, 4)), L.LSTM(3)])
    np.testing.assert_array_equal(fresh.layers[0].cell.bias.numpy(), bias)  # as Keras' own build


# -- state and files ---------------------------------------------------------------


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for n in a:
        assert a[n].dtype == b[n].dtype, n
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)


@pytest.mark.parametrize("key", _params("files"))
def test_state_save_load_roundtrips_are_bit_exact(key: str, tmp_path: Path) -> None:
    a, b = up.wrap(_build(key)), up.wrap(_build(key))
    for n, p in a.buffers.items():  # statistics that are not their initial values
        if np.issubdtype(p.dtype, np.floating):
            p.set(np.random.default_rng(len(n)).uniform(0.5, 2.0, p.shape).astype(p.dtype))
    expected = a.state()
    assert list(b.state()) == list(expected)
    assert [n for n, v in b.state().items() if not np.array_equal(v, expected[n])]  # the twin differs

    report = b.load_state(expected)
    assert not report.missing and not report.unexpected and not report.mismatched
    _assert_same(b.state(), expected)
    for va, vb in zip(a.native.weights, b.native.weights):  # natively too, in Keras' layout
        np.testing.assert_array_equal(va.numpy(), vb.numpy())

    b.initialize(up.init.Normal(0, 1), seed=3)
    path = tmp_path / f"{key}.safetensors"
    up.save(a, path)
    up.load(b, path)
    _assert_same(b.state(), expected)
    x = CASES[key].x()
    np.testing.assert_array_equal(_out(_call(b, x, training=False)), _out(_call(a, x, training=False)))


def _out(y: Any) -> np.ndarray:
    if isinstance(y, dict):
        y = y.get("sequence_output", next(iter(y.values())))
    return up.asnumpy(y)


# -- printing and calling ----------------------------------------------------------


@pytest.mark.parametrize("key", _params())
def test_print_summary_and_forward_with_kwargs(key: str) -> None:
    net = _model(key)
    m = up.wrap(net)
    text = str(m)
    assert text.splitlines()[0] == f"tensorflow {type(net).__name__}"
    for p in list(m.params.values())[:3] + list(m.buffers.values())[:2]:
        assert f"{p.role}: {p.shape}" in text
    table = str(m.summary())
    assert f"total: {m.summary().total:,} parameters" in table
    assert len(table.splitlines()) == 3 + len(m.params) + len(m.buffers)

    x = CASES[key].x()
    before = m.state()
    y, native = _out(_call(m, x, training=False)), _out(_call(net, x, training=False))
    if isinstance(x, dict):  # keras_hub: the padding mask reached the model
        unmasked = {**x, next(k for k in x if "padding_mask" in k): np.ones((1, 6), np.int32)}
        assert not np.array_equal(_out(m(unmasked, training=False)), y)
    np.testing.assert_allclose(y, native, rtol=1e-6, atol=1e-6)
    _assert_same(m.state(), before)  # inference: nothing changed
    if m.buffers and not CASES[key].hub and key != "efficientnet_b0":
        _call(m, x, training=True)  # training mode updates the moving statistics, as natively
        assert any(not np.array_equal(v, before[n]) for n, v in m.state().items() if n in m.buffers)


def test_wrong_inputs_and_state_are_contract_errors() -> None:
    m = up.wrap(_model("mobilenet_v2"))
    with pytest.raises(up.UnifiedParamsError) as err:
        m(np.zeros((1, 32, 32, 5), np.float32))  # five channels where the stem takes three
    assert "xpected" in str(err.value)
    name = next(iter(m.params))
    with pytest.raises(up.StateError, match=re.escape(name)):
        m.load_state({**m.state(), name: np.zeros((3, 3), np.float32)})
