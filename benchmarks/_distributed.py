"""A sharded model across 2 processes (issue 17): ``up.save`` / ``up.load``
of an FSDP2 model against PyTorch Distributed Checkpoint's own ``dcp.save``
/ ``dcp.load`` of the same model, on CPUs with gloo.

The worker of the torch backend launches ``torch.distributed.run`` on this
module; every process builds its half of the model (64 layers of
2048 x 2048 float32: 1 GiB, 512 MiB a process; ``--quick``: 16 MiB), runs
alternating rounds (dcp, ours, ...) of save then load into ``/dev/shm``,
and prints one ``RESULT`` line: per-call seconds, the ratio of each round,
and its peak resident memory above its start as a multiple of its own shard.
The row reports the median over rounds of the slower process's ratio.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def case_dist(backend: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Launch the 2-process run and merge its processes' results."""
    if backend != "torch":
        return {"skipped": "the distributed case runs on torch (FSDP2, DCP)"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "benchmarks._distributed", json.dumps(spec)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    ranks = [json.loads(line[len("RESULT "):]) for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode != 0 or len(ranks) != 2:
        raise RuntimeError(f"the 2-process run failed (exit {run.returncode}): {run.stderr.strip()[-400:]}")
    out: dict[str, Any] = {"processes": 2, "model_bytes": ranks[0]["model_bytes"]}
    for op in ("save", "load"):
        ratios = [max(a, b) for a, b in zip(ranks[0][op]["ratios"], ranks[1][op]["ratios"])]
        ratios.sort()
        out[op] = {"ours_vs_native": {"median": ratios[len(ratios) // 2], "min": ratios[0], "max": ratios[-1]},
                   "ours_s": max(r[op]["ours_s"] for r in ranks), "rounds": len(ratios),
                   "peak_extra": max(r[op]["peak_extra"] for r in ranks),
                   "native_peak_extra": max(r[op]["native_peak_extra"] for r in ranks)}
    return out


def _main(spec: dict[str, Any]) -> None:
    import numpy as np
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
    folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    base = os.path.join(folder, f"up-dist-{os.getppid()}")
    ours_dir, dcp_dir = base + "-ours", base + "-dcp"

    def barrier_timed(fn: Any) -> tuple[float, float]:
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
    result: dict[str, Any] = {"rank": rank, "model_bytes": shard * dist.get_world_size()}
    try:
        for op in ("save", "load"):
            times: dict[str, list[float]] = {"native": [], "ours": []}
            peaks: dict[str, float] = {"native": 0.0, "ours": 0.0}
            for _ in range(spec["repeat"]):
                for side in ("native", "ours"):
                    dt, extra = barrier_timed(sides[op][side])
                    times[side].append(dt)
                    peaks[side] = max(peaks[side], extra)
            result[op] = {"ratios": [o / n for o, n in zip(times["ours"], times["native"])],
                          "ours_s": float(np.median(times["ours"])), "peak_extra": peaks["ours"],
                          "native_peak_extra": peaks["native"]}
    finally:
        dist.barrier()
        if rank == 0:
            shutil.rmtree(ours_dir, ignore_errors=True)
            shutil.rmtree(dcp_dir, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
