"""The ``unified-params`` command: tour, backends, inspect.

Exit codes: 0 success, 1 a failure while running, 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEFAULT_ORDER = ("torch", "jax", "tensorflow", "mxnet", "numpy")


def default_backend() -> str:
    """The first installed of torch, jax, tensorflow, mxnet, numpy."""
    from ._registry import names

    installed = names()
    return next(b for b in DEFAULT_ORDER if b in installed)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unified-params", description="One interface to the parameters of any "
                                "framework's model.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("tour", help="walk the Parameter Management chapter on a backend")
    t.add_argument("--backend", default=None, help="a backend name, or 'all' (default: first installed of "
                   + ", ".join(DEFAULT_ORDER) + ")")
    t.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    sub.add_parser("backends", help="installed backends and their versions")
    i = sub.add_parser("inspect", help="the parameters in a safetensors file")
    i.add_argument("file")
    return p


def _tour(backend: str | None, seed: int) -> int:
    from ._registry import names
    from ._tour import tour

    installed = names()
    chosen = installed if backend == "all" else [backend or default_backend()]
    for b in chosen:
        if b not in installed:
            print(f"unified-params: error: backend {b!r} is not installed; installed: {', '.join(installed)}. "
                  f"Install its adapter: pip install unified-params-{b}", file=sys.stderr)
            return 2
    results = {}
    for b in chosen:
        results[b] = tour(b, seed=seed)
    if len(chosen) > 1:
        import numpy as np

        print("\n# Side by side (same seed, same numbers)")
        ref = results[chosen[0]]
        for b in chosen:
            same = all(np.allclose(results[b][k], ref[k], rtol=1e-4, atol=1e-5) for k in ref if k in results[b])
            print(f"{b:12s} mlp out {np.round(results[b]['mlp_out'].ravel(), 4)}  agrees with {chosen[0]}: {same}")
    return 0


def _backends() -> int:
    from importlib import metadata

    from ._registry import backends

    for name, version in backends().items():
        try:
            adapter = metadata.version(f"unified-params-{name}") if name != "numpy" else metadata.version(
                "unified-params")
        except metadata.PackageNotFoundError:
            adapter = "?"
        print(f"{name:12s} framework {version:10s} adapter {adapter}")
    return 0


def _inspect(path: str) -> int:
    import json

    import numpy as np

    from ._io import read_file

    tensors, meta = read_file(path)
    names = json.loads(meta.get("names", "{}")) if meta.get("names") else {}
    print(f"{path}: {len(tensors)} tensors, source backend: {meta.get('backend', 'unknown')}, "
          f"format {meta.get('format', 'safetensors')} {meta.get('format_version', '')}".rstrip())
    total = 0
    for k, v in tensors.items():
        aliases = [n for n, info in names.items() if info.get("storage") == k and n != k]
        total += int(np.prod(v.shape))
        extra = f"  tied: {', '.join(aliases)}" if aliases else ""
        print(f"  {k:30s} {str(v.shape):16s} {str(v.dtype):9s} {int(np.prod(v.shape)):>10,}{extra}")
    print(f"total: {total:,} elements")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from ._errors import UnifiedParamsError

    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "tour":
            return _tour(args.backend, args.seed)
        if args.command == "backends":
            return _backends()
        if args.command == "inspect":
            return _inspect(args.file)
    except UnifiedParamsError as exc:
        print(f"unified-params: error: {exc}", file=sys.stderr)
        return 1
    return 2
