"""Issue 17's "done when", on CPUs: an MLP trained-state under FSDP2 on 4
processes (gloo) is saved by ``up.save`` (each process its pieces), loaded by
a Flax model sharded over 2 JAX processes (``jax.distributed`` on localhost,
gloo collectives) with ``match='order'``, and computes the same outputs; the
JAX processes save it again by ``up.save`` and one torch process reads it
back. Runs where torch, JAX and Flax share an environment (tox ``interop``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")
pytest.importorskip("flax")

X = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)

TORCH = r'''
import os, numpy as np, torch, torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
import unified_params as up

dist.init_process_group("gloo")
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
fully_shard(net, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
m = up.wrap(net)
m.initialize(up.init.Normal(0.0, 0.5), seed=3)
y = up.asnumpy(m(np.load(os.environ["X"])))
if dist.get_rank() == 0:
    np.save(os.environ["Y"], y)
up.save(m, os.environ["CKPT"])
print(f"OK {dist.get_rank()}", flush=True)
dist.barrier()
dist.destroy_process_group()
os._exit(0)  # gloo's teardown at interpreter exit has aborted a process after its work was done
'''

JAX = r'''
import os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid = int(sys.argv[1])
jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[2], num_processes=2, process_id=pid)
import numpy as np, jax.numpy as jnp
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
x = np.load(os.environ["X"])
host = jax.tree_util.tree_map(np.asarray, jax.jit(model.init)(jax.random.key(1), x))
spec = {(4, 8): P(None, "d"), (8,): P("d"), (8, 3): P("d", None), (3,): P()}  # by shape
params = {k: {n: jax.make_array_from_callback(a.shape, NamedSharding(mesh, spec[a.shape]), lambda i, a=a: a[i])
              for n, a in layer.items()} for k, layer in host["params"].items()}
m = up.wrap(model, {"params": params})
first = next(n for n, p in m.params.items() if p.shape == (8, 4))
w = m.params[first]
assert w.shape == (8, 4) and len(w.shards()) == 1 and w.shards()[0].index[0] == slice(4 * pid, 4 * pid + 4)
up.load(m, os.environ["CKPT"], match="order")
# state(copy=False) of the 2-process model: this process's pieces, no collective; they load back the same way
from unified_params._shards import ShardedValue
real_gather = mu.process_allgather
def no_gather(*a, **k):
    raise AssertionError("a collective in state(copy=False) or load_state")
mu.process_allgather = no_gather
try:
    st = m.state(copy=False)
    m.load_state(st)
finally:
    mu.process_allgather = real_gather
sv = st[first]
assert isinstance(sv, ShardedValue) and sv.shape == (8, 4), sv
(piece,) = sv.shards  # one device a process
assert piece.index == (slice(4 * pid, 4 * pid + 4), slice(0, 4)), piece.index
k8 = next(v["kernel"] for v in m.variables["params"].values() if v["kernel"].shape == (4, 8))
np.testing.assert_array_equal(piece.data, np.asarray(k8.addressable_shards[0].data).T)
try:
    np.asarray(sv)
except up.StateError:
    pass
else:
    raise AssertionError("np.asarray of one process's pieces gave a whole array")
got = mu.process_allgather(model.apply(m.variables, x), tiled=True)
np.testing.assert_allclose(np.asarray(got), np.load(os.environ["Y"]), rtol=1e-5, atol=1e-6)
kernel = next(v["kernel"] for v in m.variables["params"].values() if v["kernel"].shape == (4, 8))
assert not kernel.is_fully_addressable and kernel.sharding.spec == P(None, "d")
up.save(m, os.environ["CKPT2"])
print(f"OK {pid}", flush=True)
mu.sync_global_devices("done")
os._exit(0)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check(procs: list[subprocess.Popen[str]], n: int) -> None:
    outs = [p.communicate(timeout=300)[0] for p in procs]
    text = "\n".join(outs)
    assert all(p.returncode == 0 for p in procs), text[-4000:]
    for r in range(n):
        assert f"OK {r}" in text, text[-4000:]


def test_fsdp2_on_four_processes_to_jax_on_two_and_back(tmp_path: Path) -> None:
    import unified_params as up

    np.save(tmp_path / "x.npy", X)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", JAX_PLATFORMS="cpu",
               X=str(tmp_path / "x.npy"), Y=str(tmp_path / "y.npy"), CKPT=str(tmp_path / "torch4"),
               CKPT2=str(tmp_path / "jax2"))
    (tmp_path / "t.py").write_text(textwrap.dedent(TORCH))
    (tmp_path / "j.py").write_text(textwrap.dedent(JAX))
    torch_run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  "--nproc-per-node=4", str(tmp_path / "t.py")], env=env, cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _check([torch_run], 4)
    port = str(_free_port())
    jax_runs = [subprocess.Popen([sys.executable, str(tmp_path / "j.py"), str(i), port], env=env, cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    _check(jax_runs, 2)
    # FSDP2's rows are byte ranges of whole tensors: one shared file that safetensors reads as it is
    assert sorted(f.name for f in (tmp_path / "torch4").iterdir()) == [
        "model-whole.safetensors", "model.safetensors.index.json"]
    from safetensors.numpy import load_file

    whole = load_file(str(tmp_path / "torch4" / "model-whole.safetensors"))
    assert {k: v.shape for k, v in whole.items()} == {"0.weight": (8, 4), "0.bias": (8,), "2.weight": (3, 8),
                                                      "2.bias": (3,)}
    # the JAX save: the (8, 3) kernel is sharded on its input axis, canonical axis 1 (columns): pieces in each
    # process's file; the rest (rows, a replicated bias) whole in the shared one
    names = sorted(f.name for f in (tmp_path / "jax2").iterdir())
    assert names == ["model-r00000-of-00002.safetensors", "model-r00001-of-00002.safetensors",
                     "model-whole.safetensors", "model.safetensors.index.json"], names
    wmap = json.loads((tmp_path / "jax2" / "model.safetensors.index.json").read_text())["weight_map"]
    assert sorted(v for k, v in wmap.items() if "#" in k) == names[:2], wmap
    assert sum(v == "model-whole.safetensors" for v in wmap.values()) == 3, wmap
    # ... and back into one (unsharded) torch process
    import torch

    torch.manual_seed(5)
    back = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    b = up.wrap(back)
    up.load(b, tmp_path / "jax2", match="order")
    np.testing.assert_allclose(up.asnumpy(b(X)), np.load(tmp_path / "y.npy"), rtol=1e-5, atol=1e-6)
