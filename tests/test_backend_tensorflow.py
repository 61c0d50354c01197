"""Keras 3 / TensorFlow adapter: what the generic suite cannot express.

Native naming forms (Sequential indices, functional layer names, subclass
attributes), parity with ``model.weights`` and ``tf.GradientTape``, real ties
made by swapping ``keras.Variable`` objects, unbuilt layers, and the same
adapter on Keras' JAX and PyTorch backends (in subprocesses, since Keras picks
its backend once per process).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("unified_params_tensorflow")

import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

import unified_params as up  # noqa: E402
from unified_params.testing.checks import node_matches_tree  # noqa: E402

if keras.backend.backend() != "tensorflow":  # pragma: no cover - set by KERAS_BACKEND
    pytest.skip("these tests run Keras on TensorFlow", allow_module_level=True)


def _x(n: int = 3, d: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _mlp() -> keras.Sequential:
    net = keras.Sequential([layers.Dense(8, activation="relu"), layers.Dense(1)])
    net.build((None, 4))
    return net


def _canonical(v: keras.Variable) -> np.ndarray:
    a = v.numpy()
    return a.T if a.ndim == 2 else np.moveaxis(a, (-1, -2), (0, 1)) if a.ndim > 2 else a


# -- names and structure ------------------------------------------------------


def test_backend_detected_and_registered() -> None:
    m = up.wrap(_mlp())
    assert m.backend == "tensorflow"
    assert "tensorflow" in up.backends()


def test_sequential_params_match_model_weights() -> None:
    net = _mlp()
    m = up.wrap(net)
    assert list(m.params) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [p.native_name for p in m.params.values()] == [v.path for v in net.weights]
    for p, v in zip(m.params.values(), net.weights):
        assert p.native is v
        assert p.native_shape == tuple(v.shape)
        np.testing.assert_array_equal(p.value, _canonical(v))
    assert m.params["0.weight"].shape == (8, 4)


def test_chapter_cells_index_like_keras() -> None:
    # net.layers[1].weights[0] in the chapter (it puts a Flatten first).
    net = keras.Sequential([layers.Flatten(), layers.Dense(4, activation="relu"), layers.Dense(1)])
    net(tf.random.uniform((2, 4)))
    m = up.wrap(net)
    assert list(m.children()) == ["0", "1", "2"]
    np.testing.assert_array_equal(m[1].params["weight"].value, net.layers[1].weights[0].numpy().T)
    m[1].params["weight"][0, 0] = 42
    assert net.layers[1].weights[0].numpy()[0, 0] == 42


def test_functional_children_are_layer_names_in_layer_order() -> None:
    x = keras.Input((4,))
    h = layers.Dense(8, activation="relu", name="hidden")(x)
    y = layers.Dense(1, name="out")(h)
    net = keras.Model(x, y)
    m = up.wrap(net)
    assert list(m.children()) == [layer.name for layer in net.layers]
    assert list(m.params) == ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
    assert m["hidden"].native is net.get_layer("hidden")


class _Sub(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = layers.Dense(8)
        self.shared = layers.Dense(8)
        self.again = self.shared
        self.blocks = [layers.Dense(8), layers.Dense(8)]
        self.head = layers.Dense(1)

    def call(self, x):  # type: ignore[no-untyped-def]
        h = self.again(self.shared(self.encoder(x)))
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def test_subclassed_children_are_attributes_and_reuse_is_a_tie() -> None:
    net = _Sub()
    net(_x())
    m = up.wrap(net)
    assert list(m.children()) == ["encoder", "shared", "again", "blocks", "head"]
    assert list(m["blocks"].children()) == ["0", "1"]
    assert "blocks.1.weight" in m.params
    assert m.tied() == [("shared.weight", "again.weight"), ("shared.bias", "again.bias")]
    assert len(m.params.distinct()) == len(net.weights)


def test_nested_blocks_keep_their_keras_names() -> None:
    from unified_params_tensorflow.zoo import rgnet

    net = rgnet()
    m = up.wrap(net)
    assert [b.native.name for b in m[0].children().values()] == [f"block {i}" for i in range(4)]
    assert m[0][1][0].params["weight"].shape == (8, 4)
    assert len(m.params) == 18


def test_roles_buffers_and_layouts() -> None:
    net = keras.Sequential(
        [
            layers.Embedding(10, 3),
            layers.Conv1D(5, 2),
            layers.BatchNormalization(),
            layers.LayerNormalization(),
        ]
    )
    net.build((None, 7))
    m = up.wrap(net)
    assert list(m.params) == [
        "0.weight",
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
        "3.weight",
        "3.bias",
    ]
    assert list(m.buffers) == ["2.running_mean", "2.running_var"]
    emb = net.layers[0].embeddings.numpy()
    np.testing.assert_array_equal(m.params["0.weight"].value, emb)  # already (num, dim)
    conv = net.layers[1].kernel.numpy()  # (k, in, out)
    assert m.params["1.weight"].shape == (5, 3, 2)  # PyTorch's (out, in, k)
    np.testing.assert_array_equal(m.params["1.weight"].value, conv.transpose(2, 1, 0))
    np.testing.assert_array_equal(m.buffers["2.running_var"].value, np.ones(5))


def test_conv2d_matches_torch_layout() -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 7)).astype(np.float32)
    k = keras.Sequential([layers.Conv2D(4, (3, 2), use_bias=True)])
    k.build((None, 7, 7, 3))
    t = torch.nn.Conv2d(3, 4, (3, 2))
    up.port(up.wrap(k), up.wrap(t))
    want = t(torch.from_numpy(x)).detach().numpy()
    got = k(np.transpose(x, (0, 2, 3, 1))).numpy().transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_transpose_matches_torch_layout() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("unified_params_torch")
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 5)).astype(np.float32)
    k = keras.Sequential([layers.Conv2DTranspose(4, (3, 2))])
    k.build((None, 5, 5, 3))
    t = torch.nn.ConvTranspose2d(3, 4, (3, 2))
    assert up.wrap(k).params["0.weight"].shape == tuple(t.weight.shape)
    up.port(up.wrap(k), up.wrap(t))
    want = t(torch.from_numpy(x)).detach().numpy()
    got = k(np.transpose(x, (0, 2, 3, 1))).numpy().transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_values_and_grads() -> None:
    net = keras.Sequential([layers.Dense(3, dtype="bfloat16")])
    net.build((None, 2))
    m = up.wrap(net)
    p = m.params["0.weight"]
    assert p.dtype.name == "bfloat16"
    p.fill(1.5)
    assert float(net.layers[0].kernel.numpy()[0, 0]) == 1.5
    m.backward(np.ones((2, 2), np.float32))
    assert p.grad.dtype == p.dtype
    np.testing.assert_array_equal(p.grad.astype(np.float32), np.full((3, 2), 2.0))


def test_non_trainable_weight_stays_a_param() -> None:
    net = _mlp()
    net.layers[1].trainable = False
    m = up.wrap(net)
    assert m.params["0.weight"].trainable
    assert not m.params["1.weight"].trainable
    assert list(m.buffers) == []


# -- values -------------------------------------------------------------------


def test_write_assigns_in_place() -> None:
    net = _mlp()
    kernel = net.layers[0].kernel
    m = up.wrap(net)
    m.params["0.weight"].set(np.arange(32, dtype=np.float32).reshape(8, 4))
    assert net.layers[0].kernel is kernel
    np.testing.assert_array_equal(kernel.numpy(), np.arange(32).reshape(8, 4).T)
    m.params["0.bias"] += 1
    np.testing.assert_array_equal(net.layers[0].bias.numpy(), np.ones(8))


def test_seeded_values_equal_torch() -> None:
    pytest.importorskip("unified_params_torch")
    torch = pytest.importorskip("torch")
    t = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    k, p = up.wrap(_mlp()), up.wrap(t)
    for init in (up.init.XavierUniform(), up.init.Normal(std=0.3)):
        k.initialize(init, seed=7)
        p.initialize(init, seed=7)
        for a, b in zip(k.params.values(), p.params.values()):
            np.testing.assert_array_equal(a.value, b.value)
    x = _x()
    np.testing.assert_allclose(
        k(x).numpy(), t(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_framework_reset_is_seeded_and_fresh_without_seed() -> None:
    m = up.wrap(_mlp())
    m.initialize(None, seed=3)
    a = m.state()
    m.initialize(None, seed=3)
    b = m.state()
    m.initialize(None)
    c = m.state()
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])
    np.testing.assert_array_equal(c["0.bias"], np.zeros(8))  # bias_initializer='zeros'
    limit = np.sqrt(6 / (4 + 8))  # GlorotUniform on (4, 8)
    assert np.abs(c["0.weight"]).max() <= limit


def test_framework_reset_seeds_tensorflow_initializers() -> None:
    # The chapter's tf.random_normal_initializer, not a Keras class.
    net = keras.Sequential(
        [layers.Dense(4, kernel_initializer=tf.random_normal_initializer(0, 0.01))]
    )
    net.build((None, 4))
    m = up.wrap(net)
    m.initialize(None, seed=1)
    a = m.params["0.weight"].value
    m.initialize(None, seed=1)
    np.testing.assert_array_equal(a, m.params["0.weight"].value)
    assert 0 < a.std() < 0.05


# -- gradients ----------------------------------------------------------------


def test_grads_equal_gradient_tape() -> None:
    net = _mlp()
    m = up.wrap(net)
    x = _x()
    loss = m.backward(x, loss=lambda y: tf.reduce_sum(y**2))
    with tf.GradientTape() as tape:
        want_loss = tf.reduce_sum(net(x) ** 2)
    want = tape.gradient(want_loss, net.trainable_variables)
    assert loss == pytest.approx(float(want_loss), rel=1e-6)
    for p, g in zip(m.params.values(), want):
        np.testing.assert_allclose(p.grad, _canonical_array(g.numpy()), rtol=1e-6)
    m.backward(x, loss=lambda y: tf.reduce_sum(y**2))  # accumulates, as in PyTorch
    np.testing.assert_allclose(m.params["1.bias"].grad, 2 * want[3].numpy(), rtol=1e-6)
    m.zero_grad()
    assert all(p.grad is None for p in m.params.values())


def _canonical_array(a: np.ndarray) -> np.ndarray:
    return a.T if a.ndim == 2 else a


def test_tie_shares_variables_and_sums_gradients() -> None:
    net = keras.Sequential([layers.Dense(4), layers.Dense(4), layers.Dense(4)])
    net.build((None, 4))
    m = up.wrap(net)
    m.initialize(up.init.Normal(std=0.5), seed=0)
    w1 = net.layers[1].kernel.numpy()
    m.tie("2", "1")
    assert net.layers[2].kernel is net.layers[1].kernel
    assert net.layers[2].bias is net.layers[1].bias
    assert len(net.trainable_weights) == 4
    assert m.tied() == [("1.weight", "2.weight"), ("1.bias", "2.bias")]
    m.params["2.weight"][0, 0] = 5.0
    assert m.params["1.weight"].value[0, 0] == 5.0
    # The gradient of the shared kernel is the sum of its two uses.
    x = _x()
    m.backward(x)
    w0, b0 = net.layers[0].kernel, net.layers[0].bias
    w, b = tf.Variable(net.layers[1].kernel.numpy()), tf.Variable(net.layers[1].bias.numpy())
    u, c = tf.Variable(w.numpy()), tf.Variable(b.numpy())
    with tf.GradientTape() as tape:
        h = x @ w0.numpy() + b0.numpy()
        y = tf.reduce_sum((h @ w + b) @ u + c)
    gw, gu = tape.gradient(y, [w, u])
    np.testing.assert_allclose(m.params["1.weight"].grad, (gw + gu).numpy().T, rtol=1e-5)
    assert not np.array_equal(w1, net.layers[1].kernel.numpy())  # the write above


def test_functional_tie() -> None:
    x = keras.Input((4,))
    a, b = layers.Dense(4, name="a"), layers.Dense(4, name="b")
    net = keras.Model(x, b(a(x)))
    m = up.wrap(net)
    m.tie("b", "a")
    assert net.get_layer("b").kernel is net.get_layer("a").kernel
    assert m.tied() == [("a.weight", "b.weight"), ("a.bias", "b.bias")]
    assert len(net.trainable_weights) == 2


def test_losses_native_and_numpy_style() -> None:
    net = _mlp()
    m = up.wrap(net)
    x = _x()
    y = net(x).numpy()
    native = m.backward(x, loss=lambda out: tf.reduce_mean(tf.square(out)))
    m.zero_grad()
    portable = m.backward(x, loss=lambda out: ((out - 1) ** 2).mean())
    # float32 reductions: TensorFlow's summation order (threads) differs from NumPy's by a few ulps of the sum
    assert native == pytest.approx(float((y**2).mean()), rel=1e-4)
    assert portable == pytest.approx(float(((y - 1) ** 2).mean()), rel=1e-4)
    np.testing.assert_allclose(m.params["1.bias"].grad, [2 * (y - 1).mean()], rtol=1e-4)


def test_tie_forward_uses_one_storage() -> None:
    net = keras.Sequential([layers.Dense(4), layers.Dense(4), layers.Dense(4)])
    net.build((None, 4))
    m = up.wrap(net)
    m.tie("2", "1")
    x = _x()
    before = net(x).numpy()
    m.params["1.weight"].set(np.zeros((4, 4), np.float32))
    after = net(x).numpy()
    np.testing.assert_array_equal(after, np.broadcast_to(net.layers[2].bias.numpy(), after.shape))
    assert not np.array_equal(before, after)


def test_shared_zoo_gradient_counts_both_uses() -> None:
    from unified_params_tensorflow.zoo import KerasZoo

    m = KerasZoo().shared()
    net = m.native
    x = _x()
    m.backward(x)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(net(x))
    (g,) = tape.gradient(y, [net.layers[2].kernel])
    np.testing.assert_allclose(m.params["2.weight"].grad, g.numpy().T, rtol=1e-6)
    np.testing.assert_array_equal(m.params["2.weight"].grad, m.params["4.weight"].grad)


# -- deferred -----------------------------------------------------------------


def test_unbuilt_layers_list_their_variables() -> None:
    net = keras.Sequential(
        [layers.Conv2D(4, 3), layers.BatchNormalization(), layers.Flatten(), layers.Dense(2)]
    )
    m = up.wrap(net)
    shapes = {n: p.shape for n, p in {**m.params, **m.buffers}.items()}
    assert shapes == {
        "0.weight": (4, None, 3, 3),
        "0.bias": (4,),
        "1.weight": (None,),
        "1.bias": (None,),
        "1.running_mean": (None,),
        "1.running_var": (None,),
        "3.weight": (2, None),
        "3.bias": (2,),
    }
    with pytest.raises(up.NotInitializedError):
        _ = m.params["0.weight"].value
    assert m.params["0.bias"].grad is None
    m.materialize(np.zeros((1, 6, 6, 1), np.float32))
    assert m.params["0.weight"].shape == (4, 1, 3, 3)
    assert m.params["3.weight"].shape == (2, 64)
    np.testing.assert_array_equal(m.buffers["1.running_var"].value, np.ones(4))


def test_param_kept_across_materialize() -> None:
    net = keras.Sequential([layers.Dense(3)])
    m = up.wrap(net)
    p = m.params["0.weight"]
    assert p.deferred
    m.materialize(np.zeros((2, 5), np.float32))
    assert p.shape == (3, 5)
    p.fill(1.0)
    np.testing.assert_array_equal(net.layers[0].kernel.numpy(), np.ones((5, 3)))


def test_unbuilt_embedding_builds_on_first_read() -> None:
    net = keras.Sequential([layers.Embedding(6, 2)])
    m = up.wrap(net)
    assert m.params["0.weight"].shape == (6, 2)
    m.params["0.weight"].fill(0.5)
    np.testing.assert_array_equal(net.layers[0].embeddings.numpy(), np.full((6, 2), 0.5))


# -- Keras on JAX and PyTorch -------------------------------------------------

_OTHER_BACKEND_SCRIPT = textwrap.dedent(
    """
    import numpy as np, keras, unified_params as up
    from keras import layers
    assert keras.backend.backend() == {name!r}
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    net = keras.Sequential([layers.Dense(4), layers.Dense(4), layers.Dense(4)])
    m = up.wrap(net)
    assert m.params["0.weight"].shape == (4, None)
    m.materialize(x)
    m.initialize(up.init.Normal(std=0.5), seed=0)
    m.tie("2", "1")
    assert net.layers[2].kernel is net.layers[1].kernel
    m.backward(x)
    w0, b0 = (v.numpy() for v in net.layers[0].weights)
    w, b = (v.numpy() for v in net.layers[1].weights)
    # d/dW of sum((hW + b)W + b) = h^T 1 W^T + ((hW + b))^T 1
    h = x @ w0 + b0
    ones = np.ones((3, 4), np.float32)
    want = h.T @ (ones @ w.T) + (h @ w + b).T @ ones
    np.testing.assert_allclose(m.params["1.weight"].grad, want.T, rtol=1e-4, atol=1e-4)
    print("ok", m.state()["1.weight"].sum())
    """
)


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_adapter_runs_on_other_keras_backends(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    env = {**os.environ, "KERAS_BACKEND": name, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run(
        [sys.executable, "-c", _OTHER_BACKEND_SCRIPT.format(name=name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok")


# -- protocol 2 ---------------------------------------------------------------


def test_node_by_path_matches_the_tree() -> None:
    from unified_params_tensorflow.zoo import KerasZoo

    zoo = KerasZoo()
    be = up.get_backend("tensorflow")
    x = keras.Input((4,))
    functional = keras.Model(x, layers.Dense(1, name="out")(layers.Dense(8, name="hidden")(x)))
    sub = _Sub()
    sub(_x())
    models = [zoo.nested().native, zoo.shared().native, zoo.norm().native, zoo.lazy().native]
    with_input = keras.Sequential([keras.Input((4,)), layers.Dense(3), layers.Dense(2)])
    for native in (*models, functional, sub, with_input):
        assert node_matches_tree(be.open(native)) > 1
    assert be.open(sub).node(("blocks", "1")).native is sub.blocks[1]


def test_call_passes_every_argument() -> None:
    net = keras.Sequential([layers.Dropout(0.5)])
    m = up.wrap(net)
    x = np.ones((64, 16), np.float32)
    np.testing.assert_array_equal(m(x).numpy(), x)  # inference by default
    dropped = m(x, training=True).numpy()
    assert (dropped == 0).any() and set(np.unique(dropped)) <= {0.0, 2.0}


def test_backward_of_a_sub_block_returns_its_gradients_only() -> None:
    net = _mlp()
    m = up.wrap(net)
    h = np.maximum(net.layers[0](_x()).numpy(), 0)
    m[1].backward(h)
    assert m.params["0.weight"].grad is None
    np.testing.assert_allclose(m.params["1.bias"].grad, [3.0])
    np.testing.assert_allclose(m.params["1.weight"].grad, h.sum(0, keepdims=True), rtol=1e-6)
    m[1].backward(h)  # the core adds this pass's gradients up
    np.testing.assert_allclose(m.params["1.bias"].grad, [6.0])


def test_reset_of_a_sub_block_leaves_the_rest() -> None:
    net = _mlp()
    m = up.wrap(net)
    m.initialize(up.init.Constant(3.0))
    m[1].initialize(None, seed=0)
    np.testing.assert_array_equal(m.params["0.weight"].value, np.full((8, 4), 3.0))
    np.testing.assert_array_equal(m.params["1.bias"].value, [0.0])
    assert np.all(m.params["1.weight"].value != 3.0)


def test_lookup_by_name_lists_no_siblings(monkeypatch: pytest.MonkeyPatch) -> None:
    """One parameter's read costs O(depth): Sequential indices, attributes and
    their lists are followed directly, not by listing every child."""
    from unified_params_tensorflow import _handle

    sub = _Sub()
    sub(_x())
    seq = keras.Sequential([keras.Input((4,))] + [layers.Dense(4) for _ in range(5)])
    ms, mq = up.wrap(sub), up.wrap(seq)
    listed: list[object] = []
    real = _handle.children
    monkeypatch.setattr(_handle, "children", lambda obj: listed.append(obj) or real(obj))
    np.testing.assert_array_equal(ms.params["blocks.1.weight"].value, sub.blocks[1].kernel.numpy().T)
    np.testing.assert_array_equal(ms.params["again.bias"].value, sub.shared.bias.numpy())
    mq.params["3.bias"].fill(2.0)
    np.testing.assert_array_equal(seq.layers[3].bias.numpy(), np.full(4, 2.0))
    handle = up.get_backend("tensorflow").open(sub)
    assert handle.node(("blocks", "0")).native is sub.blocks[0]
    assert up.get_backend("tensorflow").open(seq).node(("4",)).native is seq.layers[4]
    assert listed == []
