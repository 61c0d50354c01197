"""The layout table and its conversions (contract 3.3, 3.4), with NumPy
alone: every layout checked element by element against PyTorch's layout
written out index by index (never through the conversion under test), the
table's rows as adapters see them, fans from canonical shapes, and the
pairing rules of ports (recurrent biases, native layouts refused)."""

from __future__ import annotations

import numpy as np
import pytest

import unified_params as up
from unified_params import _layout as L
from unified_params import _layout_table as T
from unified_params._pairing import Entry, Link, combine, pair
from unified_params.adapter import BIAS_SINGLE, BIAS_STACKED, NATIVE, layout_rule

rng = np.random.default_rng(0)


def _round_trip(native: np.ndarray, layout: str) -> np.ndarray:
    canon = L.to_canonical(native, layout)
    back = L.to_native(np.ascontiguousarray(canon), layout, native.shape)
    assert back.shape == native.shape and np.array_equal(back, native)
    assert back.flags.c_contiguous
    assert L.shape_to_canonical(native.shape, layout) == canon.shape
    return canon


def test_kernel_last_dense_and_conv():
    w = rng.standard_normal((5, 7))  # Keras Dense (in, out)
    c = _round_trip(w, "kernel_last")
    for o in range(7):
        for i in range(5):
            assert c[o, i] == w[i, o]
    k = rng.standard_normal((3, 2, 4, 6))  # HWIO
    c = _round_trip(k, "kernel_last")
    assert c.shape == (6, 4, 3, 2)
    assert c[5, 3, 2, 1] == k[2, 1, 3, 5]


def test_depthwise_last_is_torch_depthwise():
    k = rng.standard_normal((3, 2, 4, 5))  # Keras (kh, kw, C, multiplier)
    c = _round_trip(k, "depthwise_last")
    assert c.shape == (20, 1, 3, 2)
    for ch in range(4):
        for m in range(5):  # PyTorch groups=C: output channel ch*M + m reads input channel ch
            assert np.array_equal(c[ch * 5 + m, 0], k[:, :, ch, m])


def test_attention_kernels_flatten_to_linear():
    q = rng.standard_normal((6, 2, 3))  # (in, heads, head_dim)
    c = _round_trip(q, "general:1")
    assert c.shape == (6, 6)
    for h in range(2):
        for d in range(3):
            assert np.array_equal(c[h * 3 + d], q[:, h, d])
    o = rng.standard_normal((2, 3, 7))  # (heads, head_dim, out)
    c = _round_trip(o, "general:2")
    assert c.shape == (7, 6)
    for h in range(2):
        for d in range(3):
            assert np.array_equal(c[:, h * 3 + d], o[h, d])
    b = rng.standard_normal((2, 3))
    c = _round_trip(b, "merged")
    assert np.array_equal(c, b.reshape(-1))


def test_gru_gates_reordered():
    k = rng.standard_normal((4, 9))  # Keras (in, 3*units), gates z, r, h
    c = _round_trip(k, "gates:1,0,2|kernel_last")
    assert np.array_equal(c[0:3], k[:, 3:6].T)  # r
    assert np.array_equal(c[3:6], k[:, 0:3].T)  # z
    assert np.array_equal(c[6:9], k[:, 6:9].T)  # n
    b = rng.standard_normal((2, 9))  # reset_after: input row, recurrent row
    c = _round_trip(b, "gates1:1,0,2")
    assert np.array_equal(c[:, 0:3], b[:, 3:6]) and np.array_equal(c[:, 3:6], b[:, 0:3])


def test_flax_transpose_flipped():
    k = rng.standard_normal((3, 2, 4, 5))  # (*k, in, out)
    c = _round_trip(k, "transpose_flipped")
    assert c.shape == (4, 5, 3, 2)
    assert c[1, 2, 0, 0] == k[2, 1, 1, 2] and c[1, 2, 2, 1] == k[0, 0, 1, 2]


def test_deferred_dims_and_unknown_layout():
    assert L.shape_to_canonical((3, 3, None, 2), "depthwise_last") == (None, 1, 3, 3)
    assert L.shape_to_canonical((None, 8), "kernel_last") == (8, None)
    assert L.shape_to_canonical((3, 4), NATIVE) == (3, 4)
    with pytest.raises(ValueError, match="layout among"):
        L.get("sideways")


def test_merged_reads_are_views_where_numpy_allows():
    b = rng.standard_normal((2, 3))
    assert np.shares_memory(L.to_canonical(b, "merged"), b)
    q = rng.standard_normal((6, 2, 3))
    assert np.shares_memory(L.to_canonical(q, "kernel_last"), q)


class _Layer:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _typed(name: str, bases: tuple[type, ...] = (), **kw):
    return type(name, bases or (_Layer,), {})(**kw)


def test_table_rows_as_adapters_see_them():
    base = type("BaseConv", (_Layer,), {})
    conv = type("Conv2D", (base,), {})()
    assert layout_rule("keras", conv, "kernel") == ("weight", "kernel_last", "")  # found through the MRO
    assert layout_rule("keras", _typed("DepthwiseConv2D"), "kernel", 4)[1] == "depthwise_last"
    assert layout_rule("keras", _typed("LSTMCell"), "bias", 1) == ("bias", "canonical", BIAS_SINGLE)
    assert layout_rule("keras", _typed("GRUCell", reset_after=True), "bias", 2) == ("bias", "gates1:1,0,2",
                                                                                    BIAS_STACKED)
    assert layout_rule("keras", _typed("GRUCell", reset_after=False), "kernel", 2)[1] == NATIVE
    # an unknown Keras layer is native, never guessed; an unknown torch module is canonical
    assert layout_rule("keras", _typed("ConvLSTM2D"), "kernel", 4) == ("kernel", NATIVE, "")
    assert layout_rule("torch", _typed("Bilinear"), "weight", 3) == ("weight", "canonical", "")


@pytest.mark.parametrize(("equation", "ndim", "expected"), [
    ("ab,bc->ac", 2, "kernel_last"),
    ("abc,cde->abde", 3, "general:1"),  # MHA query/key/value
    ("abcd,cde->abe", 3, "general:2"),  # MHA output
    ("abc,cd->abd", 2, "kernel_last"),
    ("ab,cb->ac", 2, NATIVE),  # a kernel stored (out, in): not a Linear read this way
    ("abc,bcd->ad", 3, "general:2"),  # contracts the input's two last axes: a Linear on the flattened input
    ("abc,bd->acd", 2, NATIVE),  # contracts a non-trailing input axis
])
def test_einsum_equations(equation, ndim, expected):
    assert layout_rule("keras", _typed("EinsumDense", equation=equation), "kernel", ndim)[1] == expected


@pytest.mark.parametrize(("axis", "batch_dims", "ndim", "expected"), [
    (-1, (), 2, "kernel_last"), (-1, (), 3, "general:1"), ((-2, -1), (), 3, "general:2"),
    ((0,), (), 3, NATIVE), (-1, (0,), 3, NATIVE),
])
def test_flax_dense_general(axis, batch_dims, ndim, expected):
    layer = _typed("DenseGeneral", axis=axis, batch_dims=batch_dims)
    assert layout_rule("flax", layer, "kernel", ndim)[1] == expected


def test_every_row_names_a_known_layout():
    for r in T.RULES:
        if r.when is None:
            L.get(r.layout)
        assert r.role, r


def test_fans_follow_the_canonical_shape():
    # Keras DepthwiseConv2D (3, 3, C=32, 1): fan_in is 1 * 3 * 3 in PyTorch's layout, not 32 * 1 * 1
    canon = L.shape_to_canonical((3, 3, 32, 1), "depthwise_last")
    assert up.init.fans(canon) == (9, 32 * 9)
    k = up.init.KaimingNormal()
    draw = k(canon, np.random.default_rng(0), None)
    assert abs(float(np.std(draw)) - np.sqrt(2 / 9)) < 0.05


# -- pairing ---------------------------------------------------------------------------

def _e(name, shape, layout="canonical", role="", rnn_bias=""):
    return Entry(name, tuple(shape), layout, role or name.rsplit(".", 1)[-1], rnn_bias)


TORCH_LSTM = [_e("lstm.weight_ih_l0", (16, 3)), _e("lstm.weight_hh_l0", (16, 4)),
              _e("lstm.bias_ih_l0", (16,)), _e("lstm.bias_hh_l0", (16,))]
KERAS_LSTM = [_e("lstm.cell.weight_ih", (16, 3), "kernel_last"), _e("lstm.cell.weight_hh", (16, 4), "kernel_last"),
              _e("lstm.cell.bias", (16,), rnn_bias=BIAS_SINGLE)]


def test_single_bias_splits_into_two_and_sums_back():
    links = pair("parameters", KERAS_LSTM, TORCH_LSTM, "src", "dst", "fix")
    assert links == [Link((0,), (0,)), Link((1,), (1,)), Link((2,), (2, 3), "split")]
    links = pair("parameters", TORCH_LSTM, KERAS_LSTM, "src", "dst", "fix")
    assert links[-1] == Link((2, 3), (2,), "sum")
    b = rng.standard_normal(16)
    ih, hh = combine("split", [b])
    assert np.array_equal(ih, b) and not hh.any()
    (s,) = combine("sum", [ih, np.full(16, 0.5)])
    assert np.array_equal(s, b + 0.5)


def test_stacked_gru_bias_pairs_with_two():
    torch_gru = [_e("gru.bias_ih_l0", (12,)), _e("gru.bias_hh_l0", (12,))]
    keras = [_e("gru.cell.bias", (2, 12), "gates1:1,0,2", rnn_bias=BIAS_STACKED)]
    assert pair("p", keras, torch_gru, "s", "d", "f") == [Link((0,), (0, 1), "unstack")]
    assert pair("p", torch_gru, keras, "s", "d", "f") == [Link((0, 1), (0,), "stack")]
    v = rng.standard_normal((2, 12))
    a, b = combine("unstack", [v])
    assert np.array_equal(combine("stack", [a, b])[0], v)


def test_gluon_bias_names_pair_too():
    gluon = [_e("lstm.l0_i2h_bias", (16,)), _e("lstm.l0_h2h_bias", (16,))]
    assert pair("p", KERAS_LSTM[2:], gluon, "s", "d", "f")[0].how == "split"


def test_two_unrelated_biases_are_not_a_recurrent_pair():
    dense = [_e("a.bias", (16,)), _e("b.bias", (16,))]
    with pytest.raises(up.PortError, match="number of distinct"):
        pair("parameters", KERAS_LSTM[2:], dense, "src", "dst", "fix")


def test_native_never_pairs_with_converted():
    src = [_e("conv.kernel", (3, 3), NATIVE)]
    dst = [_e("conv.weight", (3, 3))]
    with pytest.raises(up.PortError) as info:
        pair("parameters", src, dst, "src", "dst", "fix")
    assert "native layout" in str(info.value) and "conv.kernel" in str(info.value)
    assert pair("parameters", src, [_e("x.kernel", (3, 3), NATIVE)], "s", "d", "f") == [Link((0,), (0,))]


def test_shape_and_count_mismatches_name_the_pair():
    with pytest.raises(up.PortError, match=r"#1 of matching canonical shapes"):
        pair("parameters", TORCH_LSTM, [TORCH_LSTM[0], _e("x", (4, 16)), *TORCH_LSTM[2:]], "s", "d", "f")
    with pytest.raises(up.PortError, match="first unpaired is 'lstm.bias_hh_l0'"):
        pair("parameters", TORCH_LSTM[:3], TORCH_LSTM, "s", "d", "f")


# -- every path of the core on table layouts, NumPy alone (testing.fakes.LayoutHandle) ----------

from unified_params import reference as ref  # noqa: E402
from unified_params.reference._kit import Module, Parameter  # noqa: E402
from unified_params.testing.fakes import with_layouts  # noqa: E402

#: canonical (6, 4) as attention heads (in=4, heads=2, head_dim=3); bias (6,) as (2, 3);
#: canonical (9, 6) as GRU-style gates behind a kernel-last transpose
_HEADS = {"0.weight": ("general:1", (4, 2, 3), ""), "0.bias": ("merged", (2, 3), ""),
          "2.weight": ("gates:1,0,2|kernel_last", (6, 9), "")}


def _mlp() -> ref.Sequential:
    return ref.Sequential(ref.Dense(6, in_units=4), ref.ReLU(), ref.Dense(9, in_units=6))


def test_block_shapes_reads_and_writes_on_table_layouts():
    model = _mlp()
    m = with_layouts(model, _HEADS)
    p = m.params["0.weight"]
    assert (p.shape, p.native_shape, p.layout) == ((6, 4), (4, 2, 3), "general:1")
    assert m.params["2.weight"].native_shape == (6, 9) and m.params["2.weight"].shape == (9, 6)
    for name, q in m.params.items():
        assert np.array_equal(q.value, model_param(model, name)), name
    v = rng.standard_normal((9, 6)).astype(np.float32)
    m.params["2.weight"].set(v)
    assert np.array_equal(model[2].weight.data, v)  # the canonical value, through the native one
    m.params["0.bias"][1:3] = 5.0
    m.params["0.weight"] += 1.0
    assert np.all(model[0].bias.data[1:3] == 5.0)
    with pytest.raises(up.ShapeMismatchError):
        m.params["0.weight"].set(np.zeros((4, 2, 3), np.float32))  # the native shape is not the canonical one


def model_param(model: ref.Sequential, name: str) -> np.ndarray:
    layer, role = name.split(".")
    return getattr(model[int(layer)], role).data


def test_seeds_state_files_and_ports_agree_with_the_canonical_twin(tmp_path):
    m = with_layouts(_mlp(), _HEADS)
    twin = up.wrap(_mlp())
    m.initialize(up.init.KaimingNormal(), seed=3)
    twin.initialize(up.init.KaimingNormal(), seed=3)
    a, b = m.state(), twin.state()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    up.save(m, tmp_path / "heads.safetensors")
    other = up.wrap(_mlp())
    up.load(other, tmp_path / "heads.safetensors")
    assert np.array_equal(other(x), m(x))
    back = with_layouts(_mlp(), _HEADS)
    up.port(twin, back, check=x)
    assert np.array_equal(back(x), twin(x))
    up.load(back, tmp_path / "heads.safetensors", match="order")
    assert all(np.array_equal(back.state()[k], a[k]) for k in a)


def test_gradients_cross_in_canonical_layout():
    m = with_layouts(_mlp(), _HEADS)
    twin = up.wrap(_mlp())
    up.port(m, twin)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    m.backward(x)
    twin.backward(x)
    for name in m.params:
        assert np.allclose(m.params[name].grad, twin.params[name].grad, rtol=1e-6), name


def test_native_layout_is_refused_by_ports_and_changes_nothing():
    m = with_layouts(_mlp(), {"2.weight": ("native", (9, 6), "")})
    assert m.params["2.weight"].layout == "native"
    twin = up.wrap(_mlp())
    before = twin.state()
    with pytest.raises(up.PortError, match="native layout"):
        up.port(m, twin)
    with pytest.raises(up.PortError, match="native layout"):
        up.port(twin, m)
    assert all(np.array_equal(twin.state()[k], before[k]) for k in before)


class _TwoBiases(Module):
    """PyTorch's recurrent convention: bias_ih and bias_hh."""

    def __init__(self) -> None:
        super().__init__()
        self.weight_ih = Parameter((6, 4))
        self.bias_ih = Parameter((6,))
        self.bias_hh = Parameter((6,))

    def _forward(self, x):
        return x @ self.weight_ih.data.T + self.bias_ih.data + self.bias_hh.data, None


class _OneBias(Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight_ih = Parameter((6, 4))
        self.bias = Parameter((6,))

    def _forward(self, x):
        return x @ self.weight_ih.data.T + self.bias.data, None


def test_one_recurrent_bias_ports_to_two_and_back(tmp_path):
    one = with_layouts(ref.Sequential(_OneBias()), {"0.bias": ("canonical", (6,), BIAS_SINGLE)})
    two = up.wrap(ref.Sequential(_TwoBiases()))
    one.initialize(up.init.Normal(0, 1), seed=0)
    two.initialize(up.init.Normal(0, 1), seed=1)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    report = up.port(one, two, check=x)
    assert np.array_equal(two.params["0.bias_ih"].value, one.params["0.bias"].value)
    assert not two.params["0.bias_hh"].value.any()
    assert [d for _, d, _ in report.pairs] == ["0.weight_ih", "0.bias_ih", "0.bias_hh"]
    two.params["0.bias_hh"].fill(0.25)
    up.port(two, one, check=x)
    assert np.allclose(one.params["0.bias"].value, two.params["0.bias_ih"].value + 0.25)
    up.save(one, tmp_path / "one.safetensors")
    fresh = up.wrap(ref.Sequential(_TwoBiases()))
    up.load(fresh, tmp_path / "one.safetensors", match="order", check=(x, one(x)))
    assert np.allclose(fresh(x), one(x))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _layouts(draw):
    ndim = draw(st.integers(1, 4))
    perm = draw(st.permutations(range(ndim)))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, ndim - 1)), max_size=ndim - 1))) if ndim > 1 else []
    groups, start = [], 0
    for c in [*cuts, ndim]:
        if c > start:
            groups.append(tuple(perm[start:c]))
        start = c
    if draw(st.booleans()):
        groups.insert(draw(st.integers(0, len(groups))), ())
    flips = tuple(draw(st.sets(st.integers(0, ndim - 1))))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    gates = ()
    if draw(st.booleans()) and groups[0]:
        n = draw(st.integers(2, 3))
        shape = tuple(d * n if a == groups[0][0] else d for a, d in enumerate(shape))
        gates = tuple(draw(st.permutations(range(n))))
    lay = L.Layout("prop", lambda nd, g=tuple(groups): g, lambda nd, f=flips: f, gates)
    return lay, shape, tuple(groups), flips, gates


@settings(max_examples=150, deadline=None)
@given(_layouts())
def test_any_layout_round_trips_and_agrees_with_its_description(case):
    lay, shape, groups, flips, gates = case
    native = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    canon = lay.to_canonical(native)
    assert canon.shape == lay.canonical_shape(shape)
    assert np.array_equal(lay.to_native(np.ascontiguousarray(canon), shape), native)
    # the description, element by element: native index -> canonical index
    flipped = native[tuple(slice(None, None, -1) if a in flips else slice(None) for a in range(native.ndim))]
    for idx in np.ndindex(*shape):
        out = []
        for g in groups:
            flat = 0
            for a in g:
                flat = flat * shape[a] + idx[a]
            out.append(flat)
        if gates:
            size = canon.shape[0] // len(gates)
            block, rest = divmod(out[0], size)
            out[0] = gates.index(block) * size + rest
        assert canon[tuple(out)] == flipped[idx]


def test_gluon_channels_last_is_a_table_selector() -> None:
    """The MXNet adapter asks the table (no framework needed here): a Gluon
    convolution built channels-last is native, channels-first canonical."""
    from unified_params.adapter import layout_rule

    class _Conv:  # Gluon's base class name for every convolution
        def __init__(self, layout: str) -> None:
            self._kwargs = {"layout": layout}

    class _BaseConvRNNCell:
        def __init__(self, layout: str) -> None:
            self._conv_layout = layout

    for blk_layout, want in (("NHWC", "native"), ("NDHWC", "native"), ("NCHW", "canonical"), ("NCW", "canonical")):
        assert layout_rule("mxnet", _Conv(blk_layout), "weight", 4)[1] == want, blk_layout
        assert layout_rule("mxnet", _Conv(blk_layout), "bias", 1)[1] == want, blk_layout
        assert layout_rule("mxnet", _BaseConvRNNCell(blk_layout), "i2h_weight", 4)[1] == want
    assert layout_rule("mxnet", object(), "weight", 2)[1] == "canonical"  # Gluon's default layout
