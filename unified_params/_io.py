"""Files and ports: ``save``, ``load``, ``port``.

Design constraints: files are safetensors (no pickle; readable by any
safetensors reader) in canonical layout, each storage once; the metadata
names every parameter with its role and tie group so a load restores ties'
values. A save writes a temporary file beside the target and renames it, so
an interrupted save leaves the old file intact. Loads and ports check
everything before writing and write atomically (``_block.write_atomic``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _limits
from ._block import (
    Block,
    Deferred,
    LoadReport,
    Param,
    _check_deferred,
    load_into,
    progress_bar,
    write_atomic,
)
from ._errors import ArgumentError, DTypeError, FileFormatError, PortError
from ._layout import contiguous

__all__ = ["save", "load", "port", "PortReport", "FORMAT_VERSION"]

FORMAT_VERSION = "1"
_PORT_BUFFER_ROLES = ("running_mean", "running_var")


def _as_block(m: Any, what: str) -> Block:
    if isinstance(m, Block):
        return m
    from . import wrap

    return wrap(m)


_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


def _metadata(block: Block) -> tuple[dict[str, Param], dict[str, str]]:
    """The storages to write (first name -> Param) and the file's metadata."""
    allp = block._all()
    first: dict[Any, str] = {}
    storages: dict[str, Param] = {}
    names: dict[str, dict[str, str]] = {}
    for n, p in allp.items():
        if p.storage not in first:
            first[p.storage] = n
            p._require_concrete("save")
            storages[n] = p
        names[n] = {"role": p.role, "kind": "param" if n in block.params else "buffer", "storage": first[p.storage]}
    meta = {
        "format": "unified_params",
        "format_version": FORMAT_VERSION,
        "backend": block.backend,
        "names": json.dumps(names),
        "ties": json.dumps([list(g) for g in block.tied()]),
    }
    return storages, meta


def _write_stream(storages: dict[str, Param], meta: dict[str, str], fh: Any, progress: bool | None) -> bool:
    """Write a safetensors file storage by storage from zero-copy views, so
    the file's bytes are never all in memory; False (nothing written) when a
    dtype has no safetensors code of ours (the caller falls back to
    safetensors' own writer)."""
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for n, p in storages.items():
        code = _SAFETENSORS_DTYPES.get(p.dtype.name)
        if code is None:
            return False
        size = int(p.size or 0) * p.dtype.itemsize
        header[n] = {"dtype": code, "shape": list(p.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    fh.write(len(raw).to_bytes(8, "little"))
    fh.write(raw)
    bar = progress_bar(progress, offset, "save")
    try:
        for p in storages.values():
            v = contiguous(np.asarray(p.read(copy=False)))  # kernel-last: a tiled transpose
            if v.dtype.byteorder == ">":
                v = v.astype(v.dtype.newbyteorder("<"))
            fh.write(memoryview(v.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
            if bar is not None:
                bar.update(v.nbytes)
    finally:
        if bar is not None:
            bar.close()
    return True


def save(m: Any, path: str | os.PathLike[str], *, progress: bool | None = None) -> Path:
    """Write every storage of ``m`` once to a safetensors file, atomically.

    The storages are streamed to a temporary file beside ``path`` (one at a
    time, from zero-copy views where the framework allows), which then
    replaces ``path``. ``progress``: a tqdm bar (default: for models over
    256 MiB when stderr is a terminal).

    >>> import unified_params as up, tempfile, os
    >>> from unified_params import reference as ref
    >>> m = up.wrap(ref.Sequential(ref.Dense(2, in_units=3)))
    >>> f = up.save(m, os.path.join(tempfile.mkdtemp(), "m.safetensors"))
    """
    block = _as_block(m, "save")
    target = _as_path(path, "save to")
    if target.is_dir():
        raise FileFormatError("a file path to save to", f"the directory {str(target)!r}",
                              "add a file name, e.g. model.safetensors")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileFormatError("an existing folder to save into", f"{str(folder)!r} does not exist",
                              "create it first")
    storages, meta = _metadata(block)
    fd, tmp = None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            # small models go through safetensors' own writer (it holds the
            # file's bytes in memory once, which costs nothing there)
            large = sum(int(p.size or 0) * p.dtype.itemsize for p in storages.values()) > _limits.LARGE_BYTES
            streamed = (large or bool(progress)) and _write_stream(storages, meta, fh, progress)
        if not streamed:
            from safetensors.numpy import save_file

            save_file({n: np.asarray(p.read(copy=False), order="C") for n, p in storages.items()}, tmp,
                      metadata=meta)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:  # permissions, a read-only file system, a full disk
        raise FileFormatError("a folder this process may write a file into", f"{str(folder)!r}: {exc}",
                              "choose another path, free space, or fix its permissions; the old file is intact"
                              ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return target


#: safetensors' own limit on the JSON header (its ``MAX_HEADER_SIZE``).
MAX_HEADER_BYTES = 100_000_000
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_MAGIC = {b"PK\x03\x04": "a zip archive (a torch.save or .npz file?)", b"\x89HDF": "an HDF5 file (Keras .h5?)",
          b"\x93NUMPY": "a .npy file", b"\x80": "a Python pickle", b"{": "a JSON text", b"\x1f\x8b": "a gzip file"}
_LAYOUT = "a safetensors file: an 8-byte little-endian header length, a JSON header, then the tensors' bytes"


def _what_it_looks_like(head: bytes) -> str:
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return f"; it looks like {what}"
    return ""


def _check_header(p: Path, fh: Any, size: int) -> None:
    """Validate the framing and the header before safetensors maps the file,
    so that every defect gets a message naming it (safetensors' own errors
    are terse, and a header length of 2**64 would be an allocation)."""
    where = repr(str(p))
    fix = "the file is damaged or of another format; save the model again with up.save(m, path)"
    head = fh.read(8)
    if size < 8:
        raise FileFormatError(_LAYOUT, f"{where} holds only {size} bytes{_what_it_looks_like(head)}",
                              "it is empty or cut short; save the model again with up.save(m, path)")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER_BYTES:
        raise FileFormatError(
            f"a safetensors header of at most {MAX_HEADER_BYTES} bytes",
            f"{where} declares a header of {n} bytes{_what_it_looks_like(head)}",
            fix,
        )
    if 8 + n > size:
        raise FileFormatError(
            f"{8 + n} bytes or more: the 8-byte length and the {n}-byte header it declares",
            f"{where} holds {size} bytes{_what_it_looks_like(head)}",
            "the file is truncated (an interrupted copy or download?); copy or save it again",
        )
    raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError(f"a JSON {type(header).__name__}, not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise FileFormatError(
            "a JSON object as the safetensors header",
            f"an unreadable header in {where} ({exc}){_what_it_looks_like(head)}",
            fix,
        ) from None
    data_len = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise FileFormatError("'__metadata__' as a map of strings to strings",
                                      f"{info!r:.200} in {where}", fix)
            continue
        ok = (
            isinstance(info, dict)
            and isinstance(info.get("dtype"), str)
            and isinstance(info.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"])
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"])
        )
        if not ok:
            raise FileFormatError(
                "each tensor's entry as {'dtype': str, 'shape': [int >= 0, ...], 'data_offsets': [begin, end]}",
                f"{key!r}: {info!r:.200} in {where}",
                fix,
            )
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= data_len:
            raise FileFormatError(
                f"data offsets of {key!r} within the {data_len} bytes of data after the header",
                f"data_offsets [{begin}, {end}] in {where}",
                "the file is truncated or its header corrupted; save or copy it again",
            )
        itemsize = _ITEMSIZE.get(info["dtype"])
        count = int(np.prod(info["shape"], dtype=np.int64))
        if itemsize is not None and end - begin != count * itemsize:
            raise FileFormatError(
                f"{count * itemsize} bytes for {key!r} ({info['dtype']} of shape {tuple(info['shape'])})",
                f"data_offsets [{begin}, {end}] ({end - begin} bytes) in {where}",
                fix,
            )


def read_file(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, as NumPy arrays.

    The path, the framing, the header and every tensor's offsets are checked
    (``_checked_file``) before safetensors reads the data, so a truncated,
    corrupted, oversized or foreign file raises ``FileFormatError`` saying
    which of these it is.
    """
    from safetensors import safe_open

    p = _checked_file(path)
    with _reading(p), safe_open(str(p), framework="numpy") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    return tensors, meta


@contextmanager
def _reading(p: Path) -> Iterator[None]:
    """What reading a checked file can still raise, as FileFormatErrors."""
    try:
        yield
    except PermissionError as exc:
        raise FileFormatError("a file this process may read", f"{str(p)!r}: {exc.strerror}",
                              "fix its permissions") from None
    except FileFormatError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise FileFormatError(
            "a valid safetensors file",
            f"{str(p)!r}: {type(exc).__name__}: {exc}",
            "the file is truncated, corrupted or of another format; save it again with up.save",
        ) from None


def expand_ties(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> dict[str, np.ndarray]:
    """Map every name of a file's tie groups to its stored tensor."""
    state = dict(tensors)
    names = meta.get("names")
    if names:
        try:
            table = json.loads(names)
            for n, info in table.items():
                src = info.get("storage", n)
                if n not in state and src in tensors:
                    state[n] = tensors[src]
        except (ValueError, AttributeError, TypeError):
            raise FileFormatError("unified_params metadata as JSON", "an unreadable 'names' entry",
                                  "the file's metadata is corrupted; save it again") from None
    return state


def _as_path(path: Any, action: str) -> Path:
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise FileFormatError(f"a file path (str or os.PathLike) to {action}", f"{path!r}",
                              "pass e.g. 'model.safetensors'")
    return Path(os.fsdecode(path))


def _checked_file(path: str | os.PathLike[str]) -> Path:
    """The checks ``read_file`` makes before reading any data (path, framing,
    header, offsets), with the same FileFormatErrors."""
    p = _as_path(path, "read")
    where = repr(str(p))
    if p.is_dir():
        raise FileFormatError("a safetensors file", f"the directory {where}", "name a file inside it")
    try:
        with open(p, "rb") as fh:
            _check_header(p, fh, os.fstat(fh.fileno()).st_size)
    except FileFormatError:
        raise
    except FileNotFoundError:
        raise FileFormatError("an existing safetensors file", f"{where} does not exist",
                              "check the path (and the current directory)") from None
    except NotADirectoryError:
        raise FileFormatError("a path whose folders are folders", f"{where}: a part of it is a file",
                              "check the path") from None
    except PermissionError as exc:
        raise FileFormatError("a file this process may read", f"{where}: {exc.strerror}",
                              "fix its permissions or run as a user who may read it") from None
    except OSError as exc:
        raise FileFormatError("a readable file", f"{where}: {exc}", "check the path and the device") from None
    return p


def _numpy_dtypes() -> dict[str, np.dtype]:
    out = {code: np.dtype(name) for name, code in _SAFETENSORS_DTYPES.items() if hasattr(np, name)}
    return out


_NUMPY_DTYPES = _numpy_dtypes()


def _file_view(p: Path, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """A memory map of one tensor's bytes: the write that follows is the only
    copy (safetensors' NumPy ``get_tensor`` copies first). Private
    (copy-on-write): a framework that keeps the buffer instead of copying it
    (JAX on CPU aliases 64-byte-aligned host memory) may write to it without
    touching the file, and a later save that replaces the file leaves it be."""
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.empty(shape, dtype)
    return np.memmap(p, dtype=dtype.newbyteorder("<"), mode="c", offset=offset, shape=shape)


def _deferred_file(path: str | os.PathLike[str], stack: ExitStack) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors of a safetensors file as ``Deferred`` values (mapped one
    at a time when written) and its metadata; the file is checked as
    ``read_file`` checks it and stays open until ``stack`` closes."""
    from safetensors import safe_open

    p = _checked_file(path)
    with _reading(p):
        fh = stack.enter_context(safe_open(str(p), framework="numpy"))
        meta = fh.metadata() or {}
        with open(p, "rb") as raw:  # offsets (checked by _checked_file) to map tensors without a copy
            n = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(n).decode("utf-8"))
        tensors: dict[str, Any] = {}
        for k in fh.keys():  # noqa: SIM118
            info = header[k]
            dtype = _NUMPY_DTYPES.get(info["dtype"])
            if dtype is None:  # a dtype we do not map: read it now
                tensors[k] = fh.get_tensor(k)
            else:
                shape = tuple(info["shape"])
                offset = 8 + n + info["data_offsets"][0]
                tensors[k] = Deferred(shape, dtype, lambda d=dtype, s=shape, o=offset: _file_view(p, d, s, o))  # type: ignore[misc]
    return tensors, meta


def load(
    m: Any,
    path: str | os.PathLike[str],
    strict: bool = True,
    *,
    match: str = "name",
    progress: bool | None = None,
) -> LoadReport:
    """``load_state`` from a safetensors file (any safetensors file).

    ``match="name"`` pairs the file's names with the model's. ``match="order"``
    pairs storages by order and canonical shape as ``port`` does, so a file
    saved from another framework (``layers_0.weight`` in Flax, ``0.weight`` in
    PyTorch) loads into the same architecture; it needs the file's
    unified_params metadata. Every name, shape and dtype is checked from the
    file's header before the first write; then the tensors are read and
    written one at a time.
    """
    if match not in ("name", "order"):
        raise ArgumentError("match='name' or match='order'", f"match={match!r}",
                            "use 'order' for a file saved from another framework")
    block = _as_block(m, "load")
    with ExitStack() as stack:
        tensors, meta = _deferred_file(path, stack)
        if match == "order":
            state = _pair_by_order(block, tensors, meta, path)
            report = load_into(block, state, strict=False, what="load", progress=progress)
            report.missing = []  # state only one framework keeps (num_batches_tracked) is not ported
            return report
        return load_into(block, expand_ties(tensors, meta), strict=strict, what="load", progress=progress)


def _pair_by_order(
    block: Block, tensors: dict[str, Any], meta: dict[str, str], path: str | os.PathLike[str]
) -> dict[str, Any]:
    """``{model name: file tensor}`` paired as ``port`` pairs two models."""
    try:
        table: dict[str, dict[str, str]] = json.loads(meta["names"])
    except (KeyError, ValueError, TypeError):
        raise FileFormatError(
            "a file saved by up.save (its metadata gives the model order)",
            f"{str(path)!r} without unified_params metadata",
            "load it by name (match='name'), or save it again with up.save",
        ) from None
    stored = [n for n, info in table.items() if info.get("storage", n) == n and n in tensors]
    fparams = [n for n in stored if table[n].get("kind") == "param"]
    fstats = [n for n in stored if table[n].get("kind") == "buffer" and table[n].get("role") in _PORT_BUFFER_ROLES]
    dparams, dstats = _portable(block)
    state: dict[str, Any] = {}
    for what, fl, dl in (("parameters", fparams, dparams), ("running statistics", fstats, dstats)):
        if len(fl) != len(dl):
            raise PortError(
                f"the same number of distinct {what} in the file and the model",
                f"{len(fl)} in {str(path)!r} ({meta.get('backend', 'unknown')}) and {len(dl)} in the "
                f"{block.backend} model",
                "load a file saved from the same architecture",
            )
        for i, (fn, dp) in enumerate(zip(fl, dl)):
            shape = tuple(np.shape(tensors[fn]) if not hasattr(tensors[fn], "shape") else tensors[fn].shape)
            if shape != dp.shape:
                raise PortError(
                    f"{what} #{i} of matching canonical shapes",
                    f"file {fn!r} {shape} vs model {dp.name!r} {dp.shape}",
                    "load a file saved from the same architecture (pairs go by order, then shape)",
                )
            state[dp.name] = tensors[fn]
    return state


@dataclass
class PortReport:
    """Pairs ``(source name, destination name, canonical shape)`` that were copied."""

    pairs: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    src_backend: str = ""
    dst_backend: str = ""

    def __str__(self) -> str:
        lines = [f"ported {len(self.pairs)} storages {self.src_backend} -> {self.dst_backend}"]
        lines += [f"  {s} -> {d} {shape}" for s, d, shape in self.pairs]
        return "\n".join(lines)


def _portable(block: Block) -> tuple[list[Param], list[Param]]:
    params = list(block.params.distinct().values())
    buffers = [p for p in block.buffers.distinct().values() if p.role in _PORT_BUFFER_ROLES]
    return params, buffers


def port(src: Any, dst: Any, *, progress: bool | None = None) -> PortReport:
    """Copy every value of ``src`` into ``dst`` (any two backends), pairing
    parameters by order and canonical shape; running statistics are paired
    the same way among themselves. Atomic: a mismatch changes nothing.

    Everything is checked first; then each storage is read (a zero-copy view
    where the framework allows) and written, one at a time. ``progress``: a
    tqdm bar (default: for models over 256 MiB when stderr is a terminal).
    """
    s, d = _as_block(src, "port"), _as_block(dst, "port")
    report = PortReport(src_backend=s.backend, dst_backend=d.backend)
    items: list[tuple[Param, Any]] = []
    for what, sl, dl in zip(("parameters", "running statistics"), _portable(s), _portable(d)):
        for i in range(max(len(sl), len(dl))):
            sp = sl[i] if i < len(sl) else None
            dp = dl[i] if i < len(dl) else None
            if sp is None or dp is None:
                have = f"{len(sl)} {what} in the source and {len(dl)} in the destination"
                extra = dp.name if sp is None else sp.name  # type: ignore[union-attr]
                raise PortError(
                    f"the same number of distinct {what} in both models",
                    f"{have}; the first unpaired is {extra!r}",
                    "port between models of the same architecture",
                )
            if dp.deferred or sp.deferred:
                raise PortError(
                    "two concrete models",
                    f"{(dp if dp.deferred else sp).name!r} is deferred",
                    "call materialize(x) on it first",
                )
            if sp.shape != dp.shape:
                raise PortError(
                    f"{what} #{i} of matching canonical shapes",
                    f"{s.backend} {sp.name!r} {sp.shape} vs {d.backend} {dp.name!r} {dp.shape}",
                    "port between models of the same architecture (pairs go by order, then shape)",
                )
            try:
                value = Deferred(sp._concrete_shape(), sp.dtype, lambda sp=sp: sp.read(copy=False))  # type: ignore[misc]
                items.append((dp, _check_deferred(dp, value, "port")))
            except DTypeError as exc:
                raise PortError(
                    f"{what} #{i} of compatible dtypes",
                    f"{sp.name!r} {sp.dtype} -> {dp.name!r} {dp.dtype}",
                    str(exc),
                ) from None
            report.pairs.append((sp.name, dp.name, tuple(sp.shape)))  # type: ignore[arg-type]
    write_atomic(items, what="port", progress=progress)
    return report
