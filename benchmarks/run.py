"""The benchmark command: ``python -m benchmarks`` (or ``python benchmarks/run.py``).

Each backend's measurements run in one fresh subprocess
(``benchmarks.worker``), which builds the 1 GiB model once; the ports run in
another (MXNet never meets TensorFlow or JAX: it runs under its own
interpreter, ``--mxnet-python``). Peak memory is measured per operation.

Every ratio is the median of at least 3 rounds of alternating runs (native,
ours, native, ours, ...), printed with the min and max of the rounds'
ratios; the load average before each case is recorded and printed, since
the same command moves by 2-5x on a busy machine. The table is printed and
written as JSON to ``benchmarks/results/``; a run that is not ``--quick``
also updates ``benchmarks/latest.json`` (its rows replace the rows of the
same measurement and backend, so backends can be run one at a time) and
the markdown table ``docs/benchmarks-table.md`` made from it.
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
BACKENDS = ("numpy", "torch", "tensorflow", "jax", "mxnet")
PORTS = ("torch->jax", "torch->tensorflow", "jax->torch")
MODULES = {"numpy": "unified_params", "torch": "unified_params_torch", "tensorflow": "unified_params_tensorflow",
           "jax": "unified_params_jax", "mxnet": "unified_params_mxnet"}
FRAMEWORKS = {"numpy": "numpy", "torch": "torch", "tensorflow": "keras", "jax": "flax", "mxnet": "mxnet"}
CASES = ("list", "bulk", "file", "init", "scale", "port", "real", "sharded", "dist")
DOCS_TABLE = ROOT / "docs" / "benchmarks-table.md"

#: Targets (issues 13 and 18): the ratio a row must not exceed. ``scale
#: read``/``scale write`` are held to flatness instead: the per-call time at
#: the largest size over the time at the smallest.
TARGETS = {"list": 1.2, "bulk": 1.5, "save": 1.1, "load": 1.1, "port": 1.5, "init": 1.2, "memory": 1.1,
           "scale list": 1.2, "scale save": 1.5, "scale load": 1.5, "scale port": 1.5, "flat": 2.0}
SCALE_OPS = ("list", "read", "write", "save", "load", "port")


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else None
    repeat = max(3, args.repeat)
    if args.quick:  # small models, short samples: the smoke test's budget
        return {"width": 512, "depth": 16, "list_depth": 100, "repeat": 3, "budget": 0.002, "quick": True,
                "sizes": sizes or [10, 100], "scale_budget_s": 60.0}
    # 64 layers of 2048 x 2048 float32: 1 GiB (plus 512 KiB of biases), in
    # storages of 16 MiB (what streaming holds at a time scales with them)
    return {"width": args.width or 2048, "depth": args.depth or 64, "list_depth": 1000, "repeat": repeat,
            "budget": 0.02, "sizes": sizes or [10, 100, 1000, 10000], "scale_budget_s": 400.0}


def _python_for(backend: str, args: argparse.Namespace) -> str | None:
    if backend == "mxnet" or "mxnet" in backend:
        return args.mxnet_python if args.mxnet_python and os.path.exists(args.mxnet_python) else None
    return sys.executable


def _available(backend: str, python: str) -> bool:
    mods = [m for b in backend.split("->") for m in (MODULES[b], FRAMEWORKS[b])]
    if python == sys.executable and all(importlib.util.find_spec(m) is not None for m in mods):
        return True
    code = f"import importlib.util,sys; sys.exit(0 if all(importlib.util.find_spec(m) for m in {mods!r}) else 1)"
    return subprocess.run([python, "-c", code], cwd=ROOT, env=_env(), capture_output=True).returncode == 0


def _env() -> dict[str, str]:
    """The workers' environment: this checkout and its adapters first on the
    path (as ``/work/bin/uptest`` sets it), quiet frameworks, JAX on CPU."""
    paths = [str(ROOT)] + [str(ROOT / "backends" / b) for b in BACKENDS if (ROOT / "backends" / b).is_dir()]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore",
                KERAS_BACKEND="tensorflow", PYTHONPATH=os.pathsep.join(paths))


def _run_worker(python: str, spec: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    """Run one worker; its ``RESULT`` lines (those it printed before a
    timeout or a crash), plus an error line if it did not finish cleanly."""
    env = _env()
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


def _r(st: dict[str, float] | None) -> tuple[float | None, list[float] | None]:
    """A ratio (median of the rounds') and its spread [min, max]."""
    return (None, None) if not st else (st["median"], [st["min"], st["max"]])


def _load(r: dict[str, Any]) -> float | None:
    la = r.get("load_before") or []
    return la[0] if la else None


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (measurement, backend): the ratios the docs report, each
    the median of its rounds with the spread, and the 1-minute load average
    before the case."""
    out: list[dict[str, Any]] = []
    for r in results:
        case, be = r["case"], r["backend"]
        base = {"backend": be, "load": _load(r), "when": r.get("when")}
        if "error" in r:
            out.append({**base, "what": case, "error": r["error"]})
            continue
        if case == "list":
            for shape in ("deep", "wide"):
                x = r[shape]
                v, sp = _r(x.get("ours_vs_native"))
                out.append({**base, "what": f"list {shape} ({x['n_params']} params)", "target": TARGETS["list"],
                            "vs_native": v, "vs_native_spread": sp, "ours_s": x["ours_s"], "rounds": x["rounds"]})
        elif case == "bulk":
            v, sp = _r(r.get("ours_vs_native"))
            vp, spp = _r(r.get("ours_vs_plain"))
            out.append({**base, "what": "read+write all", "target": TARGETS["bulk"], "vs_plain": vp,
                        "vs_plain_spread": spp, "vs_native": v, "vs_native_spread": sp,
                        "peak_extra": r["peak_extra"], "native_peak_extra": r["native_peak_extra"],
                        "ours_s": r["ours_s"], "rounds": r["rounds"]})
        elif case == "file":
            for op in ("save", "load"):
                x = r[op]
                v, sp = _r(x.get("ours_vs_native"))
                out.append({**base, "what": f"{op} (safetensors)", "target": TARGETS[op], "vs_native": v,
                            "vs_native_spread": sp, "peak_extra": x["peak_extra"],
                            "native_peak_extra": x["native_peak_extra"], "ours_s": x["ours_s"],
                            "rounds": x["rounds"],
                            **{k: x[k] for k in ("undo_file", "undo_held") if k in x}})  # where the undo went
        elif case == "init":
            v, sp = _r(r.get("ours_vs_native"))
            out.append({**base, "what": "seeded init Normal", "target": TARGETS["init"], "vs_native": v,
                        "vs_native_spread": sp, "peak_extra": r["peak_extra"],
                        "native_peak_extra": r["native_peak_extra"], "ours_s": r["ours_s"], "rounds": r["rounds"]})
        elif case == "port":
            v, sp = _r(r.get("ours_vs_plain"))
            out.append({**base, "what": "port", "target": TARGETS["port"], "vs_plain": v, "vs_plain_spread": sp,
                        "peak_extra": r["peak_extra"], "ours_s": r["ours_s"], "rounds": r["rounds"]})
        elif case == "scale":
            out += _scale_rows(r, base)
        elif case == "sharded":  # issue 15: a sharded directory (benchmarks/_sharded.py)
            from benchmarks._sharded import rows as sharded_rows

            out += sharded_rows(r, base, TARGETS["load"])
        elif case == "dist":  # issue 17: a sharded model across 2 processes, against DCP and Orbax
            from benchmarks._distributed import rows as dist_rows

            out += dist_rows(r, base, TARGETS)
        elif case == "real":  # issue 14: up.wrap + listing of real models
            for name, x in r.get("models", {}).items():
                v, sp = _r(x.get("ours_vs_native"))
                out.append({**base, "what": f"wrap+list {name} ({x['n_entries']} entries)",
                            "target": TARGETS["list"], "vs_native": v, "vs_native_spread": sp,
                            "ours_s": x["ours_s"], "rounds": x["rounds"]})
    return out


def _scale_rows(r: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    sizes = r["sizes"]
    ok = [n for n, x in sizes.items() if "error" not in x]
    out = []
    for op in SCALE_OPS:
        for n, x in sizes.items():
            if "error" in x:
                out.append({**base, "what": f"scale {op} n={n}", "error": x["error"]})
                continue
            v, sp = _r(x[op].get("ours_vs_native"))
            largest = bool(ok) and n == max(ok, key=int)
            target = TARGETS.get(f"scale {op}") if (op == "list" or largest) else None
            out.append({**base, "what": f"scale {op} n={n}", "target": target, "vs_native": v,
                        "vs_native_spread": sp, "ours_s": x[op]["ours_s"], "native_s": x[op]["native_s"],
                        "rounds": x[op]["rounds"], "load": (x.get("load_before") or [None])[0],
                        "headline": largest})
        if len(ok) >= 2 and op in ("read", "write"):  # O(1): time at the largest size over the smallest
            lo, hi = min(ok, key=int), max(ok, key=int)
            out.append({**base, "what": f"scale {op}: n={hi} / n={lo} (flat: O(1))", "target": TARGETS["flat"],
                        "flat": sizes[hi][op]["ours_s"] / sizes[lo][op]["ours_s"], "headline": True,
                        "native_flat": sizes[hi][op]["native_s"] / sizes[lo][op]["native_s"]})
    return out


def _fmt(x: Any, suffix: str = "x") -> str:
    return "-" if x is None else f"{x:.2f}{suffix}"


def _fmt_ratio(v: float | None, spread: list[float] | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}x [{spread[0]:.2f}-{spread[1]:.2f}]" if spread else f"{v:.2f}x"


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e6:.0f} us" if x < 1e-3 else f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


HEAD = ("measurement", "backend", "vs native [min-max]", "vs plain copy [min-max]", "target",
        "peak extra mem", "(native's)", "ours", "load")


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    if "error" in r:
        return (r["what"], r["backend"], "error: " + r["error"][:60], "", "", "", "", "", _fmt(r.get("load"), ""))
    if "flat" in r:
        return (r["what"], r["backend"], f"ours {r['flat']:.2f}x (native {r['native_flat']:.2f}x)", "",
                _fmt_target(r), "", "", "", "")
    return (r["what"], r["backend"], _fmt_ratio(r.get("vs_native"), r.get("vs_native_spread")),
            _fmt_ratio(r.get("vs_plain"), r.get("vs_plain_spread")), _fmt_target(r),
            _fmt(r.get("peak_extra")), _fmt(r.get("native_peak_extra")), _fmt_s(r.get("ours_s")),
            _fmt(r.get("load"), ""))


def _fmt_target(r: dict[str, Any]) -> str:
    return "" if r.get("target") is None else f"<= {r['target']}x"


def _main_row(r: dict[str, Any]) -> bool:
    """Rows of the main table: all but the scale case's, of which the
    largest size and the flatness of read and write (the curves hold the rest)."""
    return not r["what"].startswith("scale ") or bool(r.get("headline")) or "error" in r


def table(rows_: list[dict[str, Any]]) -> str:
    lines = [HEAD] + [_cells(r) for r in rows_ if _main_row(r)]
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(HEAD))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    curves = curve_tables(rows_)
    return "\n".join(text) + ("\n\n" + curves if curves else "")


def curve_tables(rows_: list[dict[str, Any]]) -> str:
    """Per backend, the scaling curve: ours per call (and the ratio to
    native) by model size, one line per operation, so flatness shows."""
    by_be: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for r in rows_:
        w = r["what"]
        if w.startswith("scale ") and " n=" in w and "flat" not in r and "error" not in r:
            op, n = w[len("scale "):].split(" n=")
            by_be.setdefault(r["backend"], {})[(op, n)] = r
    out = []
    for be, cells in by_be.items():
        sizes = sorted({n for _, n in cells}, key=int)
        head = ["op"] + [f"n={n}" for n in sizes]
        lines = [head]
        for op in SCALE_OPS:
            row = [op]
            for n in sizes:
                c = cells.get((op, n))
                row.append("-" if c is None else ("error" if "error" in c else
                           f"{_fmt_s(c['ours_s'])} ({c['vs_native']:.2f}x)"))
            lines.append(row)
        widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
        loads = sorted({c["load"] for c in cells.values() if c.get("load") is not None})
        title = f"scale ({be}): ours per call (ratio to native, median of rounds)"
        if loads:
            title += f"; load {loads[0]:.2f}-{loads[-1]:.2f}"
        out.append(title)
        out += ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in lines]
        out.append("")
    return "\n".join(out).rstrip()


def markdown(doc: dict[str, Any]) -> str:
    """The markdown table of ``latest.json`` (``docs/benchmarks-table.md``)."""
    rows_ = doc["rows"]
    lines = ["<!-- generated by `python -m benchmarks` from benchmarks/latest.json; do not edit -->",
             "# Benchmark results", "",
             f"Machine: {doc.get('machine', '?')}. Each ratio is the median of at least 3 rounds of "
             "alternating runs (native, ours, ...), with the min and max of the rounds' ratios in brackets; "
             "`load` is the 1-minute load average before the case (the machine has "
             f"{os.cpu_count()} cores; above that, the numbers move).", "",
             "| " + " | ".join(HEAD + ("when",)) + " |", "|" + "---|" * (len(HEAD) + 1)]
    for r in rows_:
        if not _main_row(r):
            continue
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(r) + (str(r.get("when") or ""),)) + " |")
    curves = curve_tables(rows_)
    if curves:
        lines += ["", "## Scaling with the number of parameters (issue 13)", "", "```", curves, "```"]
    return "\n".join(lines) + "\n"


def merge_latest(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc``'s rows replace those of the same measurement and backend in
    the file at ``path``; the others stay, each with its own date and load."""
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    keep_raw = [r for r in old.get("raw", []) if "when" in r
                and (r.get("case"), r.get("backend")) not in {(x.get("case"), x.get("backend")) for x in doc["raw"]}]
    raw = keep_raw + doc["raw"]
    order = {b: i for i, b in enumerate(BACKENDS + tuple(PORTS))}
    raw.sort(key=lambda r: (CASES.index(r["case"]) if r.get("case") in CASES else 99,
                            order.get(r.get("backend"), 99)))
    merged = dict(doc, raw=raw, rows=rows(raw), runs=(old.get("runs") or [])[-20:] + [
        {"command": doc["command"], "when": doc["when"], "load": doc["load"], "wall_s": doc["wall_s"]}])
    return merged


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 MiB models, a 100-layer deep model, scale 10 and 100 "
                    "(smoke test); writes no latest.json")
    ap.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable; default: every installed one")
    ap.add_argument("--case", action="append", choices=CASES, help="repeatable; default: all")
    ap.add_argument("--repeat", type=int, default=3, help="alternating rounds per measurement (at least 3)")
    ap.add_argument("--width", type=int, default=0, help="width of the big model's layers (default 2048); "
                    "with --width or --depth the run is a trial: it writes no latest.json")
    ap.add_argument("--depth", type=int, default=0, help="layers of the big model (default 64: 1 GiB)")
    ap.add_argument("--sizes", default="", help="comma-separated parameter counts of the scale case "
                    "(default 10,100,1000,10000)")
    default_mx = next((p for p in ("/work/main/.tox/mxnet/bin/python", "/tmp/venv-mx/bin/python")
                       if os.path.exists(p)), "")
    ap.add_argument("--mxnet-python", default=os.environ.get("UP_MXNET_PYTHON", default_mx),
                    help="the interpreter with MXNet (it never shares a process with TensorFlow or JAX)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON results")
    ap.add_argument("--latest", type=Path, default=HERE / "latest.json",
                    help="the JSON a full run updates (rows replaced per measurement and backend)")
    ap.add_argument("--docs-table", type=Path, default=DOCS_TABLE, help="the markdown table made from --latest")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per worker (one backend, or the ports)")
    args = ap.parse_args(argv)
    spec = _spec(args)
    backends = args.backend or list(BACKENDS)
    cases = args.case or list(CASES)
    per_backend = [c for c in cases if c != "port"]
    jobs: list[tuple[str, dict[str, Any]]] = []
    if per_backend:
        jobs += [(b, {**spec, "backend": b, "cases": per_backend}) for b in backends]
    pairs = [p for p in PORTS if all(b in backends for b in p.split("->"))] if "port" in cases else []
    if pairs:
        jobs.append(("ports", {**spec, "backend": "ports", "pairs": pairs}))
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    load0 = list(os.getloadavg())
    print(f"  load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} on {os.cpu_count()} cores",
          file=sys.stderr, flush=True)
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
            r["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            results.append(r)
        print(f"    {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    table_rows = rows(results)
    print(table(table_rows))
    doc = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
                   f"Python {platform.python_version()}",
        "load": {"before": load0, "after": list(os.getloadavg())},
        "spec": spec, "wall_s": time.perf_counter() - t0, "targets": TARGETS, "rows": table_rows, "raw": results,
    }
    print(f"\nload average before {load0[0]:.2f}, after {doc['load']['after'][0]:.2f} "
          f"({os.cpu_count()} cores)", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    trial = args.quick or bool(args.width or args.depth)
    name = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "-trial" if trial else "") + ".json"
    (args.out / name).write_text(json.dumps(doc, indent=1))
    if not trial and results:
        merged = merge_latest(args.latest, doc)
        args.latest.write_text(json.dumps(merged, indent=1))
        args.docs_table.parent.mkdir(parents=True, exist_ok=True)
        args.docs_table.write_text(markdown(merged))
        print(f"updated {args.latest} and {args.docs_table}", file=sys.stderr)
    print(f"\n{len(results)} measurements in {doc['wall_s']:.0f} s; JSON: {args.out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make the repository root importable
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
