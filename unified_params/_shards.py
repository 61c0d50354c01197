"""The local pieces of a parameter (contract 15.1): ``p.shards()``, and the
value ``m.state(copy=False)`` gives a sharded parameter.

Design constraints: a sharded parameter (a PyTorch ``DTensor``, a JAX array
over several devices) is one :class:`~unified_params.Param` with its global
canonical shape; its pieces are what this process holds, each placed in the
global *canonical* array by an index box. The adapter reports boxes in
native axes (``Handle.shards``); the core moves them to canonical axes
through the parameter's layout, which works where the layout is a
permutation of axes (every layout of a dense or convolution kernel, and
``canonical``). A parameter that is not sharded has one piece: all of it.

``m.state(copy=False)`` never gathers: a sharded parameter's entry is a
:class:`ShardedValue`, the global shape and dtype with the pieces this
process holds (as a JAX array's ``addressable_shards`` or a DTensor's
``to_local()`` with its offset), read without communication, zero-copy
where the framework allows; an unsharded parameter's entry stays the
read-only array of contract 7.1. ``load_state`` of such a state writes each
process's pieces from the pieces it holds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._boundary import adapter_call
from ._errors import ShapeMismatchError, StateError
from ._layout import CANONICAL, get, to_canonical

if TYPE_CHECKING:
    from ._block import Block
    from ._param import Param
    from .adapter import Handle


@dataclass(frozen=True)
class Shard:
    """One local piece: ``index`` (a slice per canonical axis) places it in
    the global canonical array; ``device`` is where it lives; ``value``
    reads it (a copy, canonical layout) and ``data`` (read-only, zero-copy
    where the framework allows, as a JAX shard's ``data``), both without
    any communication. In a :class:`ShardedValue` (``m.state(copy=False)``)
    ``data`` is the array read when the state was taken."""

    index: tuple[slice, ...]
    device: str
    _read: Callable[[bool], np.ndarray] = field(repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """The piece's shape (its box's extent per canonical axis)."""
        return tuple(s.stop - s.start for s in self.index)

    @property
    def value(self) -> np.ndarray:
        """The piece as a private copy (canonical layout, C order)."""
        return self._read(True)

    @property
    def data(self) -> np.ndarray:
        """The piece as a read-only array that may be a view of the
        framework's memory (what ``save`` streams, with no copy of ours)."""
        return self._read(False)


class ShardedValue:
    """A sharded parameter's entry in ``m.state(copy=False)`` (contract 15.1):
    ``shape`` and ``dtype`` of the global canonical array and ``shards``,
    the pieces this process holds (each ``index``, ``device``, ``data``).
    Nothing was gathered. ``np.asarray(v)`` assembles the whole array only
    where this process holds all of it (several local devices); elsewhere
    it is a ``StateError``: ``p.value`` or ``m.state()`` gather explicitly."""

    __slots__ = ("shape", "dtype", "shards", "name")

    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any, shards: Sequence[Shard]) -> None:
        self.name, self.shape, self.dtype, self.shards = name, tuple(shape), np.dtype(dtype), tuple(shards)

    @property
    def ndim(self) -> int:
        """Axes of the global array."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Elements of the global array (not of the pieces held here)."""
        return int(np.prod(self.shape, dtype=np.int64))

    def parts(self) -> list[tuple[tuple[tuple[int, int], ...], np.ndarray]]:
        """The distinct pieces as ``(box, array)``: a replicated piece once."""
        seen: dict[tuple[tuple[int, int], ...], np.ndarray] = {}
        for s in self.shards:
            seen.setdefault(tuple((int(i.start), int(i.stop)) for i in s.index), s.data)
        return list(seen.items())

    def covers(self, boxes: Sequence[tuple[tuple[int, int], ...]]) -> bool:
        """Whether the pieces held here cover every one of ``boxes``."""
        parts = [b for b, _ in self.parts()]
        for want in boxes:
            need = int(np.prod([hi - lo for lo, hi in want], dtype=np.int64))
            got = 0
            for b in parts:
                o = [(max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(b, want)]
                got += int(np.prod([max(0, hi - lo) for lo, hi in o], dtype=np.int64))
            if got < need:
                return False
        return True

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = tuple((0, d) for d in self.shape)
        if not self.covers([whole]):
            raise StateError(
                f"the whole of {self.name!r} {self.shape} in this process",
                f"{len(self.shards)} local piece(s) of it (a sharded parameter: other processes hold the rest)",
                "use each piece's .index and .data, or read the gathered value with p.value or m.state() "
                "(a collective: every process must call it)",
            )
        out = np.empty(self.shape, self.dtype)
        for box, arr in self.parts():
            out[tuple(slice(lo, hi) for lo, hi in box)] = arr
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        held = ", ".join(f"[{', '.join(f'{s.start}:{s.stop}' for s in p.index)}] on {p.device}"
                         for p in self.shards[:4])
        more = f" and {len(self.shards) - 4} more" if len(self.shards) > 4 else ""
        return f"ShardedValue(shape={self.shape}, dtype={self.dtype}, here: {held}{more})"


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


def sharded_pieces(p: Param) -> list[Shard] | None:
    """The local pieces of ``p`` when its storage is sharded; ``None`` when it
    is not (then it is one piece, all of it)."""
    handle, leaf, name = p._handle, p._leaf, p.name
    with adapter_call(handle.backend.name, f"list the pieces of {name!r}"):
        pieces = handle.shards(leaf)
    if pieces is None:
        return None
    native_shape = p.native_shape
    axes = _axes(leaf.layout, len(native_shape))
    if axes is None:
        raise ShapeMismatchError(
            "a sharded parameter whose layout permutes axes, so that its pieces are boxes of the canonical array",
            f"{name!r} is sharded in the layout {leaf.layout!r}, which merges or reorders axes",
            "read the whole value with p.value (it gathers) or shard the model on other parameters",
        )
    layout = leaf.layout
    out = []
    for k, (native_index, device) in enumerate(pieces):
        index = tuple(_bounded(native_index[a], int(native_shape[a] or 0)) for a in axes)

        def read(copy: bool, k: int = k) -> np.ndarray:
            with adapter_call(handle.backend.name, f"read a piece of {name!r}"):
                raw = handle.read_shard(leaf, k)
            value = to_canonical(raw, layout)
            if copy:
                return np.array(value, order="C", copy=True)
            if value.flags.writeable:
                value = value.view()
                value.flags.writeable = False
            return value

        out.append(Shard(index, device, read))
    return out


def shards_of(p: Param) -> list[Shard]:
    pieces = sharded_pieces(p)
    if pieces is not None:
        return pieces
    shape = p._concrete_shape()
    return [Shard(tuple(slice(0, d) for d in shape), p.device, lambda copy: p.read(copy=copy))]


def may_shard(handle: Handle) -> bool:
    """Whether the handle's adapter can report sharded storages at all (it
    overrides ``Handle.shards``): ``state(copy=False)`` asks per storage
    only then."""
    from .adapter import Handle

    return getattr(handle.shards, "__func__", None) is not Handle.shards


def state_pieces(block: Block) -> dict[str, Any]:
    """``m.state(copy=False)`` where the adapter can shard (``may_shard``):
    which storages are sharded is asked in one pass (one adapter boundary,
    not one per storage); the others are read as ``m.state`` reads them (one
    batched read), the sharded ones as :func:`state_value` reads them."""
    from ._fastpath import read_values

    h = block._handle
    listed = block._all()
    firsts = list(listed.distinct()._params.values())  # one name per storage
    ask = h.shards
    with adapter_call(h.backend.name, "list the pieces of the model's storages"):
        sharded = [ask(p._leaf) is not None for p in firsts]
    plain = [p for p, s in zip(firsts, sharded) if not s]
    values: dict[Any, Any] = dict(zip((p._leaf.storage for p in plain), read_values(plain, False)))
    for p, s in zip(firsts, sharded):
        if s:
            values[p._leaf.storage] = state_value(p)
    return {n: values[p._leaf.storage] for n, p in listed._params.items()}


def state_value(p: Param) -> np.ndarray | ShardedValue:
    """``p``'s entry in ``m.state(copy=False)``: its read-only array, or for a
    sharded storage a :class:`ShardedValue` of the local pieces (no gather)."""
    pieces = sharded_pieces(p)
    if pieces is None:
        return p.read(copy=False)
    held = [Shard(s.index, s.device, functools.partial(_kept, s.data)) for s in pieces]
    return ShardedValue(p.name, p._concrete_shape(), p.dtype, held)


def _kept(arr: np.ndarray, copy: bool) -> np.ndarray:
    """A piece read when the state was taken: ``data`` is it, ``value`` a copy."""
    return arr.copy() if copy else arr


def _bounded(s: slice, n: int) -> slice:
    start, stop, _ = s.indices(n)
    return slice(start, stop)
