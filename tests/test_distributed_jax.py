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


TWO = r'''
import os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid = int(sys.argv[1])
jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[2], num_processes=2, process_id=pid)
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.experimental import multihost_utils as mu
import unified_params as up

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))

mesh = Mesh(np.array(jax.devices()), ("d",))
model = MLP()
host = jax.tree_util.tree_map(np.asarray, model.init(jax.random.key(1), np.ones((1, 4), np.float32)))
np.savez(os.environ["HOST"], **{f"{k}.{n}": a for k, layer in host["params"].items() for n, a in layer.items()})
spec = {(4, 8): P(None, "d"), (8,): P("d"), (8, 3): P("d", None), (3,): P()}  # by shape
params = {k: {n: jax.make_array_from_callback(a.shape, NamedSharding(mesh, spec[a.shape]), lambda i, a=a: a[i])
              for n, a in layer.items()} for k, layer in host["params"].items()}
m = up.wrap(model, {"params": params})
real, wrote = os.pwrite, []
def counting(fd, data, offset):
    n = real(fd, data, offset)
    wrote.append(n)
    return n
os.pwrite = counting
up.save(m, os.environ["CKPT"])
os.pwrite = real
# the shared file: rank 0 the header and its halves of the (4, 8) kernel (canonical rows) and the (8,) bias,
# and the replicated (3,) bias; rank 1 its halves only; the (8, 3) kernel's columns go to each one's own file
ok = sorted(wrote[1:]) == [12, 16, 64] if pid == 0 else sorted(wrote) == [16, 64]  # rank 0: the header first
up.load(m, os.environ["CKPT"])
print(f"OK {pid}" if ok else f"WROTE {pid} {wrote}", flush=True)
mu.sync_global_devices("done")
os._exit(0)
'''


def test_two_processes_save_whole_tensors_and_pieces(tmp_path: Path) -> None:
    """Contract 15.2 over 2 JAX processes (``jax.distributed`` on localhost):
    a kernel sharded on its output axis (canonical rows) and 1-D arrays are
    byte ranges of whole tensors in one shared file; a kernel sharded on its
    input axis (canonical columns) stays in pieces, one file a process;
    safetensors reads the shared file as it is and one NumPy process loads
    the directory."""
    import json
    import socket

    import numpy as np
    from safetensors.numpy import load_file

    import unified_params as up
    from unified_params import reference as ref

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    ckpt = tmp_path / "ckpt"
    (tmp_path / "two.py").write_text(textwrap.dedent(TWO))
    env = dict(os.environ, JAX_PLATFORMS="cpu", CKPT=str(ckpt), HOST=str(tmp_path / "host.npz"))
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "two.py"), str(i), port], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:  # a process whose peer failed waits in a collective
                p.kill()
    assert all(p.returncode == 0 for p in procs) and all(f"OK {i}" in outs[i] for i in range(2)), \
        "\n".join(outs)[-4000:]
    assert sorted(f.name for f in ckpt.iterdir()) == [
        "model-r00000-of-00002.safetensors", "model-r00001-of-00002.safetensors", "model-whole.safetensors",
        "model.safetensors.index.json"]
    wmap = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    whole = load_file(str(ckpt / "model-whole.safetensors"))
    assert sorted(k for k, v in wmap.items() if v == "model-whole.safetensors") == sorted(whole)
    host = dict(np.load(tmp_path / "host.npz"))
    assert {v.shape for v in whole.values()} == {(8, 4), (8,), (3,)}
    for k, v in whole.items():  # canonical layout: a kernel transposed
        (src,) = [a for a in host.values() if a.shape in (v.shape, v.shape[::-1]) and a.ndim == v.ndim]
        np.testing.assert_array_equal(v, src.T if v.ndim == 2 else src, err_msg=k)
    one = up.wrap(ref.Sequential(ref.Dense(8, in_units=4), ref.ReLU(), ref.Dense(3, in_units=8)))
    up.load(one, ckpt, match="order")
    first, last = "Dense_1", "Dense_0"  # flax names the outer Dense(3) first: it is built before its input
    for k, src in (("0.weight", host[f"{first}.kernel"].T), ("0.bias", host[f"{first}.bias"]),
                   ("2.weight", host[f"{last}.kernel"].T), ("2.bias", host[f"{last}.bias"])):
        np.testing.assert_array_equal(one.params[k].value, src, err_msg=k)
