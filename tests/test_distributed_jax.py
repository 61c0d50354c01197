"""Sharded JAX arrays (contract 15.1) over 4 host devices in one process:
one ``Param`` with the global canonical shape; ``p.shards()`` lists the
addressable pieces placed in canonical axes (a Dense kernel sharded on its
output axis, native axis 1, is sharded on canonical axis 0); writes keep the
array's sharding. Runs in a subprocess: the device count is fixed at JAX's
first import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")

CODE = r'''
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from flax import linen as nn, nnx
import unified_params as up

assert len(jax.devices()) == 4
mesh = Mesh(np.array(jax.devices()), ("d",))

# linen: kernel (6, 8) sharded on its output axis; bias replicated
mod = nn.Dense(8)
v = mod.init(jax.random.key(0), jnp.ones((1, 6)))["params"]
v = {"params": {"kernel": jax.device_put(v["kernel"], NamedSharding(mesh, P(None, "d"))),
                "bias": jax.device_put(v["bias"], NamedSharding(mesh, P()))}}
m = up.wrap(mod, v)
w = m.params["weight"]
assert w.shape == (8, 6) and w.layout == "kernel_last"
pieces = w.shards()
assert [s.index for s in pieces] == [(slice(2 * k, 2 * k + 2), slice(0, 6)) for k in range(4)], pieces
assert len({s.device for s in pieces}) == 4
whole = w.value
for s in pieces:
    np.testing.assert_array_equal(s.value, whole[s.index])
b = m.params["bias"].shards()
assert len(b) == 4 and all(s.index == (slice(0, 8),) for s in b)  # replicated: all of it on each device
rep = m.state(copy=False)["bias"]  # a replicated array: four pieces, each all of it, one distinct
assert isinstance(rep, up.ShardedValue) and len(rep.shards) == 4 and len(rep.parts()) == 1
np.testing.assert_array_equal(np.asarray(rep), m.params["bias"].value)
new = np.arange(48, dtype=np.float32).reshape(8, 6)
w.set(new)
kernel = m.variables["params"]["kernel"]
assert kernel.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "d")), 2)
for s in w.shards():
    np.testing.assert_array_equal(s.value, new[s.index])

# a single-device array is one piece
one = up.wrap(mod, mod.init(jax.random.key(0), jnp.ones((1, 6))))
assert [s.index for s in one.params["weight"].shards()] == [(slice(0, 8), slice(0, 6))]

# NNX: a Linear whose kernel is sharded on its input axis (native 0 -> canonical 1)
lin = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
lin.kernel.set_value(jax.device_put(lin.kernel.get_value(), NamedSharding(mesh, P("d", None))))
n = up.wrap(lin)
got = [s.index for s in n.params["weight"].shards()]
assert got == [(slice(0, 4), slice(2 * k, 2 * k + 2)) for k in range(4)], got

# state(copy=False): the pieces as zero-copy views of the device buffers, never the whole array
import unified_params_jax._linen as linen_handle
from unified_params._shards import ShardedValue
big = nn.Dense(1024)
bv = big.init(jax.random.key(0), jnp.ones((1, 256)))["params"]  # kernel (256, 1024): 1 MiB
bv = {"params": {"kernel": jax.device_put(bv["kernel"], NamedSharding(mesh, P(None, "d"))),
                 "bias": jax.device_put(bv["bias"], NamedSharding(mesh, P("d")))}}
bm = up.wrap(big, bv)
bm.state(copy=False)  # warm the listing
real_host = linen_handle.host_array
def whole_of_one_device(x, copy):  # the handle's read of a whole value: a gather for a sharded array
    assert len(x.sharding.device_set) == 1, "state(copy=False) read a sharded array whole"
    return real_host(x, copy)
linen_handle.host_array = whole_of_one_device
try:
    st = bm.state(copy=False)
finally:
    linen_handle.host_array = real_host
sv = st["weight"]
assert isinstance(sv, ShardedValue) and sv.shape == (1024, 256) and sv.dtype == np.float32
assert [s.index for s in sv.shards] == [(slice(256 * k, 256 * k + 256), slice(0, 256)) for k in range(4)]
kernel = bm.variables["params"]["kernel"]
host = np.asarray(jax.device_get(kernel)).T
for s, sh in zip(sv.shards, kernel.addressable_shards):
    assert not s.data.flags.writeable and s.device == f"cpu:{sh.device.id}"
    assert np.shares_memory(s.data, np.asarray(sh.data))  # the device buffer itself
    np.testing.assert_array_equal(s.data, host[s.index])
np.testing.assert_array_equal(np.asarray(sv), host)  # every piece is local: assembled without a gather
# loads back into another sharding of this process (its pieces cover it): values equal, sharding kept
other = {"params": {"kernel": jax.device_put(jnp.zeros((256, 1024)), NamedSharding(mesh, P("d", None))),
                    "bias": jax.device_put(jnp.zeros(1024), NamedSharding(mesh, P()))}}
om = up.wrap(big, other)
om.load_state(st)
np.testing.assert_array_equal(om.params["weight"].value, host)
assert om.variables["params"]["kernel"].sharding.is_equivalent_to(NamedSharding(mesh, P("d", None)), 2)
print("OK")
'''


def test_sharded_pieces_over_four_host_devices() -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CODE)], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0 and "OK" in proc.stdout, (proc.stdout + proc.stderr)[-4000:]


ORBAX = r'''
import sys, numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import orbax.checkpoint as ocp
mesh = Mesh(np.array(jax.devices()), ("d",))
k = jax.device_put(jnp.arange(32.0, dtype=jnp.float32).reshape(4, 8), NamedSharding(mesh, P(None, "d")))
tree = {"params": {"Dense_0": {"kernel": k, "bias": jax.device_put(jnp.ones(8), NamedSharding(mesh, P("d")))}}}
ocp.PyTreeCheckpointer().save(sys.argv[1], tree)
print("OK")
'''


def test_orbax_checkpoint_sharded_over_four_devices_loads_in_one(tmp_path: Path) -> None:
    """Contract 15.3: an Orbax checkpoint of arrays sharded over 4 devices
    loads (by structure) where there is one device, into another framework."""
    pytest.importorskip("orbax.checkpoint")
    import numpy as np

    import unified_params as up
    from unified_params import reference as ref

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    ckpt = tmp_path / "orbax"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(ORBAX), str(ckpt)], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0 and "OK" in proc.stdout, (proc.stdout + proc.stderr)[-4000:]
    m = up.wrap(ref.Sequential(ref.Dense(8, in_units=4)))
    up.load(m, ckpt, match="structure")
    np.testing.assert_array_equal(m.params["0.weight"].value, np.arange(32.0).reshape(4, 8).T)
    np.testing.assert_array_equal(m.params["0.bias"].value, np.ones(8))
