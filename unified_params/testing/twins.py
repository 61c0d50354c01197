"""Twins: the same architecture in two frameworks. One check that a port
and a file carry a model across with equal outputs, for test suites that
pair models (ours and a library's own)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import unified_params as up

TOL = {"rtol": 1e-4, "atol": 1e-5}


def outputs(m: Any, x: Any) -> np.ndarray:
    return np.asarray(up.asnumpy(m(x)), dtype=np.float64)


def assert_carried(src: Any, make_dst: Callable[[], Any], x_src: Any, x_dst: Any, folder: Path,
                   tol: dict[str, float] | None = None) -> None:
    """``src`` (values set by the caller) is ported into ``make_dst()`` with
    ``check=`` and saved then loaded into another ``make_dst()`` by order
    with ``check=``; both compute ``src``'s outputs (``x_src`` and ``x_dst``:
    the same input in each framework's layout). A fresh twin must differ
    first, so a port that copies nothing cannot pass."""
    rtol, atol = (TOL if tol is None else tol)["rtol"], (TOL if tol is None else tol)["atol"]
    y = outputs(src, x_src)
    dst = make_dst()
    assert not np.allclose(outputs(dst, x_dst), y, rtol=rtol, atol=atol)  # the port has something to do
    up.port(src, dst, check=(x_src, x_dst))
    np.testing.assert_allclose(outputs(dst, x_dst), y, rtol=rtol, atol=atol)
    path = Path(folder) / f"{src.backend}-{id(src)}.safetensors"
    up.save(src, path)
    fresh = make_dst()
    up.load(fresh, path, match="order", check=(x_dst, y))
    np.testing.assert_allclose(outputs(fresh, x_dst), y, rtol=rtol, atol=atol)
