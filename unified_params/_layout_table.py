"""The layout table: for each layer type a framework ships that holds
parameters, the unified role and the canonical layout of each variable.

Design constraints: this is the one place that knows layer types. Adapters
ask :func:`lookup` with the framework, the layer's class names (its MRO,
most derived first), the variable's native name and the layer object, and
use what it answers; a layer type added here needs no change in any adapter.
The table imports no framework: rows match class *names*, and a row's
``when`` (for layers whose layout depends on their configuration, such as
Keras ``EinsumDense`` equations or Flax ``DenseGeneral`` axes) reads plain
attributes of the layer it is handed.

A variable no row covers stays ``native`` (never guessed), except where the
framework's layout is PyTorch's for every layer it ships (PyTorch, Gluon,
the NumPy reference): ``DEFAULT`` gives their fallback.

Recurrent biases: PyTorch keeps ``bias_ih`` and ``bias_hh``; a framework
with one bias (Keras ``LSTM``/``SimpleRNN``) marks it ``BIAS_SINGLE``, and a
Keras ``GRU(reset_after=True)`` bias of shape ``(2, 3*units)`` is
``BIAS_STACKED`` (row 0 input, row 1 recurrent). Ports pair them with
PyTorch's two (:func:`bias_pair_kind`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._layout import CANONICAL, KERNEL_LAST, NATIVE

#: Frameworks whose native layout is PyTorch's for every layer they ship.
DEFAULT: dict[str, str] = {"torch": CANONICAL, "mxnet": CANONICAL, "numpy": CANONICAL,
                           "keras": NATIVE, "flax": NATIVE}

#: Marks of a recurrent bias that PyTorch splits in two (see the module doc).
BIAS_SINGLE = "bias_single"
BIAS_STACKED = "bias_stacked"


@dataclass(frozen=True)
class Rule:
    """``framework``'s layer ``layer`` (a class name), variable ``var``:
    reported with ``role`` in ``layout``. ``when(layer, ndim)`` selects the
    layout at run time where one class has several (returns a layout name,
    or ``None`` for "this row does not apply"). ``bias`` marks recurrent
    biases. ``note`` is for the coverage table."""

    framework: str
    layer: str
    var: str
    role: str
    layout: str = CANONICAL
    when: Callable[[Any, int], str | None] | None = None
    bias: str = ""
    note: str = ""


# -- selectors for layers whose layout depends on their configuration ----------

def _einsum_layout(layer: Any, ndim: int) -> str | None:
    """Keras EinsumDense: a kernel whose first axes are contracted with the
    input's last axes and whose remaining axes are output axes is a Linear
    with merged axes; anything else stays native."""
    eq = str(getattr(layer, "equation", "")).replace(" ", "")
    try:
        lhs, out = eq.split("->")
        inp, ker = lhs.split(",")
    except ValueError:
        return NATIVE
    n_in = 0
    for c in ker:
        if c in inp and c not in out:
            n_in += 1
        else:
            break
    rest = ker[n_in:]
    if n_in == 0 or any(c in inp for c in rest) or not all(c in out for c in rest):
        return NATIVE
    # contracted axes must be the input's last ones, the output axes its last ones
    if not inp.endswith(ker[:n_in]) or not out.endswith(rest):
        return NATIVE
    return KERNEL_LAST if (n_in, len(rest)) == (1, 1) else f"general:{n_in}"


def _einsum_bias(layer: Any, ndim: int) -> str | None:
    return CANONICAL if ndim <= 1 else "merged"


def _dense_general_layout(layer: Any, ndim: int) -> str | None:
    """Flax DenseGeneral / NNX LinearGeneral: ``(*in_axes, *features)``.
    Contracting axes other than the input's last ones (or batch_dims) has
    no Linear equivalent: native."""
    axis = getattr(layer, "axis", -1)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    batched = getattr(layer, "batch_dims", ()) or getattr(layer, "batch_axis", None)  # linen / NNX
    if batched or sorted(axes) != list(range(-len(axes), 0)):
        return NATIVE
    n_in = len(axes)
    return KERNEL_LAST if ndim == 2 and n_in == 1 else f"general:{n_in}"


def _flax_conv_transpose(layer: Any, ndim: int) -> str | None:
    # transpose_kernel=True is the gradient of a convolution (PyTorch's own
    # semantics) with the kernel stored (*k, out, in); False convolves the
    # dilated input with the kernel as stored (*k, in, out): PyTorch's
    # kernel flipped.
    return KERNEL_LAST if getattr(layer, "transpose_kernel", False) else "transpose_flipped"


def _keras_gru_kernel(layer: Any, ndim: int) -> str | None:
    cell = getattr(layer, "cell", layer)
    if not getattr(cell, "reset_after", True):
        return NATIVE  # reset gate before the recurrent matmul: no PyTorch GRU computes it
    return "gates:1,0,2|kernel_last"  # Keras z, r, h -> PyTorch r, z, n


def _keras_gru_bias(layer: Any, ndim: int) -> str | None:
    cell = getattr(layer, "cell", layer)
    if not getattr(cell, "reset_after", True):
        return NATIVE
    return "gates1:1,0,2" if ndim == 2 else "gates:1,0,2"


def _gluon_data_layout(layer: Any, ndim: int) -> str | None:
    """Gluon convolutions (and convolutional recurrent cells) store PyTorch's
    layout when built channels-first; built channels-last (``layout='NHWC'``,
    ``conv_layout='NDHWC'``: weight ``(O, *kernel, I)``) they have no layout
    this table converts, so every variable of the layer stays native."""
    kwargs = getattr(layer, "_kwargs", None)
    data = kwargs.get("layout") if isinstance(kwargs, dict) else None
    if data is None:
        data = getattr(layer, "_conv_layout", None)
    if isinstance(data, str) and len(data) > 2 and not data.startswith("NC"):
        return NATIVE
    return CANONICAL


_K = "keras"
_F = "flax"
_M = "mxnet"

RULES: list[Rule] = [
    # -- Keras 3 -------------------------------------------------------------------
    Rule(_K, "Dense", "kernel", "weight", KERNEL_LAST),
    Rule(_K, "Dense", "bias", "bias"),
    Rule(_K, "Dense", "lora_kernel_a", "lora_kernel_a", KERNEL_LAST, note="lora_rank: (rank, in), PEFT's lora_A"),
    Rule(_K, "Dense", "lora_kernel_b", "lora_kernel_b", KERNEL_LAST, note="lora_rank: (out, rank), PEFT's lora_B"),
    Rule(_K, "EinsumDense", "kernel", "weight", when=_einsum_layout, note="Linear when the equation is one"),
    Rule(_K, "EinsumDense", "bias", "bias", when=_einsum_bias),
    Rule(_K, "DepthwiseConv1D", "kernel", "weight", "depthwise_last"),  # Keras 3 names it kernel
    Rule(_K, "DepthwiseConv2D", "kernel", "weight", "depthwise_last"),  # Keras 3 names it kernel
    Rule(_K, "DepthwiseConv1D", "bias", "bias"),
    Rule(_K, "DepthwiseConv2D", "bias", "bias"),
    Rule(_K, "SeparableConv1D", "depthwise_kernel", "depthwise_weight", "depthwise_last"),
    Rule(_K, "SeparableConv2D", "depthwise_kernel", "depthwise_weight", "depthwise_last"),
    Rule(_K, "SeparableConv1D", "pointwise_kernel", "pointwise_weight", KERNEL_LAST),
    Rule(_K, "SeparableConv2D", "pointwise_kernel", "pointwise_weight", KERNEL_LAST),
    Rule(_K, "SeparableConv1D", "bias", "bias"),
    Rule(_K, "SeparableConv2D", "bias", "bias"),
    # Conv1D/2D/3D (grouped too) and Conv*Transpose: (*k, in, out) / (*k, out, in)
    Rule(_K, "BaseConv", "kernel", "weight", KERNEL_LAST),
    Rule(_K, "BaseConv", "bias", "bias"),
    Rule(_K, "BaseConvTranspose", "kernel", "weight", KERNEL_LAST),
    Rule(_K, "BaseConvTranspose", "bias", "bias"),
    Rule(_K, "Embedding", "embeddings", "weight"),
    Rule(_K, "BatchNormalization", "gamma", "weight"),
    Rule(_K, "BatchNormalization", "beta", "bias"),
    Rule(_K, "BatchNormalization", "moving_mean", "running_mean"),
    Rule(_K, "BatchNormalization", "moving_variance", "running_var"),
    Rule(_K, "LayerNormalization", "gamma", "weight"),
    Rule(_K, "LayerNormalization", "beta", "bias"),
    Rule(_K, "GroupNormalization", "gamma", "weight"),
    Rule(_K, "GroupNormalization", "beta", "bias"),
    Rule(_K, "RMSNormalization", "scale", "weight"),
    # recurrent cells (the LSTM/GRU/SimpleRNN layers own a cell)
    Rule(_K, "LSTMCell", "kernel", "weight_ih", KERNEL_LAST, note="gates i, f, c, o = PyTorch's i, f, g, o"),
    Rule(_K, "LSTMCell", "recurrent_kernel", "weight_hh", KERNEL_LAST),
    Rule(_K, "LSTMCell", "bias", "bias", bias=BIAS_SINGLE, note="one bias: PyTorch bias_ih, bias_hh = 0"),
    Rule(_K, "GRUCell", "kernel", "weight_ih", when=_keras_gru_kernel, note="reset_after=True only"),
    Rule(_K, "GRUCell", "recurrent_kernel", "weight_hh", when=_keras_gru_kernel),
    Rule(_K, "GRUCell", "bias", "bias", when=_keras_gru_bias, bias=BIAS_STACKED),
    Rule(_K, "SimpleRNNCell", "kernel", "weight_ih", KERNEL_LAST),
    Rule(_K, "SimpleRNNCell", "recurrent_kernel", "weight_hh", KERNEL_LAST),
    Rule(_K, "SimpleRNNCell", "bias", "bias", bias=BIAS_SINGLE),
    # keras_hub layers (ReversibleEmbedding is an Embedding: its embeddings row is Embedding's)
    Rule(_K, "PositionEmbedding", "embeddings", "weight", note="keras_hub: (positions, dim), an Embedding's"),
    Rule(_K, "ReversibleEmbedding", "reverse_embeddings", "reverse_embeddings", KERNEL_LAST,
         note="keras_hub, untied output projection: a Linear(dim, vocab)'s (vocab, dim)"),
    Rule(_K, "LlamaLayerNorm", "scale", "weight", note="keras_hub: RMS norm"),
    Rule(_K, "T5LayerNorm", "weight", "weight", note="keras_hub: RMS norm"),
    Rule(_K, "T5MultiHeadAttention", "embeddings", "relative_attention_bias",
         note="keras_hub: (buckets, heads), as T5's relative_attention_bias Embedding"),
    Rule(_K, "ViTPatchingAndEmbedding", "class_token", "class_token", note="keras_hub: (1, 1, dim)"),
    # -- Flax (linen and NNX share names: kernel, bias, scale, embedding) -----------
    Rule(_F, "Dense", "kernel", "weight", KERNEL_LAST),
    Rule(_F, "Linear", "kernel", "weight", KERNEL_LAST),
    Rule(_F, "Dense", "bias", "bias"),
    Rule(_F, "Linear", "bias", "bias"),
    Rule(_F, "DenseGeneral", "kernel", "weight", when=_dense_general_layout),
    Rule(_F, "LinearGeneral", "kernel", "weight", when=_dense_general_layout),
    Rule(_F, "DenseGeneral", "bias", "bias", when=_einsum_bias),
    Rule(_F, "LinearGeneral", "bias", "bias", when=_einsum_bias),
    Rule(_F, "Conv", "kernel", "weight", KERNEL_LAST, note="grouped and depthwise through feature_group_count"),
    Rule(_F, "Conv", "bias", "bias"),
    Rule(_F, "ConvTranspose", "kernel", "weight", when=_flax_conv_transpose),
    Rule(_F, "ConvTranspose", "bias", "bias"),
    Rule(_F, "Embed", "embedding", "weight"),
    Rule(_F, "BatchNorm", "scale", "weight"),
    Rule(_F, "BatchNorm", "bias", "bias"),
    Rule(_F, "BatchNorm", "mean", "running_mean"),
    Rule(_F, "BatchNorm", "var", "running_var"),
    Rule(_F, "LayerNorm", "scale", "weight"),
    Rule(_F, "LayerNorm", "bias", "bias"),
    Rule(_F, "GroupNorm", "scale", "weight"),
    Rule(_F, "GroupNorm", "bias", "bias"),
    Rule(_F, "InstanceNorm", "scale", "weight"),
    Rule(_F, "InstanceNorm", "bias", "bias"),
    Rule(_F, "RMSNorm", "scale", "weight"),
    # -- Gluon (PyTorch's layout as stored, except channels-last convolutions) ----
    Rule(_M, "_Conv", "weight", "weight", when=_gluon_data_layout, note="native when built channels-last"),
    Rule(_M, "_Conv", "bias", "bias", when=_gluon_data_layout),
    *(Rule(_M, "_BaseConvRNNCell", v, v, when=_gluon_data_layout)
      for v in ("i2h_weight", "h2h_weight", "i2h_bias", "h2h_bias")),
]

# -- groups that PyTorch keeps in one tensor and another framework in several ---------------

#: PyTorch roles holding ``n`` Linear weights (or biases) fused along axis 0
#: (``nn.MultiheadAttention``: query, key, value). Ports pair one such entry
#: with ``n`` entries of the other side, in order (``_pairing``).
FUSED: dict[str, int] = {"in_proj_weight": 3, "in_proj_bias": 3}


@dataclass(frozen=True)
class GateGroup:
    """A recurrent cell that keeps its gates in several Dense/Linear layers
    (child keys ``weights``) where PyTorch stacks them in ``weight_ih``
    ``(gates*H, in)`` and ``weight_hh`` ``(gates*H, H)``.

    ``weights``: child key -> (``'ih'`` or ``'hh'``, PyTorch gate blocks it
    holds, in its row order). ``biases``: child key -> for each block of its
    bias, the PyTorch ``bias_ih`` block and ``bias_hh`` block it adds up
    (``None``: none). A bias block that PyTorch keeps in both is additive:
    one framework's single bias goes to ``bias_ih`` with ``bias_hh`` zero,
    and the two are summed the other way; a PyTorch block no child holds
    (NNX GRUCell keeps no ``b_hn``) makes that direction inexact, refused.
    Groups are found by their children's keys (the pairing sees names, not
    classes): ``cell`` names the class for the docs."""

    framework: str
    cell: str
    weights: dict[str, tuple[str, tuple[int, ...]]]
    biases: dict[str, tuple[tuple[int | None, int | None], ...]]
    note: str = ""

    @property
    def gates(self) -> int:
        return sum(len(b) for t, b in self.weights.values() if t == "ih")


_Weights = dict[str, tuple[str, tuple[int, ...]]]
_Biases = dict[str, tuple[tuple[int | None, int | None], ...]]


def _per_gate(ih: Sequence[str], hh: Sequence[str], bias_on: Sequence[str]) -> tuple[_Weights, _Biases]:
    """One Dense per gate: keys ``ih[k]``/``hh[k]`` for PyTorch gate ``k``;
    the bias of gate ``k`` on ``bias_on[k]`` adds both PyTorch biases."""
    weights: _Weights = {**{k: ("ih", (g,)) for g, k in enumerate(ih)}, **{k: ("hh", (g,)) for g, k in enumerate(hh)}}
    biases: _Biases = {k: ((g, g),) for g, k in enumerate(bias_on)}
    return weights, biases


_LSTM_W, _LSTM_B = _per_gate(("ii", "if", "ig", "io"), ("hi", "hf", "hg", "ho"), ("hi", "hf", "hg", "ho"))
_NNX_LSTM_W, _NNX_LSTM_B = _per_gate(("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho"), ("hi", "hf", "hg", "ho"))

GATE_GROUPS: list[GateGroup] = [
    GateGroup(_F, "LSTMCell (linen)", _LSTM_W, _LSTM_B, "gates i, f, g, o; biases on h*: PyTorch bias_ih, bias_hh = 0"),
    GateGroup(_F, "LSTMCell (NNX)", _NNX_LSTM_W, _NNX_LSTM_B, "as linen, gate f keyed if_"),
    GateGroup(_F, "GRUCell (linen)",
              {"ir": ("ih", (0,)), "iz": ("ih", (1,)), "in": ("ih", (2,)),
               "hr": ("hh", (0,)), "hz": ("hh", (1,)), "hn": ("hh", (2,))},
              {"ir": ((0, 0),), "iz": ((1, 1),), "in": ((2, None),), "hn": ((None, 2),)},
              "gates r, z, n; b_in and b_hn stay apart (r * (W_hn h + b_hn))"),
    GateGroup(_F, "GRUCell (NNX)", {"dense_i": ("ih", (0, 1, 2)), "dense_h": ("hh", (0, 1, 2))},
              {"dense_i": ((0, 0), (1, 1), (2, None))},
              "no b_hn: from PyTorch only where it has no bias_hh, refused otherwise"),
    GateGroup(_F, "OptimizedLSTMCell (NNX)", {"dense_i": ("ih", (0, 1, 2, 3)), "dense_h": ("hh", (0, 1, 2, 3))},
              {"dense_h": ((0, 0), (1, 1), (2, 2), (3, 3))}, "gates i, f, g, o stacked"),
    GateGroup(_F, "SimpleCell (linen)", {"i": ("ih", (0,)), "h": ("hh", (0,))}, {"i": ((0, 0),)}),
    GateGroup(_F, "SimpleCell (NNX)", {"dense_i": ("ih", (0,)), "dense_h": ("hh", (0,))}, {"dense_i": ((0, 0),)}),
]

_INDEX: dict[tuple[str, str, str], Rule] = {}
for _r in RULES:
    _INDEX.setdefault((_r.framework, _r.layer, _r.var), _r)


def lookup(framework: str, type_names: Sequence[str], var: str, layer: Any = None,
           ndim: int = 2) -> tuple[str, str, str] | None:
    """``(role, layout, bias mark)`` of variable ``var`` of a layer whose
    class names (most derived first) are ``type_names``; ``None`` where no
    row covers it (the caller then reports ``DEFAULT[framework]``)."""
    for t in type_names:
        rule = _INDEX.get((framework, t, var))
        if rule is None:
            continue
        layout = rule.layout
        if rule.when is not None:
            chosen = rule.when(layer, ndim)
            if chosen is None:
                continue
            layout = chosen
        return rule.role, layout, rule.bias
    return None


def layer_types(framework: str) -> list[str]:
    """The layer types the table knows for ``framework``, in table order."""
    seen: dict[str, None] = {}
    for r in RULES:
        if r.framework == framework:
            seen.setdefault(r.layer)
    return list(seen)


#: Layer kinds for the coverage table: kind -> the layer types that compute
#: it. Keras and Flax entries must be layer names of :data:`RULES` (their
#: layouts are read from there); PyTorch's and Gluon's layers are PyTorch's
#: layout as stored. ``None``: the framework ships no such layer; ``()``: it
#: does, and its values stay native.
KINDS: list[tuple[str, dict[str, tuple[str, ...] | None]]] = [
    ("dense", {"torch": ("Linear",), "mxnet": ("Dense",), "keras": ("Dense", "EinsumDense"),
               "flax": ("Dense", "Linear", "DenseGeneral", "LinearGeneral")}),
    ("convolution 1-3D, grouped", {"torch": ("Conv1d", "Conv2d", "Conv3d"), "mxnet": ("Conv1D", "Conv2D", "Conv3D"),
                                   "keras": ("BaseConv",), "flax": ("Conv",)}),
    ("depthwise convolution", {"torch": ("Conv2d(groups=in)",), "mxnet": ("Conv2D(groups=in)",),
                               "keras": ("DepthwiseConv1D", "DepthwiseConv2D"), "flax": ("Conv",)}),
    ("separable convolution", {"torch": ("two Conv2d",), "mxnet": ("two Conv2D",),
                               "keras": ("SeparableConv1D", "SeparableConv2D"), "flax": None}),
    ("transposed convolution", {"torch": ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"),
                                "mxnet": ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"),
                                "keras": ("BaseConvTranspose",), "flax": ("ConvTranspose",)}),
    ("embedding", {"torch": ("Embedding",), "mxnet": ("Embedding",), "keras": ("Embedding",), "flax": ("Embed",)}),
    ("batch normalization", {"torch": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"), "mxnet": ("BatchNorm",),
                             "keras": ("BatchNormalization",), "flax": ("BatchNorm",)}),
    ("layer normalization", {"torch": ("LayerNorm",), "mxnet": ("LayerNorm",), "keras": ("LayerNormalization",),
                             "flax": ("LayerNorm",)}),
    ("group normalization", {"torch": ("GroupNorm",), "mxnet": ("GroupNorm",), "keras": ("GroupNormalization",),
                             "flax": ("GroupNorm",)}),
    ("instance normalization", {"torch": ("InstanceNorm2d(affine=True)",), "mxnet": ("InstanceNorm",),
                                "keras": None, "flax": ("InstanceNorm",)}),
    ("RMS normalization", {"torch": ("RMSNorm",), "mxnet": None, "keras": ("RMSNormalization",),
                           "flax": ("RMSNorm",)}),
    ("attention", {"torch": ("MultiheadAttention", "Linear q/k/v/out"), "mxnet": ("Dense q/k/v/out",),
                   "keras": ("EinsumDense",), "flax": ("DenseGeneral", "LinearGeneral")}),
    # Flax cells keep a Dense/Linear per gate (or per input): converted as such, regrouped by GATE_GROUPS
    ("LSTM", {"torch": ("LSTM",), "mxnet": ("rnn.LSTM",), "keras": ("LSTMCell",), "flax": ("Dense", "Linear")}),
    ("GRU", {"torch": ("GRU",), "mxnet": ("rnn.GRU",), "keras": ("GRUCell",), "flax": ("Dense", "Linear")}),
    ("simple RNN", {"torch": ("RNN",), "mxnet": ("rnn.RNN",), "keras": ("SimpleRNNCell",),
                    "flax": ("Dense", "Linear")}),
]
