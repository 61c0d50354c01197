"""The backend-agnostic conformance suite.

Run it on any installed backend, ours or a third party's::

    pytest --pyargs unified_params.testing --backend NAME

or without pytest, ``unified_params.testing.run("NAME")``, which returns the
failures instead of raising. An adapter declares the checks it is known to
fail as ``Backend.expected_failures = {"check_name": "reason"}``: they run as
strict xfails (a pass is reported, so stale declarations are noticed).
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from .checks import CHECKS, iter_checks, requires

__all__ = ["CHECKS", "iter_checks", "requires", "run", "selected_backends", "load_script"]


def load_script(path: str | Path, name: str) -> ModuleType:
    """A script that is not on ``sys.path`` (a docs generator, a test kit) as
    module ``name``, loaded once per process, so that test files share it
    without putting its folder on ``sys.path`` (which would let our
    ``backends/torch`` shadow PyTorch)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(path))
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path} as a module")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def selected_backends(requested: list[str] | None = None) -> list[str]:
    """The backends a run covers: those requested with their variants (the
    ``jax`` backend brings ``jax-nnx``, its NNX zoo), or every installed one."""
    from .._registry import get_backend, names

    if not requested:
        return names()
    out: list[str] = []
    for name in requested:  # a backend's variants (jax -> jax-nnx) come with it
        for n in (name, *getattr(get_backend(name), "variants", ())):
            if n not in out:
                out.append(n)
    return out


def run(backend: str) -> dict[str, str]:
    """Run every check on ``backend``; ``{check: 'ok' | 'skipped: ...' | traceback}``."""
    from .._registry import get_backend

    be = get_backend(backend)
    expected = dict(getattr(be, "expected_failures", {}))
    out: dict[str, str] = {}
    for fn in iter_checks():
        missing = getattr(fn, "requires", frozenset()) - set(be.capabilities)
        if missing:
            out[fn.__name__] = f"skipped: backend lacks {sorted(missing)}"
            continue
        try:
            fn(be)
            out[fn.__name__] = "ok" if fn.__name__ not in expected else (
                f"unexpected pass: declared as an expected failure ({expected[fn.__name__]})")
        except Exception:
            reason = expected.get(fn.__name__)
            out[fn.__name__] = f"xfail: {reason}" if reason is not None else traceback.format_exc()
    return out
