"""Writes with as few passes over memory as the framework allows (issue 18).

Design constraints: every function here has one plain route that is always
correct (check the value, convert its layout, ``Handle.write``) and takes a
shorter one only where the adapter offers it (``Handle.host_buffer``,
``write_owned``, ``snapshot``):

* a file's tensor in the storage's own layout and dtype is read straight
  into the storage's host memory (one copy, from the page cache);
* an array the core made for one write (a layout conversion, a file's
  tensor) is handed over to an adapter that can keep it (JAX), not copied
  again;
* an undo keeps the framework's own immutable or copy-on-write value where
  there is one, not a copy.

Thresholds live in ``_limits`` and are read at call time, so tests drive the
tiled paths with small arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ._boundary import adapter_call
from ._layout import CANONICAL, NATIVE, to_native
from ._values import Deferred, check_value

if TYPE_CHECKING:
    from ._param import Param
    from ._undo import Undo

__all__ = ["write_canonical", "write_deferred", "snapshot"]

_PLAIN = (CANONICAL, NATIVE)


def _fix() -> str:
    return "report this as a bug of the adapter; the value was not changed"


def write_canonical(p: Param, arr: np.ndarray, owned: bool = False) -> None:
    """Write the checked canonical ``arr`` to ``p``'s storage: converted to
    the native layout (one tiled copy where a transpose is needed), handed to
    ``write_owned`` when that copy, or ``arr`` itself (``owned``: the caller
    made it for this write), is private to this write."""
    leaf = p._leaf
    layout = leaf.layout
    if layout in _PLAIN:
        native = arr
    else:
        native = to_native(arr, layout, p._concrete_shape_native())
        owned = owned or not np.may_share_memory(native, arr)
    h = p._handle
    with adapter_call(h.backend.name, f"write {p.name!r}", fix=_fix()):
        if owned:
            h.write_owned(leaf, native)
        else:
            h.write(leaf, native)


def write_deferred(p: Param, v: Deferred, what: str) -> None:
    """Write a ``Deferred`` value (a file's tensor, a port's source, a
    seeded draw): straight into the storage's host memory where the value
    can fill a buffer itself (``read_into``) in the storage's layout and
    dtype; else read, checked, and written as a private array."""
    fill = getattr(v, "read_into", None)
    if fill is not None and v.dtype == p.dtype and v.shape == p.shape and p._leaf.layout in _PLAIN:
        h = p._handle
        with adapter_call(h.backend.name, f"write {p.name!r}", fix=_fix()):
            buf = h.host_buffer(p._leaf)
        if (buf is not None and buf.shape == v.shape and buf.dtype == v.dtype and buf.flags.c_contiguous
                and buf.flags.writeable):
            fill(buf)
            return
    value = np.asarray(v)
    checked = check_value(p, value, what)
    write_canonical(p, checked, owned=getattr(v, "private", False) or checked is not value)


def _keep(raw: np.ndarray, private: bool, store: Undo | None) -> Callable[[], np.ndarray]:
    """``store.keep``, or without a store a copy in memory (``raw`` itself
    when ``private``: made for this undo)."""
    if store is not None:
        return store.keep(raw, private)
    old = raw if private else np.array(raw, copy=True)
    return lambda: old


def snapshot(p: Param, store: Undo | None = None) -> Callable[[], None]:
    """An undo of the next writes to ``p``: the adapter's own snapshot
    (no copy where the framework's values are immutable or copy-on-write),
    else a copy of the native value, written back as it was read; with
    ``store``, copies go where it keeps them (a temporary file when it
    ``spills``: the old bytes written from a view of the storage, no copy
    in memory; see ``_undo``)."""
    h, leaf = p._handle, p._leaf
    spill = store is not None and store.spills
    with adapter_call(h.backend.name, f"read {p.name!r}"):
        snap = h.snapshot(leaf)
        if snap is None or isinstance(snap, np.ndarray):  # a NumPy snapshot: a view of the bytes a write replaces
            raw = h.read(leaf, copy=not spill) if snap is None else snap
            back = _keep(raw, snap is None and not spill, store)
            put = h.write if snap is None else h.restore

            def undo() -> None:
                put(leaf, back())
        else:

            def undo() -> None:
                h.restore(leaf, snap)
    return undo

