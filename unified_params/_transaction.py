"""Writes of several values as one transaction (contracts 2.3, 7.2).

Design constraints: everything is checked before the first write; a write
that fails midway restores every storage already written; Ctrl-C is held
until the last write. Backups cost a copy of what is written, so they are
kept where a write can still fail once every value is checked (see
``write_atomic``); thresholds come from ``_limits`` at call time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import chain
from operator import attrgetter, itemgetter, mul
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _limits
from ._fastpath import batches_of, snapshot_batch, write_batch
from ._format import no_gc
from ._undo import Undo
from ._values import Deferred

if TYPE_CHECKING:
    from ._param import Param

__all__ = ["write_atomic", "progress_bar", "LARGE_BYTES"]

_FIRST, _ITEMSIZE = itemgetter(0), attrgetter("itemsize")

#: Kept for compatibility; the threshold read at call time is ``_limits.LARGE_BYTES``.
LARGE_BYTES = _limits.LARGE_BYTES


def progress_bar(progress: bool | None, total: int, desc: str) -> Any:
    """A tqdm bar over ``total`` bytes when asked for (``progress=True``) or,
    with ``progress=None``, when the work is large and stderr a terminal;
    tqdm is imported only then."""
    if progress is False or (progress is None and total <= _limits.LARGE_BYTES):
        return None
    if progress:  # asked for: a missing tqdm is a BackendNotInstalledError naming the extra
        from ._registry import require

        require("tqdm", "cli", "for progress=True")
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False,
                disable=None if progress is None else False)


def _nbytes(p: Param) -> int:
    return int(p.size or 0) * p.dtype.itemsize


class _HeldInterrupts:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise it, so that an
    interrupt never lands between two writes of one atomic operation. A no-op
    outside the main thread or where someone else handles SIGINT."""

    def __enter__(self) -> _HeldInterrupts:
        import signal
        import threading

        self.got: list[int] = []
        self.old: Any = None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.old = signal.signal(signal.SIGINT, lambda s, f: self.got.append(s))
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if self.got and exc[0] is None:
                raise KeyboardInterrupt


def write_atomic(
    items: Sequence[tuple[Param, np.ndarray | Deferred]],
    *,
    what: str = "write",
    progress: bool | None = False,
    backup: bool | None = None,
    verify: Callable[[], None] | None = None,
    shapes: Sequence[tuple[int, ...]] | None = None,
    dtypes: Sequence[np.dtype] | None = None,
) -> None:
    """Write canonical values (checked with ``_check_value`` or
    ``_check_deferred``) to distinct storages; if a write fails, restore
    every storage written.

    Backups cost a copy of the model, so they are kept where a write can
    still fail once every value is checked: storages off the host (device
    memory, transfers), and every storage when the whole write is small
    (``LARGE_BYTES``). A large write into host memory copies checked values
    in place, which only the interpreter itself (MemoryError, a bug in an
    adapter) can interrupt midway; Ctrl-C is held until the last write.

    ``backup=True`` keeps backups whatever the size (a source that can
    still fail midway, such as a file another program may change);
    ``backup=False`` keeps none. ``verify`` runs after the last write, inside
    the transaction: an exception from it restores every storage.
    ``shapes``/``dtypes``: the storages' canonical shapes and dtypes where
    the caller has just asked for them (each an adapter call).
    """
    with no_gc():  # many small objects, no cycles: the collector would only walk the model
        _write_atomic(items, what, progress, backup, verify, shapes, dtypes)


def _write_atomic(
    items: Sequence[tuple[Param, np.ndarray | Deferred]],
    what: str,
    progress: bool | None,
    backup: bool | None,
    verify: Callable[[], None] | None,
    known_shapes: Sequence[tuple[int, ...]] | None,
    known_dtypes: Sequence[np.dtype] | None,
) -> None:
    if known_shapes is not None and known_dtypes is not None:
        shapes, dtypes = list(known_shapes), list(known_dtypes)
        if None in chain.from_iterable(shapes):  # type: ignore[operator]  # (one pass in C over every dim)
            for (q, _), shape in zip(items, shapes):
                if None in shape:
                    q._require_concrete("write")
    else:
        shapes, dtypes = [], []
        for p, _ in items:  # each an adapter call: asked once per storage
            found = p.shape
            if None in found:
                p._require_concrete("write")
            shapes.append(found)  # type: ignore[arg-type]
            dtypes.append(p.dtype)
    sizes = list(map(mul, map(math.prod, shapes), map(_ITEMSIZE, dtypes)))  # bytes of each, in list passes
    small = sum(sizes) <= _limits.LARGE_BYTES if backup is None else backup
    bar = progress_bar(progress, sum(sizes), what)
    backups = Undo(sum(sizes))  # old values: in memory, or above UNDO_SPILL_BYTES in a temporary file
    try:
        with _HeldInterrupts():
            batches = batches_of(list(map(_FIRST, items)), sizes)  # one read_many/write_many per batch

            def kept(a: int, b: int) -> tuple[int, int]:  # the undo of batch [a, b): its copies, its undos
                keep = list(map(_FIRST, items[a:b])) if small else \
                    [p for p, _ in items[a:b] if backup is None and p.device != "cpu"]
                if keep:
                    backups.append(snapshot_batch(keep, backups))  # no copy where the framework's values are immutable
                return backups.mark(), len(backups)

            ahead = kept(*batches[0]) if batches else (0, 0)
            for j, (a, b) in enumerate(batches):
                ready, armed = ahead
                if j + 1 < len(batches):  # the next batch's old values are copied while this one is written
                    ahead = kept(*batches[j + 1])
                backups.wait(ready)
                backups.armed = armed  # undone on failure: the batches up to this one
                batch = items[a:b]
                # a file's large tensor: straight into the storage where it can
                write_batch(batch, shapes[a:b], dtypes[a:b], what)
                if bar is not None:
                    bar.update(sum(sizes[a:b]))
            if verify is not None:
                verify()
    except BaseException:
        backups.restore()
        raise
    finally:
        backups.close()
        if bar is not None:
            bar.close()


