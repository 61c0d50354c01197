"""Canonical layout: values cross the interface in PyTorch's layout.

Design constraints: a layout is data, not code in an adapter. Each named
:class:`Layout` says how the native array's axes map onto the canonical
(PyTorch) axes: a permutation, axes merged into one (attention heads, a
depthwise multiplier), size-1 axes inserted, spatial axes flipped, gate
blocks reordered along one axis. Every conversion is derived from that one
description, so reading, writing, shapes, fans and gradients agree by
construction. Reads return views where NumPy can (a transpose, a merge of
adjacent axes); writes are one (tiled) copy into native order.

Layout names are strings (``Leaf.layout``): ``canonical``, ``kernel_last``,
``native`` and the others in :data:`LAYOUTS`; parametrised families are
``general:<n_in>`` (Flax ``DenseGeneral``-style kernels with ``n_in`` input
axes first) and ``gates:<order>|<base>`` (gate blocks of a recurrent weight).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from . import _limits

T = TypeVar("T")

CANONICAL = "canonical"
KERNEL_LAST = "kernel_last"
#: A layer whose canonical layout is not known: values cross as they are,
#: and ports refuse to pair them with converted values.
NATIVE = "native"

Groups = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Layout:
    """One mapping between a native array and its canonical form.

    ``groups(ndim)`` lists, for each canonical axis, the native axes merged
    into it (``()``: a new axis of size 1); ``flip(ndim)`` the native axes
    reversed first; ``gates`` reorders equal blocks of canonical axis
    ``gate_axis`` (canonical block ``k`` is native block ``gates[k]``).
    ``torch`` names the PyTorch layout it produces, for the docs.
    """

    name: str
    groups: Callable[[int], Groups]
    flip: Callable[[int], tuple[int, ...]] = lambda ndim: ()
    gates: tuple[int, ...] = ()
    gate_axis: int = 0
    torch: str = ""

    def canonical_shape(self, shape: Sequence[T]) -> tuple[T, ...]:
        out: list[Any] = []
        for g in self.groups(len(shape)):
            dims: list[Any] = [shape[a] for a in g]
            out.append(None if any(d is None for d in dims) else math.prod(int(d) for d in dims))
        return tuple(out)

    def _perm(self, ndim: int) -> tuple[int, ...]:
        return tuple(a for g in self.groups(ndim) for a in g)

    def to_canonical(self, value: np.ndarray) -> np.ndarray:
        target = self.canonical_shape(value.shape)
        flips = self.flip(value.ndim)
        if flips:
            value = value[tuple(slice(None, None, -1) if a in flips else slice(None) for a in range(value.ndim))]
        perm = self._perm(value.ndim)
        if perm != tuple(range(value.ndim)):
            value = value.transpose(perm)
        if tuple(value.shape) != target:
            value = value.reshape(target)  # a view where the merged axes are adjacent in memory
        if self.gates:
            value = _reorder_gates(value, self.gate_axis, self.gates)
        return value

    def to_native(self, value: np.ndarray, native_shape: Sequence[int]) -> np.ndarray:
        ndim = len(native_shape)
        if self.gates:
            value = _reorder_gates(value, self.gate_axis, _inverse(self.gates))
        perm = self._perm(ndim)
        split = tuple(int(native_shape[a]) for a in perm)
        if tuple(value.shape) != split:
            value = value.reshape(split)
        if perm != tuple(range(ndim)):
            value = value.transpose(_inverse(perm))
        flips = self.flip(ndim)
        if flips:
            value = value[tuple(slice(None, None, -1) if a in flips else slice(None) for a in range(ndim))]
        return contiguous(value)


def _reorder_gates(value: np.ndarray, axis: int, order: Sequence[int]) -> np.ndarray:
    n = len(order)
    size = value.shape[axis]
    if size % n:
        raise ValueError(f"an axis of {n} equal gate blocks. Received: size {size} along axis {axis}")
    blocks = np.split(value, n, axis=axis)
    return np.concatenate([blocks[k] for k in order], axis=axis)


def _inverse(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _identity(ndim: int) -> Groups:
    return tuple((a,) for a in range(ndim))


def _kernel_last(ndim: int) -> Groups:
    # (*kernel, in, out) -> (out, in, *kernel); (in, out) -> (out, in)
    if ndim < 2:
        return _identity(ndim)
    return ((ndim - 1,), (ndim - 2,), *((a,) for a in range(ndim - 2)))


def _depthwise_last(ndim: int) -> Groups:
    # Keras (*kernel, in, multiplier) -> (in*multiplier, 1, *kernel)
    if ndim < 3:
        return _identity(ndim)
    return ((ndim - 2, ndim - 1), (), *((a,) for a in range(ndim - 2)))


def _transpose_flipped(ndim: int) -> Groups:
    # Flax ConvTranspose (*kernel, in, out) -> (in, out, *kernel), spatial axes flipped
    if ndim < 3:
        return _identity(ndim)
    return ((ndim - 2,), (ndim - 1,), *((a,) for a in range(ndim - 2)))


def _spatial(ndim: int) -> tuple[int, ...]:
    return tuple(range(ndim - 2)) if ndim >= 3 else ()


def _merged(ndim: int) -> Groups:
    return (tuple(range(ndim)),)


def _general(n_in: int) -> Callable[[int], Groups]:
    # (*in_axes, *out_axes) -> (prod(out), prod(in)); n_in = ndim: a bias
    def groups(ndim: int) -> Groups:
        if n_in >= ndim:
            return _merged(ndim)
        return (tuple(range(n_in, ndim)), tuple(range(n_in)))
    return groups


LAYOUTS: dict[str, Layout] = {
    CANONICAL: Layout(CANONICAL, _identity, torch="as stored"),
    NATIVE: Layout(NATIVE, _identity, torch="not converted"),
    KERNEL_LAST: Layout(KERNEL_LAST, _kernel_last, torch="Linear (out, in); ConvNd (out, in/groups, *k); "
                                                         "ConvTransposeNd (in, out/groups, *k)"),
    "depthwise_last": Layout("depthwise_last", _depthwise_last, torch="depthwise ConvNd (in*multiplier, 1, *k)"),
    "transpose_flipped": Layout("transpose_flipped", _transpose_flipped, flip=_spatial,
                                torch="ConvTransposeNd (in, out, *k)"),
    "merged": Layout("merged", _merged, torch="one axis (per-head biases (heads*head_dim,))"),
}


@functools.cache
def get(name: str) -> Layout:
    """The :class:`Layout` called ``name``; a ``ValueError`` for an unknown name."""
    found = LAYOUTS.get(name)
    if found is not None:
        return found
    if name.startswith("general:"):
        n_in = int(name.split(":", 1)[1])
        return Layout(name, _general(n_in), torch=f"Linear (out, in) with {n_in} input axes merged")
    if name.startswith("gates:"):
        order, _, base = name[len("gates:"):].partition("|")
        b = get(base or CANONICAL)
        return Layout(name, b.groups, b.flip, tuple(int(k) for k in order.split(",")), 0,
                      torch=f"{b.torch}, gate blocks reordered")
    if name.startswith("gates1:"):  # gates along axis 1 (a stacked pair of biases)
        order, _, base = name[len("gates1:"):].partition("|")
        b = get(base or CANONICAL)
        return Layout(name, b.groups, b.flip, tuple(int(k) for k in order.split(",")), 1,
                      torch=f"{b.torch}, gate blocks reordered")
    known = sorted(LAYOUTS) + ["general:<n>", "gates:<order>|<base>"]
    raise ValueError(f"a layout among {known}. Received: layout={name!r}")


def is_converted(name: str) -> bool:
    """True when values of this layout are in PyTorch's layout (converted or
    stored so); False for ``native``."""
    return name != NATIVE


def shape_to_canonical(shape: Sequence[T], layout: str) -> tuple[T, ...]:
    if layout in (CANONICAL, NATIVE):
        return tuple(shape)
    return get(layout).canonical_shape(shape)


def to_canonical(value: np.ndarray, layout: str) -> np.ndarray:
    if layout in (CANONICAL, NATIVE):
        return value
    return get(layout).to_canonical(value)


def to_native(value: np.ndarray, layout: str, native_shape: Sequence[int] | None = None) -> np.ndarray:
    if layout in (CANONICAL, NATIVE):
        return value
    lay = get(layout)
    if native_shape is None:  # only layouts that merge nothing can invert without it
        native_shape = _unmerged_shape(lay, value.shape)
    return lay.to_native(value, native_shape)


def copy_canonical(native: np.ndarray, layout: str) -> np.ndarray:
    """A private canonical copy of ``native`` in one pass at memory speed:
    the native bytes copied in the order they lie (``order='K'``), seen
    through the canonical axes. For a kernel-last layout that is a transposed
    view of the copy (not C-contiguous; ``np.ascontiguousarray`` makes one
    where it matters, ``contiguous`` tiles it); it never aliases ``native``."""
    value = to_canonical(native, layout)
    if not np.may_share_memory(value, native):
        return value  # the conversion made a new array (gate blocks reordered)
    return value.copy(order="K")


def _unmerged_shape(lay: Layout, shape: Sequence[int]) -> tuple[int, ...]:
    ndim = len(shape)
    groups = lay.groups(ndim)
    if any(len(g) != 1 for g in groups):
        raise ValueError(f"the native shape to invert layout {lay.name!r}. Received: only the canonical shape {shape}")
    out = [0] * ndim
    for g, d in zip(groups, shape):
        out[g[0]] = int(d)
    return tuple(out)


#: Alignment in bytes of the arrays the core makes for a write: XLA (JAX on
#: the CPU) keeps a 64-byte aligned host array as it is, and copies any other.
ALIGN = 64
#: Copies of at least this many bytes that ``contiguous`` makes are
#: ``ALIGN``-aligned (smaller ones: NumPy's allocation, cheaper per call).
ALIGNED_FROM = 1 << 16


def empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts on an ``ALIGN``-byte
    boundary, so that a framework can adopt it without a copy."""
    dt = np.dtype(dtype)
    n = math.prod(int(d) for d in shape) * dt.itemsize
    buf = np.empty(n + ALIGN, np.uint8)
    off = -buf.ctypes.data % ALIGN
    return buf[off : off + n].view(dt).reshape(tuple(int(d) for d in shape))


#: Functions an adapter registers (``register_transposer``) that may make the
#: C-contiguous copy of a large strided view faster than NumPy can: a
#: framework's own transpose of the buffer the view shows (TensorFlow's is
#: 2-3x faster than the strips below). Each returns ``None`` for a view it
#: does not recognize; the first answer is used.
_TRANSPOSERS: list[Callable[[np.ndarray], np.ndarray | None]] = []


def register_transposer(fn: Callable[[np.ndarray], np.ndarray | None]) -> None:
    """Let ``contiguous`` and ``contiguous_into`` ask ``fn`` first for large
    strided views: ``fn(view)`` returns a new, private C-contiguous array
    equal to ``view`` (its shape and dtype), or ``None``. Registered once."""
    if fn not in _TRANSPOSERS:
        _TRANSPOSERS.append(fn)


def _transposed_by_adapter(value: np.ndarray) -> np.ndarray | None:
    for fn in _TRANSPOSERS:
        try:
            out = fn(value)
        except Exception:  # noqa: BLE001, S112 - an adapter's refusal means: NumPy copies
            continue
        if (out is not None and out.shape == value.shape and out.dtype == value.dtype
                and out.flags.c_contiguous):
            return out
    return None


def contiguous(value: np.ndarray, copy: bool = False, tile_from: int | None = None) -> np.ndarray:
    """``value`` as a C-contiguous array (a new one if ``copy``).

    A large transposed view (a layout conversion) is copied tile by tile
    over its first two axes: NumPy's own strided copy walks the source a
    column at a time, a cache (and TLB) miss per element, about 4x slower on
    a 4096 x 4096 float32 matrix. A transposed matrix goes strip by strip
    (``_strips``), 3x faster again. ``tile_from``: the size in bytes from
    which to tile (default ``_limits.TILED_BYTES``).
    """
    threshold = _limits.TILED_BYTES if tile_from is None else tile_from
    if value.flags.c_contiguous and not copy:
        return value
    if _TRANSPOSERS and not value.flags.c_contiguous and value.ndim >= 2 and value.nbytes >= threshold:
        fast = _transposed_by_adapter(value)
        if fast is not None:
            return fast
    if value.flags.c_contiguous or value.ndim < 2 or value.nbytes < threshold:
        if value.nbytes < ALIGNED_FROM:
            return np.array(value, order="C", copy=True)
        out = empty(value.shape, value.dtype)  # aligned: a framework can adopt it (TF, XLA)
        np.copyto(out, value)
        return out
    if value.ndim == 2 and abs(value.strides[0]) < abs(value.strides[1]):
        return _strips(value)
    rest = int(np.prod(value.shape[2:]))
    b = max(8, int(_limits.TILE / max(1, rest) ** 0.5))
    n, m = value.shape[:2]
    if n < b or m < b:
        return np.array(value, order="C", copy=True)
    out = empty(value.shape, value.dtype)
    for i in range(0, n, b):
        for j in range(0, m, b):
            out[i : i + b, j : j + b] = value[i : i + b, j : j + b]
    return out


def contiguous_into(value: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy ``value`` into the C-contiguous ``out`` of its shape and dtype
    (a transposed matrix strip by strip); returns ``out``, or for a large
    view that a registered transposer converts, its new array instead."""
    if _TRANSPOSERS and value.nbytes >= _limits.TILED_BYTES and not value.flags.c_contiguous:
        fast = _transposed_by_adapter(value)
        if fast is not None:
            return fast
    if value.ndim == 2 and abs(value.strides[0]) < abs(value.strides[1]):
        return _strips(value, out)
    np.copyto(out, value)
    return out


def _strips(value: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A transposed matrix as a C-contiguous copy (into ``out`` if given),
    strip by strip: ``STRIP_ROWS`` destination rows by ``STRIP_BYTES`` of
    its columns, so that each inner copy writes a short run and reads the
    source's rows in long runs that stay in the cache."""
    n, m = value.shape
    bi = max(1, int(_limits.STRIP_ROWS))
    bj = max(1, int(_limits.STRIP_BYTES) // value.itemsize)
    if out is None:
        out = empty(value.shape, value.dtype)
    for i in range(0, n, bi):
        dst, src = out[i : i + bi], value[i : i + bi]
        for j in range(0, m, bj):
            dst[:, j : j + bj] = src[:, j : j + bj]
    return out
