"""Canonical layout: values cross the interface in PyTorch's layout.

The one non-canonical layout frameworks use is "kernel last" (Keras and
Flax: dense ``(in, out)``, convolution ``(*kernel, in, out)``); one
permutation serves both. Conversions return views; the caller copies only
when it must.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from . import _limits
from ._adapter import CANONICAL, KERNEL_LAST

T = TypeVar("T")


def _perm(ndim: int, layout: str) -> tuple[int, ...] | None:
    if layout == CANONICAL or ndim < 2:
        return None
    if layout == KERNEL_LAST:
        return (ndim - 1, ndim - 2, *range(ndim - 2))
    raise ValueError(f"a layout among {CANONICAL!r}, {KERNEL_LAST!r}. Received: layout={layout!r}")


def _inverse(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def shape_to_canonical(shape: Sequence[T], layout: str) -> tuple[T, ...]:
    perm = _perm(len(shape), layout)
    return tuple(shape) if perm is None else tuple(shape[p] for p in perm)


def to_canonical(value: np.ndarray, layout: str) -> np.ndarray:
    perm = _perm(value.ndim, layout)
    return value if perm is None else value.transpose(perm)


def to_native(value: np.ndarray, layout: str) -> np.ndarray:
    perm = _perm(value.ndim, layout)
    return value if perm is None else contiguous(value.transpose(_inverse(perm)))



def contiguous(value: np.ndarray, copy: bool = False) -> np.ndarray:
    """``value`` as a C-contiguous array (a new one if ``copy``).

    A large transposed view (a layout conversion) is copied tile by tile
    over its first two axes: NumPy's own strided copy walks the source a
    column at a time, a cache (and TLB) miss per element, about 4x slower on
    a 4096 x 4096 float32 matrix.
    """
    if value.flags.c_contiguous or value.ndim < 2 or value.nbytes < _limits.TILED_BYTES:
        return np.array(value, order="C", copy=True) if copy else np.ascontiguousarray(value)
    rest = int(np.prod(value.shape[2:]))
    b = max(8, int(_limits.TILE / max(1, rest) ** 0.5))
    n, m = value.shape[:2]
    if n < b or m < b:
        return np.array(value, order="C", copy=True)
    out = np.empty(value.shape, value.dtype)
    for i in range(0, n, b):
        for j in range(0, m, b):
            out[i : i + b, j : j + b] = value[i : i + b, j : j + b]
    return out
