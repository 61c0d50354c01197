"""The measurements of one backend (or every port) in a fresh process:
``python -m benchmarks.worker '<json>'``.

Prints one ``RESULT`` JSON line per case. Timings are rounds of alternating
runs (native, ours, native, ours, ...; at least 3): each ratio is the median
of the rounds' ratios, with their min and max, so that a machine that slows
down midway moves both sides of a round alike; every time of every round is
in the result. Memory is the peak resident set of the first run above the
resident set just before it (``/proc/self/clear_refs`` resets the peak), as a
multiple of the model's bytes. Each case records the load average before and
after it.
"""

from __future__ import annotations

import gc
import json
import os
import re
import statistics
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


def once(fn: Callable[[], Any], reps: int = 1) -> float:
    """Seconds per call of ``reps`` back-to-back calls."""
    gc.collect()
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    dt = time.perf_counter() - t
    del out
    return dt / reps


def reps_for(fn: Callable[[], Any], budget: float) -> int:
    """Calls per timed sample so that a sample lasts about ``budget`` seconds
    (fast calls are timed in loops; one call is enough for slow ones)."""
    t = once(fn)
    return max(1, min(100_000, int(budget / max(t, 1e-7))))


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def rounds(sides: dict[str, Callable[[], Any]], n: int, budget: float = 0.0) -> dict[str, Any]:
    """``n`` rounds, each running every side once in the given order
    (native first); per-call seconds of each side in each round, their
    medians, and per-round ratios of every side to the first one."""
    reps = {k: reps_for(f, budget) if budget else 1 for k, f in sides.items()}
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(n):
        for k, f in sides.items():
            times[k].append(once(f, reps[k]))
    base = next(iter(sides))
    out: dict[str, Any] = {"rounds": n, "times": times, "reps": reps,
                           **{f"{k}_s": statistics.median(v) for k, v in times.items()}}
    for k in sides:
        if k != base:
            out[f"{k}_vs_{base}"] = _stats([a / b for a, b in zip(times[k], times[base]) if b > 0] or [float("nan")])
    return out


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _timed_pair(ours: Callable[[], Any], native: Callable[[], Any], repeat: int, nbytes: int) -> dict[str, Any]:
    """First runs measure memory (ours first, in a fresh process), then
    ``repeat`` alternating rounds (native, ours)."""
    _, m_ours = peak_extra(ours)
    _, m_native = peak_extra(native)
    res = rounds({"native": native, "ours": ours}, repeat)
    res.update(peak_extra=None if m_ours is None else m_ours / nbytes,
               native_peak_extra=None if m_native is None else m_native / nbytes)
    return res


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
        res = rounds({"native": lambda net=net: nat.listing(net), "ours": ours}, spec["repeat"], spec["budget"])
        out[shape_name] = {**res, "n_params": len(ours())}
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

    src = _plain_arrays(m)

    def plain() -> None:  # read: a new copy of every array; write: copy it back in place
        copies = [a.copy() for a in src]
        for a, c in zip(src, copies):
            np.copyto(a, c)

    _, m_ours = peak_extra(ours)
    _, m_native = peak_extra(native)
    res = rounds({"native": native, "ours": ours, "plain": plain}, spec["repeat"])
    res["ours_vs_plain"] = _stats([o / p for o, p in zip(res["times"]["ours"], res["times"]["plain"])])
    res.update(peak_extra=None if m_ours is None else m_ours / nbytes,
               native_peak_extra=None if m_native is None else m_native / nbytes, nbytes=nbytes)
    return res


def _undo_of(fn: Callable[[], Any], nbytes: int) -> dict[str, Any]:
    """Where one more run's undo kept the old values (``unified_params._undo``),
    as multiples of the model's bytes: ``undo_file`` in its temporary file
    (page cache, not resident), ``undo_held`` in memory (resident: part of
    the peak), with the threshold that chose."""
    from unified_params import _limits, _transaction

    made: list[Any] = []
    plain = _transaction.Undo

    class Recorded(plain):  # type: ignore[misc, valid-type]
        def __init__(self, total: int) -> None:
            super().__init__(total)
            made.append(self)

    _transaction.Undo = Recorded  # type: ignore[misc]
    try:
        fn()
    finally:
        _transaction.Undo = plain  # type: ignore[misc]
    return {"undo_file": sum(u.spilled for u in made) / nbytes, "undo_held": sum(u.held for u in made) / nbytes,
            "undo_spill_bytes": _limits.UNDO_SPILL_BYTES}


def case_file(backend: str, spec: dict[str, Any], built: tuple[Any, up.Block]) -> dict[str, Any]:
    nat = NATIVES[backend]()
    net, m = built
    nbytes = _nbytes(m)
    d = tempfile.mkdtemp(dir=_folder())
    f_ours, f_native = os.path.join(d, "ours.safetensors"), os.path.join(d, "native.safetensors")
    try:
        save = _timed_pair(lambda: up.save(m, f_ours), lambda: nat.save(net, f_native), spec["repeat"], nbytes)
        load = _timed_pair(lambda: up.load(m, f_ours), lambda: nat.load(net, f_native), spec["repeat"], nbytes)
        load.update(_undo_of(lambda: up.load(m, f_ours), nbytes))
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
    _, m_ours = peak_extra(lambda: up.port(src, dst))
    views = [p.read(copy=False) for p in src.params.distinct().values()]  # zero-copy where the framework allows

    def plain() -> list[np.ndarray]:
        return [np.array(v, copy=True) for v in views]

    _, m_plain = peak_extra(plain)
    res = rounds({"plain": plain, "ours": lambda: up.port(src, dst)}, spec["repeat"])
    a = src.params.distinct()
    b = dst.params.distinct()
    for (na, pa), (nb, pb) in zip(a.items(), b.items()):
        assert np.array_equal(pa.read(copy=False), pb.read(copy=False)), (na, nb)
    res.update(nbytes=nbytes, peak_extra=None if m_ours is None else m_ours / nbytes,
               plain_peak_extra=None if m_plain is None else m_plain / nbytes)
    return res


def case_scale(backend: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Issue 13 item 6: models of ``n`` small parameters (``n / 2`` dense
    layers of 2 x 2 and a bias): listing, one parameter's read and write by
    name, and save, load and port, each against the native equivalent; the
    per-call times by size show whether the curve is flat."""
    nat = NATIVES[backend]()
    folder = tempfile.mkdtemp(dir=_folder())
    out: dict[str, Any] = {"sizes": {}}
    deadline = time.perf_counter() + spec.get("scale_budget_s", 300.0)
    try:
        for n in spec["sizes"]:
            if time.perf_counter() > deadline:
                out["sizes"][str(n)] = {"error": "skipped: the case's time budget was spent on smaller sizes"}
                continue
            t0 = time.perf_counter()
            net, m = nat.small(n)
            net2, m2 = nat.small(n)
            build_s = time.perf_counter() - t0
            names = [k for k, p in m.params.items() if len(p.shape) == 2]
            k = len(names) // 2  # a layer in the middle
            name = names[k]
            f_ours, f_nat = os.path.join(folder, "ours.safetensors"), os.path.join(folder, "native.safetensors")
            nat.save(net, f_nat)
            up.save(m, f_ours)
            r, b, ld = spec["repeat"], spec["budget"], load_avg()

            def write_ours(m: up.Block = m, name: str = name) -> None:
                m.params[name][0, 0] = 1.0

            res = {
                "list": rounds({"native": lambda net=net: nat.listing(net),
                                "ours": lambda m=m: list(m.params.items())}, r, b),
                "read": rounds({"native": lambda net=net, k=k: nat.read_one(net, k),
                                "ours": lambda m=m, name=name: m.params[name].value}, r, b),
                "write": rounds({"native": lambda net=net, k=k: nat.write_one(net, k), "ours": write_ours}, r, b),
                "save": rounds({"native": lambda net=net: nat.save(net, f_nat),
                                "ours": lambda m=m: up.save(m, f_ours)}, r, b),
                "load": rounds({"native": lambda net=net: nat.load(net, f_nat),
                                "ours": lambda m=m: up.load(m, f_ours)}, r, b),
                "port": rounds({"native": lambda net=net, net2=net2: nat.copy_state(net, net2),
                                "ours": lambda m=m, m2=m2: up.port(m, m2)}, r, b),
            }
            out["sizes"][str(n)] = {**res, "n_params": len(m.params), "name": name, "build_s": build_s,
                                    "load_before": ld, "load_after": load_avg()}
            del net, m, net2, m2
            gc.collect()
    finally:
        for f in os.listdir(folder):
            os.unlink(os.path.join(folder, f))
        os.rmdir(folder)
    return out


def run_backend(backend: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every case of one backend in this process; the 1 GiB model is built
    once and shared by bulk, file and init (each leaves it as it was)."""
    out = []
    cases = spec["cases"]
    if "list" in cases:
        out.append(_timed_case("list", backend, lambda: case_list(backend, spec)))
    if "scale" in cases:
        out.append(_timed_case("scale", backend, lambda: case_scale(backend, spec)))
    if "dist" in cases and backend == "torch":
        from benchmarks._distributed import case_dist

        out.append(_timed_case("dist", backend, lambda: case_dist(backend, spec)))
    if "real" in cases:
        from benchmarks._real import case_real

        out.append(_timed_case("real", backend, lambda: case_real(backend, spec, rounds)))
    big = [c for c in ("bulk", "file", "init", "sharded") if c in cases]
    if big:
        built = NATIVES[backend]().build(spec["width"], spec["depth"])
        warm(2 * _nbytes(built[1]))
        from benchmarks._sharded import case_sharded

        fns = {"bulk": case_bulk, "file": case_file, "init": case_init, "sharded": case_sharded}
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
    before = load_avg()
    try:
        result = fn()
    except Exception as exc:  # one failing case does not lose the others
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result.update(case=case, backend=backend, wall_s=time.perf_counter() - t, load_before=before,
                  load_after=load_avg())
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
