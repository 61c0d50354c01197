"""The ``unified-params`` command (also ``python -m unified_params``).

Commands: ``tour``, ``backends``, ``inspect``, ``plot``; ``--help`` on each.
Exit codes: 0 success, 1 a failure while running (a bad file, a backend that
fails to import, a missing framework or extra: one line on stderr with the
contract's message or the pip command, no traceback), 2 a usage error (a
backend name that is not installed: "did you mean" and how to install it).

Design constraints: importing this module imports no framework and neither
rich nor matplotlib; output is plain text unless stdout is a terminal, where
tables and trees are drawn with rich (when installed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._errors import UnifiedParamsError

DEFAULT_ORDER = ("torch", "jax", "tensorflow", "mxnet", "numpy")
MODELS = ("mlp", "nested", "shared", "cnn")
_PROG = "unified-params"

class UsageError(Exception):
    """A command line that asks for something impossible (exit code 2)."""


def default_backend() -> str:
    """The first installed of torch, jax, tensorflow, mxnet, numpy."""
    from ._registry import names

    installed = names()
    return next(b for b in DEFAULT_ORDER if b in installed)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG,
        description="One interface to the parameters of any framework's model.",
        epilog="Examples: unified-params tour --backend all | unified-params inspect model.safetensors | "
        "unified-params plot --backend torch --model mlp -o mlp.png",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser(
        "tour",
        help="walk the Parameter Management chapter on a backend",
        description="Walk the Parameter Management chapter (access, initialization, ties, training, files) "
        "through the unified API. With --backend all, every installed backend runs and their numbers are "
        "shown side by side.",
    )
    t.add_argument("--backend", default=None, metavar="NAME|all",
                   help="a backend name, or 'all' (default: first installed of " + ", ".join(DEFAULT_ORDER) + ")")
    t.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    b = sub.add_parser("backends", help="installed backends, framework and adapter versions",
                   description="List the installed backends with their framework and adapter versions and "
                   "capabilities (imports each framework).")
    i = sub.add_parser("inspect", help="the parameters in a safetensors file",
                       description="Names, shapes, dtypes, counts and tie groups of a safetensors file, and the "
                       "backend that saved it (files from up.save; any other safetensors file too).")
    i.add_argument("file", help="a .safetensors file")
    pl = sub.add_parser(
        "plot",
        help="histograms and norms of parameters, as a PNG",
        description="Draw one histogram per parameter and the norm of each, from a safetensors FILE or from a "
        "zoo model of a backend (its framework's own initialization). Needs matplotlib: "
        "pip install 'unified-params[plot]'.",
    )
    pl.add_argument("file", nargs="?", help="a .safetensors file (or give --backend and --model)")
    pl.add_argument("--backend", metavar="NAME", help="build a zoo model of this backend")
    pl.add_argument("--model", choices=MODELS, help="which zoo model (with --backend; default mlp)")
    pl.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the PNG to write")
    for sp in (t, b, i, pl):
        sp.set_defaults(subparser=sp)
    return p


def _version() -> str:
    from . import __version__

    return __version__


def _check_backend(name: str) -> None:
    """A usage error (2) for a name that is not installed, with the name
    meant; a contract error (1) for an adapter whose framework is missing."""
    from ._registry import names, require_framework, unknown_backend_hint

    installed = names()
    if name not in installed:
        hint = unknown_backend_hint(name, installed)
        raise UsageError(f"backend {name!r} is not installed; installed: {', '.join(installed)}. "
                         + hint[0].upper() + hint[1:])
    require_framework(name)


def _friendly(exc: BaseException) -> str:
    """One line for an exception a user's setup causes: a missing module names
    its pip command (the CLI's extras: ``[cli]``, ``[plot]``)."""
    from ._registry import EXTRAS, pip_command

    if isinstance(exc, UnifiedParamsError):
        return str(exc)
    if isinstance(exc, ImportError):
        module = (getattr(exc, "name", None) or "").split(".")[0]
        if module:
            extra = EXTRAS.get(module)
            command = pip_command(module, "plot" if extra == "plot" else "cli" if extra else None)
            return f"{module} is not installed ({type(exc).__name__}: {_one_line(exc)}); install it: {command}"
    if isinstance(exc, OSError):
        where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
        return f"cannot access{where}: {exc.strerror or _one_line(exc)}"
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- tour ---------------------------------------------------------------------


def _tour(backend: str | None, seed: int) -> int:
    from ._registry import names
    from ._report import show
    from ._tour import side_by_side, tour

    if backend != "all":
        name = backend or default_backend()
        _check_backend(name)
        tour(name, seed=seed, out=lambda x: show(x))
        return 0
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for name in names():
        try:
            results[name] = tour(name, seed=seed, out=lambda x: None)
            print(f"walked the chapter on {name}")
        except Exception as exc:  # one backend's failure must not hide the others
            failed[name] = _friendly(exc)
            print(f"{_PROG}: error: the tour failed on {name}: {failed[name]}", file=sys.stderr)
    if not results:
        return 1
    reference = "numpy" if "numpy" in results else next(iter(results))
    if len(results) == 1 and not failed:
        print(f"only {reference} is installed: nothing to compare it with. Install an adapter, e.g. "
              "pip install unified-params-torch torch")
    header, rows = side_by_side(results, reference)
    print(f"\nSide by side, seed {seed}: each backend's numbers against {reference}'s "
          f"(same: equal to float32 precision)")
    _print_table(header, rows, title=f"tour --backend all --seed {seed}")
    differ = any(cell.startswith("DIFF") for row in rows for cell in row[2:])
    if differ:
        print(f"{_PROG}: error: some numbers differ between backends", file=sys.stderr)
    return 1 if failed or differ else 0


# -- backends -------------------------------------------------------------------


def _backends() -> int:
    from importlib import metadata

    from ._registry import _discover, get_backend, names

    rows, broken = [], []
    eps = _discover()
    for name in names():
        if name == "numpy":
            adapter = f"unified-params {_version()} (built in)"
        else:
            dist = getattr(eps[name], "dist", None)
            try:
                adapter = f"{dist.name} {dist.version}" if dist is not None else "?"
            except (AttributeError, metadata.PackageNotFoundError):
                adapter = "?"
        try:
            be = get_backend(name)
            framework, caps = be.version(), ", ".join(sorted(be.capabilities))
        except Exception as exc:  # report every backend; fail at the end
            framework, caps = f"not importable: {type(exc).__name__}", "-"
            broken.append(f"{name}: {_friendly(exc)}")
        rows.append([name, framework, adapter, caps])
    _print_table(["backend", "framework", "adapter", "capabilities"], rows, title="installed backends")
    for line in broken:
        print(f"{_PROG}: error: {line}", file=sys.stderr)
    return 1 if broken else 0


# -- inspect --------------------------------------------------------------------


def _inspect(path: str) -> int:
    from ._format import DTYPES, our_metadata, read_header, short
    from ._report import _fmt_shape

    header = read_header(path)  # the library's own parser and limits
    entries, meta, size = header.entries, header.metadata, header.size
    ours = our_metadata(meta, short(repr(path), 200))
    names, ties = ours if ours is not None else ({}, [])
    if ours is not None:
        source = f"{meta.get('backend', 'unknown')} (unified_params format {meta.get('format_version', '?')})"
    else:
        source = "unknown: a plain safetensors file, without unified_params metadata"
    aliases: dict[str, list[str]] = {}
    for n, info in names.items():
        if info.get("storage", n) != n:
            aliases.setdefault(info["storage"], []).append(n)
    rows, total = [], 0
    ordered = sorted(entries.values(), key=lambda e: e.begin)
    if names:  # the model's order, as saved
        rank = {n: i for i, n in enumerate(names)}
        ordered = sorted(ordered, key=lambda e: rank.get(e.name, len(rank)))
    for e in ordered:
        count = 1
        for d in e.shape:
            count *= d
        total += count
        role = names.get(e.name, {}).get("role", "")
        kind = names.get(e.name, {}).get("kind", "")
        rows.append([e.name, role + (" (buffer)" if kind == "buffer" else ""), _fmt_shape(e.shape),
                     DTYPES[e.dtype], f"{count:,}", ", ".join(aliases.get(e.name, []))])
    print(f"{path}: safetensors, {len(entries)} tensors, {total:,} elements, {size:,} bytes")
    print(f"source backend: {source}")
    mine = ("format", "format_version", "backend", "names", "ties") if ours is not None else ()
    extra = {k: v for k, v in meta.items() if k not in mine}
    if extra:
        print("metadata: " + ", ".join(f"{k}={v[:40]}" for k, v in extra.items()))
    head = ["name", "role", "shape", "dtype", "count", "tied with"]
    if not names:  # a plain file: no roles, no ties to show
        head, rows = head[:1] + head[2:5], [r[:1] + r[2:5] for r in rows]
    _print_table(head, rows, title=os.path.basename(path), right=("count",))
    if ties:
        print("tie groups (one storage each):")
        for group in ties:
            print("  " + " = ".join(group))
    else:
        print("tie groups: none" if names else "tie groups: unknown (no unified_params metadata)")
    return 0


# -- plot -----------------------------------------------------------------------


def _plot(file: str | None, backend: str | None, model: str | None, output: str) -> int:
    import numpy as np

    from ._plot import _require_matplotlib, plot_tensors

    if model is not None and backend is None:
        raise UsageError("--model builds a zoo model: it needs --backend NAME")
    if (file is None) == (backend is None):
        raise UsageError("give a FILE or --backend NAME (with --model), not both and not neither")
    if backend is not None:
        _check_backend(backend)
    _require_matplotlib()  # before anything slow
    if file is not None:
        from ._format import our_metadata, short
        from ._io import read_file

        tensors, meta = read_file(file)
        ours = our_metadata(meta, short(repr(file), 200))
        table = ours[0] if ours is not None else {}
        also: dict[str, list[str]] = {}
        for n, info in table.items():
            if info.get("storage", n) != n:
                also.setdefault(info["storage"], []).append(n)
        rank = {n: i for i, n in enumerate(table)}  # the model's order, as saved
        order = sorted(tensors, key=lambda n: rank.get(n, len(rank)))
        tensors = {_label(n, also.get(n, ())): tensors[n] for n in order}
        title = f"{os.path.basename(file)} (saved by {meta.get('backend', 'unknown')})"
    else:
        from ._registry import get_backend

        assert backend is not None
        model = model or "mlp"
        m = getattr(get_backend(backend).zoo(), model)()
        tensors = {_label(n, p.tied_with): p.value for n, p in m.params.distinct().items()}
        tensors.update({_label(n, p.tied_with): p.value for n, p in m.buffers.distinct().items()
                        if np.issubdtype(p.dtype, np.floating)})
        title = f"{backend} zoo '{model}' (the framework's own initialization)"
    out = plot_tensors(tensors, output, title=title)
    print(f"wrote {out} ({len(tensors)} tensors)")
    return 0


def _label(name: str, tied_with: Sequence[str]) -> str:
    return f"{name} (= {', '.join(tied_with)})" if tied_with else name


# -- output ---------------------------------------------------------------------


def _print_table(header: list[str], rows: list[list[str]], *, title: str = "", right: Sequence[str] = ()) -> None:
    """A table: rich where stdout is a terminal and rich is installed, plain otherwise."""
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(title=title)
            for h in header:
                table.add_column(h, justify="right" if h in right else "left")
            for row in rows:
                table.add_row(*row)
            Console().print(table)
            return
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, header)).rstrip()

    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 usage)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{_PROG}: error: a command is required (tour, backends, inspect, plot); see {_PROG} --help",
              file=sys.stderr)
        return 2
    try:
        if args.command == "tour":
            return _tour(args.backend, args.seed)
        if args.command == "backends":
            return _backends()
        if args.command == "inspect":
            return _inspect(args.file)
        if args.command == "plot":
            return _plot(args.file, args.backend, args.model, args.output)
    except UsageError as exc:
        args.subparser.print_usage(sys.stderr)
        print(f"{_PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `unified-params tour | head`: the reader left; stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except (UnifiedParamsError, ImportError, OSError, MemoryError) as exc:  # a user's setup: one line
        print(f"{_PROG}: error: {_friendly(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug of ours: one line to report, the traceback on request
        if os.environ.get("UNIFIED_PARAMS_TRACEBACK"):
            raise
        print(f"{_PROG}: error: unexpected {_friendly(exc)} (a bug in unified-params: please report it with the "
              f"command line; set UNIFIED_PARAMS_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return 1
    return 2
