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

import threading
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate, repeat
from operator import attrgetter, is_, itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _limits
from ._boundary import adapter_call
from ._layout import CANONICAL, NATIVE, copy_canonical, empty, to_canonical, to_native
from ._param import Param
from ._values import Deferred, ParamValue, check_value

if TYPE_CHECKING:
    from ._undo import Undo

__all__ = ["write_canonical", "write_deferred", "write_batch", "snapshot", "snapshot_batch", "read_values",
           "batches_of", "names_of", "specs_of"]

_PLAIN = (CANONICAL, NATIVE)
_PLAIN_SET = frozenset(_PLAIN)


def _fix() -> str:
    return "report this as a bug of the adapter; the value was not changed"


def _to_native(p: Param, arr: np.ndarray, owned: bool) -> tuple[np.ndarray, bool]:
    """``arr`` in ``p``'s native layout, and whether the result is private to
    this write (``owned``, or a copy the conversion made)."""
    layout = p._leaf.layout
    if layout in _PLAIN:
        return arr, owned
    native = to_native(arr, layout, p._concrete_shape_native())
    return native, owned or not np.may_share_memory(native, arr)


def write_canonical(p: Param, arr: np.ndarray, owned: bool = False) -> None:
    """Write the checked canonical ``arr`` to ``p``'s storage: converted to
    the native layout (one tiled copy where a transpose is needed), handed to
    ``write_owned`` when that copy, or ``arr`` itself (``owned``: the caller
    made it for this write), is private to this write."""
    leaf = p._leaf
    native, owned = _to_native(p, arr, owned)
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
    elif fill is not None and v.dtype == p.dtype and v.shape == p.shape:
        buf = _read_buffer(v.dtype, v.shape)
        if buf is not None:  # converted from the reused buffer into its own array (``_to_native``)
            fill(buf)
            write_canonical(p, buf)
            return
    value = np.asarray(v)
    checked = check_value(p, value, what)
    write_canonical(p, checked, owned=getattr(v, "private", False) or checked is not value)


_BUFFER = threading.local()


def _read_buffer(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
    """A reused, aligned buffer of ``shape`` for a file's tensor that a layout
    conversion copies anyway (a kernel-last storage's load): read into warm
    memory, then transposed once into the array the storage keeps, instead
    of read into fresh pages and copied into fresh pages again (first touch
    of fresh memory costs about 1.6 s/GiB on a VM). One per thread, at most
    ``_limits.READ_BUFFER_BYTES`` (``None`` above it, or below
    ``_limits.READ_BUFFER_FROM``: the one-array route)."""
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if n < _limits.READ_BUFFER_FROM or n > _limits.READ_BUFFER_BYTES:
        return None
    buf = getattr(_BUFFER, "buf", None)
    if buf is None or buf.nbytes < n:
        buf = None
        _BUFFER.buf = buf = empty((n,), np.uint8)
    return buf[:n].view(dtype).reshape(shape)  # type: ignore[no-any-return]


def _keep(raw: np.ndarray, private: bool, store: Undo | None) -> Callable[[], np.ndarray]:
    """``store.keep``, or without a store a copy in memory (``raw`` itself
    when ``private``: made for this undo)."""
    if store is not None:
        return store.keep(raw, private)
    old = raw if private else np.array(raw, copy=True)
    return lambda: old


def _bytes_to_file(h: Any, leaf: Any, spill: bool) -> bool:
    """Whether the undo of ``leaf`` keeps its bytes in the undo file rather
    than the framework's own snapshot: when the undo spills
    (``_limits.UNDO_SPILL_SNAPSHOTS``) and the storage is not sharded. An
    immutable snapshot (JAX, TensorFlow) costs no copy but keeps the old
    value alive until the end of the write, a second model at its peak; a
    sharded storage keeps the adapter's snapshot (its local pieces: a
    ``read`` would gather)."""
    return spill and _limits.UNDO_SPILL_SNAPSHOTS and h.shards(leaf) is None


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
        snap = None if _bytes_to_file(h, leaf, spill) else h.snapshot(leaf)
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



# -- batches of small storages (issue 13): one adapter call for many ----------------------

def batches_of(ps: Sequence[Param], sizes: Sequence[int]) -> list[tuple[int, int]]:
    """``[start, end)`` runs of consecutive storages of one handle holding at
    most ``BATCH_BYTES`` (a larger storage: a run of its own): one
    ``read_many``/``write_many`` each, for saves, loads and ports alike."""
    limit = _limits.BATCH_BYTES
    n = len(ps)
    if not n:
        return []
    out: list[tuple[int, int]] = []
    if len(set(map(_HANDLE, ps))) == 1:  # one model (the common case): cut where the running total passes the limit
        ends = list(accumulate(sizes))
        if ends[-1] <= limit:
            return [(0, n)]
        start = 0
        while start < n:
            end = max(bisect_right(ends, (ends[start - 1] if start else 0) + limit, start), start + 1)
            out.append((start, end))
            start = end
        return out
    start, total, handle = 0, 0, None
    for i, (p, size) in enumerate(zip(ps, sizes)):
        if i > start and (p._handle is not handle or total + size > limit):
            out.append((start, i))
            start, total = i, 0
        handle = p._handle
        total += size
    out.append((start, n))
    return out


def names_of(ps: Sequence[Param]) -> str:
    """``'a'`` or ``'a' and 9 more``: what a batched adapter call acts on."""
    return repr(ps[0].name) if len(ps) == 1 else f"{ps[0].name!r} and {len(ps) - 1} more"


_HANDLE, _LEAF, _LAYOUT, _PARAM = attrgetter("_handle"), attrgetter("_leaf"), attrgetter("layout"), attrgetter("param")
_READER, _ENTRY, _SHAPE, _DTYPE = attrgetter("_reader"), attrgetter("_entry"), attrgetter("shape"), attrgetter("dtype")
_FIRST, _SECOND = itemgetter(0), itemgetter(1)


def specs_of(ps: Sequence[Param]) -> tuple[list[Any], list[tuple[int | None, ...]], list[np.dtype]]:
    """The leaves, canonical shapes (tuples) and dtypes of the storages
    ``ps`` of one block, each shape and dtype asked for once, in list
    passes (a load or port of 10,000 small storages, issue 13)."""
    if not ps:
        return [], [], []
    h = ps[0]._handle
    leaves = list(map(_LEAF, ps))
    shapes, dts = h.shapes_dtypes_many(leaves)  # one call for all
    if set(map(_LAYOUT, leaves)) == {CANONICAL}:
        if set(map(type, shapes)) != {tuple}:
            shapes = [tuple(shape) for shape in shapes]
    else:
        shapes = [p.shape for p in ps]  # converted (and kept) by the Param
    dts = list(dts)
    if not all(map(isinstance, dts, repeat(np.dtype))):
        dts = [dt if isinstance(dt, np.dtype) else np.dtype(dt) for dt in dts]
    return leaves, shapes, dts


def _canonical_reads(ps: Sequence[Param]) -> list[np.ndarray]:
    """The canonical values of the storages ``ps`` of one handle, with one
    ``read_many`` (views where the framework allows)."""
    h = ps[0]._handle
    leaves = list(map(_LEAF, ps))
    with adapter_call(h.backend.name, f"read {names_of(ps)}"):
        raws = list(h.read_many(leaves, copy=False))
    layouts = list(map(_LAYOUT, leaves))
    if _PLAIN_SET.issuperset(layouts):
        return raws
    return [raw if layout in _PLAIN else to_canonical(raw, layout) for raw, layout in zip(raws, layouts)]


def _resolve(values: Sequence[np.ndarray | Deferred]) -> tuple[list[np.ndarray], list[bool]]:
    """Each value as an array and whether it is private to this write: a
    file's tensors read with one read per span (``Reader.read_many``), a
    port's sources with one ``read_many`` per source model, other values
    one at a time. A batch of one kind from one source (a load's, a port's)
    is resolved in list passes, not a loop step per value."""
    from ._format import FileTensor

    n = len(values)
    kinds = set(map(type, values))
    if len(kinds) == 1:
        kind = kinds.pop()
        if kind is FileTensor:
            readers = set(map(_READER, values))
            if len(readers) == 1:
                return readers.pop().read_many(list(map(_ENTRY, values))), [True] * n
        elif kind is ParamValue or kind is Param:  # a port's sources (a Param: its canonical value)
            ps = list(map(_PARAM, values)) if kind is ParamValue else list(values)
            if len(set(map(_HANDLE, ps))) == 1:
                return _canonical_reads(ps), [False] * n  # type: ignore[arg-type]
        elif kind is np.ndarray:
            return list(values), [False] * n  # type: ignore[arg-type]  # checked by the caller
    out: list[Any] = [None] * n
    private = [False] * n
    files: dict[int, list[int]] = {}
    sources: dict[int, list[int]] = {}
    for i, v in enumerate(values):
        if isinstance(v, np.ndarray):
            out[i] = v  # checked by the caller
        elif type(v) is FileTensor:
            files.setdefault(id(v._reader), []).append(i)
        elif type(v) is ParamValue:
            sources.setdefault(id(v.param._handle), []).append(i)
        elif type(v) is Param:
            sources.setdefault(id(v._handle), []).append(i)
        else:
            out[i], private[i] = np.asarray(v), bool(getattr(v, "private", False))
    for idx in files.values():
        reader = values[idx[0]]._reader  # type: ignore[union-attr]
        arrays = reader.read_many([values[i]._entry for i in idx])  # type: ignore[union-attr]
        for i, a in zip(idx, arrays):
            out[i], private[i] = a, True
    for idx in sources.values():
        ps = [v.param if type(v) is ParamValue else v for v in (values[i] for i in idx)]  # type: ignore[union-attr]
        for i, a in zip(idx, _canonical_reads(ps)):  # type: ignore[arg-type]
            out[i] = a
    return out, private


def write_batch(items: Sequence[tuple[Param, np.ndarray | Deferred]], shapes: Sequence[tuple[int, ...]],
                dtypes: Sequence[np.dtype], what: str) -> None:
    """``write_deferred``/``write_canonical`` of every item (distinct
    storages of one handle, canonical ``shapes`` and ``dtypes`` already
    asked for; a value may be another model's ``Param``, a port's source:
    its canonical value, as a ``ParamValue`` of it gives without one object
    per storage): values read together (``_resolve``), each checked as
    ``write_deferred`` checks it, converted, then one ``write_many`` (two:
    the values private to this write, and the others). A batch of one takes
    the one-storage route (a file's tensor straight into host memory).
    Values that already have the storages' dtypes and shapes, and storages
    in plain layouts, pass in list passes (10,000 small storages, issue 13)."""
    if len(items) == 1:
        p, v = items[0]
        if type(v) is Param:
            v = ParamValue(tuple(v.shape), v.dtype, v)  # type: ignore[arg-type]
        if isinstance(v, Deferred):
            write_deferred(p, v, what)
        else:
            p._write_canonical(v)
        return
    h = items[0][0]._handle
    ps = list(map(_FIRST, items))
    arrays, private = _resolve(list(map(_SECOND, items)))
    leaves = list(map(_LEAF, ps))
    if not (list(map(_DTYPE, arrays)) == list(dtypes) and list(map(_SHAPE, arrays)) == list(shapes)):
        for k, ((p, v), arr, shape, dtype) in enumerate(zip(items, arrays, shapes, dtypes)):
            if isinstance(v, (Deferred, Param)) and not ((arr.dtype is dtype or arr.dtype == dtype)
                                                        and arr.shape == shape):
                checked = check_value(p, arr, what)
                private[k] = private[k] or checked is not arr
                arrays[k] = checked
    if not _PLAIN_SET.issuperset(map(_LAYOUT, leaves)):
        for k, (p, arr) in enumerate(zip(ps, arrays)):
            arrays[k], private[k] = _to_native(p, arr, private[k])
    if all(private):
        owned, shared = list(zip(leaves, arrays)), []
    elif not any(private):
        owned, shared = [], list(zip(leaves, arrays))
    else:
        owned = [(leaf, a) for leaf, a, mine in zip(leaves, arrays, private) if mine]
        shared = [(leaf, a) for leaf, a, mine in zip(leaves, arrays, private) if not mine]
    with adapter_call(h.backend.name, f"write {names_of(ps)}", fix=_fix()):
        if shared:
            h.write_many(shared)
        if owned:
            h.write_many(owned, owned=True)


def _best_effort(many: Callable[[Any], None], one: Callable[[Any, Any], None], pairs: list[tuple[Any, Any]]) -> None:
    """An undo of a batch: ``many(pairs)``, else each pair alone (the
    original error matters, not the undo's)."""
    try:
        many(pairs)
    except Exception:
        for a, b in pairs:
            try:
                one(a, b)
            except Exception:  # noqa: S112 - best effort
                continue


def snapshot_batch(ps: Sequence[Param], store: Any = None) -> Callable[[], None]:
    """``snapshot`` of the distinct storages ``ps`` of one handle with one
    ``snapshot_many`` and one ``read_many`` (copies of those the adapter
    keeps no snapshot of); the undo restores them with one ``write_many``
    and one ``restore_many``. ``store`` (an ``Undo``: ``spills``,
    ``keep(array, private)``) keeps the old values where it keeps them;
    without one they are copies in memory."""
    if len(ps) == 1 and store is None:
        return snapshot(ps[0])
    h = ps[0]._handle
    leaves = list(map(_LEAF, ps))
    spill = store is not None and store.spills
    with adapter_call(h.backend.name, f"read {names_of(ps)}"):
        if spill and _limits.UNDO_SPILL_SNAPSHOTS:  # bytes to the file, but sharded storages' own pieces
            snaps = [None if _bytes_to_file(h, leaf, spill) else h.snapshot(leaf) for leaf in leaves]
        else:
            snaps = h.snapshot_many(leaves)
        if all(map(is_, snaps, repeat(None))):  # no snapshot of its own: every storage copied (one pass in C)
            plain = leaves
        else:
            plain = [leaf for leaf, snap in zip(leaves, snaps) if snap is None]
        many = store is not None and not spill and len(plain) > 1  # views, copied at once into one array
        olds = h.read_many(plain, copy=not (spill or many)) if plain else []
    kept = [(leaf, snap) for leaf, snap in zip(leaves, snaps) if snap is not None] if len(plain) < len(leaves) else []
    arrays = [(leaf, snap) for leaf, snap in kept if isinstance(snap, np.ndarray)]  # views of what a write replaces
    if arrays:
        kept = [(leaf, snap) for leaf, snap in kept if not isinstance(snap, np.ndarray)]
    if many:
        back_all = store.keep_many(olds)
        backs: list[Callable[[], np.ndarray]] = []
    else:
        backs = [_keep(raw, not spill, store) for raw in olds]  # read_many copied them unless they spill
    views = [(leaf, _keep(snap, False, store)) for leaf, snap in arrays]

    def undo() -> None:
        if plain:
            olds = back_all() if many else [back() for back in backs]
            _best_effort(h.write_many, h.write, list(zip(plain, olds)))
        if views:
            _best_effort(h.restore_many, h.restore, [(leaf, back()) for leaf, back in views])
        if kept:
            _best_effort(h.restore_many, h.restore, kept)

    return undo


def read_values(ps: Sequence[Param], copy: bool) -> list[np.ndarray]:
    """``[p.read(copy) for p in ps]`` (distinct storages of one handle) with
    one ``read_many`` per kind of read (``m.state()``, issue 13): the same
    checks (every parameter concrete, before anything is read), the same
    values (canonical copies, or read-only canonical views)."""
    if len(ps) < 2:
        return [p.read(copy=copy) for p in ps]
    for p in ps:
        shape = p._handle.shape(p._leaf)
        if None in shape:
            p._require_concrete("read")
    h = ps[0]._handle
    direct = [i for i, p in enumerate(ps) if p._leaf.layout == CANONICAL]  # a copy, if any, by the adapter
    other = [i for i, p in enumerate(ps) if p._leaf.layout != CANONICAL]  # a view, converted by the core
    out: list[Any] = [None] * len(ps)
    for idx, adapter_copies in ((direct, copy), (other, False)):
        if not idx:
            continue
        with adapter_call(h.backend.name, f"read {names_of([ps[i] for i in idx])}"):
            raws = h.read_many([ps[i]._leaf for i in idx], copy=adapter_copies)
        for i, raw in zip(idx, raws):
            layout = ps[i]._leaf.layout
            if copy:
                out[i] = raw if layout == CANONICAL else copy_canonical(raw, layout)
                continue
            value = to_canonical(raw, layout)
            if value.flags.writeable:
                value = value.view()
                value.flags.writeable = False
            out[i] = value
    return out
