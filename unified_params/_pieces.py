"""Checkpoints written by several processes, read by any number of them
(contract 15.2): ``up.save`` of a sharded model, ``up.load`` into another
sharding or framework, ``up.consolidate``.

Design constraints:

* No process gathers. Each process writes the pieces it holds (``p.shards()``,
  canonical layout) to a file of its own, ``model-r0000R-of-0000N.safetensors``;
  a piece held by several processes (a replicated parameter) is written once,
  by the lowest rank that holds it. What every process holds is exchanged
  once (``Group.all_gather``), so each computes the same index, which rank 0
  writes after a barrier.
* The index is transformers' ``model.safetensors.index.json``: ``weight_map``
  maps each piece's tensor to its file. A parameter written whole keeps its
  own name, so a checkpoint of unsharded parameters is a plain sharded
  directory; a piece of a parameter is ``<name>#<k>``, placed by the box in
  the index's ``unified_params.pieces`` entry (global shape, dtype, boxes).
* A load reads, for each storage, only the rows of the file pieces that
  overlap the boxes this process holds (``p.shards()`` of the target), one
  storage at a time; a target that is not sharded holds the whole box.
* ``consolidate`` streams a pieces checkpoint into a plain sharded directory
  that ``transformers`` and ``safetensors`` read, one tensor at a time.
"""

from __future__ import annotations

import functools
import json
import os
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


def save_pieces(block: Block, path: str | os.PathLike[str], grp: Any, progress: bool | None,
                listed: tuple[dict[str, Param], dict[str, str], dict[str, list[Shard]]]) -> Path:
    """``up.save`` called by every process of ``grp`` (see the module doc);
    ``listed``: what :func:`local_pieces` found, so the model is walked and
    its pieces listed once."""
    from . import _io

    storages, meta, held = listed
    target = _format.as_path(path, "save to")
    if grp.rank == 0:
        try:
            target.mkdir(parents=False, exist_ok=True)
        except OSError as exc:
            raise _io._folder_error(target, exc) from None
    entries = {n: (code, shape) for n, code, shape in _io._entries(storages)}
    mine = {n: [_box(s.index) for s in pieces] for n, pieces in held.items()}
    everyone = grp.all_gather(mine)  # also the barrier after rank 0 made the folder
    pieces, writes = plan(everyone, {n: shape for n, (_, shape) in entries.items()})
    own = writes.get(grp.rank, [])
    files = {r: file_name(r, grp.size) for r in sorted(writes)}
    if own:
        by_box = {n: {_box(s.index): s for s in held[n]} for n in {w[0] for w in own}}
        head, _ = _format.header_bytes(
            [(key, entries[n][0], tuple(b - a for a, b in box)) for n, key, box in own], {"format": "pt"})
        arrays = (by_box[n][box].data for n, key, box in own)  # read-only pieces: no copy of ours
        try:
            tmp = _io._write_temp(target, head, arrays, None)
            os.replace(tmp, target / files[grp.rank])
        except OSError as exc:
            raise _io._folder_error(target, exc) from None
    grp.barrier()  # every process's file is in place before the index names it
    if grp.rank == 0:
        desc = {n: {"shape": list(entries[n][1]), "dtype": entries[n][0],
                    "parts": [[key, [list(x) for x in box]] for key, box, _ in pieces[n]]} for n in pieces}
        weight_map = {key: files[r] for n in pieces for key, _, r in pieces[n]}
        index = {"metadata": {**meta, KEY: json.dumps(desc, sort_keys=True)},
                 "weight_map": dict(sorted(weight_map.items()))}
        fd, tmp = _io._create_temp(target)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write((json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target / _format.INDEX)
        except OSError as exc:
            _io._unlink(tmp)
            raise _io._folder_error(target, exc) from None
    grp.barrier()
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
