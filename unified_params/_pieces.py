"""Checkpoints written by several processes, read by any number of them
(contract 15.2): ``up.save`` of a sharded model, ``up.load`` into another
sharding or framework, ``up.consolidate``.

Design constraints:

* No process gathers, and every process computes the same plan from what
  each holds (``p.shards()``, canonical layout, exchanged once with
  ``Group.all_gather``): each distinct piece is written once, by the lowest
  rank that holds it (a replicated parameter: rank 0).
* What goes where. A tensor whose distinct pieces are each one run of its
  bytes in canonical C order and together tile it (row boxes: FSDP2,
  DTensor ``Shard(0)``, a JAX array sharded on canonical axis 0; any 1-D
  sharding; a replicated or unsharded tensor) is written as ONE whole
  tensor under its own name into the shared ``model-whole.safetensors``:
  every process computes its header alike (``_format.header_bytes``), rank 0
  creates it under a temporary name and sizes it, and each process writes
  only its own pieces' byte ranges into it (``os.pwrite``, streamed from
  the read-only piece data). Any other tensor (DTensor ``Shard(1)`` of a
  matrix, a 2-D mesh's ``Shard(0), Shard(1)``) keeps one tensor per piece,
  ``<name>#<k>``, in the file of the rank that writes it,
  ``model-r0000R-of-0000N.safetensors`` (none for a rank without such
  pieces). The folder must be one that every process sees.
* Atomic across processes: every file is written under a temporary name,
  and after an exchange in which every process says it wrote all of its
  bytes (and fsynced them), rank 0 renames them into place, the index
  last (a rename failing midway puts back every file it replaced, kept
  under hard links until then), then removes an earlier save's files that
  the index no longer names. A process that fails tells the others in that exchange: nothing
  is renamed, the temporary files are removed, and every process raises
  (its own contract error, or a ``FileFormatError`` naming the rank).
* The index is transformers' ``model.safetensors.index.json``: ``weight_map``
  names whole tensors under their own names and pieces as ``<name>#<k>``,
  so a checkpoint of row-sharded, replicated or unsharded parameters is a
  plain sharded directory that ``transformers`` and ``safetensors`` read as
  it is. The index's ``unified_params.pieces`` entry describes every
  tensor (global shape, dtype, parts: a whole tensor is one part, the
  whole box; a piece is placed by its box).
* A load reads, for each storage, only the rows of the file pieces that
  overlap the boxes this process holds (``p.shards()`` of the target), one
  storage at a time; a target that is not sharded holds the whole box.
* ``consolidate`` streams a pieces checkpoint into a plain sharded directory
  that ``transformers`` and ``safetensors`` read, one tensor at a time.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _format
from ._errors import FileFormatError
from ._values import Deferred

if TYPE_CHECKING:
    from ._block import Block
    from ._param import Param
    from ._shards import Shard, ShardedValue

#: the index's metadata key that marks (and describes) a pieces checkpoint
KEY = "unified_params.pieces"

Box = tuple[tuple[int, int], ...]


def group_of(block: Block) -> Any:
    """The process group of the model's framework when it spans several
    processes (``rank``, ``size``, ``all_gather(obj)``, ``barrier()``), else None."""
    grp = block._handle.group()
    return grp if grp is not None and grp.size > 1 else None


def _box(index: Sequence[slice]) -> Box:
    return tuple((int(s.start), int(s.stop)) for s in index)


def _whole(shape: Sequence[int]) -> Box:
    return tuple((0, int(d)) for d in shape)


def plan(held: Sequence[Mapping[str, list[Box]]], shapes: Mapping[str, tuple[int, ...]],
         ) -> tuple[dict[str, list[tuple[str, Box, int]]], dict[int, list[tuple[str, str, Box]]]]:
    """From what each rank holds (``held[rank]``: name -> boxes): per name,
    its distinct pieces ``(key, box, writer rank)``; per rank, what it writes
    ``(name, key, box)``. Deterministic: every process computes the same."""
    pieces: dict[str, list[tuple[str, Box, int]]] = {}
    writes: dict[int, list[tuple[str, str, Box]]] = {}
    for name, shape in shapes.items():
        owner: dict[Box, int] = {}
        for rank, boxes in enumerate(held):
            for b in boxes.get(name, []):
                owner.setdefault(tuple(b), rank)
        whole = _whole(shape)
        ordered = sorted(owner)
        for k, b in enumerate(ordered):
            key = name if b == whole else f"{name}#{k}"
            pieces.setdefault(name, []).append((key, b, owner[b]))
            writes.setdefault(owner[b], []).append((name, key, b))
    return pieces, writes


def file_name(rank: int, size: int) -> str:
    return f"model-r{rank:05d}-of-{size:05d}.safetensors"


def local_pieces(block: Block) -> tuple[dict[str, Param], dict[str, str], dict[str, list[Shard]]] | None:
    """One walk of the model for a save by several processes: its storages,
    the file metadata and each storage's local pieces (a storage that is not
    sharded: one piece, all of it); ``None`` when no storage is sharded."""
    from . import _io
    from ._shards import sharded_pieces, shards_of

    storages, meta = _io._metadata(block)
    held: dict[str, list[Shard]] = {}
    sharded = False
    for n, p in storages.items():
        pieces = sharded_pieces(p)
        sharded = sharded or pieces is not None
        held[n] = pieces if pieces is not None else shards_of(p)
    return (storages, meta, held) if sharded else None


#: the one file of the tensors whose pieces are byte ranges of them (every process writes its ranges)
WHOLE = "model-whole.safetensors"
#: the files of a save by several processes (and of a plain sharded save), which a later save replaces
_OURS = re.compile(r"model-(r\d{5}-of-\d{5}|\d{5}-of-\d{5}|whole)\.safetensors\Z")


def _span(box: Box, shape: Sequence[int]) -> tuple[int, int] | None:
    """The elements ``[start, stop)`` of ``box`` in the C order of ``shape``
    when they are one run (axes before some k of length 1, axis k any
    range, the axes after it whole: row boxes, any 1-D box, the whole), else
    None; an empty box is the empty run."""
    vol = _volume(box)
    if vol == 0:
        return (0, 0)
    k = len(shape) - 1
    while k >= 0 and box[k] == (0, int(shape[k])):
        k -= 1
    if any(hi - lo != 1 for lo, hi in box[:max(k, 0)]):
        return None
    start = 0
    for (lo, _), d in zip(box, shape):
        start = start * int(d) + lo
    return start, start + vol


def whole_route(pieces: Mapping[str, list[tuple[str, Box, int]]],
                shapes: Mapping[str, tuple[int, ...]]) -> set[str]:
    """The names whose distinct pieces are each one run of the tensor's C
    order and together tile it exactly: written as one whole tensor (each
    piece a byte range of it) in :data:`WHOLE`. Deterministic."""
    out = set()
    for name, parts in pieces.items():
        shape = shapes[name]
        spans = [_span(b, shape) for _, b, _ in parts]
        if any(s is None for s in spans):
            continue
        at = 0
        for lo, hi in sorted(s for s in spans if s is not None and s[0] < s[1]):
            if lo != at:
                break
            at = hi
        else:
            if at == int(np.prod(shape, dtype=np.int64)):
                out.add(name)
    return out


def _pwrite(fd: int, data: Any, offset: int) -> int:
    """All of ``data`` (bytes-like) at ``offset`` of ``fd``; the bytes written."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        if hasattr(os, "pwrite"):
            n = os.pwrite(fd, view[done:], offset + done)
        else:  # pragma: no cover - Windows: this process's own descriptor, so seek and write
            os.lseek(fd, offset + done, os.SEEK_SET)
            n = os.write(fd, view[done:])
        if n <= 0:
            raise OSError(errno.EIO, "a positioned write wrote nothing")
        done += n
    return done


def _write_ranges(path: Path, ranges: Sequence[tuple[int, np.ndarray]]) -> None:
    """Each piece's bytes (C order, little endian) at its offset of the shared
    file that rank 0 created and sized; flushed to disk."""
    flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileFormatError(
            "a checkpoint folder that every process sees (a shared file system)",
            f"{_format.short(repr(str(path.parent)), 200)}: the file rank 0 created there is not visible here",
            "save to a folder on a file system that every process mounts") from None
    try:
        scratch: list[np.ndarray] = []
        big_host = sys.byteorder != "little"
        for offset, v in ranges:
            v = np.asarray(v)
            order = v.dtype.byteorder
            if order == ">" or (order == "=" and big_host):
                v = v.astype(v.dtype.newbyteorder("<"))
            for part in _format._c_order_parts(v, scratch) if v.size else ():
                offset += _pwrite(fd, part.reshape(-1).view(np.uint8), offset)  # no copy of a C-order piece
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_shared(folder: Path, head: bytes, size: int) -> str:
    """Rank 0's temporary shared file: the header, sized to hold every
    tensor (the others write their ranges into it)."""
    from . import _io

    fd, tmp = _io._create_temp(folder)
    try:
        _pwrite(fd, head, 0)
        os.ftruncate(fd, len(head) + size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _io._unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _said(exc: BaseException | None) -> str | None:
    """What a failure is called in the all_gather that tells the others."""
    return None if exc is None else _format.short(f"{type(exc).__name__}: {exc}", 400)


_UNCHANGED = "the files of the checkpoint there are unchanged and the temporary files removed"


def _settle(said: Sequence[str | None], own: BaseException | None, folder: Path, temps: Sequence[str],
            step: str, state: str = _UNCHANGED) -> None:
    """After an exchange: if any process failed, remove ``temps`` (this
    process's temporary files) and raise on every process, this one's own
    error where it failed, else a FileFormatError naming the ranks that did.
    Every process decides alike, so none waits on a collective the others left."""
    if all(s is None for s in said):
        return
    from . import _io

    for t in temps:
        _io._unlink(t)
    if own is not None:
        if isinstance(own, OSError):
            raise _io._folder_error(folder, own) from None
        raise own
    bad = [f"rank {r}: {s}" for r, s in enumerate(said) if s is not None]
    raise FileFormatError(f"every process {step}",
                          f"{len(bad)} failed ({'; '.join(bad[:4])}) saving to "
                          f"{_format.short(repr(str(folder)), 200)}",
                          f"fix what that process reports and save again; {state}")


def _replace_all(todo: list[tuple[Path, Path]]) -> None:
    """Rename each temporary file onto its final name, in order, as one step:
    each final file that exists is first kept under a hard link, so that a
    rename failing midway puts every earlier file back (and removes the new
    ones) before it raises; the temporary files are removed either way. A file
    system without hard links keeps no such copy (the index, renamed last,
    is then the only guard)."""
    from . import _io

    kept: list[tuple[str, Path]] = []
    done: list[Path] = []
    try:
        for _, final in todo:
            if os.path.lexists(final):
                backup = os.path.join(final.parent, f".up-{secrets.token_hex(8)}.tmp")
                try:
                    os.link(final, backup)
                except OSError:
                    continue  # no hard links here: no undo for this file
                kept.append((backup, final))
        for tmp, final in todo:
            os.replace(tmp, final)
            done.append(final)
    except BaseException:
        back = dict((f, b) for b, f in kept)
        for final in done:
            if final in back:
                try:
                    os.replace(back.pop(final), final)
                except OSError:
                    pass
            else:
                _io._unlink(str(final))
        for tmp, final in todo:
            if final not in done:
                _io._unlink(str(tmp))
        for b in back.values():
            _io._unlink(b)
        raise
    for b, _ in kept:
        _io._unlink(b)


def _remove_replaced(folder: Path, *keep: set[str]) -> None:
    """Best effort, after the index is in place: an earlier save's files that
    it no longer names (another process count, a plain sharded save) and a
    ``model.safetensors``, which transformers would read instead of the index."""
    from . import _io

    kept = set().union(*keep)
    try:
        with os.scandir(folder) as it:
            stale = [e.path for e in it if (_OURS.match(e.name) and e.name not in kept) or e.name == _format.SINGLE]
    except OSError:
        return
    for f in stale:
        _io._unlink(f)


def save_pieces(block: Block, path: str | os.PathLike[str], grp: Any, progress: bool | None,
                listed: tuple[dict[str, Param], dict[str, str], dict[str, list[Shard]]]) -> Path:
    """``up.save`` called by every process of ``grp`` (see the module doc);
    ``listed``: what :func:`local_pieces` found, so the model is walked and
    its pieces listed once. Four exchanges, each of them also how a process
    learns that another failed: nothing is renamed into place unless every
    process wrote all of its bytes."""
    from . import _io

    storages, meta, held = listed
    target = _format.as_path(path, "save to")
    rank = grp.rank
    fail: BaseException | None = None
    if rank == 0:
        try:
            target.mkdir(parents=False, exist_ok=True)
            _io._remove_stale(target, _format.INDEX)
        except OSError as exc:
            fail = exc
    entries = {n: (code, shape) for n, code, shape in _io._entries(storages)}
    shapes = {n: shape for n, (_, shape) in entries.items()}
    mine = {n: [_box(s.index) for s in pieces] for n, pieces in held.items()}
    everyone = grp.all_gather((mine, _said(fail)))  # also the barrier after rank 0 made the folder
    _settle([e[1] for e in everyone], fail, target, [], "making the checkpoint folder")
    pieces, writes = plan([e[0] for e in everyone], shapes)
    whole = whole_route(pieces, shapes)
    # the shared file: its header every process computes alike, the tensors in the model's order
    shared = [(n, code, shape) for n, (code, shape) in entries.items() if n in whole]
    head, total = _format.header_bytes(shared, {"format": "pt"})
    begin: dict[str, int] = {}
    at = len(head)
    for n, code, shape in shared:
        begin[n] = at
        at += _format.ITEMSIZE[code] * int(np.prod(shape, dtype=np.int64))
    own = writes.get(rank, [])
    by_box = {n: {_box(s.index): s for s in held[n]} for n in {w[0] for w in own}}
    shared_tmp: str | None = None
    if rank == 0 and shared:
        try:
            shared_tmp = _create_shared(target, head, total)
        except BaseException as exc:  # noqa: BLE001 - every process is told, then each raises
            fail = exc
    tokens = grp.all_gather((os.path.basename(shared_tmp) if shared_tmp else None, _said(fail)))
    _settle([t[1] for t in tokens], fail, target, [], "creating the shared checkpoint file")
    token = tokens[0][0]
    # this process's bytes: its runs of whole tensors into the shared file, its other pieces into a file of its own
    rest = [(n, key, box) for n, key, box in own if n not in whole]
    mine_tmp: str | None = None
    try:
        ranges = []
        for n, _, box in own:
            span = _span(box, shapes[n]) if n in whole else None
            if span is not None and span[0] < span[1]:  # read-only pieces: no copy of ours
                ranges.append((begin[n] + span[0] * _format.ITEMSIZE[entries[n][0]], by_box[n][box].data))
        if ranges:
            _write_ranges(target / str(token), ranges)
        if rest:
            head_r, _ = _format.header_bytes(
                [(key, entries[n][0], tuple(b - a for a, b in box)) for n, key, box in rest], {"format": "pt"})
            arrays = (by_box[n][box].data for n, key, box in rest)  # read-only pieces: no copy of ours
            mine_tmp = _io._write_temp(target, head_r, arrays, None)
    except BaseException as exc:  # noqa: BLE001 - every process is told, then each raises
        fail = exc
    done = grp.all_gather((os.path.basename(mine_tmp) if mine_tmp else None, _said(fail)))
    temps = [t for t in (mine_tmp, shared_tmp) if t]
    _settle([d[1] for d in done], fail, target, temps, "writing its pieces")
    if rank == 0:  # every byte is on disk: rank 0 renames the files into place, the index last
        files = {r: file_name(r, grp.size) for r, d in enumerate(done) if d[0]}
        todo = [(target / str(d[0]), target / files[r]) for r, d in enumerate(done) if d[0]]
        if token:
            todo.append((target / str(token), target / WHOLE))
        desc = {n: {"shape": list(entries[n][1]), "dtype": entries[n][0],
                    "parts": [[n, [list(x) for x in _whole(shapes[n])]]] if n in whole else
                    [[key, [list(x) for x in box]] for key, box, _ in pieces[n]]} for n in pieces}
        weight_map = {n: WHOLE for n in whole}
        weight_map.update({key: files[r] for n in pieces if n not in whole for key, _, r in pieces[n]})
        size = sum(_format.ITEMSIZE[code] * int(np.prod(shape, dtype=np.int64)) for code, shape in entries.values())
        index = {"metadata": {"total_size": size, **meta, KEY: json.dumps(desc, sort_keys=True)},
                 "weight_map": dict(sorted(weight_map.items()))}
        try:
            fd, tmp = _io._create_temp(target)
            todo.append((Path(tmp), target / _format.INDEX))
            with os.fdopen(fd, "wb") as fh:
                fh.write((json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            _replace_all(todo)
        except BaseException as exc:  # noqa: BLE001 - every process is told, then each raises
            fail = exc
        if fail is None:
            _remove_replaced(target, {WHOLE} if token else set(), set(files.values()))
    final = grp.all_gather(_said(fail))
    _settle(final, fail, target, [], "seeing rank 0 rename the files into place")
    return target


def describe(meta: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    """The pieces description of an index's metadata, checked; None for a
    checkpoint that is not one."""
    raw = meta.get(KEY)
    if raw is None:
        return None
    fix = "copy the checkpoint again, or save it again from the processes that hold the model"
    try:
        desc = json.loads(raw) if isinstance(raw, str) else None
        ok = isinstance(desc, dict) and all(
            isinstance(d, dict) and isinstance(d.get("shape"), list) and isinstance(d.get("parts"), list)
            and all(isinstance(k, str) and len(b) == len(d["shape"]) for k, b in d["parts"])
            for d in desc.values())
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise FileFormatError(f"a {KEY} entry describing the pieces of each tensor", f"{_format.short(raw)} in "
                              f"{where}", fix)
    return desc  # type: ignore[return-value]


def _overlap(a: Box, b: Box) -> Box | None:
    out = tuple((max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b))
    return out if all(lo < hi for lo, hi in out) or not out else None


def _read_rows(ft: Any, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` (axis 0) of a file tensor: one byte range of the file
    (of an array held in memory: a view)."""
    if isinstance(ft, np.ndarray):
        return ft[lo:hi] if ft.ndim else ft
    shape = ft.shape
    if not shape or (lo, hi) == (0, shape[0]):
        return np.asarray(ft)
    row = int(np.prod(shape[1:], dtype=np.int64)) * ft.dtype.itemsize
    r, e = ft._reader, ft._entry
    out = np.empty((hi - lo, *shape[1:]), ft.dtype)
    part = _format.Entry(e.name, e.dtype, out.shape, e.begin + lo * row, e.begin + hi * row)
    r.read_into(part, out)
    return out


def _into_rows(ft: Any, lo: int, hi: int, dst: np.ndarray) -> bool:
    """Read rows ``lo:hi`` of a file tensor straight into ``dst`` (C-contiguous,
    their shape and dtype); False where ``ft`` is not a file's tensor."""
    r, e = getattr(ft, "_reader", None), getattr(ft, "_entry", None)
    if r is None or e is None or dst.dtype != ft.dtype or not ft.shape:
        return False
    row = int(np.prod(ft.shape[1:], dtype=np.int64)) * ft.dtype.itemsize
    r.read_into(_format.Entry(e.name, e.dtype, dst.shape, e.begin + lo * row, e.begin + hi * row), dst)
    return True


def _read_box(ft: Any, o: Box, box: Box) -> np.ndarray | None:
    """The part ``o`` of the file tensor ``ft`` (placed at ``box``) read as its
    runs of bytes (a run: axis k's range with the whole axes after it), so
    that a process reads only the bytes of its own box, also where it holds
    columns of a whole tensor; None where ``ft`` is not a file's tensor or
    the runs would be many tiny reads (then whole rows are read)."""
    r, e = getattr(ft, "_reader", None), getattr(ft, "_entry", None)
    if r is None or e is None or not ft.shape:
        return None
    shape = tuple(int(d) for d in ft.shape)
    ext = tuple(hi - lo for lo, hi in o)
    k = len(shape) - 1
    while k > 0 and ext[k] == shape[k]:
        k -= 1
    item = ft.dtype.itemsize
    step = ext[k] * int(np.prod(shape[k + 1:], dtype=np.int64))
    runs = int(np.prod(ext[:k], dtype=np.int64))
    if step * item < 4096 and runs > 1024:
        return None
    strides = [int(np.prod(shape[a + 1:], dtype=np.int64)) for a in range(len(shape))]
    first = [lo - b0 for (lo, _), (b0, _) in zip(o, box)]
    out = np.empty(ext, ft.dtype)
    flat = out.reshape(-1)
    for i, idx in enumerate(np.ndindex(*ext[:k])):
        at = sum((j + first[a]) * strides[a] for a, j in enumerate(idx)) + first[k] * strides[k]
        begin = e.begin + at * item
        r.read_into(_format.Entry(e.name, e.dtype, (step,), begin, begin + step * item), flat[i * step:(i + 1) * step])
    return out


def _volume(box: Box) -> int:
    return int(np.prod([hi - lo for lo, hi in box], dtype=np.int64))


def _blank(shape: tuple[int, ...], dtype: Any, wanted: list[Box]) -> np.ndarray:
    """The array a storage is assembled in: what the ``wanted`` boxes do not
    cover is zero (a sharded adapter never reads it; zero keeps every check
    of the value quiet), and only that is cleared: for boxes of whole rows
    (FSDP2, a JAX array sharded on its first axis) the other rows."""
    out = np.empty(shape, dtype)
    whole = _whole(shape)
    if sum(_volume(b) for b in wanted) >= _volume(whole):  # distinct boxes of one sharding tile, never overlap
        return out
    if not shape or any(b[1:] != whole[1:] for b in wanted):
        out[...] = 0
        return out
    at = 0
    for lo, hi in sorted(b[0] for b in wanted):
        if lo > at:
            out[at:lo] = 0
        at = max(at, hi)
    out[at:] = 0
    return out


class Assembled(Deferred):
    """One storage's value from its pieces: the boxes this process holds
    (``boxes()``, called when the value is written) filled from the file
    pieces that overlap them; the rest stays zero and is never read."""

    __slots__ = ("_parts", "_boxes")
    private = True

    def __init__(self, shape: tuple[int, ...], dtype: Any, parts: list[tuple[Box, Any]],
                 boxes: Callable[[], list[Box]]) -> None:
        super().__init__(shape, dtype, self._assemble)
        self._parts, self._boxes = parts, boxes

    def _assemble(self) -> np.ndarray:
        wanted = list(dict.fromkeys(self._boxes()))
        out = _blank(self.shape, self.dtype, wanted)
        for want in wanted:
            for box, ft in self._parts:
                o = _overlap(box, want)
                if o is None:
                    continue
                if not o:
                    out[...] = np.asarray(ft)
                    continue
                dst = out[tuple(slice(lo, hi) for lo, hi in o)]
                lo, hi = o[0][0] - box[0][0], o[0][1] - box[0][0]
                if o[1:] == box[1:] and dst.flags.c_contiguous and _into_rows(ft, lo, hi, dst):
                    continue  # whole rows of the piece: read straight into place, no copy of ours
                part = _read_box(ft, o, box)
                if part is not None:  # columns (a box narrower than the file tensor): its runs, nothing else
                    dst[...] = part
                    continue
                rows = _read_rows(ft, lo, hi)
                local = (slice(0, hi - lo),) + tuple(slice(a - b0, b - b0) for (a, b), (b0, _) in zip(o[1:], box[1:]))
                dst[...] = rows[local]
        return out


def assemble(tensors: Mapping[str, Any], desc: Mapping[str, Any], where: str,
             target: Callable[[str], Param | None]) -> dict[str, Any]:
    """name -> :class:`Assembled` for every storage the pieces describe.
    ``target(name)``: the model's parameter of that name (its boxes are read),
    or None (the whole value is assembled)."""
    out: dict[str, Any] = {}
    fix = "copy the checkpoint again (every file the index lists)"
    for name, d in desc.items():
        shape = tuple(int(x) for x in d["shape"])
        parts: list[tuple[Box, Any]] = []
        cover = 0
        for key, box in d["parts"]:
            ft = tensors.get(key)
            b = tuple((int(lo), int(hi)) for lo, hi in box)
            if ft is None or tuple(ft.shape) != tuple(hi - lo for lo, hi in b):
                raise FileFormatError(f"the piece {key!r} of {name!r} of the shape its box gives",
                                      "absent" if ft is None else f"shape {tuple(ft.shape)}" + f" in {where}", fix)
            parts.append((b, ft))
            cover += int(np.prod([hi - lo for lo, hi in b], dtype=np.int64))
        if cover < int(np.prod(shape, dtype=np.int64)):
            raise FileFormatError(f"pieces that cover all of {name!r} {shape}",
                                  f"{cover} of {int(np.prod(shape, dtype=np.int64))} elements in {where}", fix)
        dtype = parts[0][1].dtype if parts else np.dtype(np.float32)

        def boxes(name: str = name, shape: tuple[int, ...] = shape) -> list[Box]:
            p = target(name)
            if p is None:
                return [_whole(shape)]
            return [_box(s.index) for s in p.shards()]

        out[name] = Assembled(shape, dtype, parts, boxes)
    return out


def retarget(state: Mapping[str, Any], block: Block) -> None:
    """After a pairing (``match='order'``) has chosen each value's target:
    assembled values read only the boxes their target holds."""
    named = block._all()
    for name, v in state.items():
        p = named.get(name)
        if isinstance(v, Assembled) and p is not None:
            v._boxes = functools.partial(_boxes_of, p)


def _boxes_of(p: Param) -> list[Box]:
    return [_box(s.index) for s in p.shards()]


def from_held(v: ShardedValue, p: Param, what: str) -> Assembled:
    """A :class:`~unified_params._shards.ShardedValue` (``m.state(copy=False)``
    of a sharded model) as the value of ``p``: the boxes ``p`` holds here,
    filled from the pieces this process holds, no communication; a
    ``StateError`` before any write where they do not cover them."""
    from ._errors import StateError

    parts: list[tuple[Box, Any]] = v.parts()
    if None in p.shape or tuple(p.shape) != v.shape:  # reported as mismatched by the caller
        return Assembled(v.shape, v.dtype, parts, list)
    boxes = _boxes_of(p)
    if not v.covers(boxes):
        raise StateError(
            f"the pieces of {p.name!r} that this process holds in the target ({boxes})",
            f"a {what} value holding {[b for b, _ in parts]} here (m.state(copy=False) of another sharding)",
            "load through a file (up.save, then up.load: each process reads its own pieces), or pass the "
            "gathered m.state()",
        )
    return Assembled(v.shape, v.dtype, parts, lambda: boxes)


def consolidate(src: str | os.PathLike[str], out: str | os.PathLike[str], *,
                max_shard_size: int | str = "5GB", progress: bool | None = None) -> Path:
    """Turn a checkpoint that several processes wrote (``up.save`` of a sharded
    model) into a plain sharded directory (``model-0000k-of-0000N.safetensors``
    and its index) that transformers' and safetensors' loaders read, holding
    one tensor in memory at a time. The metadata (names, ties, backend) is kept."""
    from . import _io

    with _io._Source(src) as source:
        desc = describe(source.metadata, source.where)
        if desc is None:
            raise FileFormatError(f"a checkpoint written by several processes ({KEY} in its index)",
                                  f"{source.where}, a plain checkpoint", "load it as it is; it needs no consolidation")
        whole = assemble(source.tensors, desc, source.where, lambda name: None)
        meta = {k: v for k, v in source.metadata.items() if k != KEY and isinstance(v, str)}
        values = [(n, desc[n]["dtype"], whole[n].shape, whole[n]) for n in desc]
        return _io.write_sharded(out, values, meta, _io.shard_bytes(max_shard_size), progress)
