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
    return value if perm is None else np.ascontiguousarray(value.transpose(_inverse(perm)))
