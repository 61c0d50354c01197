"""JAX/Flax adapter tests beyond the conformance suite: Flax's own naming
(keys, ``params/...`` paths), the variables a linen Block holds, parity with
``module.apply`` and ``jax.grad``, NNX in-place writes and ties, layouts,
bfloat16, zero-copy reads and sharded arrays."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

import unified_params as up  # noqa: E402
from unified_params.testing.checks import node_matches_tree  # noqa: E402

X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def _mlp() -> tuple[nn.Module, dict]:
    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    return net, net.init(jax.random.key(0), jnp.zeros((2, 4)))


# -- linen ---------------------------------------------------------------------


def test_linen_names_are_flax_keys_and_sequential_keeps_positions() -> None:
    net, variables = _mlp()
    m = up.wrap(net, variables)
    assert m.backend == "jax"
    assert list(m.params) == [
        "layers_0.weight",
        "layers_0.bias",
        "layers_2.weight",
        "layers_2.bias",
    ]
    assert list(m.children()) == ["layers_0", "layers_1", "layers_2"]
    assert m[1].native is nn.relu and len(m[1].params) == 0
    assert m[2].native is net.layers[2]
    p = m.params["layers_0.weight"]
    assert p.native_name == "params/layers_0/kernel"
    assert p.native_shape == (4, 8) and p.shape == (8, 4)
    np.testing.assert_array_equal(p.value, np.asarray(variables["params"]["layers_0"]["kernel"]).T)
    assert p.native is m.variables["params"]["layers_0"]["kernel"]
    assert p.device == "cpu"


def test_linen_writes_build_new_variables_and_match_apply() -> None:
    net, variables = _mlp()
    kernel = variables["params"]["layers_0"]["kernel"]
    original = np.asarray(kernel).copy()
    m = up.wrap(net, variables)
    m.initialize(up.init.Normal(0, 1), seed=0)
    # nothing the user holds was changed
    assert variables["params"]["layers_0"]["kernel"] is kernel
    np.testing.assert_array_equal(np.asarray(kernel), original)
    assert m.variables is not variables
    np.testing.assert_allclose(np.asarray(m(X)), np.asarray(net.apply(m.variables, X)))
    np.testing.assert_array_equal(
        np.asarray(m.variables["params"]["layers_2"]["kernel"]).T, m.params["layers_2.weight"].value
    )


def test_linen_gradients_equal_jax_grad() -> None:
    net, variables = _mlp()
    m = up.wrap(net, variables)
    loss = m.backward(X)
    expected = jax.grad(lambda v: net.apply({"params": v}, X).sum())(variables["params"])
    assert loss == pytest.approx(float(net.apply(variables, X).sum()), rel=1e-6)
    np.testing.assert_allclose(
        m.params["layers_0.weight"].grad, np.asarray(expected["layers_0"]["kernel"]).T
    )
    np.testing.assert_allclose(
        m.params["layers_2.bias"].grad, np.asarray(expected["layers_2"]["bias"])
    )
    m.backward(X)  # gradients add up until zero_grad, as in PyTorch
    np.testing.assert_allclose(
        m.params["layers_2.bias"].grad, 2 * np.asarray(expected["layers_2"]["bias"])
    )
    m.zero_grad()
    assert m.params["layers_2.bias"].grad is None


def test_linen_shared_layer_is_one_slot_under_two_keys() -> None:
    shared = nn.Dense(8)
    net = nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, shared, nn.relu, nn.Dense(1)])
    variables = net.init(jax.random.key(0), jnp.zeros((2, 4)))
    assert list(variables["params"]) == ["layers_0", "layers_2", "layers_6"]  # the chapter's point
    m = up.wrap(net, variables)
    assert m.tied() == [("layers_2.weight", "layers_4.weight"), ("layers_2.bias", "layers_4.bias")]
    assert m.params["layers_4.weight"].native_name == "params/layers_2/kernel"
    m.params["layers_4.bias"].fill(3.0)
    np.testing.assert_array_equal(
        np.asarray(m.variables["params"]["layers_2"]["bias"]), np.full(8, 3.0)
    )


def test_linen_module_held_in_two_fields_is_a_tie() -> None:
    class Pair(nn.Module):
        a: nn.Module
        b: nn.Module

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.b(nn.relu(self.a(x)))

    dense = nn.Dense(4)
    net = Pair(a=dense, b=dense)
    variables = net.init(jax.random.key(0), jnp.ones((1, 4)))
    assert list(variables["params"]) == ["a"]  # Flax names it once
    m = up.wrap(net, variables)
    assert list(m.children()) == ["a", "b"] and m["b"].native is dense
    assert m.tied() == [("a.weight", "b.weight"), ("a.bias", "b.bias")]
    np.testing.assert_allclose(np.asarray(m["b"](X)), np.asarray(m["a"](X)))


def test_linen_block_tie_shares_one_array_and_sums_gradients() -> None:
    net = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(4), nn.relu, nn.Dense(1)])
    m = up.wrap(net, net.init(jax.random.key(1), jnp.zeros((2, 4))))
    m.tie("layers_2", "layers_0")
    params = m.variables["params"]
    assert params["layers_2"]["kernel"] is params["layers_0"]["kernel"]
    m.params["layers_0.weight"][0, 0] = 5.0
    assert m.params["layers_2.weight"].value[0, 0] == 5.0
    np.testing.assert_allclose(np.asarray(m(X)), np.asarray(net.apply(m.variables, X)))

    def untied(k0: jax.Array, k2: jax.Array) -> jax.Array:
        p = dict(
            params,
            layers_0={**params["layers_0"], "kernel": k0},
            layers_2={**params["layers_2"], "kernel": k2},
        )
        return net.apply({"params": p}, X).sum()

    params = m.variables["params"]
    g0, g2 = jax.grad(untied, argnums=(0, 1))(
        params["layers_0"]["kernel"], params["layers_2"]["kernel"]
    )
    m.backward(X)
    np.testing.assert_allclose(
        m.params["layers_2.weight"].grad, np.asarray(g0 + g2).T, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        m.params["layers_0.weight"].grad, np.asarray(g0 + g2).T, rtol=1e-5, atol=1e-6
    )


def test_linen_sub_block_forward_and_backward() -> None:
    net, variables = _mlp()
    m = up.wrap(net, variables)
    h = np.asarray(m[0](X))
    np.testing.assert_allclose(
        h, np.asarray(net.layers[0].apply({"params": variables["params"]["layers_0"]}, X))
    )
    np.testing.assert_array_equal(np.asarray(m[1](h)), np.maximum(h, 0))
    m[2].backward(np.maximum(h, 0))
    assert m.params["layers_0.weight"].grad is None
    np.testing.assert_allclose(m.params["layers_2.bias"].grad, [3.0])


def test_linen_setup_and_compact_modules() -> None:
    class Setup(nn.Module):
        def setup(self) -> None:
            self.enc = nn.Dense(3)
            self.dec = nn.Dense(2)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.dec(nn.relu(self.enc(x)))

    class Compact(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            for _ in range(11):
                x = nn.Dense(3)(x)
            return nn.Dense(2, name="head")(x)

    s = Setup()
    m = up.wrap(s, s.init(jax.random.key(0), X))
    assert list(m.children()) == ["enc", "dec"]
    assert isinstance(m["enc"].native, nn.Dense)
    assert m["enc"](X).shape == (3, 3)
    c = Compact()
    m = up.wrap(c, c.init(jax.random.key(0), X))
    # before any forward pass, keys come from the variables in natural order
    assert list(m.children())[:3] == ["Dense_0", "Dense_1", "Dense_2"]
    assert list(m.children())[10] == "Dense_10"
    m(X)  # the forward pass records the call order and the submodules
    assert list(m.children())[-1] == "head"
    assert isinstance(m["head"].native, nn.Dense)
    np.testing.assert_allclose(
        np.asarray(m["Dense_0"](X)),
        X @ np.asarray(m.variables["params"]["Dense_0"]["kernel"]) + 0.0,
        rtol=1e-6,
    )


def test_linen_deferred_and_materialize() -> None:
    net = nn.Sequential(
        [nn.Conv(4, (3, 3)), nn.BatchNorm(use_running_average=True), nn.relu, nn.Dense(3)]
    )
    m = up.wrap(net)
    assert m.variables is None
    assert m.params["layers_0.weight"].shape == (4, None, 3, 3)
    assert m.params["layers_3.weight"].shape == (3, None)
    assert m.buffers["layers_1.running_var"].shape == (None,)
    with pytest.raises(up.NotInitializedError, match="materialize"):
        m.params["layers_3.bias"].value  # noqa: B018 (shape known, still not initialized)
    with pytest.raises(up.NotInitializedError, match="materialize"):
        m(np.zeros((1, 6, 6, 2), np.float32))
    m.materialize(np.zeros((1, 6, 6, 2), np.float32))
    assert m.params["layers_0.weight"].shape == (4, 2, 3, 3)
    assert [b.role for b in m.buffers.values()] == ["running_mean", "running_var"]
    np.testing.assert_array_equal(m.buffers["layers_1.running_var"].value, np.ones(4))


def test_linen_reset_uses_flax_defaults_and_is_seeded() -> None:
    net, variables = _mlp()
    m = up.wrap(net, variables)
    m.initialize(up.init.Constant(3.0))
    m.initialize(None, seed=0)
    a = m.state()
    assert np.all(a["layers_0.bias"] == 0) and np.any(a["layers_0.weight"] != 3.0)
    m.initialize(None, seed=0)
    for k, v in m.state().items():
        np.testing.assert_array_equal(v, a[k])
    m(X)  # with an input shape known, reset runs module.init itself
    m[2].initialize(up.init.Constant(3.0))
    m[2].initialize(None, seed=5)
    fresh = net.init(jax.random.key(5), jnp.zeros(X.shape))["params"]
    np.testing.assert_array_equal(
        m.params["layers_2.weight"].value, np.asarray(fresh["layers_2"]["kernel"]).T
    )
    np.testing.assert_array_equal(m.params["layers_0.weight"].value, a["layers_0.weight"])


def test_linen_conv_embed_layouts_and_bfloat16() -> None:
    conv = nn.Conv(4, (3, 2), padding="VALID")
    m = up.wrap(conv, conv.init(jax.random.key(0), jnp.zeros((1, 5, 5, 2))))
    k = np.asarray(m.variables["params"]["kernel"])  # HWIO
    np.testing.assert_array_equal(m.params["weight"].value, k.transpose(3, 2, 0, 1))
    emb = nn.Embed(5, 3)
    m = up.wrap(emb, emb.init(jax.random.key(0), jnp.zeros((2,), jnp.int32)))
    assert m.params["weight"].shape == (5, 3)
    dense = nn.Dense(3, param_dtype=jnp.bfloat16)
    m = up.wrap(dense, dense.init(jax.random.key(0), jnp.ones((1, 2))))
    p = m.params["weight"]
    import ml_dtypes

    assert p.dtype == np.dtype(ml_dtypes.bfloat16) and p.value.dtype == p.dtype
    p.set(np.full((3, 2), 1.5, np.float32))
    assert m.variables["params"]["kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(p.value.astype(np.float32), np.full((3, 2), 1.5))


def test_linen_boxed_params_and_frozen_variables() -> None:
    from flax.core import freeze

    class Part(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            init = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
            return nn.Dense(3, kernel_init=init)(x)

    mod = Part()
    m = up.wrap(mod, mod.init(jax.random.key(0), jnp.ones((1, 4))))
    assert m.params["Dense_0.weight"].shape == (3, 4)
    m.initialize(up.init.Ones())
    box = m.variables["params"]["Dense_0"]["kernel"]
    assert isinstance(box, nn.Partitioned) and box.names == (None, "model")
    np.testing.assert_allclose(np.asarray(m(np.ones((1, 4), np.float32))), [[5.0, 5.0, 5.0]])
    m.backward(np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(m.params["Dense_0.weight"].grad, np.ones((3, 4)))
    net = nn.Dense(2)
    frozen = freeze(net.init(jax.random.key(0), jnp.ones((1, 3))))
    m = up.wrap(net, frozen)
    m.params["bias"].fill(1.0)
    np.testing.assert_array_equal(np.asarray(frozen["params"]["bias"]), [0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(m.variables["params"]["bias"]), [1.0, 1.0])


def test_zero_copy_state_on_cpu() -> None:
    net, variables = _mlp()
    m = up.wrap(net, variables)
    views = m.state(copy=False)
    bias = m.variables["params"]["layers_0"]["bias"]
    assert views["layers_0.bias"].ctypes.data == bias.unsafe_buffer_pointer()
    assert not views["layers_0.bias"].flags.writeable
    copies = m.state()
    assert copies["layers_0.bias"].ctypes.data != bias.unsafe_buffer_pointer()


# -- NNX -------------------------------------------------------------------------


def _nnx_mlp() -> nnx.Sequential:
    r = nnx.Rngs(0)
    return nnx.Sequential(nnx.Linear(4, 8, rngs=r), nnx.relu, nnx.Linear(8, 1, rngs=r))


def test_nnx_names_and_in_place_writes() -> None:
    net = _nnx_mlp()
    m = up.wrap(net)
    assert m.backend == "jax"
    assert list(m.params) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(m.children()) == ["0", "1", "2"]
    p = m.params["0.weight"]
    assert p.native_name == "layers.0.kernel" and p.native is net.layers[0].kernel
    kernel = net.layers[0].kernel
    p.set(np.ones((8, 4), np.float32))
    assert net.layers[0].kernel is kernel  # the same nnx.Param, a new value
    np.testing.assert_array_equal(np.asarray(kernel.get_value()), np.ones((4, 8)))
    np.testing.assert_allclose(np.asarray(m(X)), np.asarray(net(jnp.asarray(X))))


def test_nnx_gradients_equal_nnx_grad() -> None:
    net = _nnx_mlp()
    m = up.wrap(net)
    m.backward(X)
    grads = nnx.grad(lambda model: model(jnp.asarray(X)).sum())(net)
    np.testing.assert_allclose(
        m.params["0.weight"].grad, np.asarray(grads["layers"][0]["kernel"].get_value()).T
    )


def test_nnx_tie_assigns_the_same_param() -> None:
    r = nnx.Rngs(0)
    net = nnx.Sequential(nnx.Linear(4, 4, rngs=r), nnx.relu, nnx.Linear(4, 4, rngs=r))
    m = up.wrap(net)
    m.tie("2", "0")
    assert net.layers[2].kernel is net.layers[0].kernel
    assert net.layers[2].bias is net.layers[0].bias
    assert m.tied() == [("0.weight", "2.weight"), ("0.bias", "2.bias")]


def test_nnx_batch_stats_are_buffers_and_reset() -> None:
    r = nnx.Rngs(0)
    net = nnx.Sequential(nnx.Linear(4, 8, rngs=r), nnx.BatchNorm(8, rngs=r))
    m = up.wrap(net)
    assert list(m.buffers) == ["1.running_mean", "1.running_var"]
    assert [p.role for p in m[1].params.values()] == ["weight", "bias"]
    m.initialize(up.init.Constant(2.0))
    m.buffers["1.running_var"].fill(4.0)
    m.initialize(None, seed=0)
    np.testing.assert_array_equal(m.params["1.weight"].value, np.ones(8))
    np.testing.assert_array_equal(m.params["0.bias"].value, np.zeros(8))
    assert np.all(m.params["0.weight"].value != 2.0)
    m.initialize(None, seed=0)
    w = m.params["0.weight"].value
    m.initialize(None, seed=0)
    np.testing.assert_array_equal(m.params["0.weight"].value, w)


def test_nnx_backend_entry_point_reports_jax() -> None:
    from unified_params._registry import get_backend

    be = get_backend("jax-nnx")
    m = be.zoo().mlp()
    assert m.backend == "jax" and isinstance(m.native, nnx.Module)
    assert be.reports_as == "jax" and not be.owns(m.native)
    assert get_backend("jax").zoo().mlp().variables is not None


# -- sharded arrays (a subprocess: the device count is fixed at jax import) -------------


def test_sharded_arrays_read_and_write() -> None:
    code = textwrap.dedent(
        """
        import numpy as np, jax, jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from flax import linen as nn
        import unified_params as up
        mesh = Mesh(np.array(jax.devices()), ("d",))
        mod = nn.Dense(4)
        v = mod.init(jax.random.key(0), jnp.ones((1, 6)))
        def shard(a):
            return jax.device_put(a, NamedSharding(mesh, P(*[None] * (a.ndim - 1), "d")))
        v = jax.tree_util.tree_map(shard, v)
        m = up.wrap(mod, v)
        p = m.params["weight"]
        assert p.device == "cpu:0,cpu:1", p.device
        p.set(np.arange(24, dtype=np.float32).reshape(4, 6))
        k = m.variables["params"]["kernel"]
        assert k.sharding == v["params"]["kernel"].sharding
        np.testing.assert_array_equal(np.asarray(k).T, np.arange(24).reshape(4, 6))
        np.testing.assert_allclose(np.asarray(m(np.ones((2, 6), np.float32)))[0], [15, 51, 87, 123])
        print("ok")
        """
    )
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_compact_submodules_keep_call_order_before_any_forward() -> None:
    """Contract 1.3: definition (forward) order, before and after m(x)."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):  # type: ignore[no-untyped-def]
            return nn.Dense(2)(nn.LayerNorm()(nn.Dense(5)(x)))

    net = Net()
    x = jnp.zeros((1, 3))
    m = up.wrap(net, net.init(jax.random.key(0), x))
    order = ["Dense_1.weight", "Dense_1.bias", "LayerNorm_0.weight", "LayerNorm_0.bias", "Dense_0.weight",
             "Dense_0.bias"]
    assert list(m.params) == order
    assert [p.shape for p in m.params.values()] == [(5, 3), (5,), (5,), (5,), (2, 5), (2,)]
    m(x)
    assert list(m.params) == order


@pytest.mark.parametrize("arch", ["linen", "nnx"])
def test_a_written_array_is_not_aliased(arch: str) -> None:
    """p.set(a); a[:] = 0 must not change the parameter (the CPU device may
    alias aligned host memory)."""
    be = up.get_backend("jax" if arch == "linen" else "jax-nnx")
    for _ in range(20):
        m = be.zoo().mlp()
        p = m.params[list(m.params)[1]]  # a bias: canonical layout, written without a transpose
        assert p.role == "bias"
        a = np.full(p.shape, 3.0, np.float32)
        p.set(a)
        a[:] = 0
        np.testing.assert_array_equal(p.value, 3.0)
        m.load_state({n: np.full(q.shape, 2.0, np.float32) for n, q in m.params.items()})
        np.testing.assert_array_equal(p.value, 2.0)


# -- protocol 2 ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["linen", "nnx"])
def test_node_by_path_matches_the_tree(arch: str) -> None:
    be = up.get_backend("jax" if arch == "linen" else "jax-nnx")
    zoo = be.zoo()
    for make in (zoo.nested, zoo.shared, zoo.norm, zoo.cnn, zoo.lazy):
        m = make()
        if m is None:  # NNX has no deferred model
            continue
        assert node_matches_tree(be.open(m.native, getattr(m, "variables", None))) > 1


def test_linen_node_by_path_of_setup_and_compact_modules() -> None:
    class Setup(nn.Module):
        def setup(self) -> None:
            self.enc = nn.Dense(3)
            self.dec = nn.Dense(2)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.dec(nn.relu(self.enc(x)))

    class Outer(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Dense(2)(Setup()(x))

    net = Outer()
    m = up.wrap(net, net.init(jax.random.key(0), X))
    handle = up.get_backend("jax").open(net, m.variables)
    assert node_matches_tree(handle) == 5
    m(X)  # records the @compact submodules: their nodes are the objects
    assert isinstance(m["Setup_0"]["enc"].native, nn.Dense)
    assert m.params["Setup_0.enc.weight"].shape == (3, 4)


class _TrainNet(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))


def test_linen_call_passes_every_argument_and_updates_only_with_mutable() -> None:
    """Contract 12.2: batch_stats change only where the user passes mutable=."""
    net = _TrainNet()
    variables = net.init(jax.random.key(0), X, train=False)
    m = up.wrap(net, variables)
    np.testing.assert_allclose(
        np.asarray(m(X, train=False)), np.asarray(net.apply(variables, X, train=False)), rtol=1e-6
    )
    before = m.state()
    with pytest.raises(up.ForwardError, match="batch_stats"):
        m(X, train=True)  # Flax refuses to update an immutable collection
    after = m.state()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    out, updates = m(X, train=True, mutable=["batch_stats"])
    want, want_updates = net.apply(variables, X, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-6)
    np.testing.assert_allclose(
        m.buffers["BatchNorm_0.running_mean"].value,
        np.asarray(want_updates["batch_stats"]["BatchNorm_0"]["mean"]),
        rtol=1e-6,
    )
    assert not np.array_equal(m.buffers["BatchNorm_0.running_mean"].value, before["BatchNorm_0.running_mean"])
    assert set(updates) == {"batch_stats"}


def test_linen_reset_runs_init_with_the_arguments_of_the_last_call() -> None:
    net = _TrainNet()
    m = up.wrap(net, net.init(jax.random.key(0), X, train=False))
    m(X, train=False)
    m.initialize(up.init.Constant(3.0))
    m.initialize(None, seed=5)
    fresh = net.init(jax.random.key(5), jnp.zeros(X.shape), train=False)
    np.testing.assert_array_equal(
        m.params["Dense_0.weight"].value, np.asarray(fresh["params"]["Dense_0"]["kernel"]).T
    )
    np.testing.assert_array_equal(m.buffers["BatchNorm_0.running_var"].value, np.ones(4))


def test_nnx_call_passes_every_argument_and_sub_block_backward() -> None:
    class Scaled(nnx.Module):
        def __init__(self) -> None:
            self.lin = nnx.Linear(4, 2, rngs=nnx.Rngs(0))

        def __call__(self, x: jax.Array, scale: float = 1.0, *, shift: float = 0.0) -> jax.Array:
            return self.lin(x) * scale + shift

    net = Scaled()
    m = up.wrap(net)
    np.testing.assert_allclose(np.asarray(m(X, 2.0, shift=1.0)), 2 * np.asarray(m(X)) + 1, rtol=1e-6)
    seq = _nnx_mlp()
    m = up.wrap(seq)
    h = np.maximum(np.asarray(seq.layers[0](jnp.asarray(X))), 0)
    m[2].backward(h)
    assert m.params["0.weight"].grad is None
    np.testing.assert_allclose(m.params["2.bias"].grad, [3.0])
    m[2].backward(h)  # the core adds this pass's gradients up
    np.testing.assert_allclose(m.params["2.bias"].grad, [6.0])


def test_linen_variables_read_once_are_never_changed_by_later_writes() -> None:
    net, variables = _mlp()
    m = up.wrap(net, variables)
    m.params["layers_0.bias"].fill(1.0)
    m.params["layers_2.bias"].fill(2.0)  # in place: nobody has seen these dicts yet
    seen = m.variables
    inner = seen["params"]["layers_0"]
    snapshot = {k: np.asarray(v).copy() for k, v in inner.items()}
    m.params["layers_0.bias"].fill(3.0)
    m.params["layers_0.weight"].fill(4.0)
    assert m.variables is not seen and m.variables["params"]["layers_0"] is not inner
    assert all(np.array_equal(np.asarray(inner[k]), snapshot[k]) for k in snapshot)
    np.testing.assert_array_equal(np.asarray(seen["params"]["layers_2"]["bias"]), [2.0])
    np.testing.assert_array_equal(np.asarray(m.variables["params"]["layers_0"]["bias"]), np.full(8, 3.0))
    assert np.asarray(variables["params"]["layers_0"]["bias"]).sum() == 0  # the user's own, untouched


def test_linen_one_write_does_not_copy_a_wide_dict() -> None:
    """A loop of writes on a long Sequential copies no dict of all its layers."""
    net = nn.Sequential([nn.Dense(2) for _ in range(50)])
    handle = up.get_backend("jax").open(net, net.init(jax.random.key(0), jnp.zeros((1, 2))))
    bias = {n.key: lf for n in handle.tree().children for lf in n.leaves if lf.role == "bias"}
    _ = handle.variables
    handle.write(bias["layers_0"], np.ones(2, np.float32))  # the first write after a read copies the path
    root = handle._vars  # the handle's own dicts, not handed out since
    params = root["params"]
    for i in range(1, 50):
        handle.write(bias[f"layers_{i}"], np.full(2, i, np.float32))
    assert handle._vars is root and root["params"] is params
    np.testing.assert_array_equal(np.asarray(handle.variables["params"]["layers_49"]["bias"]), [49.0, 49.0])
    np.testing.assert_array_equal(np.asarray(handle.variables["params"]["layers_0"]["bias"]), [1.0, 1.0])


def test_lookup_by_name_lists_no_siblings(monkeypatch: pytest.MonkeyPatch) -> None:
    """One parameter's read costs O(depth): a linen field child whose scope the
    variables hold, an NNX index or attribute, are followed directly."""
    from unified_params_jax import _linen, _nnx

    net = nn.Sequential([nn.Dense(2) for _ in range(6)])
    m = up.wrap(net, net.init(jax.random.key(0), jnp.zeros((1, 2))))
    r = nnx.Rngs(0)
    seq = nnx.Sequential(*[nnx.Linear(2, 2, rngs=r) for _ in range(6)])
    n = up.wrap(seq)
    listed: list[object] = []
    real_entries, real_kids = _linen.LinenHandle._entries, _nnx._kids
    monkeypatch.setattr(_linen.LinenHandle, "_entries", lambda *a: listed.append(a) or real_entries(*a))
    monkeypatch.setattr(_nnx, "_kids", lambda *a: listed.append(a) or real_kids(*a))
    np.testing.assert_array_equal(
        m.params["layers_4.weight"].value, np.asarray(m.variables["params"]["layers_4"]["kernel"]).T
    )
    m.params["layers_3.bias"].fill(2.0)
    np.testing.assert_array_equal(np.asarray(m.variables["params"]["layers_3"]["bias"]), [2.0, 2.0])
    n.params["5.bias"].fill(3.0)
    np.testing.assert_array_equal(np.asarray(seq.layers[5].bias.get_value()), [3.0, 3.0])
    assert up.get_backend("jax").open(net, m.variables).node(("layers_5",)).native is net.layers[5]
    assert up.get_backend("jax").open(seq).node(("2",)).native is seq.layers[2]
    assert listed == []


# -- layouts from the one table, call order without a forward pass (issue 14) ----------


class _UpMidDown(nn.Module):
    """Same-shaped layers whose names sort (down, mid, up) against call order."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(8, name="up")(x))
        x = nn.relu(nn.Dense(8, name="mid")(x))
        return nn.Dense(8, name="down")(x)


def test_linen_order_does_not_depend_on_how_variables_were_made() -> None:
    """Contract 12.1: jax.jit(init) sorts the keys; the order stays the call order,
    and a port by order to a model with other names is right (check= passes)."""
    from unified_params import reference as ref

    net = _UpMidDown()
    x8 = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    jitted = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 8)))
    assert list(jitted["params"]) == ["down", "mid", "up"]  # what Flax gives
    eager = net.init(jax.random.key(0), jnp.zeros((1, 8)))
    want = ["up.weight", "up.bias", "mid.weight", "mid.bias", "down.weight", "down.bias"]
    a, b = up.wrap(net, jitted), up.wrap(net, eager)
    assert list(a.params) == want and list(b.params) == want
    np.testing.assert_array_equal(a.params["up.weight"].value, np.asarray(jitted["params"]["up"]["kernel"]).T)
    twin = up.wrap(ref.Sequential(ref.Dense(8, in_units=8), ref.ReLU(), ref.Dense(8, in_units=8), ref.ReLU(),
                                  ref.Dense(8, in_units=8)))
    up.port(a, twin, check=x8)
    np.testing.assert_allclose(np.asarray(twin(x8)), np.asarray(net.apply(jitted, x8)), rtol=1e-5, atol=1e-6)
    twin.initialize(up.init.Normal(0, 1), seed=3)
    c = up.wrap(net, jax.jit(net.init)(jax.random.key(1), jnp.zeros((1, 8))))
    up.port(twin, c, check=x8)
    np.testing.assert_allclose(np.asarray(c(x8)), np.asarray(twin(x8)), rtol=1e-5, atol=1e-5)


def test_linen_order_of_a_nested_compact_model_with_a_mode_flag() -> None:
    """The shape-only trace fills in train=False, sees conv layers' input, and
    reaches nested @compact blocks; jit and eager variables agree."""

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array, train: bool) -> jax.Array:
            x = nn.Conv(4, (3, 3), name="z_conv")(x)
            return nn.relu(nn.BatchNorm(use_running_average=not train, name="a_norm")(x))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array, train: bool) -> jax.Array:
            x = Block(name="second")(Block(name="first")(x, train), train)
            return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))

    net = Net()
    x = jnp.zeros((1, 8, 8, 3))
    lists = []
    for init in (net.init, jax.jit(net.init, static_argnums=2)):
        m = up.wrap(net, init(jax.random.key(0), x, False))
        lists.append((list(m.params), list(m.buffers)))
        assert m.params["first.z_conv.weight"].shape == (4, 3, 3, 3)
        assert m.params["first.z_conv.weight"].layout == "kernel_last"
    assert lists[0] == lists[1]
    assert lists[0][0][:4] == ["first.z_conv.weight", "first.z_conv.bias", "first.a_norm.weight", "first.a_norm.bias"]
    assert lists[0][0][-2:] == ["head.weight", "head.bias"]
    assert lists[0][1][:2] == ["first.a_norm.running_mean", "first.a_norm.running_var"]


def test_layouts_come_from_the_table_and_unknown_layers_stay_native() -> None:
    class Custom(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            k = self.param("kernel", nn.initializers.ones, (x.shape[-1], 3))
            return x @ k

    class Outer(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Dense(2)(Custom()(x))

    net = Outer()
    m = up.wrap(net, jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 4))))
    p = m.params["Custom_0.kernel"]
    assert p.layout == "native" and p.role == "kernel" and p.shape == (4, 3)
    assert m.params["Dense_0.weight"].layout == "kernel_last"
    r = nnx.Rngs(0)
    grouped = nnx.Conv(4, 8, (3, 3), feature_group_count=2, rngs=r)
    depthwise = nnx.Conv(4, 8, (3, 3), feature_group_count=4, rngs=r)
    assert up.wrap(grouped).params["weight"].shape == (8, 2, 3, 3)
    assert up.wrap(depthwise).params["weight"].shape == (8, 1, 3, 3)
    batched = nn.DenseGeneral((2, 3), axis=-1, batch_dims=(0,))
    mb = up.wrap(batched, batched.init(jax.random.key(0), jnp.zeros((2, 4))))
    assert mb.params["weight"].layout == "native"
    att = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=6, out_features=4)
    ma = up.wrap(att, jax.jit(att.init)(jax.random.key(0), jnp.zeros((1, 3, 4))))
    assert [(n, p.shape) for n, p in ma.params.items()] == [
        ("query.weight", (6, 4)), ("query.bias", (6,)), ("key.weight", (6, 4)), ("key.bias", (6,)),
        ("value.weight", (6, 4)), ("value.bias", (6,)), ("out.weight", (4, 6)), ("out.bias", (4,))]
    k = np.asarray(ma.variables["params"]["query"]["kernel"])  # (in, heads, head_dim)
    np.testing.assert_array_equal(ma.params["query.weight"].value, k.reshape(4, 6).T)
    o = np.asarray(ma.variables["params"]["out"]["kernel"])  # (heads, head_dim, out)
    np.testing.assert_array_equal(ma.params["out.weight"].value, o.reshape(6, 4).T)


def test_nnx_call_follows_train_and_eval_as_the_native_call() -> None:
    """Contract 12.2 on NNX: state changes exactly where the native call changes it."""

    def make() -> nnx.Module:
        r = nnx.Rngs(0)
        return nnx.Sequential(nnx.Linear(4, 8, rngs=r), nnx.BatchNorm(8, rngs=r), nnx.Dropout(0.5, rngs=r))

    net, twin = make(), make()
    m = up.wrap(net)
    net.eval()
    twin.eval()
    before = m.state()
    np.testing.assert_array_equal(np.asarray(m(X)), np.asarray(twin(jnp.asarray(X))))
    assert all(np.array_equal(before[k], v) for k, v in m.state().items())  # eval: nothing changes
    np.testing.assert_array_equal(np.asarray(m[1](X[:, :1].repeat(8, 1), use_running_average=False)),
                                  np.asarray(twin.layers[1](jnp.asarray(X[:, :1].repeat(8, 1)),
                                                            use_running_average=False)))
    np.testing.assert_array_equal(m.buffers["1.running_mean"].value, np.asarray(twin.layers[1].mean.get_value()))
    assert not np.array_equal(m.buffers["1.running_mean"].value, before["1.running_mean"])  # asked for: updated
    net.train()
    twin.train()
    m(X)
    twin(jnp.asarray(X))  # NNX's own train mode updates the statistics: so does m(x)
    np.testing.assert_array_equal(m.buffers["1.running_var"].value, np.asarray(twin.layers[1].var.get_value()))


def test_linen_plain_call_never_updates_batch_stats() -> None:
    """Contract 12.2: m(x) on a training-mode BatchNorm raises as apply does, and
    changes nothing; a required train argument is passed through."""
    net = nn.Sequential([nn.Dense(4), nn.BatchNorm(use_running_average=False)])
    variables = net.init(jax.random.key(0), X)
    m = up.wrap(net, variables)
    before = m.state()
    with pytest.raises(up.ForwardError):
        m(X)
    with pytest.raises(Exception):  # noqa: B017 - Flax's own refusal
        net.apply(variables, X)
    assert all(np.array_equal(before[k], v) for k, v in m.state().items())
    t = _TrainNet()
    mt = up.wrap(t, jax.jit(t.init, static_argnames="train")(jax.random.key(0), X, train=False))
    np.testing.assert_allclose(np.asarray(mt(X, train=False)),
                               np.asarray(t.apply(mt.variables, X, train=False)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mt(X, False)), np.asarray(t.apply(mt.variables, X, False)), rtol=1e-6)
