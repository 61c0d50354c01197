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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._block import Block, LoadReport, Param, _check_value, load_into, write_atomic
from ._errors import DTypeError, FileFormatError, NotInitializedError, PortError

__all__ = ["save", "load", "port", "PortReport", "FORMAT_VERSION"]

FORMAT_VERSION = "1"
_PORT_BUFFER_ROLES = ("running_mean", "running_var")


def _as_block(m: Any, what: str) -> Block:
    if isinstance(m, Block):
        return m
    from . import wrap

    return wrap(m)


def _metadata(block: Block) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    allp = block._all()
    first: dict[Any, str] = {}
    tensors: dict[str, np.ndarray] = {}
    names: dict[str, dict[str, str]] = {}
    for n, p in allp.items():
        if p.storage not in first:
            first[p.storage] = n
            tensors[n] = np.ascontiguousarray(p.read(copy=False))
        names[n] = {"role": p.role, "kind": "param" if n in block.params else "buffer", "storage": first[p.storage]}
    meta = {
        "format": "unified_params",
        "format_version": FORMAT_VERSION,
        "backend": block.backend,
        "names": json.dumps(names),
        "ties": json.dumps([list(g) for g in block.tied()]),
    }
    return tensors, meta


def save(m: Any, path: str | os.PathLike[str]) -> Path:
    """Write every storage of ``m`` once to a safetensors file, atomically.

    >>> import unified_params as up, tempfile, os
    >>> from unified_params import reference as ref
    >>> m = up.wrap(ref.Sequential(ref.Dense(2, in_units=3)))
    >>> f = up.save(m, os.path.join(tempfile.mkdtemp(), "m.safetensors"))
    """
    from safetensors.numpy import save_file

    block = _as_block(m, "save")
    target = Path(path)
    if target.is_dir():
        raise FileFormatError("a file path to save to", f"the directory {str(target)!r}",
                              "add a file name, e.g. model.safetensors")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileFormatError("an existing folder to save into", f"{str(folder)!r} does not exist",
                              "create it first")
    try:
        tensors, meta = _metadata(block)
    except NotInitializedError:
        raise
    fd, tmp = None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        tmp = None
    except PermissionError as exc:
        raise FileFormatError("a folder this process may write to", f"{str(folder)!r}: {exc}",
                              "choose another path or fix its permissions") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_file(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, as NumPy arrays."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        raise FileFormatError("a safetensors file", f"the directory {str(p)!r}", "name a file inside it")
    if not p.exists():
        raise FileFormatError("an existing safetensors file", f"{str(p)!r} does not exist", "check the path")
    try:
        with safe_open(str(p), framework="numpy") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except PermissionError as exc:
        raise FileFormatError("a readable file", f"{str(p)!r}: {exc}", "fix its permissions") from None
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise FileFormatError(
            "a valid safetensors file",
            f"{str(p)!r}: {type(exc).__name__}: {exc}",
            "the file is truncated, corrupted or of another format; save it again with up.save",
        ) from None
    return tensors, meta


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


def load(m: Any, path: str | os.PathLike[str], strict: bool = True) -> LoadReport:
    """``load_state`` from a safetensors file (any safetensors file)."""
    block = _as_block(m, "load")
    tensors, meta = read_file(path)
    return load_into(block, expand_ties(tensors, meta), strict=strict, what="load")


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


def port(src: Any, dst: Any) -> PortReport:
    """Copy every value of ``src`` into ``dst`` (any two backends), pairing
    parameters by order and canonical shape; running statistics are paired
    the same way among themselves. Atomic: a mismatch changes nothing.
    """
    s, d = _as_block(src, "port"), _as_block(dst, "port")
    report = PortReport(src_backend=s.backend, dst_backend=d.backend)
    items: list[tuple[Param, np.ndarray]] = []
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
                items.append((dp, _check_value(dp, sp.read(copy=False), "port")))
            except DTypeError as exc:
                raise PortError(
                    f"{what} #{i} of compatible dtypes",
                    f"{sp.name!r} {sp.dtype} -> {dp.name!r} {dp.dtype}",
                    str(exc),
                ) from None
            report.pairs.append((sp.name, dp.name, tuple(sp.shape)))  # type: ignore[arg-type]
    write_atomic(items)
    return report
