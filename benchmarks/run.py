"""The benchmark command: ``python -m benchmarks`` (or ``python benchmarks/run.py``).

Each backend's measurements run in one fresh subprocess
(``benchmarks.worker``), which builds the 1 GiB model once; the ports run in
another (MXNet never meets TensorFlow or JAX: it runs under its own
interpreter, ``--mxnet-python``). Peak memory is measured per operation. Results are ratios measured side by
side in the same process; the table is printed and written as JSON to
``benchmarks/results/`` (and, for a full run, ``benchmarks/latest.json``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
BACKENDS = ("torch", "tensorflow", "jax", "mxnet")
PORTS = ("torch->jax", "torch->tensorflow", "jax->torch")
MODULES = {"torch": "unified_params_torch", "tensorflow": "unified_params_tensorflow",
           "jax": "unified_params_jax", "mxnet": "unified_params_mxnet"}

#: Targets of the issue: (what, ratio it must not exceed).
TARGETS = {"list": 1.2, "bulk": 1.2, "save": 1.1, "load": 1.1, "port": 1.5, "init": 1.5, "memory": 1.1}


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        return {"width": 512, "depth": 16, "list_depth": 100, "repeat": 2, "list_repeat": 3}
    # 64 layers of 2048 x 2048 float32: 1 GiB (plus 512 KiB of biases), in
    # storages of 16 MiB (what streaming holds at a time scales with them)
    return {"width": 2048, "depth": 64, "list_depth": 1000, "repeat": args.repeat, "list_repeat": 5}


def _python_for(backend: str, args: argparse.Namespace) -> str | None:
    if backend == "mxnet" or "mxnet" in backend:
        return args.mxnet_python if args.mxnet_python and os.path.exists(args.mxnet_python) else None
    return sys.executable


def _available(backend: str, python: str) -> bool:
    mods = [MODULES[b] for b in backend.split("->")]
    if python == sys.executable:
        return all(importlib.util.find_spec(m) is not None for m in mods)
    code = f"import importlib.util,sys; sys.exit(0 if all(importlib.util.find_spec(m) for m in {mods!r}) else 1)"
    return subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True).returncode == 0


def _run_worker(python: str, spec: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    """Run one worker; its ``RESULT`` lines (those it printed before a
    timeout or a crash), plus an error line if it did not finish cleanly."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore")
    t = time.perf_counter()
    try:
        proc = subprocess.run([python, "-m", "benchmarks.worker", json.dumps(spec)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        stdout, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err, code = f"timed out after {timeout:.0f} s", None
    out = [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    if code != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        out.append({"error": f"exit {code} after {time.perf_counter() - t:.0f} s: {tail}"})
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (measurement, backend): the ratios the README reports."""
    out: list[dict[str, Any]] = []
    for r in results:
        case, be = r["case"], r["backend"]
        if "error" in r:
            out.append({"what": case, "backend": be, "error": r["error"]})
            continue
        if case == "list":
            for shape in ("deep", "wide"):
                x = r[shape]
                out.append({"what": f"list {shape} ({x['n_params']} params)", "backend": be, "target": TARGETS["list"],
                            "vs_native": _ratio(x["ours_s"], x["native_s"]), "ours_s": x["ours_s"]})
        elif case == "bulk":
            out.append({"what": "read+write all", "backend": be, "target": TARGETS["bulk"],
                        "vs_plain": _ratio(r["ours_s"], r["plain_s"]), "vs_native": _ratio(r["ours_s"], r["native_s"]),
                        "peak_extra": r["peak_extra"], "native_peak_extra": r["native_peak_extra"],
                        "ours_s": r["ours_s"]})
        elif case == "file":
            for op in ("save", "load"):
                x = r[op]
                out.append({"what": f"{op} (safetensors)", "backend": be, "target": TARGETS[op],
                            "vs_native": _ratio(x["ours_s"], x["native_s"]), "peak_extra": x["peak_extra"],
                            "native_peak_extra": x["native_peak_extra"], "ours_s": x["ours_s"]})
        elif case == "init":
            out.append({"what": "seeded init Normal", "backend": be, "target": TARGETS["init"],
                        "vs_native": _ratio(r["ours_s"], r["native_s"]), "peak_extra": r["peak_extra"],
                        "native_peak_extra": r["native_peak_extra"], "ours_s": r["ours_s"]})
        elif case == "port":
            out.append({"what": "port", "backend": be, "target": TARGETS["port"],
                        "vs_plain": _ratio(r["ours_s"], r["plain_s"]), "peak_extra": r["peak_extra"],
                        "ours_s": r["ours_s"]})
    return out


def _fmt(x: Any, suffix: str = "x") -> str:
    return "-" if x is None else f"{x:.2f}{suffix}"


def table(rows_: list[dict[str, Any]]) -> str:
    head = ("measurement", "backend", "vs native", "vs plain copy", "target", "peak extra mem", "(native's)", "ours")
    lines = [head]
    for r in rows_:
        if "error" in r:
            lines.append((r["what"], r["backend"], "error: " + r["error"][:60], "", "", "", "", ""))
            continue
        lines.append((r["what"], r["backend"], _fmt(r.get("vs_native")), _fmt(r.get("vs_plain")),
                      f"<= {r['target']}x", _fmt(r.get("peak_extra")), _fmt(r.get("native_peak_extra")),
                      _fmt(r.get("ours_s"), " s")))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 MiB models and a 100-layer deep model (smoke test)")
    ap.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable; default: every installed one")
    ap.add_argument("--case", action="append", choices=("list", "bulk", "file", "init", "port"),
                    help="repeatable; default: all")
    ap.add_argument("--repeat", type=int, default=2,
                    help="timed runs per 1 GiB measurement (best is kept; listings take the best of 3 x 5)")
    ap.add_argument("--mxnet-python", default=os.environ.get("UP_MXNET_PYTHON", "/tmp/venv-mx/bin/python"),
                    help="the interpreter with MXNet (it never shares a process with TensorFlow or JAX)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON results")
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds per worker (one backend, or the ports)")
    args = ap.parse_args(argv)
    spec = _spec(args)
    backends = args.backend or list(BACKENDS)
    cases = args.case or ["list", "bulk", "file", "init", "port"]
    per_backend = [c for c in cases if c != "port"]
    jobs: list[tuple[str, dict[str, Any]]] = []
    if per_backend:
        jobs += [(b, {**spec, "backend": b, "cases": per_backend}) for b in backends]
    pairs = [p for p in PORTS if all(b in backends for b in p.split("->"))] if "port" in cases else []
    if pairs:
        jobs.append(("ports", {**spec, "backend": "ports", "pairs": pairs}))
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name, job in jobs:
        python = sys.executable if name == "ports" else _python_for(name, args)
        wanted = pairs if name == "ports" else [name]
        if python is None or not all(_available(w, python) for w in wanted):
            print(f"  skip {name}: not installed", file=sys.stderr)
            continue
        what = ", ".join(pairs) if name == "ports" else f"{name}: {', '.join(per_backend)}"
        print(f"  {what} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        for r in _run_worker(python, job, args.timeout):
            r.setdefault("case", "port" if name == "ports" else "?")
            r.setdefault("backend", name)
            results.append(r)
        print(f"    {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    table_rows = rows(results)
    print(table(table_rows))
    doc = {
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
                   f"Python {platform.python_version()}",
        "spec": spec, "wall_s": time.perf_counter() - t0, "targets": TARGETS, "rows": table_rows, "raw": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "") + ".json"
    (args.out / name).write_text(json.dumps(doc, indent=1))
    if not args.quick and args.backend is None and args.case is None:
        (HERE / "latest.json").write_text(json.dumps(doc, indent=1))
    print(f"\n{len(results)} measurements in {doc['wall_s']:.0f} s; JSON: {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make the repository root importable
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
