"""Regrouping pairs (contract 3.3, 7.4), NumPy only: PyTorch's fused attention
projection (``in_proj_weight`` ``(3E, E)``) against three separate ones, and
PyTorch's stacked recurrent weights (``weight_ih`` ``(G*H, in)`` in gate
order, ``bias_ih``, ``bias_hh``) against Flax cells with one Dense per gate.

Each twin is written twice in NumPy (the reference kit): the stacked form
computes as PyTorch does, the per-gate form as Flax does, so ``up.port(...,
check=x)`` and ``up.save``/``up.load(match='order')`` are checked on outputs;
direct tests of ``pair``/``combine`` pin the split and stack order, the bias
handling (one bias -> ``bias_ih`` with ``bias_hh`` zero, the two summed the
other way; GRU's ``b_in`` and ``b_hn`` kept apart) and the checks, all made
before any value is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import PortError
from unified_params._layout_table import BIAS_SINGLE, BIAS_STACKED
from unified_params._pairing import Entry, Link, combine, pair
from unified_params.reference._kit import Module, Parameter

H, IN, E, HEADS = 3, 2, 4, 2


def _sig(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


class _Fwd(Module):
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        def backprop(g: np.ndarray) -> np.ndarray:
            raise NotImplementedError("forward only")
        return self.forward(x), backprop


class _Lin(Module):
    """A Flax-style gate layer: ``weight`` (out, in) and maybe ``bias``."""

    def __init__(self, out: int, inp: int, bias: bool) -> None:
        super().__init__()
        self.weight = Parameter((out, inp))
        if bias:
            self.bias = Parameter((out,))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight.data.T
        return y + self.bias.data if "bias" in self._params else y


# -- PyTorch's forms ------------------------------------------------------------------------

class TorchRNN(_Fwd):
    """PyTorch's LSTM (gates i, f, g, o) / GRU (r, z, n) over (N, T, IN)."""

    def __init__(self, kind: str, bias: bool = True) -> None:
        super().__init__()
        g = 4 if kind == "lstm" else 3
        self.kind = kind
        self.weight_ih_l0 = Parameter((g * H, IN))
        self.weight_hh_l0 = Parameter((g * H, H))
        if bias:
            self.bias_ih_l0 = Parameter((g * H,))
            self.bias_hh_l0 = Parameter((g * H,))

    def forward(self, x: np.ndarray) -> np.ndarray:
        p = {k: v.data for k, v in self._params.items()}
        zero = np.zeros(p["weight_hh_l0"].shape[0])
        b_ih, b_hh = p.get("bias_ih_l0", zero), p.get("bias_hh_l0", zero)
        h = np.zeros((x.shape[0], H))
        c = np.zeros_like(h)
        out = []
        for t in range(x.shape[1]):
            gi = x[:, t] @ p["weight_ih_l0"].T + b_ih
            gh = h @ p["weight_hh_l0"].T + b_hh
            if self.kind == "lstm":
                i, f, g, o = np.split(gi + gh, 4, axis=-1)
                c = _sig(f) * c + _sig(i) * np.tanh(g)
                h = _sig(o) * np.tanh(c)
            else:
                ir, iz, in_ = np.split(gi, 3, axis=-1)
                hr, hz, hn = np.split(gh, 3, axis=-1)
                r, z = _sig(ir + hr), _sig(iz + hz)
                h = (1 - z) * np.tanh(in_ + r * hn) + z * h
            out.append(h)
        return np.stack(out, 1).astype(np.float32)


class _Out(Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = Parameter((E, E))
        self.bias = Parameter((E,))


def _attend(x: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, wo: np.ndarray,
            bo: np.ndarray) -> np.ndarray:
    n, t, _ = x.shape
    d = E // HEADS

    def heads(a: np.ndarray) -> np.ndarray:
        return a.reshape(n, t, HEADS, d).transpose(0, 2, 1, 3)

    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / np.sqrt(d)
    s = np.exp(s - s.max(-1, keepdims=True))
    a = (s / s.sum(-1, keepdims=True)) @ heads(v)
    return (a.transpose(0, 2, 1, 3).reshape(n, t, E) @ wo.T + bo).astype(np.float32)


class TorchMHA(_Fwd):
    """``nn.MultiheadAttention``'s parameters: q, k, v fused in one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.in_proj_weight = Parameter((3 * E, E))
        self.in_proj_bias = Parameter((3 * E,))
        self.out_proj = _Out()

    def forward(self, x: np.ndarray) -> np.ndarray:
        qkv = x @ self.in_proj_weight.data.T + self.in_proj_bias.data
        q, k, v = np.split(qkv, 3, axis=-1)
        return _attend(x, q, k, v, self.out_proj.weight.data, self.out_proj.bias.data)


class SplitMHA(_Fwd):
    """Keras'/Flax's: query, key, value and out projections apart."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value, self.out = (_Lin(E, E, True) for _ in range(4))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return _attend(x, self.query(x), self.key(x), self.value(x), self.out.weight.data, self.out.bias.data)


# -- Flax's per-gate forms (children in Flax's linen call order) ----------------------------

class FlaxLSTM(_Fwd):
    def __init__(self) -> None:
        super().__init__()
        cell = Module()
        for g in "ifgo":  # linen calls ii, hi, if, hf, ...
            setattr(cell, f"i{g}", _Lin(H, IN, False))
            setattr(cell, f"h{g}", _Lin(H, H, True))
        self.cell = cell

    def forward(self, x: np.ndarray) -> np.ndarray:
        c, h, out = np.zeros((x.shape[0], H)), np.zeros((x.shape[0], H)), []
        m = self.cell
        for t in range(x.shape[1]):
            xt = x[:, t]
            i = _sig(m.ii(xt) + m.hi(h))
            f = _sig(getattr(m, "if")(xt) + m.hf(h))
            g = np.tanh(m.ig(xt) + m.hg(h))
            o = _sig(m.io(xt) + m.ho(h))
            c = f * c + i * g
            h = o * np.tanh(c)
            out.append(h)
        return np.stack(out, 1).astype(np.float32)


class FlaxGRU(_Fwd):
    def __init__(self) -> None:
        super().__init__()
        cell = Module()
        for g in ("r", "z", "n"):
            setattr(cell, f"i{g}", _Lin(H, IN, True))
            setattr(cell, f"h{g}", _Lin(H, H, g == "n"))
        self.cell = cell

    def forward(self, x: np.ndarray) -> np.ndarray:
        h, out = np.zeros((x.shape[0], H)), []
        m = self.cell
        for t in range(x.shape[1]):
            xt = x[:, t]
            r = _sig(m.ir(xt) + m.hr(h))
            z = _sig(m.iz(xt) + m.hz(h))
            n = np.tanh(getattr(m, "in")(xt) + r * m.hn(h))
            h = (1 - z) * n + z * h
            out.append(h)
        return np.stack(out, 1).astype(np.float32)


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _seed(m: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    m.load_state({n: rng.uniform(-0.8, 0.8, p.shape).astype(np.float32) for n, p in m.params.items()})


TWINS = {
    "lstm": (lambda: TorchRNN("lstm"), FlaxLSTM, (2, 4, IN)),
    "gru": (lambda: TorchRNN("gru"), FlaxGRU, (2, 4, IN)),
    "mha": (TorchMHA, SplitMHA, (2, 3, E)),
}


@pytest.mark.parametrize("kind", sorted(TWINS))
@pytest.mark.parametrize("direction", ["stacked->split", "split->stacked"])
def test_twins_port_and_file(kind: str, direction: str, tmp_path: Path) -> None:
    """Outputs equal after a port and after a load by order, both forms."""
    make_stacked, make_split, shape = TWINS[kind]
    make_src, make_dst = (make_stacked, make_split) if direction == "stacked->split" else (make_split, make_stacked)
    x = _x(shape)
    src, dst = up.wrap(make_src()), up.wrap(make_dst())
    _seed(src, 1)
    y = np.asarray(src(x))
    assert not np.allclose(np.asarray(dst(x)), y, atol=1e-4)
    up.port(src, dst, check=x)
    np.testing.assert_allclose(np.asarray(dst(x)), y, rtol=1e-5, atol=1e-6)
    up.save(src, tmp_path / "m.safetensors")
    fresh = up.wrap(make_dst())
    up.load(fresh, tmp_path / "m.safetensors", match="order", check=(x, y))
    np.testing.assert_allclose(np.asarray(fresh(x)), y, rtol=1e-5, atol=1e-6)


# -- pair/combine directly ------------------------------------------------------------------

def _values(links: list[Link], src_vals: list[np.ndarray], n_dst: int) -> list[np.ndarray]:
    out: list[Any] = [None] * n_dst
    for link in links:
        for k, v in zip(link.dst, combine(link.how, [src_vals[i] for i in link.src])):
            assert out[k] is None, "a destination written twice"
            out[k] = v
    assert all(v is not None for v in out), "a destination left unwritten"
    return out


def _pair(src: list[Entry], dst: list[Entry]) -> list[Link]:
    return pair("parameters", src, dst, "the source", "the destination", "fix")


FUSED_W = Entry("attn.in_proj_weight", (3 * E, E), role="in_proj_weight")
FUSED_B = Entry("attn.in_proj_bias", (3 * E,), role="in_proj_bias")
SPLIT = [Entry(f"attn.{p}.{r}", (E, E) if r == "weight" else (E,), role=r)
         for p in ("query", "key", "value") for r in ("weight", "bias")]


def test_fused_split_order_and_stack_order() -> None:
    w = np.arange(3 * E * E, dtype=np.float32).reshape(3 * E, E)
    b = np.arange(3 * E, dtype=np.float32) + 100
    out = _values(_pair([FUSED_W, FUSED_B], SPLIT), [w, b], 6)
    for q in range(3):  # query, key, value = row blocks 0, 1, 2 in order
        np.testing.assert_array_equal(out[2 * q], w[q * E:(q + 1) * E])
        np.testing.assert_array_equal(out[2 * q + 1], b[q * E:(q + 1) * E])
    back = _values(_pair(SPLIT, [FUSED_W, FUSED_B]), out, 2)
    np.testing.assert_array_equal(back[0], w)
    np.testing.assert_array_equal(back[1], b)


def test_fused_grouped_members_and_no_bias() -> None:
    """Members grouped (q, k, v weights, then biases) or no biases at all."""
    grouped = [e for e in SPLIT if e.role == "weight"] + [e for e in SPLIT if e.role == "bias"]
    w = np.random.default_rng(0).standard_normal((3 * E, E)).astype(np.float32)
    b = np.arange(3 * E, dtype=np.float32)
    out = _values(_pair([FUSED_W, FUSED_B], grouped), [w, b], 6)
    np.testing.assert_array_equal(out[1], w[E:2 * E])
    np.testing.assert_array_equal(out[5], b[2 * E:])
    only = _values(_pair([FUSED_W], grouped[:3]), [w], 3)
    np.testing.assert_array_equal(out[2], only[2])


def test_fused_copies_one_to_one_between_fused() -> None:
    links = _pair([FUSED_W, FUSED_B], [FUSED_W, FUSED_B])
    assert [lk.how for lk in links] == ["copy", "copy"]


@pytest.mark.parametrize("bad", [
    [Entry("q.weight", (E, E), role="weight"), Entry("k.weight", (E, E), role="weight"),
     Entry("v.weight", (E + 1, E), role="weight")],
    [Entry("q.weight", (E, E), role="weight"), Entry("k.weight", (E, E), role="weight")],
    [Entry("q.weight", (E, E), role="weight"), Entry("k.weight", (E, E), role="weight"),
     Entry("v.weight", (E, E), "native", role="weight")],
])
def test_fused_refusals_name_both_sides(bad: list[Entry]) -> None:
    with pytest.raises(PortError) as info:
        _pair([FUSED_W], bad)
    assert "attn.in_proj_weight" in str(info.value) and "q.weight" in str(info.value)
    with pytest.raises(PortError):
        _pair(bad, [FUSED_W])


def _stacked(g: int, bias: str = "two") -> list[Entry]:
    out = [Entry("rnn.weight_ih_l0", (g * H, IN), role="weight_ih_l0"),
           Entry("rnn.weight_hh_l0", (g * H, H), role="weight_hh_l0")]
    if bias == "two":
        out += [Entry("rnn.bias_ih_l0", (g * H,), role="bias_ih_l0"),
                Entry("rnn.bias_hh_l0", (g * H,), role="bias_hh_l0")]
    elif bias == "single":
        out.append(Entry("lstm.bias", (g * H,), "canonical", "bias", BIAS_SINGLE))
    elif bias == "stacked":
        out.append(Entry("gru.bias", (2, g * H), "gates1:1,0,2", "bias", BIAS_STACKED))
    return out


def _gates(keys: list[tuple[str, bool]], prefix: str = "LSTMCell_0") -> list[Entry]:
    out = []
    for key, bias in keys:
        out.append(Entry(f"{prefix}.{key}.weight", (H, IN if key[0] == "i" else H), "kernel_last", "weight"))
        if bias:
            out.append(Entry(f"{prefix}.{key}.bias", (H,), "canonical", "bias"))
    return out


LINEN_LSTM = _gates([(k, k[0] == "h") for g in "ifgo" for k in (f"i{g}", f"h{g}")])
NNX_LSTM = _gates([(f"i{g}" if g != "f" else "if_", False) for g in "ifgo"] + [(f"h{g}", True) for g in "ifgo"], "cell")
LINEN_GRU = _gates([(k, k != "hr" and k != "hz") for g in "rzn" for k in (f"i{g}", f"h{g}")], "GRUCell_0")


def _block(v: np.ndarray, k: int) -> np.ndarray:
    return v[k * H:(k + 1) * H]


@pytest.mark.parametrize("group", [LINEN_LSTM, NNX_LSTM], ids=["linen", "nnx"])
def test_lstm_gate_order_and_biases(group: list[Entry]) -> None:
    rng = np.random.default_rng(3)
    st = _stacked(4)
    vals = [rng.standard_normal(e.shape).astype(np.float32) for e in st]
    out = dict(zip((e.name for e in group), _values(_pair(st, group), vals, len(group))))
    gate_key = {"i": "i", "f": "f", "g": "g", "o": "o"}
    for k, g in enumerate("ifgo"):
        ik = "if_" if (g == "f" and "cell.if_.weight" in out) else f"i{gate_key[g]}"
        prefix = group[0].name.split(".")[0]
        np.testing.assert_array_equal(out[f"{prefix}.{ik}.weight"], _block(vals[0], k))
        np.testing.assert_array_equal(out[f"{prefix}.h{g}.weight"], _block(vals[1], k))
        np.testing.assert_allclose(out[f"{prefix}.h{g}.bias"], _block(vals[2], k) + _block(vals[3], k))
    # back: the weights stack in gate order; one bias -> bias_ih, bias_hh zero
    back = _values(_pair(group, st), [out[e.name] for e in group], 4)
    np.testing.assert_array_equal(back[0], vals[0])
    np.testing.assert_array_equal(back[1], vals[1])
    np.testing.assert_allclose(back[2], vals[2] + vals[3])
    np.testing.assert_array_equal(back[3], np.zeros(4 * H, np.float32))


def test_gru_keeps_b_in_and_b_hn_apart() -> None:
    rng = np.random.default_rng(4)
    st = _stacked(3)
    vals = [rng.standard_normal(e.shape).astype(np.float32) for e in st]
    out = dict(zip((e.name for e in LINEN_GRU), _values(_pair(st, LINEN_GRU), vals, len(LINEN_GRU))))
    p = "GRUCell_0"
    np.testing.assert_allclose(out[f"{p}.ir.bias"], _block(vals[2], 0) + _block(vals[3], 0))
    np.testing.assert_allclose(out[f"{p}.iz.bias"], _block(vals[2], 1) + _block(vals[3], 1))
    np.testing.assert_array_equal(out[f"{p}.in.bias"], _block(vals[2], 2))
    np.testing.assert_array_equal(out[f"{p}.hn.bias"], _block(vals[3], 2))
    np.testing.assert_array_equal(out[f"{p}.iz.weight"], _block(vals[0], 1))
    np.testing.assert_array_equal(out[f"{p}.hn.weight"], _block(vals[1], 2))
    back = _values(_pair(LINEN_GRU, st), [out[e.name] for e in LINEN_GRU], 4)
    np.testing.assert_allclose(back[2], np.concatenate([_block(vals[2], 0) + _block(vals[3], 0),
                                                        _block(vals[2], 1) + _block(vals[3], 1),
                                                        _block(vals[2], 2)]))
    np.testing.assert_array_equal(back[3], np.concatenate([np.zeros(2 * H, np.float32), _block(vals[3], 2)]))


def test_keras_single_and_stacked_bias_forms() -> None:
    rng = np.random.default_rng(5)
    # Keras LSTM (one bias) -> linen gates: the bias is bias_ih, bias_hh zero
    st = _stacked(4, "single")
    vals = [rng.standard_normal(e.shape).astype(np.float32) for e in st]
    out = _values(_pair(st, LINEN_LSTM), vals, len(LINEN_LSTM))
    names = [e.name for e in LINEN_LSTM]
    np.testing.assert_array_equal(out[names.index("LSTMCell_0.hg.bias")], _block(vals[2], 2))
    back = _values(_pair(LINEN_LSTM, st), out, 3)
    np.testing.assert_array_equal(back[2], vals[2])
    # Keras GRU stacked (2, 3H) <-> linen gates: row 0 input, row 1 recurrent
    st = _stacked(3, "stacked")
    vals = [rng.standard_normal(e.shape).astype(np.float32) for e in st]
    out = _values(_pair(st, LINEN_GRU), vals, len(LINEN_GRU))
    names = [e.name for e in LINEN_GRU]
    np.testing.assert_array_equal(out[names.index("GRUCell_0.hn.bias")], vals[2][1, 2 * H:])
    np.testing.assert_allclose(out[names.index("GRUCell_0.ir.bias")], vals[2][0, :H] + vals[2][1, :H])
    back = _values(_pair(LINEN_GRU, st), out, 3)
    assert back[2].shape == (2, 3 * H)
    np.testing.assert_array_equal(back[2][1, 2 * H:], vals[2][1, 2 * H:])
    np.testing.assert_array_equal(back[2][1, :2 * H], np.zeros(2 * H, np.float32))


def test_gru_into_one_bias_refused() -> None:
    """One bias cannot hold GRU's b_hn apart from b_in: refused."""
    with pytest.raises(PortError, match="apart"):
        _pair(LINEN_GRU, _stacked(3, "single"))


def test_nnx_gru_without_b_hn() -> None:
    nnx_gru = [Entry("cell.dense_i.weight", (3 * H, IN), "kernel_last", "weight"),
               Entry("cell.dense_i.bias", (3 * H,), "canonical", "bias"),
               Entry("cell.dense_h.weight", (3 * H, H), "kernel_last", "weight")]
    rng = np.random.default_rng(6)
    vals = [rng.standard_normal(e.shape).astype(np.float32) for e in nnx_gru]
    back = _values(_pair(nnx_gru, _stacked(3)), vals, 4)
    np.testing.assert_array_equal(back[0], vals[0])
    np.testing.assert_array_equal(back[2], vals[1])
    np.testing.assert_array_equal(back[3], np.zeros(3 * H, np.float32))
    with pytest.raises(PortError, match="bias_hh gate 2"):
        _pair(_stacked(3), nnx_gru)
    # a single bias (bias_hh zero by definition) maps exactly
    out = _values(_pair(_stacked(3, "single"), nnx_gru), vals[:2] + [vals[1]], 3)
    np.testing.assert_array_equal(out[1], vals[1])


@pytest.mark.parametrize("case", ["size", "missing gate", "native", "no biases", "gru vs lstm"])
def test_gate_refusals(case: str) -> None:
    st, group = _stacked(4), list(LINEN_LSTM)
    if case == "size":
        st[0] = Entry("rnn.weight_ih_l0", (4 * H, IN + 1), role="weight_ih_l0")
    elif case == "missing gate":
        group = [e for e in group if ".io." not in e.name]
    elif case == "native":
        group[0] = Entry(group[0].name, group[0].shape, "native", "weight")
    elif case == "no biases":
        st = _stacked(4, "none")
    else:
        st = _stacked(3)
    with pytest.raises(PortError) as info:
        _pair(group, st)
    assert "rnn.weight_ih_l0" in str(info.value)
    assert "LSTMCell_0" in str(info.value)
    if case != "no biases":
        with pytest.raises(PortError):
            _pair(st, group)


def test_torch_without_biases_gives_zero_gate_biases() -> None:
    st = _stacked(4, "none")
    vals = [np.ones(e.shape, np.float32) for e in st]
    out = _values(_pair(st, LINEN_LSTM), vals, len(LINEN_LSTM))
    for e, v in zip(LINEN_LSTM, out):
        assert v.shape == e.shape
        if e.role == "bias":
            np.testing.assert_array_equal(v, np.zeros(H, np.float32))


def test_checks_run_before_any_value_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later group that does not fit is refused before any value is read
    or written, in a port and in a load by order."""
    from unified_params.reference._backend import NumpyHandle

    class TwoLayers(_Fwd):
        def __init__(self, second: Module) -> None:
            super().__init__()
            self.a, self.b = TorchRNN("lstm"), second

    src, dst = up.wrap(TwoLayers(TorchRNN("lstm"))), up.wrap(TwoLayers(FlaxGRU()))
    before = dst.state()
    calls: list[str] = []
    for name in ("read", "write"):
        real = getattr(NumpyHandle, name)
        monkeypatch.setattr(NumpyHandle, name, lambda self, *a, _r=real, _n=name, **k: (calls.append(_n),
                                                                                          _r(self, *a, **k))[1])
    with pytest.raises(PortError, match="b.weight_ih_l0"):
        up.port(src, dst)
    assert calls == []
    monkeypatch.undo()
    assert all(np.array_equal(before[k], v) for k, v in dst.state().items())


def test_gluon_roles_pair_like_torch() -> None:
    """Gluon's rnn.LSTM names (l0_i2h_weight, ..., l0_h2h_bias), stored in
    PyTorch's layout and gate order, regroup as PyTorch's do (a Gluon file
    loads by order into a Flax LSTM)."""
    gluon = [Entry(f"lstm.l0_{n}", e.shape, role=f"l0_{n}")
             for n, e in zip(("i2h_weight", "h2h_weight", "i2h_bias", "h2h_bias"), _stacked(4))]
    rng = np.random.default_rng(7)
    vals = [rng.standard_normal(e.shape).astype(np.float32) for e in gluon]
    out = dict(zip((e.name for e in LINEN_LSTM), _values(_pair(gluon, LINEN_LSTM), vals, len(LINEN_LSTM))))
    np.testing.assert_array_equal(out["LSTMCell_0.ig.weight"], _block(vals[0], 2))
    np.testing.assert_allclose(out["LSTMCell_0.ho.bias"], _block(vals[2], 3) + _block(vals[3], 3))
