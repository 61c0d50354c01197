"""The undo of one atomic write (contracts 2.3, 7.2, 10): what a load or a
port keeps of the values it overwrites, so that a failure midway restores
every storage, without holding a second model in memory.

Design (issue 18; measured at 1 GiB on PyTorch on the project's 2 shared
cores, docs/benchmarks.md "The atomic load's undo"):

* **Verify before the first write** (option a). A load checks the file's
  framing, header, byte ranges against the file's size, every name, shape
  and dtype before it writes anything, and reads the data through the one
  descriptor it opened (``_format.Reader``). What can still fail after the
  first write is short: another program changing the file *in place*
  (``open(path, 'wb')``, as safetensors' ``save_file`` and ``torch.save``
  do: same inode, truncated, rewritten), an adapter's write (a device
  transfer), a ``check=`` that the outputs refuse, and Ctrl-C (held to the
  end, then undone). No portable means stops an in-place writer: Linux read
  leases need the file's owner, signal the process (SIGIO kills it unless
  handled) and end after ``lease-break-time`` (45 s) whether or not the
  load is done; reflink snapshots exist on btrfs and XFS only. So verifying
  first shrinks the failure points but cannot remove the undo of a file.
* **The undo goes to a temporary file above ``_limits.UNDO_SPILL_BYTES``**
  (option b; 64 MiB). Below it the old values are copied in memory, as
  before. Above it, each storage's old bytes are written, just before the
  storage is overwritten, from the storage's own host memory
  (``Handle.read(copy=False)``: a view where the framework has one; a
  ``DTensor``'s local piece) to an unlinked temporary file in
  ``_limits.UNDO_DIR`` (default ``tempfile.gettempdir()``, i.e.
  ``TMPDIR``). What stays resident is one tensor at most; the file's pages
  are page cache, which the kernel writes back and drops under memory
  pressure (anonymous memory cannot go anywhere without swap), and a
  killed process leaves no file behind. An undo reads each storage back,
  one at a time. A disk that refuses the file (full, read-only, absent)
  moves the rest of the undo to memory: the load still runs, as before.
* **What it costs** (option c, the profile). A 1 GiB PyTorch load without
  any undo takes 0.2-0.4 s; the old in-memory undo added 0.2-0.4 s where
  the allocator reused freed pages and 1.1-1.7 s where the pages were
  fresh (first touch of new memory is the cost on this VM, not the copy:
  1.6 s for a fresh 1 GiB mapping, 0.2 s to copy into pages already
  mapped). The file costs page-cache pages, which are fresh too: 0.5-1 s
  per GiB of wall time on the loaded machine, about 10 % more CPU time
  than the in-memory copy. Writing the file from a background thread one
  storage ahead (``_limits.UNDO_THREAD``) cost more CPU than it hid on 2
  busy cores, so it is off by default.
* **Framework snapshots.** Where the adapter's ``snapshot`` is the
  framework's own immutable or copy-on-write value (JAX arrays, TensorFlow
  tensors), it is kept: no copy. It keeps the old value alive until the
  write ends, but those frameworks' writes allocate new buffers anyway, so
  the first load in a process peaked at one model above its start with or
  without it (measured at 512 MiB), and sending those bytes to the file
  (``_limits.UNDO_SPILL_SNAPSHOTS``, off) only added a copy. A snapshot
  that is a NumPy array is a *view* of bytes the write replaces (a PyTorch
  ``DTensor``'s local piece: never gathered) and is copied like a
  ``read``, to the file above the threshold.
* **Ties and buffers.** The core writes each storage once (a tie group is
  one storage), so each storage's undo is kept and restored once; buffers
  are storages like parameters.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import numpy as np

from . import _limits

__all__ = ["Undo"]

_SHAPE, _SIZE = attrgetter("shape"), attrgetter("size")

#: at most this many bytes per read or write system call (Linux caps one at
#: 2 GiB less a page)
_CHUNK = 1 << 30


class Undo(list):  # type: ignore[type-arg]
    """The undos of one transaction, in order (each a callable that puts
    one storage back), and the temporary file their old values go to when
    the transaction writes more than ``_limits.UNDO_SPILL_BYTES``
    (``spills``). With ``_limits.UNDO_THREAD``, old bytes are written to
    the file by one background thread, so that the copy of the next
    storage's old value overlaps the write into this one (``mark``/``wait``:
    the caller waits for a storage's copy before it overwrites the storage).
    ``close()`` drops the file; it is unlinked from the start."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.spills = total > _limits.UNDO_SPILL_BYTES
        self._fh: Any = None
        self._end = 0
        self._pool: Any = None
        self._pending: list[Any] = []
        self._done = 0  # futures of _pending already waited for
        #: how many of the undos guard storages already written or being
        #: written (``None``: all); ``restore`` runs only those (the undo of a
        #: batch taken ahead of its write is not run for a write never made)
        self.armed: int | None = None
        #: bytes of old values written to the file, and kept in memory (tests, benchmarks)
        self.spilled = 0
        self.held = 0

    def keep(self, arr: np.ndarray, private: bool) -> Callable[[], np.ndarray]:
        """Keep the bytes of ``arr`` (``private``: a copy made for this undo,
        kept as it is when nothing is spilled); returns a function that gives
        them back as an array of ``arr``'s shape and dtype. A spilled copy
        may still be under way: ``wait(mark())`` before ``arr`` changes."""
        if self.spills:
            try:
                return self._spill(arr)
            except OSError:  # no room for the file: the rest of the undo in memory, as before
                self.spills = False
        return self._hold(arr if private else np.array(arr, copy=True))

    def keep_many(self, arrays: list[np.ndarray]) -> Callable[[], list[np.ndarray]]:
        """``keep`` of each of ``arrays`` (not private: views of storages
        about to be overwritten, copied now); in memory, arrays of one dtype
        are kept as one concatenated copy, not one array each (a batch of
        10,000 small storages: one allocation, issue 13). Returns a function
        that gives them back, in order, each of its shape and dtype."""
        if len(arrays) > 1 and not self.spills:
            dtype = arrays[0].dtype
            try:
                flat = np.concatenate(arrays, axis=None, dtype=dtype, casting="no")
            except Exception:  # noqa: BLE001 - mixed dtypes, or one NumPy cannot concatenate: one at a time
                flat = None
            if flat is not None:
                shapes = list(map(_SHAPE, arrays))
                sizes = list(map(_SIZE, arrays))
                self.held += flat.nbytes

                def back_all() -> list[np.ndarray]:
                    out, at = [], 0
                    for shape, n in zip(shapes, sizes):
                        out.append(flat[at:at + n].reshape(shape))
                        at += n
                    return out

                return back_all
        backs = [self.keep(a, False) for a in arrays]
        return lambda: [back() for back in backs]

    def _hold(self, old: np.ndarray) -> Callable[[], np.ndarray]:
        self.held += old.nbytes
        return lambda: old

    def _file(self) -> Any:
        if self._fh is None:
            folder = _limits.UNDO_DIR or tempfile.gettempdir()
            self._fh = tempfile.TemporaryFile(dir=folder, prefix=".up-undo-", buffering=0)
        return self._fh

    def _spill(self, arr: np.ndarray) -> Callable[[], np.ndarray]:
        a = arr if arr.flags.c_contiguous else np.array(arr, order="C")  # (ascontiguousarray makes 0-d 1-d)
        shape, dtype, n = a.shape, a.dtype, a.nbytes
        fh = self._file()
        at = self._end
        self._end = at + n
        kept: list[np.ndarray] = []  # the old value in memory, where the file refused it

        def put(a: np.ndarray = a) -> None:
            try:
                _write_at(fh, memoryview(a.reshape(-1).view(np.uint8)), at)  # type: ignore[arg-type]
                self.spilled += n
            except OSError:  # a full disk midway: this and the next old values in memory
                self.spills = False
                kept.append(np.array(a, copy=True))
                self.held += n

        if n and not _limits.UNDO_THREAD:
            put()
        elif n:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(1, thread_name_prefix="up-undo")
            self._pending.append(self._pool.submit(put))
        del a

        def back() -> np.ndarray:
            if kept:
                return kept[0]
            out = np.empty(shape, dtype)
            if n:
                _read_at(fh, memoryview(out.reshape(-1).view(np.uint8)), at)  # type: ignore[arg-type]
            return out

        return back

    def mark(self) -> int:
        """A position in the copies under way: ``wait(mark())`` returns once
        every copy kept so far is complete."""
        return len(self._pending)

    def wait(self, upto: int | None = None) -> None:
        """Wait for the copies kept before ``mark()`` returned ``upto``
        (default: all); a copy's own failure was handled where it ran."""
        end = len(self._pending) if upto is None else upto
        error: BaseException | None = None
        while self._done < end:  # every one waited for, even after a failure: none runs on behind an undo
            future = self._pending[self._done]
            self._done += 1
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001 - raised below, once all are done
                error = error or exc
        if error is not None:
            raise error

    def restore(self) -> None:
        """Run every undo, in order; each one's failure is skipped (the
        error that caused the undo is the one raised)."""
        try:
            self.wait()
        except Exception:  # noqa: S110 - a copy that failed is read back as far as it went
            pass
        for undo in (self if self.armed is None else self[:self.armed]):
            try:
                undo()
            except Exception:  # noqa: S112 - best effort; the original error matters
                continue

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._pending = []
        self._done = 0
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()


def _write_at(fh: Any, buf: memoryview, at: int) -> None:
    """Write ``buf`` at byte ``at`` of the undo file."""
    fd = fh.fileno()
    done, n = 0, len(buf)
    while done < n:
        k = os.pwrite(fd, buf[done:done + _CHUNK], at + done)
        if k <= 0:
            raise OSError("the undo file took no bytes")
        done += k


def _read_at(fh: Any, buf: memoryview, at: int) -> None:
    """Fill ``buf`` from byte ``at`` of the undo file."""
    fd = fh.fileno()
    done, n = 0, len(buf)
    preadv = getattr(os, "preadv", None)
    while done < n:
        part = buf[done:done + _CHUNK]
        if preadv is not None:
            k = preadv(fd, [part], at + done)
        else:  # pragma: no cover - platforms without preadv
            data = os.pread(fd, len(part), at + done)
            k = len(data)
            part[:k] = data
        if k <= 0:
            raise OSError(f"the undo file ended at byte {at + done}")
        done += k
