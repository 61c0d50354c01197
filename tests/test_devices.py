"""Parameters that live on devices other than the default CPU.

* JAX: four host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``,
  set in a subprocess before JAX starts), parameters sharded across them with
  ``NamedSharding``, replicated, or put on one non-default device. Reads
  gather the value in canonical layout; writes (``set``, ``p[idx] =``,
  ``+=``, ``load_state``, ``up.load``, ``up.port``, seeded ``initialize``)
  land with the same values and keep the array's sharding; the forward pass
  and the gradients use them. Run for linen (variables held by the Block)
  and NNX (variables in the module).
* PyTorch on CUDA, where a CUDA device exists (the only legitimate skip here:
  there is no such device); tiny models.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import unified_params as up
from unified_params import _registry
from unified_params import reference as ref

_JAX_SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    import numpy as np
    import jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from flax import linen, nnx
    import unified_params as up
    from unified_params import reference as ref

    kind = sys.argv[1]
    devices = jax.devices()
    assert len(devices) == 4 and all(d.platform == "cpu" for d in devices), devices
    mesh = Mesh(np.array(devices), ("x",))

    # Native kernels are (in, out) = (8, 4): shard the out axis, the bias, or replicate.
    LAYOUTS = {
        "sharded": lambda a: NamedSharding(mesh, P(*([None] * (a.ndim - 1)), "x")),
        "replicated": lambda a: NamedSharding(mesh, P()),
        "one device": lambda a: jax.sharding.SingleDeviceSharding(devices[2]),
    }

    def build(layout):
        place = lambda a: jax.device_put(a, LAYOUTS[layout](a))
        if kind == "nnx":
            net = nnx.Sequential(nnx.Linear(8, 4, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(4, 4, rngs=nnx.Rngs(1)))
            for _, var in nnx.iter_graph(net):
                if isinstance(var, nnx.Param):
                    var.set_value(place(var.get_value()))
            return up.wrap(net)
        module = linen.Sequential([linen.Dense(4), linen.relu, linen.Dense(4)])
        variables = module.init(jax.random.key(0), jnp.zeros((2, 8)))
        return up.wrap(module, jax.tree.map(place, variables))

    def natives(m):
        if kind == "nnx":
            return [p.native.get_value() for p in m.params.values()]
        return jax.tree.leaves(m.variables)

    def check_placement(m, layout, where):
        for arr in natives(m):
            want = LAYOUTS[layout](arr)
            assert arr.sharding.is_equivalent_to(want, arr.ndim), (where, layout, arr.sharding)

    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    for layout in LAYOUTS:
        m = build(layout)
        check_placement(m, layout, "wrap")
        w = m.params[list(m.params)[0]]
        assert w.shape == (4, 8), w.shape
        native = np.asarray(natives(m)[0] if kind == "nnx" else m.variables["params"]["layers_0"]["kernel"])
        assert np.array_equal(w.value, native.T)
        want_dev = {"sharded": "cpu:0,cpu:1,cpu:2,cpu:3", "replicated": "cpu:0,cpu:1,cpu:2,cpu:3",
                    "one device": "cpu"}[layout]
        assert w.device == want_dev, (layout, w.device)
        view = m.state(copy=False)[w.name]
        if layout == "one device":
            assert not view.flags.writeable and np.array_equal(view, w.value)
        else:  # contract 15.1: this process's pieces, read-only, no gather; whole here (4 local devices)
            assert isinstance(view, up.ShardedValue) and view.shape == w.shape, type(view)
            assert view.shards and all(not s.data.flags.writeable for s in view.shards)
            assert np.array_equal(np.asarray(view), w.value)

        # every kind of write, each checked against NumPy and for placement
        v = np.arange(32, dtype=np.float32).reshape(4, 8)
        w.set(v); assert np.array_equal(w.value, v)
        w[1, 2] = -7.0; v[1, 2] = -7.0; assert np.array_equal(w.value, v)
        w += 1.0; v += 1.0; assert np.array_equal(w.value, v)
        w.fill(0.5); assert np.array_equal(w.value, np.full((4, 8), 0.5, np.float32))
        check_placement(m, layout, "writes")
        try:
            w.set(np.zeros((8, 4), np.float32))
            raise AssertionError("no ShapeMismatchError")
        except up.ShapeMismatchError:
            pass
        assert np.array_equal(w.value, np.full((4, 8), 0.5, np.float32))

        # seeds: the same numbers as the NumPy reference, on sharded storage
        r = up.wrap(ref.Sequential(ref.Dense(4, in_units=8), ref.ReLU(), ref.Dense(4, in_units=4)))
        m.initialize(up.init.Normal(0.0, 1.0), seed=7)
        r.initialize(up.init.Normal(0.0, 1.0), seed=7)
        for a, b in zip(m.state().values(), r.state().values()):
            assert a.tobytes() == b.tobytes()
        check_placement(m, layout, "initialize")

        # forward and gradients with the sharded values
        y = np.asarray(up.asnumpy(m(x)))
        np.testing.assert_allclose(y, r(x), rtol=1e-5, atol=1e-5)
        m.backward(x); r.backward(x)
        for (n, p), q in zip(m.params.items(), r.params.values()):
            np.testing.assert_allclose(p.grad, q.grad, rtol=1e-4, atol=1e-4, err_msg=n)

        # state, files and ports into sharded storage
        fresh = build(layout)
        fresh.load_state(m.state())
        assert all(a.tobytes() == b.tobytes() for a, b in zip(fresh.state().values(), m.state().values()))
        check_placement(fresh, layout, "load_state")
        with tempfile.TemporaryDirectory() as d:
            up.save(m, os.path.join(d, "m.safetensors"))
            again = build(layout)
            up.load(again, os.path.join(d, "m.safetensors"))
        assert all(a.tobytes() == b.tobytes() for a, b in zip(again.state().values(), m.state().values()))
        check_placement(again, layout, "load")
        r.initialize(up.init.Uniform(-1.0, 1.0), seed=8)
        up.port(r, again)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(again.state().values(), r.state().values()))
        check_placement(again, layout, "port")
        before = again.state()
        bad = dict(before); bad[w.name] = np.zeros((3, 3), np.float32)
        try:
            again.load_state(bad)
            raise AssertionError("no StateError")
        except up.StateError:
            pass
        assert all(a.tobytes() == b.tobytes() for a, b in zip(again.state().values(), before.values()))
    print("OK", kind)
    """
)


def _jax_available() -> bool:
    return importlib.util.find_spec("flax") is not None and "jax" in _registry.names()


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_jax_sharded_parameters_read_and_write(kind: str) -> None:
    if not _jax_available():
        pytest.skip("jax/flax or the unified-params-jax adapter is not installed")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, kind], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and f"OK {kind}" in res.stdout, res.stderr[-4000:]


def _cuda() -> bool:
    if "torch" not in _registry.names() or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not _cuda(), reason="no CUDA device (or torch is not installed)")
def test_torch_cuda_parameters_read_and_write(tmp_path: object) -> None:
    import torch
    from torch import nn

    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).cuda()
    m = up.wrap(net)
    w = m.params["0.weight"]
    assert w.device == "cuda:0"
    assert np.array_equal(w.value, net[0].weight.detach().cpu().numpy())
    v = np.arange(12, dtype=np.float32).reshape(3, 4)
    w.set(v)
    w[0, 0] = -1.0
    w += 1.0
    v[0, 0] = -1.0
    v += 1.0
    assert np.array_equal(w.value, v)
    assert net[0].weight.is_cuda and net[0].weight is w.native
    with pytest.raises(up.ShapeMismatchError):
        w.set(np.zeros((4, 3), np.float32))
    r = up.wrap(ref.Sequential(ref.Dense(3, in_units=4), ref.ReLU(), ref.Dense(2, in_units=3)))
    m.initialize(up.init.Normal(0.0, 1.0), seed=5)
    r.initialize(up.init.Normal(0.0, 1.0), seed=5)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(m.state().values(), r.state().values()))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(up.asnumpy(m(torch.from_numpy(x).cuda())), r(x), rtol=1e-4, atol=1e-5)
    path = os.path.join(str(tmp_path), "m.safetensors")
    up.save(m, path)
    fresh = up.wrap(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).cuda())
    up.load(fresh, path)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(fresh.state().values(), m.state().values()))
    assert all(p.is_cuda for p in fresh.native.parameters())
    r.initialize(up.init.Uniform(-1.0, 1.0), seed=6)
    up.port(r, fresh)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(fresh.state().values(), r.state().values()))
    assert all(p.is_cuda for p in fresh.native.parameters())
