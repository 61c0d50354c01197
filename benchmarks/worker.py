"""The measurements of one backend (or every port) in a fresh process:
``python -m benchmarks.worker '<json>'``.

Prints one ``RESULT`` JSON line per case. Timings are the best of ``repeat`` runs, ours and the
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


def _nbytes(m: up.Block) -> int:
    return sum(int(p.size) * p.dtype.itemsize for p in m.params.distinct().values())


def warm(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory once and free it: on a VM the first
    touch of a page the host has not backed yet costs several times a later
    one, and would otherwise fall on whichever side runs first."""
    a = np.ones(nbytes // 4, np.float32)
    del a


def case_bulk(backend: str, spec: dict[str, Any], built: tuple[Any, up.Block]) -> dict[str, Any]:
    nat = NATIVES[backend]()
    net, m = built
    nbytes = _nbytes(m)

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
    res["nbytes"] = nbytes
    return res


def case_file(backend: str, spec: dict[str, Any], built: tuple[Any, up.Block]) -> dict[str, Any]:
    nat = NATIVES[backend]()
    net, m = built
    nbytes = _nbytes(m)
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


def case_init(backend: str, spec: dict[str, Any], built: tuple[Any, up.Block]) -> dict[str, Any]:
    nat = NATIVES[backend]()
    net, m = built
    nbytes = _nbytes(m)
    res = _timed_pair(lambda: m.initialize(up.init.Normal(0.0, 0.01), seed=0), lambda: nat.init(net, 0),
                      spec["repeat"], nbytes)
    res["nbytes"] = nbytes
    return res


def case_port(pair: str, spec: dict[str, Any], models: dict[str, up.Block]) -> dict[str, Any]:
    src_name, dst_name = pair.split("->")
    src, dst = models[src_name], models[dst_name]
    nbytes = _nbytes(src)
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


def run_backend(backend: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every case of one backend in this process; the 1 GiB model is built
    once and shared by bulk, file and init (each leaves it as it was)."""
    out = []
    cases = spec["cases"]
    if "list" in cases:
        out.append(_timed_case("list", backend, lambda: case_list(backend, spec)))
    big = [c for c in ("bulk", "file", "init") if c in cases]
    if big:
        built = NATIVES[backend]().build(spec["width"], spec["depth"])
        warm(2 * _nbytes(built[1]))
        fns = {"bulk": case_bulk, "file": case_file, "init": case_init}
        for c in big:
            out.append(_timed_case(c, backend, lambda c=c: fns[c](backend, spec, built)))  # type: ignore[operator]
    return out


def run_ports(pairs: list[str], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every port in this process, each model built once (seeded uniform
    values in the sources, so a port that copies nothing is caught)."""
    names = sorted({b for p in pairs for b in p.split("->")}, key=lambda b: ("torch", "jax", "tensorflow").index(b))
    models = {b: NATIVES[b]().build(spec["width"], spec["depth"])[1] for b in names}
    for b in {p.split("->")[0] for p in pairs}:
        models[b].initialize(up.init.Uniform(-1, 1), seed=0)
    warm(2 * _nbytes(models[names[0]]))
    return [_timed_case("port", p, lambda p=p: case_port(p, spec, models)) for p in pairs]


def _timed_case(case: str, backend: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # one failing case does not lose the others
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result.update(case=case, backend=backend, wall_s=time.perf_counter() - t)
    print("RESULT " + json.dumps(result), flush=True)
    gc.collect()
    return result


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    if spec["backend"] == "ports":
        run_ports(spec["pairs"], spec)
    else:
        run_backend(spec["backend"], spec)


if __name__ == "__main__":
    main(sys.argv[1:])
