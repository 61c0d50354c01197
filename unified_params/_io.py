"""Files and ports: ``save``, ``load``, ``port``.

Design constraints: files are safetensors (no pickle; readable by any
safetensors reader) in canonical layout, each storage once; the metadata
names every parameter with its role and tie group so a load restores ties'
values. The format itself (dtypes, the header parser, the writer) lives in
``_format``. A save behaves like ``open(path, 'wb')`` done atomically: a
temporary file beside the target (``.up-<random>.tmp``) replaces it, keeping
its mode (new files follow the umask) and writing through a symlink. Loads
and ports check everything before writing and write atomically
(``_block.write_atomic``); a load re-checks the file around each tensor and
after the last write, so a file changed by another program is an error with
the model unchanged.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import _foreign, _format, _pieces
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
from ._boundary import adapter_call
from ._errors import ArgumentError, DTypeError, FileFormatError, PortError, StateError, UnifiedParamsError
from ._fastpath import batches_of, names_of, specs_of
from ._format import few, short
from ._layout import CANONICAL, NATIVE, contiguous, to_canonical
from ._pairing import Entry, combine, one_to_one, pair
from ._values import ParamValue
from ._verify import output_matches, outputs_agree

__all__ = ["save", "load", "port", "read_file", "PortReport", "FORMAT_VERSION"]

FORMAT_VERSION = "1"
_PORT_BUFFER_ROLES = ("running_mean", "running_var")
#: temporary files of a save: ``.up-<16 hex>.tmp`` beside the target (short,
#: so that names up to the file system's 255 bytes can be saved)
_TEMP = re.compile(r"\.up-[0-9a-f]{16}\.tmp\Z")
#: a temporary file of ours older than this (seconds) is left by a killed save
STALE_SECONDS = 3600
#: longest error message a load raises (a file may hold millions of names)
_MAX_MESSAGE = 2000


def _as_block(m: Any, what: str) -> Block:
    if isinstance(m, Block):
        return m
    from . import wrap

    return wrap(m)

F = TypeVar("F", bound=Callable[..., Any])


def _holding_locks(*names: str) -> Callable[[F], F]:
    """Run a file or port function holding the lock of every model it
    touches (contract 14: atomic against other threads), the models named
    by ``names`` (its first parameters), locks taken in one global order so
    that two ports in opposite directions cannot deadlock."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            args_l = list(args)
            blocks = []
            for i, name in enumerate(names):
                if i < len(args_l):
                    args_l[i] = _as_block(args_l[i], fn.__name__)
                    blocks.append(args_l[i])
                elif name in kwargs:
                    kwargs[name] = _as_block(kwargs[name], fn.__name__)
                    blocks.append(kwargs[name])
            locks = sorted({id(b._shared.lock): b._shared.lock for b in blocks}.items(), key=lambda kv: kv[0])
            with ExitStack() as stack:
                # many small objects, no cycles: collected once, after fn's temporaries are gone (issue 13)
                stack.enter_context(_format.no_gc())
                for _, lock in locks:
                    stack.enter_context(lock)
                return fn(*args_l, **kwargs)

        return inner  # type: ignore[return-value]

    return deco



def _metadata(block: Block) -> tuple[dict[str, Param], dict[str, str]]:
    """The storages to write (first name -> Param) and the file's metadata;
    one listing of the model each (linear in the number of parameters).
    Non-persistent state (``Leaf.persistent``) is left out, as the
    framework's own checkpoints leave it out."""
    first: dict[Any, str] = {}
    storages: dict[str, Param] = {}
    names: dict[str, dict[str, str]] = {}
    for n, p in block._all()._params.items():
        leaf = p._leaf  # what the metadata says is the leaf's: no adapter call
        if not leaf.persistent:
            continue
        head = first.get(leaf.storage)
        if head is None:
            head = first[leaf.storage] = n
            p._require_concrete("save")
            storages[n] = p
        info = {"role": leaf.role, "kind": "param" if leaf.kind == "param" else "buffer", "storage": head}
        if leaf.layout == NATIVE:
            info["layout"] = NATIVE
        if leaf.rnn_bias:
            info["rnn_bias"] = leaf.rnn_bias
        names[n] = info
    groups: dict[str, list[str]] = {}
    for n, info in names.items():
        groups.setdefault(info["storage"], []).append(n)
    meta = {
        "format": _format.FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": block.backend,
        "names": _format.dumps(names),
        "ties": _format.dumps([g for g in groups.values() if len(g) > 1]),
    }
    return storages, meta


def _folder_error(folder: Path, exc: BaseException) -> FileFormatError:
    return FileFormatError("a folder this process may write a file into",
                           f"{short(repr(str(folder)), 200)}: {short(str(exc), 300)}",
                           "choose another path, free space, or fix its permissions; the old file is intact")


def _remove_stale(folder: Path, name: str) -> None:
    """Remove temporary files of ours in ``folder`` left by killed saves
    (older than ``STALE_SECONDS``): ``.up-<hex>.tmp``, and the
    ``.<name>.<random>.tmp`` of earlier versions for this target."""
    cutoff = time.time() - STALE_SECONDS
    legacy = re.compile(re.escape(f".{name}.") + r"[a-z0-9_]{8}\.tmp\Z")
    try:
        with os.scandir(folder) as it:
            for e in it:
                if not (_TEMP.match(e.name) or legacy.match(e.name)):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                        os.unlink(e.path)
                except OSError:
                    continue
    except OSError:  # best effort: the save itself reports what matters
        return


def _create_temp(folder: Path) -> tuple[int, str]:
    """A new file ``.up-<random>.tmp`` in ``folder``, created as ``open(path,
    'wb')`` creates one (mode 0o666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".up-{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


def _write_temp(folder: Path, head: bytes, arrays: Any, bar: Any, old: os.stat_result | None = None) -> str:
    """A temporary file in ``folder`` holding ``head`` then ``arrays`` (one at
    a time), flushed to disk; with ``old``, that file's mode and, where
    allowed, owner. The caller renames it into place or removes it."""
    fd, tmp = _create_temp(folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            if old is not None:  # the replaced file's mode and, where allowed, owner
                os.fchmod(fh.fileno(), stat.S_IMODE(old.st_mode))
                if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                    try:
                        os.fchown(fh.fileno(), old.st_uid, old.st_gid)
                    except OSError:
                        pass  # not permitted: the file is ours, as open(path, 'wb') by another user would not be
            _format.write(fh, head, arrays, bar)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _arrays(storages: Sequence[Param], sizes: Sequence[int] | None = None) -> Any:
    """Each storage's canonical value, one at a time (kernel-last storages: a
    view, which the writer converts in blocks); with ``sizes`` (bytes),
    small storages of one handle are read in batches of up to
    ``BATCH_BYTES``, one ``Handle.read_many`` each (issue 13)."""
    if sizes is None:
        yield from (np.asarray(p.read(copy=False)) for p in storages)
        return
    for i, j in batches_of(storages, sizes):
        if j == i + 1:  # a batch of one: the one-storage read
            yield np.asarray(storages[i].read(copy=False))
            continue
        batch = storages[i:j]
        h = batch[0]._handle
        with adapter_call(h.backend.name, f"read {names_of(batch)}"):
            raws = h.read_many([p._leaf for p in batch], copy=False)
        for p, raw in zip(batch, raws):
            layout = p._leaf.layout
            yield np.asarray(raw if layout in (CANONICAL, NATIVE) else to_canonical(raw, layout))


def _values(items: Sequence[Any]) -> Any:
    """Params as ``_arrays`` reads them; other values (a checkpoint's pieces
    assembled) read one at a time."""
    return (contiguous(np.asarray(v.read(copy=False))) if isinstance(v, Param) else np.asarray(v) for v in items)


def _entries(storages: dict[str, Param]) -> list[tuple[str, str, tuple[int, ...]]]:
    entries = []
    codes: dict[np.dtype, str | None] = {}  # a model has few dtypes: each looked up once
    for n, p in storages.items():
        dt = p.dtype
        try:
            code = codes[dt]
        except KeyError:
            code = codes[dt] = _format.code_of(dt)
        if code is None:
            raise DTypeError(f"dtypes that safetensors files store ({', '.join(_format.DTYPES.values())})",
                             f"{short(n, 80)} of dtype {dt}, which a safetensors file cannot hold",
                             "cast the model (or that parameter) to a supported dtype first")
        entries.append((n, code, tuple([int(d or 0) for d in p.shape])))
    return entries


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def shard_bytes(size: int | str) -> int:
    """``max_shard_size`` in bytes: an int, or a string such as ``"5MB"``
    (powers of 10, as transformers reads it) or ``"2GiB"`` (powers of 2)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        n = int(size)
    elif isinstance(size, str) and (found := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)) \
            and found.group(2).upper() in _UNITS:
        n = int(float(found.group(1)) * _UNITS[found.group(2).upper()])
    else:
        raise ArgumentError("max_shard_size as bytes (int > 0) or a string such as '500MB' or '2GiB'",
                            f"max_shard_size={short(size)}", "pass e.g. max_shard_size='5GB'")
    if n <= 0:
        raise ArgumentError("max_shard_size > 0 bytes", f"max_shard_size={short(size)}",
                            "pass e.g. max_shard_size='5GB'")
    return n


@_holding_locks("m")
def save(m: Any, path: str | os.PathLike[str], *, progress: bool | None = None,
         max_shard_size: int | str | None = None) -> Path:
    """Write every storage of ``m`` once to a safetensors file, atomically;
    with ``max_shard_size``, to a sharded directory.
    Non-persistent buffers (``position_ids``) are not written: no strict
    load requires them.

    The storages are streamed to a temporary file beside ``path`` (one at a
    time, from zero-copy views where the framework allows), which then
    replaces ``path``: the file keeps the mode of the one it replaces (a new
    one follows the umask), a symlink stays a link to the file written. The
    same model gives the same bytes. ``progress``: a tqdm bar (default: for
    models over 256 MiB when stderr is a terminal).

    ``max_shard_size`` (bytes, or ``"5GB"``, ``"2GiB"``): ``path`` is a
    directory (created if absent) that receives
    ``model-00001-of-0000N.safetensors`` shards of at most that many bytes of
    tensors each (a larger tensor gets a shard of its own) and
    ``model.safetensors.index.json``, the layout transformers' and
    safetensors' loaders read. Shards and index are written to temporary
    names first and renamed into place, the index last; the shards of an
    earlier save (another count) and a ``model.safetensors`` in the
    directory are then removed, so that no loader finds a stale checkpoint.

    >>> import unified_params as up, tempfile, os
    >>> from unified_params import reference as ref
    >>> m = up.wrap(ref.Sequential(ref.Dense(2, in_units=3)))
    >>> f = up.save(m, os.path.join(tempfile.mkdtemp(), "m.safetensors"))
    """
    block = _as_block(m, "save")
    grp = _pieces.group_of(block)
    listed = _pieces.local_pieces(block) if grp is not None else None  # one walk: storages and pieces
    if listed is not None:
        return _pieces.save_pieces(block, path, grp, progress, listed)  # every process its pieces (contract 15.2)
    if max_shard_size is not None:
        return _save_sharded(block, path, shard_bytes(max_shard_size), progress)
    target = _format.as_path(path, "save to")
    where = short(repr(str(target)), 200)
    try:
        if target.is_dir():
            raise FileFormatError("a file path to save to", f"the directory {where}",
                                  "add a file name, e.g. model.safetensors, or pass max_shard_size for a "
                                  "sharded directory")
        real = Path(os.path.realpath(target)) if target.is_symlink() else target  # write through a link
        folder = real.parent if str(real.parent) else Path(".")
        if not folder.is_dir():
            raise FileFormatError("an existing folder to save into", f"{short(repr(str(folder)), 200)} does not exist",
                                  "create it first")
        try:
            old: os.stat_result | None = os.stat(real)
        except OSError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):  # a rename would replace /dev/null itself
            raise FileFormatError("a regular file (or a new path) to save to",
                                  f"{where} is {_format.kind_of(old.st_mode)}", "save to a file path")
    except OSError as exc:  # a path too long, a loop of links
        raise FileFormatError("a path this process may save to", f"{where}: {short(str(exc), 300)}",
                              "check the path") from None
    with _format.no_gc():  # many small objects, no cycles
        storages, meta = _metadata(block)
        entries = _entries(storages)
        head, total = _format.header_bytes(entries, meta)
    sizes = [math.prod(shape) * _format.ITEMSIZE[code] for _, code, shape in entries]
    _remove_stale(folder, real.name)
    bar = progress_bar(progress, total, "save")
    try:
        with _format.no_gc():
            tmp = _write_temp(folder, head, _arrays(list(storages.values()), sizes), bar, old)
        try:
            os.replace(tmp, real)
        except BaseException:
            _unlink(tmp)
            raise
    except OSError as exc:  # permissions, a read-only file system, a full disk
        raise _folder_error(folder, exc) from None
    finally:
        if bar is not None:
            bar.close()
    return target


#: the shards of a sharded save, as transformers names them
#: the shard files a save of ours may have left in a folder: a plain sharded
#: save, and a save by several processes (``_pieces``: per rank, and the whole tensors)
_SHARD = re.compile(r"model-(\d{5}-of-\d{5}|r\d{5}-of-\d{5}|whole)\.safetensors\Z")


def _save_sharded(block: Block, path: str | os.PathLike[str], limit: int, progress: bool | None) -> Path:
    """``save`` with ``max_shard_size``: shards and the index, streamed one
    tensor at a time, renamed into place once all are written (index last)."""
    storages, meta = _metadata(block)
    values = [(n, code, shape, storages[n]) for n, code, shape in _entries(storages)]
    return write_sharded(path, values, meta, limit, progress)


def write_sharded(path: str | os.PathLike[str], values: Sequence[tuple[str, str, tuple[int, ...], Any]],
                  meta: dict[str, str], limit: int, progress: bool | None) -> Path:
    """A sharded directory of ``values`` (``(name, code, shape, value)``,
    each value a Param or an array-like read when its shard is written),
    shards of at most ``limit`` bytes, then the index; what ``save`` with
    ``max_shard_size`` and ``up.consolidate`` write."""
    target = _format.as_path(path, "save to")
    where = short(repr(str(target)), 200)
    created = False
    try:
        if target.exists() and not target.is_dir():
            raise FileFormatError("a directory (or a new path) to save a sharded checkpoint into",
                                  f"{where} is a file", "name a directory, or drop max_shard_size for one file")
        if not target.exists():
            parent = target.parent if str(target.parent) else Path(".")
            if not parent.is_dir():
                raise FileFormatError("an existing folder to create the checkpoint directory in",
                                      f"{short(repr(str(parent)), 200)} does not exist", "create it first")
            os.mkdir(target)
            created = True
    except OSError as exc:
        raise FileFormatError("a path this process may save to", f"{where}: {short(str(exc), 300)}",
                              "check the path") from None
    entries = [(n, code, shape) for n, code, shape, _ in values]
    groups: list[list[int]] = [[]]
    size = 0
    for i, (_, code, shape) in enumerate(entries):
        nbytes = _format.ITEMSIZE[code] * int(np.prod(shape, dtype=np.int64))
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += nbytes
    count = len(groups)
    files = [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)]
    weight_map: dict[str, str] = {}
    heads = []
    total = 0
    for f, group in zip(files, groups):
        head, n = _format.header_bytes([entries[i] for i in group], {"format": "pt"})
        heads.append(head)
        total += n
        weight_map.update({entries[i][0]: f for i in group})
    index = {"metadata": {"total_size": total, **meta}, "weight_map": dict(sorted(weight_map.items()))}
    index_bytes = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")
    _remove_stale(target, _format.INDEX)
    temps: list[tuple[str, Path]] = []
    bar = progress_bar(progress, total, "save")
    try:
        for f, group, head in zip(files, groups, heads):
            temps.append((_write_temp(target, head, _values([values[i][3] for i in group]), bar), target / f))
        fd, tmp = _create_temp(target)
        temps.append((tmp, target / _format.INDEX))
        with os.fdopen(fd, "wb") as fh:
            fh.write(index_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        for tmp, final in temps:  # shards first, the index last
            os.replace(tmp, final)
        temps = []
    except OSError as exc:
        raise _folder_error(target, exc) from None
    finally:
        for tmp, _ in temps:
            _unlink(tmp)
        if temps and created:
            try:
                os.rmdir(target)
            except OSError:
                pass
        if bar is not None:
            bar.close()
    keep = set(files)
    try:
        with os.scandir(target) as it:
            stale = [e.path for e in it if (_SHARD.match(e.name) and e.name not in keep) or e.name == _format.SINGLE]
    except OSError:
        stale = []
    for f in stale:
        _unlink(f)
    return target


def read_file(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, as NumPy arrays.

    The path, the framing, the header and every tensor's offsets are checked
    (``_format.Reader``) before any data is read, so a truncated, corrupted,
    oversized or foreign file raises ``FileFormatError`` saying which of
    these it is.
    """
    with _format.Reader(path) as r:
        return dict(r.tensors()), dict(r.header.metadata)


def aliases(tensors: Mapping[str, Any], meta: Mapping[str, str]) -> dict[str, str]:
    """``{removed name: kept name}`` from the metadata of a file written by
    ``safetensors.torch.save_model``, which drops all but one name of each
    shared tensor and records each dropped one as a metadata entry ``removed
    -> kept``. An entry counts only where its key is no tensor of the file
    and its value is one (``{"format": "pt"}`` is not an alias)."""
    return {k: v for k, v in meta.items() if k not in tensors and v in tensors}


def expand_ties(tensors: dict[str, Any], meta: dict[str, str], where: str = "the file",
                block: Block | None = None) -> dict[str, Any]:
    """Map every name of a file's tie groups to its stored tensor (our
    metadata's ``names``, or safetensors' alias entries of a foreign file);
    with ``block``, only names whose tie group in the model has no value yet
    (of a foreign file's aliases, only names the model has) (a tie group given twice would be read twice to compare its
    values)."""
    state = dict(tensors)
    ours = _format.our_metadata(meta, where)
    if ours is not None:  # a name stored under itself needs no link (of 10,000 names, most)
        links = {n: src for n, info in ours[0].items() if (src := info.get("storage", n)) != n}
    else:
        links = aliases(tensors, meta)
    if not links:
        return state
    allp = block._all() if block is not None else None
    for n, src in links.items():
        if n in state or src not in tensors:
            continue
        if allp is not None:
            p = allp.get(n)
            if p is None:
                if ours is None:  # a foreign alias only for a name the model has
                    continue
            elif any(t in state for t in p.tied_with):
                continue
        state[n] = tensors[src]
    return state


def _deferred(r: _format.Reader) -> dict[str, Any]:
    """The file's tensors as ``Deferred`` values, each read (into a private
    array, the file re-checked) when it is written."""
    entries = r.header.entries
    codes = [e.dtype for e in entries.values()]
    dtypes = {code: _format.numpy_dtype(code) for code in set(codes)}  # a file has few dtypes: each made once
    with _format.no_gc():  # (one FileTensor per tensor, made in one pass; read straight into storage where it can)
        return dict(zip(entries, map(_format.FileTensor, itertools.repeat(r), entries.values(),
                                     map(dtypes.__getitem__, codes))))


def _bounded(exc: UnifiedParamsError) -> UnifiedParamsError:
    """The same error with a message of at most about ``_MAX_MESSAGE``
    characters (lists cut to their first names and a count)."""
    if len(str(exc)) <= _MAX_MESSAGE:
        return exc
    report = getattr(exc, "report", None)
    if isinstance(exc, StateError) and isinstance(report, LoadReport):
        parts = [f"{len(report.loaded)} loaded"]
        for what, names in (("missing", report.missing), ("unexpected", report.unexpected),
                            ("mismatched", [f"{n} (expected {e}, found {f})" for n, e, f in report.mismatched])):
            if names:
                parts.append(f"{what} {few(names)}")
        return StateError(short(exc.expected, 400), short("; ".join(parts), 1200), short(exc.todo, 400), report=report)
    return type(exc)(short(exc.expected, 400), short(exc.received, 1200), short(exc.todo, 400))


@_holding_locks("m")
def load(
    m: Any,
    path: str | os.PathLike[str],
    strict: bool = True,
    *,
    match: str = "name",
    names: Any = None,
    progress: bool | None = None,
    check: Any = None,
) -> LoadReport:
    """``load_state`` from a safetensors file (any safetensors file), or from
    a sharded directory (``model.safetensors.index.json`` and its shards, as
    transformers writes them; the directory or its index may be named).

    ``match="name"`` pairs the file's names with the model's. ``match="order"``
    pairs storages by order and canonical shape as ``port`` does, so a file
    saved from another framework (``layers_0.weight`` in Flax, ``0.weight`` in
    PyTorch) loads into the same architecture; it needs the file's
    unified_params metadata. ``match="structure"`` reads a checkpoint that
    another framework's own tools wrote (a safetensors ``state_dict``, a Keras
    ``.weights.h5``, a Flax msgpack, an Orbax directory, a Gluon ``.params``,
    a PyTorch ``.pt``/``.pth``/``.bin`` pickle, unpickled with
    ``weights_only=True`` and loadable by name too): layers are paired
    by name, else by the model's order and the shapes of their tensors, each
    value turned from the writer's layout into the canonical one; ``names``
    (``{regex: model name template, None, or (template, layout)}``) settles what structure cannot,
    and ``report.pairs`` lists every pair made. Every shard's header, name, shape and dtype is
    checked before the first write; then the tensors are read and written
    one at a time, with backups whatever the model's size, as one transaction
    across all shards: a file that another program changes during the load is
    a ``FileFormatError`` and the model is restored. Names that safetensors'
    ``save_model`` dropped as aliases of a shared tensor are restored from
    the name they alias; non-persistent buffers are not required. ``check=(x, y)``:
    after the load the model's output on ``x`` must equal ``y`` (float
    tolerance), else ``PortError`` and the model is restored.
    """
    if match not in ("name", "order", "structure"):
        raise ArgumentError("match='name', 'order' or 'structure'", f"match={short(match)}",
                            "use 'order' for a file saved by up.save from another framework, 'structure' for "
                            "a checkpoint written by another framework's own tools")
    if names is not None and match != "structure":
        raise ArgumentError("names= with match='structure'", f"names= with match={match!r}",
                            "pass match='structure' (names= maps a foreign file's names onto the model's)")
    block = _as_block(m, "load")
    if check is not None and not (isinstance(check, tuple) and len(check) == 2):
        output_matches(block, check)  # raises the ArgumentError that says what check= takes
    p = _format.as_path(path, "load")
    kind = _foreign.kind_of(p)
    if kind:
        if match != "structure" and not (kind in ("torch", "dcp") and match == "name"):
            raise ArgumentError(
                f"match='structure' for a {kind} checkpoint ({p.suffix or 'a directory'})",
                f"match={match!r} for {short(repr(str(p)), 200)}",
                "up.load(m, path, match='structure') pairs its layers with the model's; check=(x, y) verifies")
        return _load_foreign(block, p, strict, names, progress, check, match)
    with _Source(path) as src:
        where = src.where

        def verify() -> None:
            src.check()
            if check is not None:
                output_matches(block, check)

        tensors, meta = src.tensors, src.metadata
        desc = _pieces.describe(meta, where)
        if desc is not None:  # written by several processes: each storage from its pieces (contract 15.2)
            named = block._all() if match == "name" else {}
            tensors = _pieces.assemble(tensors, desc, where, named.get)
        ours = _format.our_metadata(meta, where) is not None
        try:
            if match == "structure":
                origin = _foreign.origin_of(list(tensors), None, meta.get("backend") if ours else None)
                return _structure_into(block, tensors, origin, names, strict, progress, verify, where)
            if match == "order":
                state = _pair_by_order(block, tensors, meta, where)
                if desc is not None:
                    _pieces.retarget(state, block)
                report = load_into(block, state, strict=False, what="load", progress=progress, backup=True,
                                   verify=verify)
                report.missing = []  # state only one framework keeps (num_batches_tracked) is not ported
                return report
            return load_into(block, expand_ties(tensors, meta, where, block), strict=strict, what="load",
                             progress=progress, backup=True, verify=verify)
        except UnifiedParamsError as exc:
            raise _bounded(_names_barely_meet(exc, len(tensors), ours)) from None


def _load_foreign(block: Block, p: Path, strict: bool, names: Any, progress: bool | None,
                  check: Any, match: str = "structure") -> LoadReport:
    """A file of another framework's own tools (``_foreign.read``); a PyTorch
    pickle may also load by name (its names are PyTorch's)."""
    where = short(repr(str(p)), 200)
    with ExitStack() as stack:
        if not (p.is_file() or p.is_dir()):
            raise FileFormatError("a checkpoint file", f"{where}: no such file", "check the path")
        tensors, origin = _foreign.read(p, where, stack)

        def verify() -> None:
            if check is not None:
                output_matches(block, check)

        if match == "name":
            try:
                return load_into(block, tensors, strict=strict, what="load", progress=progress, backup=True,
                                 verify=verify)
            except UnifiedParamsError as exc:
                raise _bounded(_names_barely_meet(exc, len(tensors), False)) from None
        return _structure_into(block, tensors, origin, names, strict, progress, verify, where)


def _structure_into(block: Block, tensors: dict[str, Any], origin: str, names: Any, strict: bool,
                    progress: bool | None, verify: Callable[[], None], where: str) -> LoadReport:
    """Pair a foreign file's layers with the model's (``_foreign``), then one
    atomic write; strict: every distinct storage of the model paired."""
    params, stats = _portable(block)
    state, made = _foreign.pair_structure(_foreign.targets_of(params, stats), tensors, origin, names)
    if strict and (made.unpaired_model or made.unpaired_file):
        report = LoadReport(made.unpaired_model, made.unpaired_file, [], [d for _, d, _ in made.pairs])
        report.pairs = made.pairs
        raise StateError(
            f"every layer of the model paired with a layer of {where} ({origin}) by name or by the shapes "
            "of its tensors (strict load)",
            f"{len(made.pairs)} tensors paired; model left unpaired {few(made.unpaired_model)}; "
            f"file left unpaired {few(made.unpaired_file)}",
            "map the rest with names={r'<file name regex>': r'<model name>'} (None ignores a tensor), "
            "or pass strict=False to load the pairs made; check=(x, y) verifies the result",
            report=report,
        )
    report = load_into(block, state, strict=False, what="load", progress=progress, backup=True, verify=verify)
    report.missing = list(made.unpaired_model)
    report.unexpected = list(made.unpaired_file)
    report.pairs = made.pairs
    return report


def _names_barely_meet(exc: UnifiedParamsError, in_file: int, ours: bool) -> UnifiedParamsError:
    """A strict load's StateError where few of the file's names are the
    model's (no more matched than did not): the file is most likely of
    another framework, so say so and point to ``match='order'`` (a file of
    up.save, whose metadata gives the order) or to renaming the keys, rather
    than to ``strict=False``, which would load only the few that match."""
    report = getattr(exc, "report", None)
    if not (isinstance(exc, StateError) and isinstance(report, LoadReport) and report.unexpected):
        return exc
    loaded = len(report.loaded)
    if loaded == 0 and ours:
        return exc  # load_into already points to match='order'
    if loaded > len(report.unexpected):
        return exc  # most names meet: a real mismatch, the usual advice
    fix = ("up.load(m, path, match='order') pairs this up.save file's tensors by order and shape"
           if ours else
           "up.load(m, path, match='structure') pairs a checkpoint of another framework's own tools by layer "
           "names and shapes (names={regex: model name} for the rest, check=(x, y) to verify)")
    return StateError(
        exc.expected,
        f"the names barely meet: {loaded} of the file's {in_file} tensors are named as in the model; "
        f"{LoadReport(report.missing, report.unexpected, report.mismatched, report.loaded)}",
        f"{fix}; strict=False would load only the {loaded} that match",
        report=report,
    )


class _Source:
    """What ``load`` reads: one safetensors file, or a sharded directory
    (its index and every shard opened and checked up front). ``tensors``:
    name -> ``Deferred``; ``metadata``: the file's, or the index's (with
    the shards' alias entries for a foreign checkpoint); ``check()``: every
    file still the one whose header was read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = _format.as_path(path, "load")
        self.readers: list[_format.Reader] = []
        self.index: _format.Index | None = None
        try:
            is_dir = p.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if (p / _format.INDEX).exists():
                p = p / _format.INDEX
            elif (p / _format.SINGLE).exists():
                p = p / _format.SINGLE
            else:
                raise FileFormatError(f"a file, or a folder holding {_format.INDEX} or {_format.SINGLE}",
                                      f"the folder {short(repr(str(p)), 200)} holds neither",
                                      "name the checkpoint file itself")
        self.where = short(repr(str(p)), 200)
        try:
            if p.name.endswith(".json"):
                self._open_index(p)
            else:
                r = _format.Reader(p)
                self.readers.append(r)
                self.tensors = _deferred(r)
                self.metadata = dict(r.header.metadata)
        except BaseException:
            self.close()
            raise

    def _open_index(self, p: Path) -> None:
        index = self.index = _format.read_index(p)
        fix = "copy the checkpoint again (every shard the index lists), or save it again"
        self.tensors = {}
        shard_meta: dict[str, str] = {}
        listed = index.weight_map
        for shard in index.shards:
            try:
                r = _format.Reader(shard)
            except FileFormatError as exc:
                raise FileFormatError(f"every shard that {self.where} lists, readable",
                                      f"{short(repr(shard.name), 120)}: {exc.received}", fix) from None
            self.readers.append(r)
            for name, value in _deferred(r).items():
                if listed.get(name) != shard:
                    raise FileFormatError(
                        "shards that hold the tensors the index lists for them, each once",
                        f"{short(name, 80)!r} in {short(repr(shard.name), 120)}, listed in the index "
                        + (f"under {short(repr(listed[name].name), 120)}" if name in listed else "nowhere"), fix)
                self.tensors[name] = value
            for k, v in r.header.metadata.items():
                shard_meta.setdefault(k, v)
        absent = [n for n in listed if n not in self.tensors]
        if absent:
            raise FileFormatError("every tensor the index lists, in its shard",
                                  f"{len(absent)} absent: {few(absent)} in {self.where}", fix)
        self.metadata = dict(index.metadata)
        if _format.our_metadata(self.metadata, self.where) is None:
            self.metadata.update({k: v for k, v in aliases(self.tensors, shard_meta).items()
                                  if k not in self.metadata})

    def check(self) -> None:
        for r in self.readers:
            r.check()

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entry(p: Param) -> Entry:
    return Entry(p.name, p.shape, p.layout, p.role, p._leaf.rnn_bias)


def _entries_of(ps: Sequence[Param]) -> tuple[list[Entry], list[np.dtype]]:
    """``_entry`` and the dtype of each, lean (two adapter calls each)."""
    out: list[Entry] = []
    dtypes: list[np.dtype] = []
    if not ps:
        return out, dtypes
    h = ps[0]._handle  # the storages of one block
    shape_of, dtype_of = h.shape, h.dtype
    new = tuple.__new__
    for p in ps:
        leaf = p._leaf
        layout = leaf.layout
        shape = shape_of(leaf)
        if layout != CANONICAL or type(shape) is not tuple:
            shape = p.shape  # converted (and kept) by the Param
        dt = dtype_of(leaf)
        out.append(new(Entry, (p.name, shape, layout, leaf.role, leaf.rnn_bias)))
        dtypes.append(dt if isinstance(dt, np.dtype) else np.dtype(dt))
    return out, dtypes


def _port_checked(what: str, n: int, srcs: Sequence[Param], dp: Param, value: Deferred) -> Any:
    """``check_deferred`` of a port's value, a dtype that does not cast as
    the ``PortError`` naming both sides."""
    try:
        return _check_deferred(dp, value, "port")
    except DTypeError as exc:
        raise PortError(
            f"{what} #{n} of compatible dtypes",
            f"{srcs[0].name!r} {srcs[0].dtype} -> {dp.name!r} {dp.dtype}",
            str(exc),
        ) from None


def _pair_by_order(block: Block, tensors: dict[str, Any], meta: dict[str, str], where: str) -> dict[str, Any]:
    """``{model name: file tensor}`` paired as ``port`` pairs two models."""
    ours = _format.our_metadata(meta, where)
    if ours is None:
        raise FileFormatError(
            "a file saved by up.save (its metadata gives the model order)",
            f"{where} without unified_params metadata",
            "load it by name (match='name'), or save it again with up.save",
        )
    table = ours[0]
    stored = [n for n, info in table.items() if info.get("storage", n) == n and n in tensors]
    fparams = [n for n in stored if table[n].get("kind") == "param"]
    fstats = [n for n in stored if table[n].get("kind") == "buffer" and table[n].get("role") in _PORT_BUFFER_ROLES]
    dparams, dstats = _portable(block)
    state: dict[str, Any] = {}
    src_label = f"the file ({short(meta.get('backend', 'unknown'), 40)})"
    for what, fl, dl in (("parameters", fparams, dparams), ("running statistics", fstats, dstats)):
        fe = [Entry(n, tuple(tensors[n].shape), table[n].get("layout", "canonical"), table[n].get("role", ""),
                    table[n].get("rnn_bias", "")) for n in fl]
        links = pair(what, fe, [_entry(p) for p in dl], src_label, f"the {block.backend} model",
                     "load a file saved from the same architecture")
        for link in links:
            if link.how == "copy":
                state[dl[link.dst[0]].name] = tensors[fl[link.src[0]]]
                continue
            values = combine(link.how, [np.asarray(tensors[fl[k]]) for k in link.src])
            for k, v in zip(link.dst, values):
                state[dl[k].name] = v
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


@_holding_locks("src", "dst")
def port(src: Any, dst: Any, *, progress: bool | None = None, check: Any = None) -> PortReport:
    """Copy every value of ``src`` into ``dst`` (any two backends), pairing
    parameters by order and canonical shape; running statistics are paired
    the same way among themselves. Atomic: a mismatch changes nothing.

    Everything is checked first; then each storage is read (a zero-copy view
    where the framework allows) and written, one at a time. ``progress``: a
    tqdm bar (default: for models over 256 MiB when stderr is a terminal).
    ``check=x`` (or ``(x_src, x_dst)``): both models run on it after the copy;
    outputs that differ beyond float tolerance raise ``PortError`` and
    restore ``dst`` (pairs right by shape but wrong in meaning).
    """
    s, d = _as_block(src, "port"), _as_block(dst, "port")
    report = PortReport(src_backend=s.backend, dst_backend=d.backend)
    with _format.no_gc():  # many small objects, no cycles: collected once, when the temporaries are gone
        _port(s, d, report, progress, check)
    return report


def _port(s: Block, d: Block, report: PortReport, progress: bool | None, check: Any) -> None:
    items: list[tuple[Param, Any]] = []
    shapes: list[tuple[int, ...]] = []
    dtypes: list[np.dtype] = []
    pairs = report.pairs
    portable = []
    groups = list(zip(("parameters", "running statistics"), _portable(s), _portable(d)))
    if _port_in_order(groups, items, shapes, dtypes, pairs):
        _port_write(s, d, items, shapes, dtypes, progress, check)
        return
    for what, sl, dl in groups:
        (se, sdts), (de, ddts) = _entries_of(sl), _entries_of(dl)  # each shape and dtype asked for once
        for q, e in zip((*sl, *dl), (*se, *de)):
            if None in e.shape:
                raise PortError(
                    "two concrete models",
                    f"{q.name!r} is deferred",
                    "call materialize(x) on it first",
                )
        portable.append((what, sl, dl, se, de, sdts, ddts))
    for what, sl, dl, se, de, sdts, ddts in portable:
        links = pair(what, se, de, f"the {s.backend} source",
                     f"the {d.backend} destination", "port between models of the same architecture")
        for n, link in enumerate(links):
            if link.how == "copy":  # the common case, lean: one dtype asked for per side
                i, k = link.src[0], link.dst[0]
                sp, dp = sl[i], dl[k]
                sdt, ddt = sdts[i], ddts[k]
                value: Any = ParamValue(se[i].shape, sdt, sp)  # type: ignore[arg-type]
                if sdt != ddt:
                    value = _port_checked(what, n, [sp], dp, value)
                items.append((dp, value))
                shapes.append(de[k].shape)  # type: ignore[arg-type]
                dtypes.append(ddt)
                pairs.append((sp.name, dp.name, de[k].shape))  # type: ignore[arg-type]
                continue
            srcs = [sl[k] for k in link.src]
            for pos, k in enumerate(link.dst):
                dp = dl[k]
                value = Deferred(de[k].shape, srcs[0].dtype,  # type: ignore[arg-type]
                                 lambda srcs=srcs, how=link.how, pos=pos: combine(  # type: ignore[misc]
                                     how, [q.read(copy=False) for q in srcs])[pos])
                items.append((dp, _port_checked(what, n, srcs, dp, value)))
                shapes.append(de[k].shape)  # type: ignore[arg-type]
                dtypes.append(ddts[k])
                pairs.append(("+".join(q.name for q in srcs), dp.name, de[k].shape))  # type: ignore[arg-type]
    _port_write(s, d, items, shapes, dtypes, progress, check)


def _port_write(s: Block, d: Block, items: list[tuple[Param, Any]], shapes: list[tuple[int, ...]],
                dtypes: list[np.dtype], progress: bool | None, check: Any) -> None:
    if check is None:
        write_atomic(items, what="port", progress=progress, shapes=shapes, dtypes=dtypes)
    else:
        write_atomic(items, what="port", progress=progress, backup=True,
                     verify=lambda: outputs_agree(s, d, check), shapes=shapes, dtypes=dtypes)


_NAME = operator.attrgetter("name")


def _port_in_order(groups: list[tuple[str, list[Param], list[Param]]], items: list[tuple[Param, Any]],
                   shapes: list[tuple[int, ...]], dtypes: list[np.dtype],
                   pairs: list[tuple[str, str, tuple[int, ...]]]) -> bool:
    """The port's items where every group pairs one to one in order, each
    pair of one dtype (``_pairing.one_to_one``: the common case, in list
    passes, issue 13); ``False`` with nothing added otherwise, and the
    general route checks, pairs and words any error."""
    planned = []
    for _, sl, dl in groups:
        (sleaves, sshapes, sdts), (dleaves, dshapes, ddts) = specs_of(sl), specs_of(dl)
        if (None in itertools.chain.from_iterable(sshapes) or None in itertools.chain.from_iterable(dshapes)
                or sdts != ddts or not one_to_one(sleaves, dleaves, sshapes, dshapes)):
            return False
        planned.append((sl, dl, sshapes, sdts))
    for sl, dl, sshapes, sdts in planned:
        items.extend(zip(dl, sl))  # each source Param read when written (write_batch), of the same dtype
        shapes.extend(sshapes)  # type: ignore[arg-type]
        dtypes.extend(sdts)
        pairs.extend(zip(map(_NAME, sl), map(_NAME, dl), sshapes))  # type: ignore[arg-type]
    return True
