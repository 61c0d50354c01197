"""The safetensors format, in one place: the dtype table, the one header
parser (used by ``up.load``, ``read_file`` and the CLI's ``inspect``) and
the one writer (used by ``up.save``).

Design constraints: a file is hostile until checked. The path must name a
regular file (checked with ``os.stat`` before it is opened, so a FIFO never
blocks); the header is bounded (``_limits.MAX_HEADER_BYTES``, nesting, dims
that fit int64, shapes whose bytes fit the data) and its entries must tile
the data exactly, as safetensors itself requires; our own metadata (``names``,
``ties``) is checked against its schema. Every defect is a ``FileFormatError``
whose message is bounded in length. Tensors are read with ``readinto`` into
private arrays, never memory-mapped (a file truncated by another program would
raise SIGBUS), and the file's identity (size, mtime, inode) is re-checked
around every read, so a file changed during a load is reported, not loaded.
The writer is deterministic: the same model gives the same bytes.
"""

from __future__ import annotations

import gc
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter, sub
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from . import _limits
from ._errors import FileFormatError
from ._layout import contiguous, contiguous_into, empty
from ._values import Deferred

#: safetensors dtype code -> NumPy dtype name (bfloat16 and float8 from ml_dtypes).
DTYPES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
#: bytes per element of each code
ITEMSIZE: dict[str, int] = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
                            "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_CODES = {name: code for code, name in DTYPES.items()}
_ML_DTYPES = ("BF16", "F8_E4M3", "F8_E5M2")
#: NumPy 1.x arrays have at most 32 dimensions
MAX_DIMS = 32
_INT64_MAX = 2**63 - 1
FORMAT = "unified_params"

_MAGIC = {b"PK\x03\x04": "a zip archive (a torch.save or .npz file?)", b"\x89HDF": "an HDF5 file (Keras .h5?)",
          b"\x93NUMPY": "a .npy file", b"{": "a JSON text", b"\x1f\x8b": "a gzip file",
          **{bytes([0x80, v]): "a Python pickle" for v in range(2, 6)}}
_LAYOUT = "a safetensors file: an 8-byte little-endian header length, a JSON header, then the tensors' bytes"
_FIX = "the file is damaged or of another format; save the model again with up.save(m, path)"
CHANGED = "the file changed while it was read"


# -- bounded messages ---------------------------------------------------------------


def short(x: Any, limit: int = 120) -> str:
    """``repr(x)`` cut to ``limit`` characters."""
    r = x if isinstance(x, str) else repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def few(names: Iterable[Any], k: int = 5) -> str:
    """The first ``k`` names and how many more: a bounded list for a message."""
    out, n = [], 0
    for n, name in enumerate(names, 1):
        if n <= k:
            out.append(short(repr(name) if isinstance(name, str) else name, 80))
    more = f" and {n - k:,} more" if n > k else ""
    return "[" + ", ".join(out) + "]" + more


# -- dtypes -------------------------------------------------------------------------


def numpy_dtype(code: str) -> np.dtype:
    """The little-endian NumPy dtype of a safetensors code (ml_dtypes imported
    only for bfloat16 and float8)."""
    name = DTYPES[code]
    if code in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            raise FileFormatError(f"ml_dtypes installed, to read {code} tensors", "it is not installed",
                                  "pip install ml_dtypes") from None
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name).newbyteorder("<")


def code_of(dtype: np.dtype) -> str | None:
    """The safetensors code of a NumPy dtype, None where the format has none."""
    return _CODES.get(np.dtype(dtype).name)


# -- paths --------------------------------------------------------------------------


def as_path(path: Any, action: str) -> Path:
    """A path from str, bytes or os.PathLike; anything else, or a NUL byte in
    it (the OS cannot name such a file), is a FileFormatError."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise FileFormatError(f"a file path (str or os.PathLike) to {action}", short(path),
                              "pass e.g. 'model.safetensors'")
    try:
        text = os.fsdecode(path)
    except (TypeError, UnicodeError) as exc:
        raise FileFormatError(f"a file path to {action}", f"{short(path)}: {exc}", "pass a str path") from None
    if "\x00" in text:
        raise FileFormatError(f"a file path without NUL bytes to {action}", short(text),
                              "a path cannot contain '\\x00'; check how it was built")
    return Path(text)


def kind_of(mode: int) -> str:
    """What a stat mode names, in words (for messages)."""
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _stat_regular(p: Path) -> os.stat_result:
    """``os.stat`` of a regular file, every other outcome a FileFormatError;
    nothing is opened, so a FIFO cannot block."""
    where = short(str(p))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileFormatError("an existing safetensors file", f"{where} does not exist",
                              "check the path (and the current directory)") from None
    except NotADirectoryError:
        raise FileFormatError("a path whose folders are folders", f"{where}: a part of it is a file",
                              "check the path") from None
    except PermissionError as exc:
        raise FileFormatError("a file this process may read", f"{where}: {exc.strerror}",
                              "fix its permissions or run as a user who may read it") from None
    except (OSError, ValueError) as exc:
        raise FileFormatError("a readable file", f"{where}: {short(str(exc))}", "check the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise FileFormatError("a safetensors file", f"the directory {where}", "name a file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise FileFormatError("a regular safetensors file", f"{where} is {kind_of(st.st_mode)}",
                              "copy the data into a file first and pass its path")
    return st


@contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: building millions of small
    objects (a header of a million tensors, a listing of a large model)
    without it is several times faster, and these objects hold no cycles.
    (Shared by ``_tree``.)"""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


# -- the header ---------------------------------------------------------------------


class Entry(NamedTuple):
    """One tensor of a file: its code, shape and byte range in the data (a
    tuple: one is made per tensor of every header read)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {short(dup, 80)} appears twice")
    return out


def loads(text: str | bytes) -> Any:
    """Strict, bounded JSON: no NaN or Infinity, no duplicate keys; nesting
    too deep for the parser is a ValueError, not a RecursionError."""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dumps(x: Any) -> str:
    """Compact JSON, the same text for the same value (dict order kept)."""
    return json.dumps(x, separators=(",", ":"))


def _header_error(where: str, what: str) -> FileFormatError:
    return FileFormatError("a safetensors header as safetensors defines it", f"{what} in {where}", _FIX)


def _what_it_looks_like(head: bytes) -> str:
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return f"; it looks like {what}"
    return ""


def _valid_str(s: Any) -> bool:
    if not isinstance(s, str):
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape
        return False
    return True


_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


def _entry(name: str, info: Any, where: str, data_len: int, escapes: bool = True) -> Entry:
    if escapes and not _valid_str(name):  # (without \\u escapes every name decoded is valid UTF-8)
        raise _header_error(where, f"the tensor name {short(name, 80)}, not valid UTF-8")
    if not (isinstance(info, dict) and _ENTRY_KEYS <= info.keys()):
        raise FileFormatError(
            "each tensor's entry as {'dtype': str, 'shape': [int >= 0, ...], 'data_offsets': [begin, end]}",
            f"{short(name, 80)}: {short(info)} in {where}", _FIX)
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in DTYPES:
        raise FileFormatError(f"a dtype among {', '.join(DTYPES)}",
                              f"{short(code, 40)} for {short(name, 80)} in {where}",
                              "convert the tensor to a supported dtype and save again")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS
            and all(type(d) is int and 0 <= d <= _INT64_MAX for d in shape)):
        raise FileFormatError(f"a shape of at most {MAX_DIMS} dims, each an int in [0, 2**63)",
                              f"{short(shape)} for {short(name, 80)} in {where}", _FIX)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise FileFormatError("data_offsets as [begin, end], two ints",
                              f"{short(offsets)} for {short(name, 80)} in {where}", _FIX)
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise FileFormatError(
            f"data_offsets of {short(name, 80)} within the {data_len} bytes of data after the header",
            f"data_offsets [{short(begin, 30)}, {short(end, 30)}] in {where}",
            "the file is truncated or its header corrupted; save or copy it again")
    nbytes = ITEMSIZE[code]
    if 0 not in shape:
        for d in shape:  # dims >= 1: the product only grows, so stop once past the data
            nbytes *= d
            if nbytes > data_len:
                break
    else:
        nbytes = 0
    if end - begin != nbytes:
        what = f"{nbytes} bytes" if nbytes <= data_len else f"more than the {data_len} bytes of data"
        raise FileFormatError(
            f"{what} for {short(name, 80)} ({code} of shape {short(tuple(shape))})",
            f"data_offsets [{begin}, {end}] ({end - begin} bytes) in {where}", _FIX)
    return Entry(name, code, tuple(shape), begin, end)


def _entries_fast(header: dict[str, Any], data_len: int) -> dict[str, Entry] | None:
    """Every entry of a header with only regular entries (exactly the three
    keys, a known dtype, int dims and offsets in range, the byte count
    right), checked in one loop (a file of 10,000 tensors, issue 13);
    ``None`` at the first irregular one, which ``_entry`` then reports."""
    out: dict[str, Entry] = {}
    size_of, make, dims_max, int_max = ITEMSIZE, tuple.__new__, MAX_DIMS, _INT64_MAX
    for name, info in header.items():
        if type(info) is not dict or len(info) != 3:
            return None
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        nbytes = size_of.get(code) if type(code) is str else None
        if nbytes is None or type(shape) is not list or len(shape) > dims_max \
                or type(offsets) is not list or len(offsets) != 2:
            return None
        for d in shape:
            if type(d) is not int or d < 0 or d > int_max:
                return None
            nbytes *= d
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or not 0 <= begin <= end <= data_len \
                or end - begin != nbytes:
            return None
        out[name] = make(Entry, (name, code, tuple(shape), begin, end))
    return out


@dataclass(frozen=True)
class Header:
    """A checked header: tensors in the file's order, metadata, the offset
    where the data starts, and the file's stat when it was read."""

    path: Path
    entries: dict[str, Entry]
    metadata: dict[str, str]
    data_start: int
    size: int
    stamp: tuple[int, int, int, int]


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = fh.read(n - got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _parse(p: Path, fh: BinaryIO, size: int, stamp: tuple[int, int, int, int]) -> Header:
    where = short(repr(str(p)), 200)
    head = _read_exact(fh, 8)
    if size < 8 or len(head) < 8:
        raise FileFormatError(_LAYOUT, f"{where} holds only {size} bytes, no header{_what_it_looks_like(head)}",
                              "it is empty or cut short; save the model again with up.save(m, path)")
    n = int.from_bytes(head, "little")
    limit = _limits.MAX_HEADER_BYTES
    if n > limit:
        raise FileFormatError(f"a safetensors header of at most {limit} bytes",
                              f"{where} declares a header of {n} bytes{_what_it_looks_like(head)}", _FIX)
    if 8 + n > size:
        raise FileFormatError(
            f"{8 + n} bytes or more: the 8-byte length and the {n}-byte header it declares",
            f"{where} holds {size} bytes{_what_it_looks_like(head)}",
            "the file is truncated (an interrupted copy or download?); copy or save it again")
    raw = _read_exact(fh, n)
    if len(raw) != n:
        raise FileFormatError(CHANGED, f"{where} is shorter than when it was opened", "read it again")
    with no_gc():
        return _parse_json(p, raw, head, size - 8 - n, stamp)


#: a ``\\u`` escape (a regex finds it several times faster than ``in`` in a
#: header whose metadata holds thousands of ``\\"``)
_ESCAPE_U, _ESCAPE_U_TEXT = re.compile(rb"\\u"), re.compile(r"\\u")


def _colons(strings: Iterable[str]) -> int:
    """How many ':' the strings hold (one join, one count)."""
    return "".join(strings).count(":")


def _tiled(entries: Iterable[Entry], n: int, data_len: int) -> bool:
    """Whether the ``n`` entries' byte ranges tile ``[0, data_len)`` exactly
    (sorted by offsets, each begins where the one before ends): the check of
    ``_parse_json``, as array operations."""
    if not n:
        return data_len == 0
    offsets = np.fromiter((x for e in entries for x in (e.begin, e.end)), np.int64, 2 * n).reshape(n, 2)
    order = np.lexsort((offsets[:, 1], offsets[:, 0]))
    begins, ends = offsets[order, 0], offsets[order, 1]
    return bool(begins[0] == 0 and ends[-1] == data_len and np.array_equal(begins[1:], ends[:-1]))


def _parse_plain(raw: bytes, data_len: int) -> tuple[dict[str, Entry], dict[str, str]] | None:
    """The entries and metadata of a regular header (no ``\\u`` escapes,
    every entry regular, the entries tiling the data) from the C JSON parser
    alone, without the strict parse's hook, a Python call per object (a file
    of 10,000 tensors, issue 13). Duplicate keys, which the plain parser
    merges silently, are found by counting: in JSON without escapes each key
    is followed by one ':' outside strings, so the text holds exactly as many
    colons as the keys parsed plus the colons inside the strings parsed when
    no key was dropped, and more when one was (a dropped key's own colon).
    ``None`` for anything else: the strict parse then decides and words it."""
    if not raw.startswith(b"{") or _ESCAPE_U.search(raw):
        return None
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if type(header) is not dict:
        return None
    keys = len(header)
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    elif type(meta) is not dict or not all(type(v) is str for v in meta.values()):
        return None
    entries = _entries_fast(header, data_len)
    if entries is None or not _tiled(entries.values(), len(entries), data_len):
        return None
    # keys: the header's, the metadata's, three per entry (dtype, shape,
    # data_offsets: no colon in them, nor in a known dtype code)
    expected = keys + len(meta) + 3 * len(entries) + _colons(header) + _colons(meta) + _colons(meta.values())
    if raw.count(b":") != expected:
        return None
    return entries, meta


def _parse_json(p: Path, raw: bytes, head: bytes, data_len: int, stamp: tuple[int, int, int, int]) -> Header:
    plain = _parse_plain(raw, data_len)
    if plain is not None:
        return Header(p, plain[0], plain[1], 8 + len(raw), 8 + len(raw) + data_len, stamp)
    where = short(repr(str(p)), 200)
    try:
        if not raw.startswith(b"{"):
            raise ValueError("not a JSON object: it does not start with '{'")
        text = raw.decode("utf-8")
        header = loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FileFormatError("a JSON object as the safetensors header: the header is not JSON",
                              f"an unreadable header in {where} ({short(str(exc))}){_what_it_looks_like(head)}",
                              _FIX) from None
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(_valid_str(k) and _valid_str(v) for k, v in meta.items()):
        raise FileFormatError("'__metadata__' as a map of strings to strings", f"{short(meta)} in {where}", _FIX)
    escapes = "\\u" in text
    entries = None if escapes else _entries_fast(header, data_len)
    if entries is None:  # the one-entry checks, which name what is wrong
        entries = {k: _entry(k, v, where, data_len, escapes) for k, v in header.items()}
    at = 0  # as safetensors requires: the entries, sorted by offsets, tile the data exactly
    for e in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if e.begin != at:
            what = "overlap" if e.begin < at else "leave a gap"
            raise FileFormatError(
                "tensors whose data_offsets tile the data without gaps or overlaps",
                f"data_offsets [{e.begin}, {e.end}] of {short(e.name, 80)} {what} (at byte {at}) in {where}",
                _FIX)
        at = e.end
    if at != data_len:
        raise FileFormatError("tensors whose data_offsets cover the data up to the end of the file",
                              f"data_offsets end at byte {at} of {data_len} in {where}",
                              "the file has trailing bytes or its header is corrupted; save it again")
    return Header(p, entries, meta, 8 + len(raw), 8 + len(raw) + data_len, stamp)


def read_header(path: Any) -> Header:
    """The checked header of a safetensors file, without reading its data."""
    with Reader(path) as r:
        return r.header


class Reader:
    """An open, checked safetensors file: ``header``, then ``read(entry)`` one
    tensor at a time into a private array, and ``check()`` that the file is
    still the one whose header was read."""

    def __init__(self, path: Any) -> None:
        p = as_path(path, "read")
        self.path = p
        self._since = 0  # bytes read since the last check
        st = _stat_regular(p)  # before opening: a FIFO would block in open()
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(p, flags)
        except PermissionError as exc:
            raise FileFormatError("a file this process may read", f"{short(str(p))}: {exc.strerror}",
                                  "fix its permissions or run as a user who may read it") from None
        except OSError as exc:
            raise FileFormatError("a readable file", f"{short(str(p))}: {short(str(exc))}",
                                  "check the path and the device") from None
        self._fh: BinaryIO = os.fdopen(fd, "rb", buffering=0)
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode) or (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev):
                raise FileFormatError(CHANGED, f"{short(str(p))} was replaced while it was opened", "read it again")
            self.header = _parse(p, self._fh, fst.st_size, _stamp(fst))
        except OSError as exc:
            self._fh.close()
            raise FileFormatError("a readable file", f"{short(str(p))}: {short(str(exc))}",
                                  "check the path and the device") from None
        except BaseException:
            self._fh.close()
            raise

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    def check(self) -> None:
        """FileFormatError unless the path still names the file read, with the
        size, mtime and inode it had when the header was read."""
        try:
            now = (_stamp(os.fstat(self._fh.fileno())), _stamp(os.stat(self.path)))
        except (OSError, ValueError):
            now = None
        if now is None or now[0] != self.header.stamp or now[1] != self.header.stamp:
            raise FileFormatError(
                f"{short(repr(str(self.path)), 200)} unchanged while it is loaded",
                f"{CHANGED} (another program truncated, rewrote or replaced it)",
                "wait until the other program has finished writing it, then load again; the model is unchanged")

    def read(self, e: Entry) -> np.ndarray:
        """The tensor ``e`` as a new array (checked around the read)."""
        out = empty(e.shape, numpy_dtype(e.dtype))  # aligned: a framework may adopt it as it is
        self.read_into(e, out)
        return out

    def _read_exact(self, buf: memoryview, begin: int, what: str) -> None:
        """Fill ``buf`` from data offset ``begin``; a short read (the file cut
        or changed under us) is a FileFormatError after one more check."""
        self._fh.seek(self.header.data_start + begin)
        got, n = 0, len(buf)
        while got < n:
            k = self._fh.readinto(buf[got:])  # type: ignore[attr-defined]
            if not k:
                break
            got += k
        if got != n:
            self.check()
            raise FileFormatError(what, f"{got} bytes: {CHANGED}",
                                  "load again once the file is complete; the model is unchanged")

    def read_into(self, e: Entry, out: np.ndarray) -> None:
        """Read the tensor ``e`` straight into ``out`` (C-contiguous, of its
        shape and dtype: a new array, or a storage's own host memory), checked
        around the read; a short read is a FileFormatError (the caller undoes
        what it wrote)."""
        n = e.end - e.begin
        # Checked around every large tensor, and once per CHECK_BYTES of small
        # ones (two system calls each: per tensor they cost more than the
        # read); a load checks once more after its last write (and undoes).
        if n >= _limits.CHECK_BYTES or self._since >= _limits.CHECK_BYTES:
            self.check()
            self._since = 0
        if n:
            self._read_exact(memoryview(out.reshape(-1).view(np.uint8)), e.begin,  # type: ignore[arg-type]
                             f"{n} bytes of {short(e.name, 80)}")
        self._since += n
        if self._since >= _limits.CHECK_BYTES:
            self.check()
            self._since = 0

    def read_many(self, entries: list[Entry]) -> list[np.ndarray]:
        """The tensors ``entries`` as arrays, with one read per run of
        consecutive entries that lie close together and span less than
        ``CHECK_BYTES`` (many small tensors of a load: one system call, not
        one each, issue 13); a tensor alone otherwise (``read``). Checked
        as ``read_into`` checks: once per ``CHECK_BYTES``, around every
        tensor of at least that size."""
        out: list[np.ndarray] = []
        limit = _limits.CHECK_BYTES
        start, n = 0, len(entries)
        while start < n:
            e = entries[start]
            lo, hi = e.begin, e.end
            total = hi - lo
            end = start + 1
            while end < n:  # (no min/max calls: one pass per entry of 10,000)
                e = entries[end]
                b, x = e.begin, e.end
                new_lo = b if b < lo else lo
                new_hi = x if x > hi else hi
                width, more = new_hi - new_lo, total + x - b
                if width >= limit or width > 2 * more + 4096:
                    break
                lo, hi, total = new_lo, new_hi, more
                end += 1
            if end - start == 1 or hi - lo >= limit:
                out += [self.read(e) for e in entries[start:end]]
            else:
                out += self._span(entries[start:end], lo, hi)
            start = end
        return out

    def _span(self, entries: list[Entry], lo: int, hi: int) -> list[np.ndarray]:
        """``entries``, all within bytes ``[lo, hi)`` of the data, from one read."""
        span = hi - lo
        if self._since >= _limits.CHECK_BYTES:
            self.check()
            self._since = 0
        raw = empty((span,), np.dtype(np.uint8))
        if span:
            self._read_exact(memoryview(raw), lo,  # type: ignore[arg-type]
                             f"{span} bytes of {short(entries[0].name, 80)} and {len(entries) - 1} more")
        self._since += span
        if self._since >= _limits.CHECK_BYTES:
            self.check()
            self._since = 0
        dtypes = {code: numpy_dtype(code) for code in set(map(_CODE, entries))}
        periodic = _periodic(entries, raw, lo, dtypes)
        if periodic is not None:
            return periodic
        make = np.ndarray
        try:  # one constructor call per tensor: a view of its bytes in the span
            return [make(e.shape, dtypes[e.dtype], raw, e.begin - lo) for e in entries]
        except (TypeError, ValueError):  # a shape the constructor refuses: slices, viewed and reshaped
            return [raw[e.begin - lo:e.end - lo].view(dtypes[e.dtype]).reshape(e.shape) for e in entries]

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, e in self.header.entries.items():
            yield name, self.read(e)
        self.check()


_CODE, _BEGIN, _KIND = itemgetter(1), itemgetter(3), itemgetter(1, 2)
#: longest period of a repeating run of tensors (the storages of one layer) looked for
_PERIODS = 8


def _periodic(entries: list[Entry], raw: np.ndarray, lo: int, dtypes: dict[str, np.dtype]) -> list[np.ndarray] | None:
    """The tensors of a span whose entries repeat with a period ``p`` (entry
    ``k + p`` of entry ``k``'s dtype and shape, a fixed number of bytes
    further: the same layer, many times), as views of ``p`` strided arrays
    over the span, taken apart in C (``list(array)``), not one constructor
    call per tensor (a file of 10,000 small tensors, issue 13); ``None``
    where no period up to ``_PERIODS`` fits."""
    n = len(entries)
    kinds = list(map(_KIND, entries))
    begins = list(map(_BEGIN, entries))
    for period in range(1, min(_PERIODS, n - 1) + 1):
        if kinds[period:] != kinds[:-period]:
            continue
        steps = set(map(sub, begins[period:], begins[:-period]))
        if len(steps) != 1:
            continue
        step = steps.pop()
        if step <= 0 or () in (shape for _, shape in kinds[:period]):  # (list() of a run of scalars gives
            return None  # NumPy scalars, not 0-d arrays)
        out: list[Any] = [None] * n
        try:
            for r in range(period):
                code, shape = kinds[r]
                dt = dtypes[code]
                inner = np.cumprod((1, *shape[:0:-1]), dtype=np.int64)[::-1] * dt.itemsize  # C order
                count = len(range(r, n, period))
                out[r::period] = list(np.ndarray((count, *shape), dt, raw, begins[r] - lo, (step, *map(int, inner))))
        except (TypeError, ValueError):  # a layout the constructor refuses: one tensor at a time
            return None
        return out
    return None


class FileTensor(Deferred):
    """One tensor of an open file as a ``Deferred`` value: read into a new
    array when written, or (``read_into``) straight into a storage's host
    memory when the storage's layout and dtype are the file's."""

    __slots__ = ("_reader", "_entry")
    #: each read makes a new array, which the writer may hand over
    private = True

    def __init__(self, reader: Reader, e: Entry, dtype: np.dtype) -> None:
        # one per tensor of a file: the entry's shape is a tuple and ``dtype`` a NumPy dtype already
        self.shape, self.dtype = e.shape, dtype  # (no bound method kept: no reference cycle per tensor)
        self._reader, self._entry = reader, e

    def _value(self) -> np.ndarray:
        return self._reader.read(self._entry)

    def read_into(self, out: np.ndarray) -> None:
        if out.shape != self.shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"a C-contiguous {self.dtype} buffer of shape {self.shape}. "
                             f"Received: {out.dtype} {out.shape}")
        self._reader.read_into(self._entry, out)


# -- sharded directories ------------------------------------------------------------

#: the index of a sharded directory, as transformers and safetensors name it
INDEX = "model.safetensors.index.json"
#: the single file of an unsharded directory (transformers' ``save_pretrained``)
SINGLE = "model.safetensors"


@dataclass(frozen=True)
class Index:
    """A checked ``model.safetensors.index.json``: ``weight_map`` (tensor
    name -> shard path, in the index's order), the string entries of its
    ``metadata``, and each shard once in order of first appearance."""

    path: Path
    weight_map: dict[str, Path]
    metadata: dict[str, str]
    shards: list[Path]


def read_index(path: Any) -> Index:
    """The checked index of a sharded directory: bounded in size, strict JSON,
    ``{"metadata": {...}, "weight_map": {name: file}}`` with every file a
    relative path inside the index's folder (no ``..``, not absolute)."""
    p = as_path(path, "read")
    where = short(repr(str(p)), 200)
    st = _stat_regular(p)
    limit = _limits.MAX_HEADER_BYTES
    if st.st_size > limit:
        raise FileFormatError(f"an index of at most {limit} bytes", f"{where} of {st.st_size} bytes",
                              "check that the path names a model.safetensors.index.json")
    try:
        with open(p, "rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as exc:
        raise FileFormatError("a readable index file", f"{where}: {short(str(exc))}", "check the path") from None
    fix = ("the index is damaged; copy the checkpoint again, or save it again with "
           "up.save(m, folder, max_shard_size=...)")
    try:
        with no_gc():
            doc = loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FileFormatError("a JSON index of a sharded checkpoint",
                              f"unreadable JSON in {where} ({short(str(exc))}){_what_it_looks_like(raw[:8])}",
                              fix) from None
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    meta = doc.get("metadata", {}) if isinstance(doc, dict) else None
    if not (isinstance(wmap, dict) and isinstance(meta, dict)
            and all(_valid_str(k) and _valid_str(v) for k, v in wmap.items())):
        raise FileFormatError('an index {"metadata": {...}, "weight_map": {tensor name: shard file}}',
                              f"{short(doc)} in {where}", fix)
    folder = p.parent
    files: dict[str, Path] = {}
    for f in wmap.values():
        if f not in files:
            parts = Path(f).parts
            if not f or Path(f).is_absolute() or ".." in parts or "\x00" in f:
                raise FileFormatError("shard files named relative to the index's folder",
                                      f"{short(f, 120)} in {where}", fix)
            files[f] = folder / f
    return Index(p, {k: files[v] for k, v in wmap.items()},
                 {k: v for k, v in meta.items() if isinstance(k, str) and isinstance(v, str)}, list(files.values()))


# -- our own metadata ---------------------------------------------------------------


def our_metadata(meta: Mapping[str, str], where: str) -> tuple[dict[str, dict[str, str]], list[list[str]]] | None:
    """``names`` (model order: name -> role, kind, storage) and ``ties`` of a
    file saved by up.save, checked against their schema; None for a file
    without our metadata."""
    if meta.get("format") != FORMAT:
        return None
    fix = "the file's unified_params metadata is corrupted; save it again with up.save"
    raw_names, raw_ties = meta.get("names", "{}"), meta.get("ties", "[]")
    last = _LAST_OURS[0]
    if last is not None and last[0] is raw_names and last[1] is raw_ties:
        return last[2]  # the same strings again (a load asks more than once): the same answer
    try:
        with no_gc():  # an object per parameter, no cycles
            plain = _names_plain(raw_names)  # regular (checked as below), or None: the strict parse words it
            names = plain if plain is not None else loads(raw_names)
            ties = loads(raw_ties)
    except ValueError as exc:
        raise FileFormatError("unified_params metadata 'names' and 'ties' as JSON",
                              f"an unreadable entry in {where} ({short(str(exc))})", fix) from None
    if plain is None and not (isinstance(names, dict) and all(
            isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in names.values())):
        raise FileFormatError("'names' metadata as a JSON object {name: {'role': str, 'kind': str, 'storage': str}}",
                              f"{short(meta.get('names'))} in {where}", fix)
    if not (isinstance(ties, list) and all(isinstance(g, list) and all(isinstance(n, str) for n in g)
                                           for g in ties)):
        raise FileFormatError("'ties' metadata as a JSON list of lists of names",
                              f"{short(meta.get('ties'))} in {where}", fix)
    _LAST_OURS[0] = (raw_names, raw_ties, (names, ties))
    return names, ties


def _names_plain(text: Any) -> dict[str, dict[str, str]] | None:
    """``names`` metadata of the regular form (an object of objects of
    strings, no ``\\u`` escapes, no key twice) from the C JSON parser alone,
    counted as ``_parse_plain`` counts (issue 13: one such object per
    parameter); ``None`` for anything else."""
    if type(text) is not str or not text.startswith("{") or _ESCAPE_U_TEXT.search(text):
        return None
    try:
        names = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if type(names) is not dict:
        return None
    infos = list(names.values())
    if not all(type(v) is dict for v in infos):
        return None
    try:  # a join takes strings only: the check that every value is one
        values = "".join(chain.from_iterable(map(dict.values, infos)))
    except TypeError:
        return None
    expected = (len(names) + sum(map(len, infos)) + _colons(names) + _colons(chain.from_iterable(infos))
                + values.count(":"))
    return names if text.count(":") == expected else None


#: the last ``our_metadata`` answer, with the very string objects it read
_LAST_OURS: list[Any] = [None]


# -- the writer ---------------------------------------------------------------------


def header_bytes(entries: Iterable[tuple[str, str, tuple[int, ...]]],
                 metadata: Mapping[str, str]) -> tuple[bytes, int]:
    """The framed header (length, JSON padded to 8 bytes as safetensors pads
    it) for ``(name, code, shape)`` in data order, and the data's length.
    Deterministic: sorted keys, fixed separators."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, code, shape in entries:
        size = ITEMSIZE[code]
        for d in shape:
            size *= int(d)
        header[name] = {"dtype": code, "shape": [int(d) for d in shape], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, offset


def write(fh: BinaryIO, head: bytes, arrays: Iterable[np.ndarray], bar: Any = None) -> None:
    """Write the framed header, then each array's bytes (C order, little
    endian), one at a time."""
    fh.write(head)
    scratch: list[np.ndarray] = []
    big_host = not _little()
    for v in arrays:
        v = np.asarray(v)
        order = v.dtype.byteorder
        if order == ">" or (order == "=" and big_host):
            v = v.astype(v.dtype.newbyteorder("<"))
        if v.size:
            for part in _c_order_parts(v, scratch):
                fh.write(memoryview(part.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
        if bar is not None:
            bar.update(v.nbytes)


def _c_order_parts(v: np.ndarray, scratch: list[np.ndarray]) -> Iterator[np.ndarray]:
    """``v``'s bytes in C order as C-contiguous pieces: ``v`` itself, or a
    strided view (a kernel-last storage's canonical view) converted into one
    scratch buffer reused from tensor to tensor (a transposed matrix strip by
    strip), so that a save touches no fresh memory per tensor."""
    if v.flags.c_contiguous:
        yield v
        return
    if v.ndim != 2 or v.nbytes < _limits.TILED_BYTES:
        yield contiguous(v, copy=True)
        return
    if not scratch or scratch[0].nbytes < v.nbytes:
        scratch[:] = [empty((v.nbytes,), np.uint8)]
    out = scratch[0][: v.nbytes].view(v.dtype).reshape(v.shape)
    yield contiguous_into(v, out)


def _little() -> bool:
    import sys

    return sys.byteorder == "little"
