"""A sharded model across 2 processes (issue 17): ``up.save`` / ``up.load``
against the frameworks' own distributed checkpointing of the same model:

* torch: an FSDP2 model on 2 gloo processes against PyTorch Distributed
  Checkpoint's ``dcp.save`` / ``dcp.load``;
* JAX: a linen model whose arrays are sharded over 2 processes
  (``jax.distributed`` on localhost, gloo collectives) against Orbax's
  ``PyTreeCheckpointer`` save / restore (with each array's sharding), where
  JAX, Flax and Orbax are importable beside torch (tox ``interop``).

The worker of the torch backend launches both runs on this module; every
process builds its half of the model (64 layers of 2048 x 2048 float32:
1 GiB, 512 MiB a process; ``--quick``: 16 MiB), runs alternating rounds
(native, ours, ...) of save then load into ``/dev/shm``, and prints one
``RESULT`` line: per-call seconds, the ratio of each round, and its peak
resident memory above its start as a multiple of its own shard. A row
reports the median over rounds of the slower process's ratio.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ("save", "load")


def case_dist(backend: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Launch the 2-process runs (torch, then JAX) and merge their results."""
    if backend != "torch":
        return {"skipped": "the distributed case runs from the torch worker (FSDP2, DCP; JAX and Orbax beside it)"}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "benchmarks._distributed", json.dumps(spec)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    out = _merge(run.stdout, run.returncode, run.stderr, "torch")
    if all(importlib.util.find_spec(m) is not None for m in ("jax", "flax", "orbax.checkpoint")):
        port = _free_port()
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks._distributed", json.dumps(spec), "--jax",
                                   str(pid), str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=dict(env, JAX_PLATFORMS="cpu"))
                 for pid in range(2)]
        texts = [p.communicate(timeout=1800) for p in procs]
        code = max(abs(p.returncode or 0) for p in procs)
        out["orbax"] = _merge("\n".join(t[0] for t in texts), code, "\n".join(t[1] for t in texts), "JAX")
    else:
        out["orbax"] = {"skipped": "JAX, Flax and Orbax are not importable beside torch here (tox env interop)"}
    return out


def _merge(stdout: str, code: int, stderr: str, what: str) -> dict[str, Any]:
    ranks = [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    if code != 0 or len(ranks) != 2:
        raise RuntimeError(f"the 2-process {what} run failed (exit {code}): {stderr.strip()[-600:]}")
    out: dict[str, Any] = {"processes": 2, "model_bytes": ranks[0]["model_bytes"]}
    for op in OPS:
        ratios = sorted(max(a, b) for a, b in zip(ranks[0][op]["ratios"], ranks[1][op]["ratios"]))
        out[op] = {"ours_vs_native": {"median": ratios[len(ratios) // 2], "min": ratios[0], "max": ratios[-1]},
                   "ours_s": max(r[op]["ours_s"] for r in ranks), "native_s": max(r[op]["native_s"] for r in ranks),
                   "rounds": len(ratios), "peak_extra": max(r[op]["peak_extra"] for r in ranks),
                   "native_peak_extra": max(r[op]["native_peak_extra"] for r in ranks)}
    return out


def rows(r: dict[str, Any], base: dict[str, Any], targets: dict[str, float]) -> list[dict[str, Any]]:
    """The table rows: save and load against DCP, then against Orbax."""
    out = []
    for engine, res, backend in (("DCP", r, base.get("backend")),
                                 ("Orbax, JAX over 2 processes", r.get("orbax") or {}, "jax")):
        for op in OPS:
            x = res.get(op)
            if x is None:
                continue
            st = x.get("ours_vs_native")
            out.append({**base, "backend": backend, "what": f"{op} sharded, {res['processes']} processes (vs {engine})",
                        "target": targets[op], "vs_native": st and st["median"],
                        "vs_native_spread": st and [st["min"], st["max"]], "peak_extra": x["peak_extra"],
                        "native_peak_extra": x["native_peak_extra"], "ours_s": x["ours_s"],
                        "native_s": x.get("native_s"), "rounds": x["rounds"]})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rounds(sides: dict[str, dict[str, Any]], repeat: int, timed: Any) -> dict[str, Any]:
    """Alternating rounds (native, ours) of each op; ``timed(fn)`` -> (s, peak extra / shard)."""
    import numpy as np

    result: dict[str, Any] = {}
    for op in OPS:
        times: dict[str, list[float]] = {"native": [], "ours": []}
        peaks: dict[str, float] = {"native": 0.0, "ours": 0.0}
        for _ in range(repeat):
            for side in ("native", "ours"):
                dt, extra = timed(sides[op][side])
                times[side].append(dt)
                peaks[side] = max(peaks[side], extra)
        result[op] = {"ratios": [o / n for o, n in zip(times["ours"], times["native"])],
                      "ours_s": float(np.median(times["ours"])), "native_s": float(np.median(times["native"])),
                      "peak_extra": peaks["ours"], "native_peak_extra": peaks["native"]}
    return result


def _folder() -> str:
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _main(spec: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import unified_params as up
    from benchmarks.worker import peak_extra

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    width, depth = spec["width"], spec["depth"]
    with torch.device("meta"):
        net = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
    fully_shard(net, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    net.to_empty(device="cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.to_local().uniform_(-1, 1)
    m = up.wrap(net)
    shard = sum(p.to_local().numel() * 4 for p in net.parameters())
    base = os.path.join(_folder(), f"up-dist-{os.getppid()}")
    ours_dir, dcp_dir = base + "-ours", base + "-dcp"

    def timed(fn: Any) -> tuple[float, float]:
        dist.barrier()
        t = time.perf_counter()
        _, extra = peak_extra(fn)
        dist.barrier()
        return time.perf_counter() - t, (extra or 0.0) / shard

    sides = {
        "save": {"native": lambda: dcp.save(net.state_dict(), checkpoint_id=dcp_dir),
                 "ours": lambda: up.save(m, ours_dir)},
        "load": {"native": lambda: dcp.load(net.state_dict(), checkpoint_id=dcp_dir),
                 "ours": lambda: up.load(m, ours_dir)},
    }
    try:
        result = {"rank": rank, "model_bytes": shard * dist.get_world_size(), **_rounds(sides, spec["repeat"], timed)}
    finally:
        dist.barrier()
        if rank == 0:
            shutil.rmtree(ours_dir, ignore_errors=True)
            shutil.rmtree(dcp_dir, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()
    os._exit(0)  # gloo's teardown at interpreter exit has aborted a process after its work was done


def _jax_main(spec: dict[str, Any], pid: int, port: int) -> None:
    """One of 2 JAX processes: a linen MLP whose kernels are sharded over
    both processes on their output axis (biases too), each process building
    only its pieces; Orbax's save/restore (with the arrays' shardings)
    against ``up.save``/``up.load``."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import numpy as np
    import orbax.checkpoint as ocp
    from flax import linen as nn
    from jax.experimental import multihost_utils as mu
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import unified_params as up
    from benchmarks.worker import peak_extra

    width, depth = spec["width"], spec["depth"]

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            for _ in range(depth):
                x = nn.Dense(width)(x)
            return x

    mesh = Mesh(np.array(jax.devices()), ("d",))
    rng = np.random.default_rng(pid)

    def piece(shape: tuple[int, ...], spec_: Any) -> Any:
        return jax.make_array_from_callback(shape, NamedSharding(mesh, spec_), lambda idx: rng.uniform(
            -1, 1, tuple(len(range(*s.indices(n))) for s, n in zip(idx, shape))).astype(np.float32))

    params = {f"Dense_{i}": {"kernel": piece((width, width), P(None, "d")), "bias": piece((width,), P("d"))}
              for i in range(depth)}
    m = up.wrap(MLP(), {"params": params})
    shard = sum(int(np.prod(s.data.shape)) * 4 for layer in params.values() for a in layer.values()
                for s in a.addressable_shards)
    restore_args = jax.tree_util.tree_map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), {"params": params})
    del params  # the model holds the arrays: a load's old ones can go
    base = os.path.join(_folder(), f"up-jax-{port}")
    ours_dir, orbax_dir = base + "-ours", base + "-orbax"
    ck = ocp.PyTreeCheckpointer()

    def timed(fn: Any) -> tuple[float, float]:
        mu.sync_global_devices("before")
        t = time.perf_counter()
        _, extra = peak_extra(fn)
        mu.sync_global_devices("after")
        return time.perf_counter() - t, (extra or 0.0) / shard

    sides = {
        "save": {"native": lambda: ck.save(orbax_dir, m.variables, force=True), "ours": lambda: up.save(m, ours_dir)},
        "load": {"native": lambda: ck.restore(orbax_dir, restore_args=restore_args),
                 "ours": lambda: up.load(m, ours_dir)},
    }
    try:
        result = {"rank": pid, "model_bytes": shard * 2, **_rounds(sides, spec["repeat"], timed)}
    finally:
        mu.sync_global_devices("cleanup")
        if pid == 0:
            shutil.rmtree(ours_dir, ignore_errors=True)
            shutil.rmtree(orbax_dir, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)
    mu.sync_global_devices("done")
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "--jax":
        _jax_main(json.loads(sys.argv[1]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        _main(json.loads(sys.argv[1]))
