"""Sharded PyTorch parameters (contract 15.1) on CPUs: ``torch.distributed``
with the gloo backend in 2 and 4 processes, FSDP2 (``fully_shard``) and
``DTensor`` placements on 1-D and 2-D meshes.

Each case runs a worker under ``torch.distributed.run``; every process
asserts and prints ``OK <rank>``. What is checked: one ``Param`` per DTensor
with the global canonical shape and the native names; ``p.shards()`` places
this process's piece where torch put it (the boxes of all processes tile the
array); ``shard.value`` is the local piece; ``p.value`` gathers the whole;
writes store each process's piece of the value it is given (outputs then
equal an unsharded twin's); seeded init equals the NumPy reference; a write
that fails midway restores the local pieces; a ``Partial`` placement is a
contract error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
import torch.distributed  # noqa: E402 - part of every torch we pin: a failure here is an error, not a skip

assert torch.distributed.is_available(), "this torch build has no torch.distributed"

COMMON = r'''
import os, sys, json
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_module, distribute_tensor
import unified_params as up
from unified_params import reference as ref

dist.init_process_group("gloo")
R, N = dist.get_rank(), dist.get_world_size()
X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
H = 2 * N if N > 2 else 6  # hidden units: 3 rows a process on 2, 2 on 4


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, H), nn.ReLU(), nn.Linear(H, 3))


def tiles(shape, boxes):
    cover = np.zeros(shape, np.int32)
    for box in boxes:
        cover[tuple(slice(a, b) for a, b in box)] += 1
    return bool((cover == 1).all())


def all_boxes(p):
    mine = [[(s.index[a].start, s.index[a].stop) for a in range(len(s.index))] for s in p.shards()]
    got = [None] * N
    dist.all_gather_object(got, mine)
    return [b for boxes in got for b in boxes]
'''

FSDP2 = r'''
from torch.distributed.fsdp import fully_shard

mesh = init_device_mesh("cpu", (N,))
plain = mlp()
net = mlp()
fully_shard(net, mesh=mesh)
assert isinstance(net[0].weight, DTensor)
m = up.wrap(net)
names = [n for n, _ in plain.named_parameters()]
assert list(m.params) == names, list(m.params)
assert [p.shape for p in m.params.values()] == [tuple(t.shape) for t in plain.parameters()]
w = m.params["0.weight"]
(piece,) = w.shards()
rows = H // N
assert piece.index == (slice(R * rows, (R + 1) * rows), slice(0, 4)), piece.index
want = plain[0].weight.detach().numpy()
np.testing.assert_array_equal(piece.value, want[piece.index])
np.testing.assert_array_equal(w.value, want)  # gathers
assert tiles((H, 4), all_boxes(w))

# a write stores this process's piece of the value it is given
v = np.arange(4 * H, dtype=np.float32).reshape(H, 4)
w.set(v)
np.testing.assert_array_equal(net[0].weight.to_local().detach().numpy(), v[piece.index])
np.testing.assert_array_equal(w.value, v)
with torch.no_grad():
    plain[0].weight.copy_(torch.from_numpy(v))
np.testing.assert_allclose(up.asnumpy(m(X)), plain(torch.from_numpy(X)).detach().numpy(), rtol=1e-6, atol=1e-6)

# state(copy=False): this process's pieces, no collective (full_tensor, redistribute would be one),
# no array of a parameter's global size
import tracemalloc
from unified_params._shards import ShardedValue
real_full, real_redist = DTensor.full_tensor, DTensor.redistribute
def no_gather(self, *a, **k):
    raise AssertionError("a collective in state(copy=False) or load_state")
DTensor.full_tensor = DTensor.redistribute = no_gather
big = nn.Linear(256, 256 * N, bias=False)  # 256 KiB a process
fully_shard(big, mesh=mesh)
b = up.wrap(big)
b.state(copy=False)  # warm the listing
tracemalloc.start()
try:
    st = m.state(copy=False)
    big_state = b.state(copy=False)
    _, peak = tracemalloc.get_traced_memory()
finally:
    tracemalloc.stop()
    DTensor.full_tensor, DTensor.redistribute = real_full, real_redist
assert peak < 256 * 1024 / 4, peak  # no array of the global size, nor a copy of its 256 KiB piece
assert big_state["weight"].shards[0].data.shape == (256, 256)
assert sorted(st) == sorted(names) and all(isinstance(x, ShardedValue) for x in st.values()), st
sv = st["0.weight"]
assert sv.shape == (H, 4) and sv.dtype == np.float32 and [s.index for s in sv.shards] == [piece.index]
np.testing.assert_array_equal(sv.shards[0].data, net[0].weight.to_local().detach().numpy())
# zero-copy: a read-only view of the local piece itself; Shard.value is a private copy
assert np.shares_memory(sv.shards[0].data, net[0].weight.to_local().detach().numpy())
assert not sv.shards[0].data.flags.writeable
assert not np.shares_memory(w.shards()[0].value, net[0].weight.to_local().detach().numpy())
np.testing.assert_array_equal(st["2.bias"].shards[0].data, net[2].bias.to_local().detach().numpy())
try:
    np.asarray(sv)
except up.StateError as exc:
    assert "p.value" in str(exc), str(exc)
else:
    raise AssertionError("np.asarray of a process's pieces gave a whole array")
# ... and loads into another model of this sharding: each process writes its own pieces, no collective
from torch.distributed.fsdp import fully_shard as _fs
twin = mlp()
_fs(twin, mesh=mesh)
t = up.wrap(twin)
t.initialize(up.init.Constant(0.0))
DTensor.full_tensor = DTensor.redistribute = no_gather
try:
    t.load_state(st)
finally:
    DTensor.full_tensor, DTensor.redistribute = real_full, real_redist
for (k, a), b in zip(net.named_parameters(), twin.parameters()):
    assert torch.equal(a.to_local(), b.to_local()), k

# seeded init equals the NumPy reference, on every process
m.initialize(up.init.Normal(0.0, 1.0), seed=7)
r = up.wrap(ref.Sequential(ref.Dense(H, in_units=4), ref.ReLU(), ref.Dense(3, in_units=H)))
r.initialize(up.init.Normal(0.0, 1.0), seed=7)
for k, p in r.params.items():
    np.testing.assert_array_equal(m.params[k].value, p.value, err_msg=k)
np.testing.assert_allclose(up.asnumpy(m(X)), up.asnumpy(r(X)), rtol=1e-5, atol=1e-5)

# a write that fails midway restores every local piece written before it
before = {k: t.to_local().detach().clone() for k, t in net.named_parameters()}
h = m._handle
real_write, calls = h.write, []
def failing(leaf, value):
    calls.append(leaf)
    if len(calls) == 3:
        raise RuntimeError("disk full")
    real_write(leaf, value)
h.write = failing
try:
    m.load_state({k: np.full(p.shape, 5.0, np.float32) for k, p in m.params.items()})
except up.UnifiedParamsError:
    pass
else:
    raise AssertionError("the injected failure did not surface")
finally:
    h.write = real_write
assert len(calls) == 3
for k, t in net.named_parameters():
    assert torch.equal(t.to_local(), before[k]), k

# print and summary work on a sharded model
assert "0.weight" in repr(m) or "weight" in repr(m)
m.summary()
'''

PLACEMENTS_2 = r'''
mesh = init_device_mesh("cpu", (2,))

def replicate(name, module, mesh):
    for pname, p in list(module.named_parameters(recurse=False)):
        module.register_parameter(pname, nn.Parameter(distribute_tensor(p.detach(), mesh, [Replicate()])))

net = distribute_module(nn.Linear(4, 6), mesh, replicate)
m = up.wrap(net)
w = m.params["weight"]
(piece,) = w.shards()
assert piece.index == (slice(0, 6), slice(0, 4)), piece.index
v = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
w.set(v)
np.testing.assert_array_equal(net.weight.to_local().detach().numpy(), v)
np.testing.assert_array_equal(w.value, v)

# a Partial placement holds a pending sum: a contract error, nothing changed
lin = nn.Linear(2, 2)
lin.weight = nn.Parameter(DTensor.from_local(torch.ones(2, 2), mesh, [Partial()]))
pm = up.wrap(lin)
try:
    pm.params["weight"].value
except up.UnifiedParamsError as exc:
    assert "Partial" in str(exc) and "redistribute" in str(exc), str(exc)
else:
    raise AssertionError("a Partial DTensor was read")
assert torch.equal(lin.weight.to_local(), torch.ones(2, 2))
'''

MESH_2D = r'''
mesh = init_device_mesh("cpu", (2, 2))
torch.manual_seed(0)
plain = nn.Linear(6, 8)

for placements in ([Shard(0), Shard(1)], [Shard(1), Shard(0)], [Shard(0), Shard(0)], [Replicate(), Shard(1)]):
    def part(name, module, mesh, placements=placements):
        for pname, p in list(module.named_parameters(recurse=False)):
            pl = placements if p.ndim == 2 else [Replicate(), Replicate()]
            module.register_parameter(pname, nn.Parameter(distribute_tensor(p.detach(), mesh, pl)))

    net = nn.Linear(6, 8)
    net.load_state_dict(plain.state_dict())
    net = distribute_module(net, mesh, part)
    m = up.wrap(net)
    w = m.params["weight"]
    assert w.shape == (8, 6)
    boxes = all_boxes(w)
    (piece,) = w.shards()
    want = plain.weight.detach().numpy()
    np.testing.assert_array_equal(piece.value, want[piece.index])
    np.testing.assert_array_equal(net.weight.to_local().detach().numpy(), want[piece.index])
    if Replicate() not in placements:
        assert tiles((8, 6), boxes), (placements, boxes)
    np.testing.assert_array_equal(w.value, want)
    v = np.arange(48, dtype=np.float32).reshape(8, 6)
    w.set(v)
    np.testing.assert_array_equal(net.weight.to_local().detach().numpy(), v[piece.index])
    np.testing.assert_array_equal(w.value, v)
'''

SAVE = r'''
from torch.distributed.fsdp import fully_shard
from unified_params import _format as F

CKPT, MIX = os.environ["CKPT"], os.environ["MIX"]
mesh = init_device_mesh("cpu", (N,))
net = mlp()
fully_shard(net, mesh=mesh)
m = up.wrap(net)
m.initialize(up.init.Normal(0.0, 1.0), seed=7)
local = {k: t.to_local().detach().clone() for k, t in net.named_parameters()}
real_pwrite, wrote = os.pwrite, []
def counting(fd, data, offset):
    n = real_pwrite(fd, data, offset)
    wrote.append((offset, n))
    return n
os.pwrite = counting
try:
    assert up.save(m, CKPT) is not None
finally:
    os.pwrite = real_pwrite
files = sorted(os.listdir(CKPT))
assert files == ["model-whole.safetensors", "model.safetensors.index.json"], files  # rows: whole tensors
# the bytes this process wrote are exactly its own rows' (rank 0: the header too), and hold them
whole = os.path.join(CKPT, "model-whole.safetensors")
with open(whole, "rb") as fh:
    raw = fh.read()
head = 8 + int.from_bytes(raw[:8], "little")
at = {e.name: head + e.begin for e in F.read_header(whole).entries.values()}
want = [(0, head)] if R == 0 else []
for k, t in local.items():
    idx = m.params[k].shards()[0].index
    row = 4 * int(np.prod(m.params[k].shape[1:]))
    if t.numel():
        want.append((at[k] + idx[0].start * row, 4 * t.numel()))
        assert raw[want[-1][0]:sum(want[-1])] == t.numpy().tobytes(), k
assert sorted(wrote) == sorted(want), (wrote, want)

# a mixed model: 0.weight in columns (Shard(1)) stays in pieces, in each rank's file; the rest whole
def mixed(name, module, mesh):
    for pname, p in list(module.named_parameters(recurse=False)):
        pl = [Shard(1)] if (name, pname) == ("0", "weight") else [Shard(0)] if p.ndim == 2 else [Replicate()]
        module.register_parameter(pname, nn.Parameter(distribute_tensor(p.detach(), mesh, pl)))

mm = up.wrap(distribute_module(mlp(), mesh, mixed))
mm.initialize(up.init.Normal(0.0, 1.0), seed=7)
up.save(mm, MIX)
assert sorted(os.listdir(MIX)) == ["model-r00000-of-00002.safetensors", "model-r00001-of-00002.safetensors",
                                   "model-whole.safetensors", "model.safetensors.index.json"], os.listdir(MIX)
with open(os.path.join(MIX, "model.safetensors.index.json")) as fh:
    wmap = json.load(fh)["weight_map"]
assert wmap == {"0.weight#0": "model-r00000-of-00002.safetensors", "0.weight#1": "model-r00001-of-00002.safetensors",
                "0.bias": "model-whole.safetensors", "2.weight": "model-whole.safetensors",
                "2.bias": "model-whole.safetensors"}, wmap

# back into another model of the same sharding, and into another sharding
fresh = mlp()
fully_shard(fresh, mesh=mesh)
f = up.wrap(fresh)
for ckpt in (CKPT, MIX):
    f.initialize(up.init.Constant(0.0))
    up.load(f, ckpt)
    for k, t in fresh.named_parameters():
        assert torch.equal(t.to_local(), local[k]), (ckpt, k)

def replicate(name, module, mesh):
    for pname, p in list(module.named_parameters(recurse=False)):
        module.register_parameter(pname, nn.Parameter(distribute_tensor(p.detach(), mesh, [Replicate()])))

rep = distribute_module(mlp(), mesh, replicate)
up.load(up.wrap(rep), CKPT)
for k, p in up.wrap(rep).params.items():
    np.testing.assert_array_equal(p.value, m.params[k].value, err_msg=k)

# rank 1 fails midway (a full disk under its positioned writes): every rank raises a contract error,
# no file of the checkpoint changed, no temporary file left
before = {n: open(os.path.join(CKPT, n), "rb").read() for n in sorted(os.listdir(CKPT))}
dist.barrier()
if R == 1:
    def full(fd, data, offset):
        raise OSError(28, "No space left on device")
    os.pwrite = full
m.initialize(up.init.Normal(0.0, 1.0), seed=8)
try:
    up.save(m, CKPT)
except up.FileFormatError as exc:
    msg = str(exc)
else:
    raise AssertionError("the injected failure did not surface")
finally:
    os.pwrite = real_pwrite
assert ("No space" in msg) if R == 1 else ("rank 1" in msg), msg
dist.barrier()
assert {n: open(os.path.join(CKPT, n), "rb").read() for n in sorted(os.listdir(CKPT))} == before
'''

LOAD_FOUR = r'''
from torch.distributed.fsdp import fully_shard
import unified_params._format as F

mesh = init_device_mesh("cpu", (N,))
torch.manual_seed(1)
net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))  # the 2-process checkpoint's shapes
fully_shard(net, mesh=mesh)
m = up.wrap(net)
r = up.wrap(ref.Sequential(ref.Dense(6, in_units=4), ref.ReLU(), ref.Dense(3, in_units=6)))
r.initialize(up.init.Normal(0.0, 1.0), seed=7)
real = F.Reader.read_into
for ckpt in (os.environ["CKPT"], os.environ["MIX"]):  # whole tensors; pieces of columns beside them
    m.initialize(up.init.Constant(0.0))
    read = []
    def counting(self, e, out):
        read.append(e.end - e.begin)
        return real(self, e, out)
    F.Reader.read_into = counting
    up.load(m, ckpt)
    F.Reader.read_into = real
    held = sum(t.to_local().numel() * 4 for t in net.parameters())
    assert sum(read) == held, (ckpt, sum(read), held)  # only the byte ranges of its own pieces
    np.testing.assert_allclose(up.asnumpy(m(X)), up.asnumpy(r(X)), rtol=1e-5, atol=1e-5)
'''

LLAMA = r'''
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=32)
net = LlamaForCausalLM(cfg)
fully_shard(net, mesh=init_device_mesh("cpu", (N,)))
m = up.wrap(net)
m.initialize(up.init.Normal(0.0, 0.5), seed=7)
up.save(m, os.environ["CKPT"])
'''

DCP_SAVE = r'''
import torch.distributed.checkpoint as dcp
from torch.distributed.fsdp import fully_shard

mesh = init_device_mesh("cpu", (N,))
net = mlp()
fully_shard(net, mesh=mesh)
up.wrap(net).initialize(up.init.Normal(0.0, 1.0), seed=7)
dcp.save(net.state_dict(), checkpoint_id=os.environ["CKPT"])  # each process writes its shards, DCP's way
'''

DONE = r'''
print(f"OK {R}", flush=True)
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # gloo's teardown at interpreter exit has aborted a process after its work was done
'''


def _run(tmp_path: Path, nproc: int, body: str, **env_extra: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(COMMON) + textwrap.dedent(body) + textwrap.dedent(DONE))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **env_extra)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(script)],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    ranks = "\n".join(line for line in out.splitlines() if line.startswith("[rank"))  # the workers' tracebacks
    assert proc.returncode == 0, (ranks or out)[-6000:]
    for r in range(nproc):
        assert f"OK {r}" in out, out[-4000:]


def test_fsdp2_two_processes(tmp_path: Path) -> None:
    _run(tmp_path, 2, FSDP2)


def test_fsdp2_four_processes(tmp_path: Path) -> None:
    _run(tmp_path, 4, FSDP2)


def test_replicate_and_partial_placements(tmp_path: Path) -> None:
    _run(tmp_path, 2, PLACEMENTS_2)


def test_two_dimensional_mesh(tmp_path: Path) -> None:
    _run(tmp_path, 4, MESH_2D)


def _listed_tensors(ckpt: Path) -> dict[str, Any]:
    """Every tensor of every file the index lists, read by safetensors itself."""
    import json

    from safetensors import safe_open

    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    out: dict[str, Any] = {}
    for f in sorted(set(index["weight_map"].values())):
        with safe_open(str(ckpt / f), framework="numpy") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    assert sorted(out) == sorted(index["weight_map"])
    return out


def test_save_from_two_processes_load_anywhere(tmp_path: Path) -> None:
    """Contract 15.2: FSDP2 on 2 processes saves one checkpoint (its rows: byte
    ranges of whole tensors in one shared file, one index), which safetensors
    reads as it is; a mixed sharding (columns) keeps pieces beside them. Both
    load back, into another sharding, into 4 processes (each reading only its
    rows), into one NumPy process, and ``up.consolidate`` turns them into a
    plain sharded directory. Rank 1 failing midway changes no file."""
    import numpy as np

    import unified_params as up
    from unified_params import reference as ref

    ckpt, mix = tmp_path / "ckpt", tmp_path / "mix"
    _run(tmp_path, 2, SAVE, CKPT=str(ckpt), MIX=str(mix))
    _run(tmp_path, 4, LOAD_FOUR, CKPT=str(ckpt), MIX=str(mix))
    want = up.wrap(ref.Sequential(ref.Dense(6, in_units=4), ref.ReLU(), ref.Dense(3, in_units=6)))
    want.initialize(up.init.Normal(0.0, 1.0), seed=7)
    plain_read = _listed_tensors(ckpt)  # no consolidation: every name, its full shape
    assert sorted(plain_read) == sorted(want.params)
    for k, p in want.params.items():
        np.testing.assert_array_equal(plain_read[k], p.value, err_msg=k)
    for src in (ckpt, mix):
        one = up.wrap(ref.Sequential(ref.Dense(6, in_units=4), ref.ReLU(), ref.Dense(3, in_units=6)))
        up.load(one, src, match="order")  # another framework, one process: the whole of each tensor
        for k, p in want.params.items():
            np.testing.assert_array_equal(one.params[k].value, p.value, err_msg=f"{src.name} {k}")
        plain = up.consolidate(src, tmp_path / f"plain-{src.name}", max_shard_size=100)
        names = sorted(x.name for x in plain.iterdir())
        assert "model.safetensors.index.json" in names and len(names) >= 3, names
        got = _listed_tensors(plain)
        assert sorted(got) == ["0.bias", "0.weight", "2.bias", "2.weight"]
        for k, p in want.params.items():
            np.testing.assert_array_equal(got[k], p.value, err_msg=k)
        again = up.wrap(ref.Sequential(ref.Dense(6, in_units=4), ref.ReLU(), ref.Dense(3, in_units=6)))
        up.load(again, plain)
        for k, p in want.params.items():
            np.testing.assert_array_equal(again.params[k].value, p.value, err_msg=k)
        with pytest.raises(up.FileFormatError, match="needs no consolidation"):
            up.consolidate(plain, tmp_path / "twice")


def test_fsdp2_checkpoint_is_read_by_transformers_as_it_is(tmp_path: Path) -> None:
    """A tiny Llama under FSDP2 on 2 processes, saved by ``up.save``: the
    directory is one transformers' ``from_pretrained`` reads without
    ``up.consolidate`` (its config.json written here; nothing downloaded)."""
    pytest.importorskip("transformers")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import unified_params as up

    ckpt = tmp_path / "llama"
    _run(tmp_path, 2, LLAMA, CKPT=str(ckpt))
    assert not any("#" in k for k in _listed_tensors(ckpt))
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    cfg.save_pretrained(ckpt)
    want = LlamaForCausalLM(cfg)
    up.wrap(want).initialize(up.init.Normal(0.0, 0.5), seed=7)  # seeded init: the same on every sharding
    got = LlamaForCausalLM.from_pretrained(str(ckpt))
    ws, gs = want.state_dict(), got.state_dict()
    assert sorted(ws) == sorted(gs)
    for k, v in ws.items():
        assert torch.equal(gs[k], v), k
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(got(ids).logits, want(ids).logits, atol=1e-6)


def test_distributed_checkpoint_loads_into_another_framework(tmp_path: Path) -> None:
    """Contract 15.3: a PyTorch Distributed Checkpoint written by FSDP2 on 2
    processes loads, in one process, into the NumPy reference twin (by name,
    and by structure with check=), each tensor read alone by DCP's loader."""
    import numpy as np

    import unified_params as up
    from unified_params import reference as ref

    ckpt = tmp_path / "dcp"
    _run(tmp_path, 2, DCP_SAVE, CKPT=str(ckpt))
    want = up.wrap(ref.Sequential(ref.Dense(6, in_units=4), ref.ReLU(), ref.Dense(3, in_units=6)))
    want.initialize(up.init.Normal(0.0, 1.0), seed=7)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for match in ("name", "structure"):
        twin = up.wrap(ref.Sequential(ref.Dense(6, in_units=4), ref.ReLU(), ref.Dense(3, in_units=6)))
        kw = {"check": (x, up.asnumpy(want(x)))} if match == "structure" else {}
        up.load(twin, ckpt, match=match, **kw)
        for k, p in want.params.items():
            np.testing.assert_array_equal(twin.params[k].value, p.value, err_msg=f"{match} {k}")
    wrong = up.wrap(ref.Sequential(ref.Dense(5, in_units=4), ref.ReLU(), ref.Dense(3, in_units=5)))
    before = wrong.state()
    with pytest.raises(up.UnifiedParamsError):
        up.load(wrong, ckpt)
    for k, v in wrong.state().items():
        np.testing.assert_array_equal(v, before[k])
