"""The local pieces of a parameter (contract 15.1): ``p.shards()``.

Design constraints: a sharded parameter (a PyTorch ``DTensor``, a JAX array
over several devices) is one :class:`~unified_params.Param` with its global
canonical shape; its pieces are what this process holds, each placed in the
global *canonical* array by an index box. The adapter reports boxes in
native axes (``Handle.shards``); the core moves them to canonical axes
through the parameter's layout, which works where the layout is a
permutation of axes (every layout of a dense or convolution kernel, and
``canonical``). A parameter that is not sharded has one piece: all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ._boundary import adapter_call
from ._errors import ShapeMismatchError
from ._layout import CANONICAL, get, to_canonical

if TYPE_CHECKING:
    from ._param import Param


@dataclass(frozen=True)
class Shard:
    """One local piece: ``index`` (a slice per canonical axis) places it in
    the global canonical array; ``device`` is where it lives; ``value``
    reads it (a copy, canonical layout) without any communication."""

    index: tuple[slice, ...]
    device: str
    _read: Callable[[], np.ndarray] = field(repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.index)

    @property
    def value(self) -> np.ndarray:
        return self._read()


def _axes(layout: str, ndim: int) -> tuple[int, ...] | None:
    """For each canonical axis the one native axis it is, or ``None`` where
    the layout merges, flips or reorders within axes."""
    if layout == CANONICAL:
        return tuple(range(ndim))
    lay = get(layout)
    groups = lay.groups(ndim)
    if lay.flip(ndim) or lay.gates or any(len(g) != 1 for g in groups):
        return None
    return tuple(g[0] for g in groups)


def shards_of(p: Param) -> list[Shard]:
    handle, leaf, name = p._handle, p._leaf, p.name
    with adapter_call(handle.backend.name, f"list the pieces of {name!r}"):
        pieces = handle.shards(leaf)
    shape = p._concrete_shape()
    if pieces is None:  # not sharded: one piece, the whole value
        return [Shard(tuple(slice(0, d) for d in shape), p.device, p.read)]
    native_ndim = len(p.native_shape)
    axes = _axes(leaf.layout, native_ndim)
    if axes is None:
        raise ShapeMismatchError(
            "a sharded parameter whose layout permutes axes, so that its pieces are boxes of the canonical array",
            f"{name!r} is sharded in the layout {leaf.layout!r}, which merges or reorders axes",
            "read the whole value with p.value (it gathers) or shard the model on other parameters",
        )
    out = []
    for k, (native_index, device) in enumerate(pieces):
        index = tuple(_bounded(native_index[a], int(p.native_shape[a] or 0)) for a in axes)

        def read(k: int = k) -> np.ndarray:
            with adapter_call(handle.backend.name, f"read a piece of {name!r}"):
                raw = handle.read_shard(leaf, k)
            return np.array(to_canonical(raw, leaf.layout), order="C", copy=True)

        out.append(Shard(index, device, read))
    return out


def _bounded(s: slice, n: int) -> slice:
    start, stop, _ = s.indices(n)
    return slice(start, stop)
