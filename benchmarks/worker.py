"""One measurement in a fresh process: ``python -m benchmarks.worker '<json>'``.

Prints one JSON line. Timings are the best of ``repeat`` runs, ours and the
native code alternating; memory is the peak resident set of the first run
above the resident set just before it (``/proc/self/clear_refs`` resets the
peak), as a multiple of the model's bytes.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import unified_params as up

from ._natives import NATIVES

_KB = 1024


def _status() -> dict[str, int]:
    with open("/proc/self/status") as fh:
        text = fh.read()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * _KB for k in ("VmRSS", "VmHWM")}  # type: ignore[union-attr]


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_extra(fn: Callable[[], Any]) -> tuple[float, float | None]:
    """``(seconds, peak bytes above the starting resident set)`` of one call."""
    gc.collect()
    ok = _reset_peak()
    base = _status()["VmRSS"]
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = _status()["VmHWM"]
    del out
    gc.collect()
    return dt, (peak - base if ok else None)


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        del out
    return min(times)


def _timed_pair(ours: Callable[[], Any], native: Callable[[], Any], repeat: int, nbytes: int) -> dict[str, Any]:
    """First runs measure memory (ours first, in a fresh process), then the
    best of ``repeat`` alternating runs."""
    t_ours, m_ours = peak_extra(ours)
    t_native, m_native = peak_extra(native)
    to, tn = [t_ours], [t_native]
    for _ in range(repeat - 1):
        tn.append(best(native, 1))
        to.append(best(ours, 1))
    return {
        "ours_s": min(to),
        "native_s": min(tn),
        "peak_extra": None if m_ours is None else m_ours / nbytes,
        "native_peak_extra": None if m_native is None else m_native / nbytes,
    }


def _plain_arrays(block: up.Block) -> list[np.ndarray]:
    """Arrays of the same shapes and bytes as the model, touched once."""
    return [np.ones(p.shape, p.dtype) for p in block.params.distinct().values()]


def _folder() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def case_list(backend: str, spec: dict[str, Any]) -> dict[str, Any]:
    nat = NATIVES[backend]()
    out: dict[str, Any] = {}
    for shape_name, (width, depth) in (("deep", (8, spec["list_depth"])), ("wide", (spec["width"], 16))):
        net, m = nat.build(width, depth)

        def ours(m: up.Block = m) -> list[Any]:
            return [(n, p.shape, p.dtype) for n, p in m.params.items()]

        assert len(ours()) == len([x for x in nat.listing(net) if "batch_stats" not in str(x[0])])
        reps = spec["list_repeat"]
        to, tn = [], []
        for _ in range(3):
            tn.append(best(lambda net=net: nat.listing(net), reps) / reps)
            to.append(best(ours, reps) / reps)
        out[shape_name] = {"ours_s": min(to), "native_s": min(tn), "n_params": len(ours())}
        del net, m
        gc.collect()
    return out


def case_bulk(backend: str, spec: dict[str, Any]) -> dict[str, Any]:
    nat = NATIVES[backend]()
    net, m = nat.build(spec["width"], spec["depth"])
    nbytes = sum(int(p.size) * p.dtype.itemsize for p in m.params.distinct().values())

    def ours() -> None:
        m.load_state(m.state())

    def native() -> None:
        nat.write(net, nat.read(net))

    res = _timed_pair(ours, native, spec["repeat"], nbytes)
    src = _plain_arrays(m)

    def plain() -> None:  # read: a new copy of every array; write: copy it back in place
        copies = [a.copy() for a in src]
        for a, c in zip(src, copies):
            np.copyto(a, c)

    res["plain_s"] = best(plain, spec["repeat"])
    res["ours_read_s"] = best(lambda: m.state(), spec["repeat"])
    st = m.state()
    res["ours_write_s"] = best(lambda: m.load_state(st), spec["repeat"])
    res["plain_read_s"] = best(lambda: [a.copy() for a in src], spec["repeat"])
    res["nbytes"] = nbytes
    return res


def case_file(backend: str, spec: dict[str, Any]) -> dict[str, Any]:
    nat = NATIVES[backend]()
    net, m = nat.build(spec["width"], spec["depth"])
    nbytes = sum(int(p.size) * p.dtype.itemsize for p in m.params.distinct().values())
    d = tempfile.mkdtemp(dir=_folder())
    f_ours, f_native = os.path.join(d, "ours.safetensors"), os.path.join(d, "native.safetensors")
    try:
        save = _timed_pair(lambda: up.save(m, f_ours), lambda: nat.save(net, f_native), spec["repeat"], nbytes)
        load = _timed_pair(lambda: up.load(m, f_ours), lambda: nat.load(net, f_native), spec["repeat"], nbytes)
    finally:
        for f in (f_ours, f_native):
            if os.path.exists(f):
                os.unlink(f)
        os.rmdir(d)
    return {"save": save, "load": load, "nbytes": nbytes, "folder": _folder()}


def case_init(backend: str, spec: dict[str, Any]) -> dict[str, Any]:
    nat = NATIVES[backend]()
    net, m = nat.build(spec["width"], spec["depth"])
    nbytes = sum(int(p.size) * p.dtype.itemsize for p in m.params.distinct().values())
    res = _timed_pair(lambda: m.initialize(up.init.Normal(0.0, 0.01), seed=0), lambda: nat.init(net, 0),
                      spec["repeat"], nbytes)
    res["nbytes"] = nbytes
    return res


def case_port(backend: str, spec: dict[str, Any]) -> dict[str, Any]:
    src_name, dst_name = backend.split("->")
    _, src = NATIVES[src_name]().build(spec["width"], spec["depth"])
    _, dst = NATIVES[dst_name]().build(spec["width"], spec["depth"])
    src.initialize(up.init.Uniform(-1, 1), seed=0)
    nbytes = sum(int(p.size) * p.dtype.itemsize for p in src.params.distinct().values())
    t_ours, m_ours = peak_extra(lambda: up.port(src, dst))
    views = [p.read(copy=False) for p in src.params.distinct().values()]  # zero-copy where the framework allows

    def plain() -> list[np.ndarray]:
        return [np.array(v, copy=True) for v in views]

    t_plain, m_plain = peak_extra(plain)
    to, tp = [t_ours], [t_plain]
    for _ in range(spec["repeat"] - 1):
        tp.append(best(plain, 1))
        to.append(best(lambda: up.port(src, dst), 1))
    a = src.params.distinct()
    b = dst.params.distinct()
    for (na, pa), (nb, pb) in zip(a.items(), b.items()):
        assert np.array_equal(pa.read(copy=False), pb.read(copy=False)), (na, nb)
    return {"ours_s": min(to), "plain_s": min(tp), "nbytes": nbytes,
            "peak_extra": None if m_ours is None else m_ours / nbytes,
            "plain_peak_extra": None if m_plain is None else m_plain / nbytes}


CASES = {"list": case_list, "bulk": case_bulk, "file": case_file, "init": case_init, "port": case_port}


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    t = time.perf_counter()
    result = CASES[spec["case"]](spec["backend"], spec)
    result.update(case=spec["case"], backend=spec["backend"], wall_s=time.perf_counter() - t)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
