"""Real models written from Flax's own layers (issue 14), linen and NNX: a CNN
with batch norm, a transformer block with attention, an LSTM. For each: the
names and counts of the native listing (params and batch_stats), canonical
shapes, seeded draws equal to the NumPy reference recipe, bit-exact
state/save/load round trips, ``print(m)`` and ``m.summary()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

import unified_params as up  # noqa: E402
from unified_params import reference as ref  # noqa: E402

RNG = np.random.default_rng(0)
IMG = RNG.standard_normal((2, 8, 8, 3)).astype(np.float32)  # NHWC
SEQ = RNG.standard_normal((2, 5, 8)).astype(np.float32)  # (batch, time, features)


# -- the models ------------------------------------------------------------------------


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(8, (3, 3), name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
        x = nn.Conv(16, (3, 3), strides=2, feature_group_count=8, name="grouped")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn2")(x))
        return nn.Dense(10, name="fc")(x.mean(axis=(1, 2)))


class NnxCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.grouped = nnx.Conv(8, 16, (3, 3), strides=2, feature_group_count=8, rngs=rngs)
        self.bn2 = nnx.BatchNorm(16, rngs=rngs)
        self.fc = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn(self.stem(x)))
        x = nnx.relu(self.bn2(self.grouped(x)))
        return self.fc(x.mean(axis=(1, 2)))


class LinenBlock(nn.Module):
    """A pre-norm transformer encoder block."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.LayerNorm(name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(h, h)
        h = nn.LayerNorm(name="ln2")(x)
        return x + nn.Dense(8, name="fc2")(nn.gelu(nn.Dense(16, name="fc1")(h)))


class NnxBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.ln1 = nnx.LayerNorm(8, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(8, rngs=rngs)
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 8, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.ln1(x)
        x = x + self.attn(h)
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class LinenLSTM(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(3, name="head")(nn.RNN(nn.LSTMCell(6), name="rnn")(x)[:, -1])


class NnxLSTM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.rnn = nnx.RNN(nnx.LSTMCell(8, 6, rngs=rngs))
        self.head = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.rnn(x)[:, -1])


def _linen(cls: type, x: np.ndarray, seed: int = 0, jit: bool = False) -> Any:
    net = cls()
    init = jax.jit(net.init) if jit else net.init
    return up.wrap(net, init(jax.random.key(seed), jnp.asarray(x)))


def _nnx(cls: type, seed: int = 0) -> Any:
    net = cls(nnx.Rngs(seed))
    if hasattr(net, "bn"):
        net.eval()  # batch norm with its running statistics, as linen's train=False
    return up.wrap(net)


CASES = {
    "linen-cnn": (lambda seed=0: _linen(LinenCNN, IMG, seed), IMG),
    "linen-cnn-jit": (lambda seed=0: _linen(LinenCNN, IMG, seed, jit=True), IMG),
    "nnx-cnn": (lambda seed=0: _nnx(NnxCNN, seed), IMG),
    "linen-block": (lambda seed=0: _linen(LinenBlock, SEQ, seed), SEQ),
    "linen-block-jit": (lambda seed=0: _linen(LinenBlock, SEQ, seed, jit=True), SEQ),
    "nnx-block": (lambda seed=0: _nnx(NnxBlock, seed), SEQ),
    "linen-lstm": (lambda seed=0: _linen(LinenLSTM, SEQ, seed), SEQ),
    "linen-lstm-jit": (lambda seed=0: _linen(LinenLSTM, SEQ, seed, jit=True), SEQ),
    "nnx-lstm": (lambda seed=0: _nnx(NnxLSTM, seed), SEQ),
}

#: Canonical (PyTorch) shapes, in model order.
SHAPES = {
    "cnn": [("stem.weight", (8, 3, 3, 3)), ("stem.bias", (8,)), ("bn.weight", (8,)), ("bn.bias", (8,)),
            ("grouped.weight", (16, 1, 3, 3)), ("grouped.bias", (16,)), ("bn2.weight", (16,)),
            ("bn2.bias", (16,)), ("fc.weight", (10, 16)), ("fc.bias", (10,))],
    "block": [("ln1.weight", (8,)), ("ln1.bias", (8,)),
              ("attn.query.weight", (8, 8)), ("attn.query.bias", (8,)), ("attn.key.weight", (8, 8)),
              ("attn.key.bias", (8,)), ("attn.value.weight", (8, 8)), ("attn.value.bias", (8,)),
              ("attn.out.weight", (8, 8)), ("attn.out.bias", (8,)), ("ln2.weight", (8,)), ("ln2.bias", (8,)),
              ("fc1.weight", (16, 8)), ("fc1.bias", (16,)), ("fc2.weight", (8, 16)), ("fc2.bias", (8,))],
}


def _native_listing(m: Any) -> dict[str, tuple[int, ...]]:
    """The framework's own listing: linen's variables (every collection), NNX's
    Param and BatchStat state; native path -> native shape."""
    out: dict[str, tuple[int, ...]] = {}
    if not isinstance(m.native, nnx.Module):
        for path, leaf in jax.tree_util.tree_flatten_with_path(m.variables)[0]:
            out["/".join(str(k.key) for k in path)] = tuple(leaf.shape)
        return out
    for kind in (nnx.Param, nnx.BatchStat):
        for path, var in nnx.to_flat_state(nnx.state(m.native, kind)):
            out[".".join(str(k) for k in path)] = tuple(var.get_value().shape)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_names_counts_and_shapes_equal_the_native_listing(case: str) -> None:
    make, x = CASES[case]
    m = make()
    native = _native_listing(m)
    ours = {p.native_name: p.native_shape for p in (*m.params.values(), *m.buffers.values())}
    assert ours == native
    assert len(m.params) + len(m.buffers) == len(native)
    kind = case.split("-")[1]
    if kind in SHAPES:
        assert [(n, p.shape) for n, p in m.params.items()] == SHAPES[kind]
        assert all(p.layout != "native" for p in m.params.values())
    if kind == "cnn":
        assert list(m.buffers) == ["bn.running_mean", "bn.running_var", "bn2.running_mean", "bn2.running_var"]
    if kind == "lstm":
        # per-gate Dense layers of Flax's cell (linen scopes the cell made in a
        # @compact call in its maker: LSTMCell_0): each a Linear (out, in)
        prefix = "rnn.cell." if case.startswith("nnx") else "LSTMCell_0."
        gates = [n for n in m.params if n.startswith(prefix) and n.endswith(".weight")]
        assert len(gates) == 8
        assert {m.params[n].shape for n in gates} == {(6, 8), (6, 6)}
        assert list(m.params)[-2:] == ["head.weight", "head.bias"]
    y = np.asarray(m(x))
    assert y.shape[0] == x.shape[0] and np.all(np.isfinite(y))


def test_linen_order_is_the_same_for_jit_and_eager_variables() -> None:
    for kind in ("cnn", "block", "lstm"):
        a, b = CASES[f"linen-{kind}"][0](), CASES[f"linen-{kind}-jit"][0]()
        assert list(a.params) == list(b.params) and list(a.buffers) == list(b.buffers)


@pytest.mark.parametrize("case", ["linen-cnn", "nnx-cnn", "linen-block-jit", "nnx-block", "linen-lstm", "nnx-lstm"])
def test_seeded_init_equals_the_numpy_reference(case: str) -> None:
    """Contract 4.4 and 3.4: the i-th distinct storage gets the recipe's draw for
    its canonical shape (so fans follow it: a grouped conv's fan_in is
    in/groups * kh * kw)."""
    m = CASES[case][0]()
    init = up.init.KaimingUniform()
    m.initialize(init, seed=11)
    for i, (name, p) in enumerate(m.params.distinct().items()):
        want = up.init.draw(init, p.shape, p.dtype, 11, i, p)
        np.testing.assert_array_equal(p.value, want, err_msg=name)
    if case.endswith("cnn"):
        # the NumPy reference kit's own model with the same canonical shapes
        r = up.wrap(ref.Sequential(ref.Conv2d(8, in_channels=3, kernel_size=3), ref.BatchNorm(8),
                                   ref.Conv2d(16, in_channels=1, kernel_size=3), ref.BatchNorm(16),
                                   ref.Dense(10, in_units=16)))
        r.initialize(init, seed=11)
        assert [p.shape for p in r.params.values()] == [p.shape for p in m.params.values()]
        for (na, a), (nb, b) in zip(m.params.items(), r.params.items()):
            np.testing.assert_array_equal(a.value, b.value, err_msg=f"{na} vs {nb}")
        bound = np.sqrt(6 / 9)  # He uniform, fan_in of the grouped conv = in/groups * 3 * 3 = 9 (not 72)
        w = np.abs(m.params["grouped.weight"].value)
        assert 0.9 * bound < w.max() <= bound


@pytest.mark.parametrize("case", list(CASES))
def test_state_save_load_round_trips_bit_exact(case: str, tmp_path: Path) -> None:
    make, x = CASES[case]
    m = make(0)
    m.initialize(up.init.Normal(0, 0.3), seed=1)
    for name in m.buffers:
        if name.endswith("running_var"):
            m.buffers[name].set(np.linspace(0.5, 2.0, m.buffers[name].shape[0]).astype(np.float32))
    want = m.state()
    y = np.asarray(m(x))
    other = make(1)
    other.load_state(want)
    assert all(np.array_equal(v, other.state()[k]) for k, v in want.items())
    np.testing.assert_array_equal(np.asarray(other(x)), y)
    path = tmp_path / "model.safetensors"
    up.save(m, path)
    third = make(2)
    up.load(third, path)
    got = third.state()
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    np.testing.assert_array_equal(np.asarray(third(x)), y)


@pytest.mark.parametrize("case", ["linen-cnn-jit", "nnx-cnn", "linen-block", "nnx-lstm"])
def test_print_and_summary(case: str) -> None:
    m = CASES[case][0]()
    text = str(m)
    for name in list(m.params)[:3]:
        assert name.rsplit(".", 1)[-1] in text
    table = str(m.summary())
    first = next(iter(m.params))
    assert first in table
    total = sum(p.size for p in m.params.distinct().values())
    assert f"{total:,}" in table or str(total) in table
