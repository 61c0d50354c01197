"""The backend-agnostic conformance suite.

Run it on any installed backend, ours or a third party's::

    pytest --pyargs unified_params.testing --backend NAME

or without pytest, ``unified_params.testing.run("NAME")``, which returns the
failures instead of raising.
"""

from __future__ import annotations

import traceback

from .checks import CHECKS, iter_checks, requires

__all__ = ["CHECKS", "iter_checks", "requires", "run", "selected_backends"]


def selected_backends(requested: list[str] | None = None) -> list[str]:
    """The backends a run covers: those requested, or every installed one."""
    from .._registry import names

    return list(requested) if requested else names()


def run(backend: str) -> dict[str, str]:
    """Run every check on ``backend``; ``{check: 'ok' | 'skipped: ...' | traceback}``."""
    from .._registry import get_backend

    be = get_backend(backend)
    out: dict[str, str] = {}
    for fn in iter_checks():
        missing = getattr(fn, "requires", frozenset()) - set(be.capabilities)
        if missing:
            out[fn.__name__] = f"skipped: backend lacks {sorted(missing)}"
            continue
        try:
            fn(be)
            out[fn.__name__] = "ok"
        except Exception:
            out[fn.__name__] = traceback.format_exc()
    return out
