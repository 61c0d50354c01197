"""Block, ParamDict and Param: the user-facing view of any framework's model.

Design constraints:

* Everything here is written once for every backend; it talks to a
  framework only through the adapter protocol (``_adapter.Handle``).
* Structure is re-read from the native model whenever it is asked for, so a
  Block never goes stale when the user edits ``m.native``.
* Values cross in canonical layout (``_layout``). Reads are copies unless a
  zero-copy view is asked for; writes are checked (shape, dtype, deferred
  dims) before anything is written, and multi-value writes are atomic: either
  every value lands, or every storage is restored.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from . import _limits
from . import init as _init
from ._adapter import CANONICAL, Handle, Leaf, Node
from ._errors import (
    ArgumentError,
    DTypeError,
    ForwardError,
    NotInitializedError,
    ParamNotFoundError,
    ShapeMismatchError,
    StateError,
    TieError,
    UnifiedParamsError,
)
from ._layout import contiguous, shape_to_canonical, to_canonical, to_native

__all__ = ["Block", "Param", "ParamDict", "LoadReport"]

Path = tuple[str, ...]
_ROLE_PAIRS = (("weight", "bias"), ("running_mean", "running_var"))


# --------------------------------------------------------------------------
# Walking the adapter's tree


@dataclass(eq=False, slots=True)
class _Entry:
    name: str  # relative to the block the listing was made for
    leaf: Leaf
    node_path: Path  # absolute path of the owning node


def _sorted_leaves(node: Node) -> list[Leaf]:
    """The native order, except that ``weight`` comes before ``bias`` and
    ``running_mean`` before ``running_var`` (contract 1.3), so that PyTorch
    names keep ``named_parameters``' order and Flax's sorted dicts do not put
    ``bias`` first."""
    leaves = list(node.leaves)
    if len(leaves) < 2:
        return leaves
    roles = [lf.role for lf in leaves]
    for first, second in _ROLE_PAIRS:
        if first in roles and second in roles:
            i, j = roles.index(first), roles.index(second)
            if j < i:
                leaves[i], leaves[j] = leaves[j], leaves[i]
                roles[i], roles[j] = roles[j], roles[i]
    return leaves


def _find(root: Node, path: Path) -> Node:
    node = root
    for key in path:
        for child in node.children:
            if child.key == key:
                node = child
                break
        else:
            raise ParamNotFoundError(
                "a sub-block key of the model",
                f"path {'.'.join(path)!r} (no child {key!r} under {node.key or 'the root'!r})",
                "index the Block as the native model indexes its children",
            )
    return node


def _entries(node: Node, base: Path) -> list[_Entry]:
    """Every leaf below ``node`` in definition order, named relative to it."""
    out: list[_Entry] = []
    stack: list[tuple[Node, Path, str]] = [(node, base, "")]
    while stack:
        cur, path, prefix = stack.pop()
        for leaf in _sorted_leaves(cur):
            out.append(_Entry(prefix + leaf.role, leaf, path))
        for child in reversed(cur.children):
            stack.append((child, (*path, child.key), f"{prefix}{child.key}."))
    return out


def _dtype_name(dt: np.dtype) -> str:
    return str(dt)


# --------------------------------------------------------------------------
# Param


def _check_value(p: Param, value: Any, where: str) -> np.ndarray:
    """Cast-and-shape check shared by every write; returns the canonical array
    in the storage's dtype."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ShapeMismatchError(
            f"an array-like of canonical shape {p.shape} for {p.name!r}",
            f"a {type(value).__name__} NumPy cannot make an array of ({exc}) in {where}",
            "pass a NumPy array or a nested list of equal-length rows",
        ) from None
    if arr.dtype == object and isinstance(value, (list, tuple)):  # NumPy < 1.24 makes ragged lists objects
        raise ShapeMismatchError(
            f"an array-like of canonical shape {p.shape} for {p.name!r}",
            f"a ragged {type(value).__name__} in {where}",
            "pass a NumPy array or a nested list of equal-length rows",
        )
    if arr.dtype.kind in "OUSV":
        raise DTypeError(
            f"numbers that cast safely (same_kind) to {p.dtype} for {p.name!r}",
            f"an array of dtype {arr.dtype} in {where}",
            "pass numeric values",
        )
    dtype = p.dtype
    if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
        raise DTypeError(
            f"a value that casts safely (same_kind) to {_dtype_name(dtype)} for {p.name!r}",
            f"dtype={arr.dtype} in {where}",
            f"convert it first, e.g. value.astype({_dtype_name(dtype)!r}), if the loss is intended",
        )
    if np.issubdtype(dtype, np.integer) and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DTypeError(
            f"finite values for the integer storage {p.name!r}",
            f"NaN or inf in {where}",
            "replace them before writing",
        )
    shape = p.shape
    if arr.shape != shape:
        raise ShapeMismatchError(
            f"a value of canonical shape {shape} for {p.name!r}",
            f"shape {arr.shape} in {where}",
            "transpose or reshape it to the canonical (PyTorch) layout; p.native_shape is the "
            "framework's own",
        )
    return arr.astype(dtype, copy=False)


class Param:
    """One parameter (or buffer) of a wrapped model, by name.

    Reads return NumPy copies in canonical layout; writes go to the
    framework's own storage, in place.
    """

    __slots__ = ("_handle", "_leaf", "name", "_tied_with", "_node_path")

    def __init__(self, handle: Handle, leaf: Leaf, name: str, tied_with: tuple[str, ...], node_path: Path):
        self._handle = handle
        self._leaf = leaf
        self.name = name
        self._tied_with = tied_with
        self._node_path = node_path

    # -- description --------------------------------------------------------
    @property
    def role(self) -> str:
        return self._leaf.role

    @property
    def native_shape(self) -> tuple[int | None, ...]:
        return tuple(self._handle.shape(self._leaf))

    @property
    def shape(self) -> tuple[int | None, ...]:
        leaf = self._leaf
        native = self._handle.shape(leaf)
        return tuple(native) if leaf.layout == CANONICAL else shape_to_canonical(native, leaf.layout)

    @property
    def deferred(self) -> bool:
        return any(d is None for d in self.native_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._handle.dtype(self._leaf))

    @property
    def size(self) -> int | None:
        shape = self.shape
        if any(d is None for d in shape):
            return None
        return int(np.prod([int(d) for d in shape if d is not None], dtype=np.int64))

    @property
    def trainable(self) -> bool:
        return self._leaf.trainable

    @property
    def native(self) -> Any:
        return self._handle.native_of(self._leaf)

    @property
    def native_name(self) -> str:
        return self._leaf.native_name

    @property
    def device(self) -> str:
        return self._handle.device(self._leaf)

    @property
    def tied_with(self) -> tuple[str, ...]:
        return self._tied_with

    @property
    def storage(self) -> Any:
        """Identity of the storage (equal for tied names)."""
        return self._leaf.storage

    # -- reading ------------------------------------------------------------
    def _require_concrete(self, action: str) -> None:
        if self.deferred:
            raise NotInitializedError(
                f"a concrete parameter to {action}",
                f"{self.name!r} has the deferred shape {self.shape}",
                "call m.materialize(x) with an example input first",
            )

    def _concrete_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.shape if d is not None)

    def read(self, copy: bool = True) -> np.ndarray:
        """The value in canonical layout; ``copy=False`` may return a
        read-only view of host memory."""
        self._require_concrete("read")
        layout = self._leaf.layout
        if copy and layout != CANONICAL:  # one copy: the transpose (a view read first)
            return contiguous(to_canonical(self._handle.read(self._leaf, copy=False), layout), copy=True)
        raw = self._handle.read(self._leaf, copy=copy)
        value = to_canonical(raw, layout)
        if copy:
            return value
        if value.flags.writeable:
            value = value.view()
            value.flags.writeable = False
        return value

    @property
    def value(self) -> np.ndarray:
        return self.read(copy=True)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        v = self.read(copy=True)
        return v if dtype is None else v.astype(dtype, copy=False)

    @property
    def grad(self) -> np.ndarray | None:
        if self.deferred:
            return None
        g = self._handle.grad(self._leaf)
        if g is None:
            return None
        return np.array(to_canonical(np.asarray(g), self._leaf.layout), order="C", copy=True)

    # -- writing ------------------------------------------------------------
    def _write_canonical(self, arr: np.ndarray) -> None:
        native = to_native(arr, self._leaf.layout)
        try:
            self._handle.write(self._leaf, native)
        except UnifiedParamsError:
            raise
        except Exception as exc:
            raise UnifiedParamsError(
                f"the {self._handle.backend.name} backend to write {self.name!r}",
                f"{type(exc).__name__}: {exc}",
                "report this as a bug of the adapter; the value was not changed",
            ) from exc

    def set(self, value: Any) -> None:
        """Write ``value`` (canonical layout, exact shape)."""
        self._require_concrete("write")
        self._write_canonical(_check_value(self, value, "set()"))

    def fill(self, c: float) -> None:
        """Every element ``c``."""
        self._require_concrete("write")
        arr = np.full(self._concrete_shape(), c)
        self._write_canonical(_check_value(self, arr, "fill()"))

    def __getitem__(self, idx: Any) -> Any:
        return self.value[idx]

    def __setitem__(self, idx: Any, v: Any) -> None:
        self._require_concrete("write")
        cur = self.value
        src = np.asarray(v)
        if not np.can_cast(src.dtype, self.dtype, casting="same_kind"):
            _check_value(self, np.broadcast_to(src, cur.shape) if src.ndim == 0 else src, f"p[{idx!r}] = ...")
        try:
            cur[idx] = src
        except (ValueError, IndexError) as exc:
            raise ShapeMismatchError(
                f"a value and an index that fit the canonical shape {self.shape} of {self.name!r}",
                f"index {idx!r} with a value of shape {src.shape} ({exc})",
                "check the index and the value's shape",
            ) from None
        self._write_canonical(_check_value(self, cur, f"p[{idx!r}] = ..."))

    def _inplace(self, op: Callable[[np.ndarray, Any], np.ndarray], other: Any, sym: str) -> Param:
        self._require_concrete("write")
        cur = self.value
        try:
            other = other.value if isinstance(other, Param) else np.asarray(other)
            res = op(cur, other)
        except ValueError as exc:
            raise ShapeMismatchError(
                f"an operand that broadcasts to {self.shape} for {self.name!r}",
                f"shape {np.shape(other)} ({exc})",
                "check the operand's shape",
            ) from None
        except TypeError as exc:
            raise DTypeError(
                f"a numeric operand for p {sym}= ... on {self.name!r} ({self.dtype})",
                f"a {type(other).__name__} ({exc})",
                "pass a number or a numeric array",
            ) from None
        self._write_canonical(_check_value(self, res, f"p {sym}= ..."))
        return self

    def __iadd__(self, o: Any) -> Param:
        return self._inplace(np.add, o, "+")

    def __isub__(self, o: Any) -> Param:
        return self._inplace(np.subtract, o, "-")

    def __imul__(self, o: Any) -> Param:
        return self._inplace(np.multiply, o, "*")

    def __itruediv__(self, o: Any) -> Param:
        return self._inplace(np.true_divide, o, "/")

    def __ifloordiv__(self, o: Any) -> Param:
        return self._inplace(np.floor_divide, o, "//")

    def __ipow__(self, o: Any) -> Param:
        return self._inplace(np.power, o, "**")

    def __imod__(self, o: Any) -> Param:
        return self._inplace(np.mod, o, "%")

    # -- arithmetic reads (a Param behaves as its value) ---------------------
    def __add__(self, o: Any) -> Any:
        return self.value + o

    def __sub__(self, o: Any) -> Any:
        return self.value - o

    def __mul__(self, o: Any) -> Any:
        return self.value * o

    def __truediv__(self, o: Any) -> Any:
        return self.value / o

    def __eq__(self, o: object) -> Any:  # elementwise, like an array
        if isinstance(o, Param):
            return self.value == o.value
        return self.value == o

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        extra = f", tied_with={list(self._tied_with)}" if self._tied_with else ""
        shape = self.shape
        if self.deferred:
            return f"Param({self.name!r}, shape={shape}, dtype={self.dtype}, deferred{extra})"
        return f"Param({self.name!r}, shape={shape}, dtype={self.dtype}{extra})\n{self.value!r}"


# --------------------------------------------------------------------------
# ParamDict


class ParamDict(Mapping[str, Param]):
    """An ordered mapping name -> Param, in definition order."""

    def __init__(self, params: dict[str, Param]):
        self._params = params

    def __getitem__(self, name: str) -> Param:
        try:
            return self._params[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), list(self._params), n=5, cutoff=0.4)
            hint = f"did you mean {', '.join(map(repr, close))}?" if close else (
                f"the names are {', '.join(map(repr, list(self._params)[:8]))}"
                + (" ..." if len(self._params) > 8 else "")
            )
            raise ParamNotFoundError(
                "the name of a parameter of this block",
                f"{name!r}",
                hint,
            ) from None

    def __setitem__(self, name: str, value: Any) -> None:
        """``d[name] = v`` writes ``v``; ``d[name] += v`` lands here with the
        Param itself, already written."""
        p = self[name]
        if value is p:
            return
        p.set(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __contains__(self, name: object) -> bool:
        return name in self._params

    def select(self, pattern: str) -> ParamDict:
        """The parameters whose name fully matches ``pattern`` (``re.fullmatch``)."""
        try:
            rx = re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ParamNotFoundError(
                "a valid regular expression over parameter names",
                f"{pattern!r} ({exc})",
                r"escape dots and brackets, e.g. r'.*\.bias'",
            ) from None
        return ParamDict({n: p for n, p in self._params.items() if rx.fullmatch(n)})

    def distinct(self) -> ParamDict:
        """One name per storage: the first."""
        seen: set[Any] = set()
        out: dict[str, Param] = {}
        for n, p in self._params.items():
            if p.storage not in seen:
                seen.add(p.storage)
                out[n] = p
        return ParamDict(out)

    def numpy(self) -> dict[str, np.ndarray]:
        """``{name: value}`` copies."""
        return {n: p.value for n, p in self._params.items()}

    def __repr__(self) -> str:
        rows = [f"  {n}: {p.shape} {p.dtype}" + (f" (tied: {', '.join(p.tied_with)})" if p.tied_with else "")
                for n, p in self._params.items()]
        return "ParamDict(\n" + "\n".join(rows) + "\n)" if rows else "ParamDict()"


# --------------------------------------------------------------------------
# Reports


@dataclass
class LoadReport:
    """What a load matched. ``mismatched`` holds ``(name, expected, found)``."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"{len(self.loaded)} loaded"]
        if self.missing:
            parts.append(f"missing {self.missing}")
        if self.unexpected:
            parts.append(f"unexpected {self.unexpected}")
        if self.mismatched:
            parts.append(
                "mismatched " + ", ".join(f"{n} (expected {e}, found {f})" for n, e, f in self.mismatched)
            )
        return "; ".join(parts)


class Deferred:
    """A value read only when it is written (a tensor of a file, a port's
    source): its shape and dtype are known up front, so every check runs
    before the first write, and one such value at a time is in memory."""

    __slots__ = ("shape", "dtype", "_get")

    def __init__(self, shape: tuple[int, ...], dtype: Any, get: Callable[[], np.ndarray]):
        self.shape, self.dtype, self._get = tuple(shape), np.dtype(dtype), get

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        v = np.asarray(self._get())
        return v if dtype is None else v.astype(dtype, copy=False)


def _check_deferred(p: Param, value: Deferred, where: str) -> Deferred | np.ndarray:
    """``_check_value`` on a Deferred's shape and dtype; its data is read now
    only where the check needs it (floats into an integer storage)."""
    if np.issubdtype(p.dtype, np.integer) and value.dtype.kind == "f":
        return _check_value(p, np.asarray(value), where)
    if value.shape != p.shape or not np.can_cast(value.dtype, p.dtype, casting="same_kind"):
        _check_value(p, np.broadcast_to(np.zeros((), value.dtype), value.shape), where)  # raises
    return value


#: Kept for compatibility; the threshold read at call time is ``_limits.LARGE_BYTES``.
LARGE_BYTES = _limits.LARGE_BYTES


def progress_bar(progress: bool | None, total: int, desc: str) -> Any:
    """A tqdm bar over ``total`` bytes when asked for (``progress=True``) or,
    with ``progress=None``, when the work is large and stderr a terminal;
    tqdm is imported only then."""
    if progress is False or (progress is None and total <= _limits.LARGE_BYTES):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        if progress:
            raise ImportError("progress=True needs tqdm: pip install tqdm") from None
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
    """
    for p, _ in items:
        p._require_concrete("write")
    sizes = [_nbytes(p) for p, _ in items]
    small = sum(sizes) <= _limits.LARGE_BYTES if backup is None else backup
    bar = progress_bar(progress, sum(sizes), what)
    backups: list[tuple[Param, np.ndarray]] = []
    try:
        with _HeldInterrupts():
            for (p, v), size in zip(items, sizes):
                if small or (backup is None and p.device != "cpu"):
                    backups.append((p, p.read(copy=True)))
                if isinstance(v, Deferred):
                    v = _check_value(p, np.asarray(v), what)
                p._write_canonical(v)
                if bar is not None:
                    bar.update(size)
            if verify is not None:
                verify()
    except BaseException:
        for p, old in backups:
            try:
                p._write_canonical(old)
            except Exception:  # noqa: S112 - best effort; the original error matters
                continue
        raise
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------
# Block


class Block:
    """A wrapped model or one of its sub-blocks.

    Indexing mirrors the native model: ``m[2]`` is the third child,
    ``m['block 0']`` the child with that key.
    """

    def __init__(self, handle: Handle, path: Path = ()):
        self._handle = handle
        self._path = path

    # -- identity -----------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._handle.backend.name

    @property
    def path(self) -> str:
        """Dotted path of this block from the wrapped root (``''`` for it)."""
        return ".".join(self._path)

    def _node(self) -> Node:
        return _find(self._handle.tree(), self._path)

    @property
    def native(self) -> Any:
        if not self._path:
            return self._handle.native
        return self._node().native

    @property
    def variables(self) -> Any:
        """The variables a functional model's Block holds (Flax linen)."""
        if not hasattr(self._handle, "variables"):
            raise AttributeError(f"a {self.backend} Block keeps no separate variables; use m.native")
        return self._handle.variables  # type: ignore[attr-defined]

    # -- structure ----------------------------------------------------------
    def children(self) -> dict[str, Block]:
        return {c.key: Block(self._handle, (*self._path, c.key)) for c in self._node().children}

    def __getitem__(self, key: int | str) -> Block:
        node = self._node()
        keys = [c.key for c in node.children]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            try:
                k = keys[int(key)]
            except IndexError:
                raise ParamNotFoundError(
                    f"a child index in range({len(keys)}) of block {self.path or '<root>'!r}",
                    f"{key}",
                    f"its children are {keys}",
                ) from None
            return Block(self._handle, (*self._path, k))
        if isinstance(key, str):
            if key in keys:
                return Block(self._handle, (*self._path, key))
            path = self._resolve_block(key)
            if path is not None:
                return Block(self._handle, path)
            close = difflib.get_close_matches(key, keys, n=5, cutoff=0.4)
            raise ParamNotFoundError(
                f"a child key of block {self.path or '<root>'!r}",
                f"{key!r}",
                f"did you mean {close}?" if close else f"its children are {keys}",
            )
        raise ArgumentError(
            "an int (position) or str (key) index of a child block",
            f"{key!r} of type {type(key).__name__}",
            f"use m[0] or m[{keys[0]!r}]" if keys else "this block has no children",
        )

    def _block_paths(self, node: Node | None = None) -> dict[str, Path]:
        """Dotted relative name -> absolute path, for every sub-block."""
        node = node or self._node()
        out: dict[str, Path] = {}
        stack: list[tuple[Node, Path, str]] = [(c, (*self._path, c.key), c.key) for c in node.children]
        while stack:
            cur, path, name = stack.pop()
            out.setdefault(name, path)
            stack.extend((c, (*path, c.key), f"{name}.{c.key}") for c in cur.children)
        return out

    def _resolve_block(self, name: str) -> Path | None:
        return self._block_paths().get(name)

    def __len__(self) -> int:
        return len(self._node().children)

    def __iter__(self) -> Iterator[Block]:
        return iter(self.children().values())

    # -- parameters ---------------------------------------------------------
    def _listing(self) -> list[_Entry]:
        return _entries(self._node(), self._path)

    def _dict(self, kinds: tuple[str, ...]) -> ParamDict:
        entries = [e for e in self._listing() if e.leaf.kind in kinds]
        groups: dict[Any, list[str]] = {}
        for e in entries:
            groups.setdefault(e.leaf.storage, []).append(e.name)
        out: dict[str, Param] = {}
        for e in entries:
            group = groups[e.leaf.storage]
            others = () if len(group) == 1 else tuple(n for n in group if n != e.name)
            if e.name not in out:
                out[e.name] = Param(self._handle, e.leaf, e.name, others, e.node_path)
        return ParamDict(out)

    @property
    def params(self) -> ParamDict:
        """Trainable parameters (``named_parameters``' names, every name of a tie)."""
        return self._dict(("param",))

    @property
    def buffers(self) -> ParamDict:
        """Non-trainable state (running statistics)."""
        return self._dict(("buffer",))

    def _all(self) -> ParamDict:
        return self._dict(("param", "buffer"))

    # -- ties ---------------------------------------------------------------
    def tied(self) -> list[tuple[str, ...]]:
        """Groups of names sharing one storage, in order."""
        groups: dict[Any, list[str]] = {}
        for n, p in self._all().items():
            groups.setdefault(p.storage, []).append(n)
        return [tuple(g) for g in groups.values() if len(g) > 1]

    def tie(self, target: str, source: str) -> None:
        """Make every parameter of ``target`` the storage of the matching one
        of ``source`` (sub-block or parameter names, relative to this block)."""
        if not isinstance(target, str) or not isinstance(source, str):
            raise TieError(
                "two names (str) of sub-blocks or parameters",
                f"target={target!r}, source={source!r}",
                "name them as m.children() and m.params do, e.g. m.tie('block 1', 'block 0')",
            )
        blocks = self._block_paths()
        params = self._all()
        if target == source:
            raise TieError("two different blocks or parameters to tie", f"target=source={target!r}",
                           "name the block whose parameters should be replaced, then the one to share")
        pairs: list[tuple[Leaf, Leaf]] = []
        if target in blocks and source in blocks:
            tp, sp = blocks[target], blocks[source]
            if tp[: len(sp)] == sp or sp[: len(tp)] == tp:
                rel = "an ancestor" if len(sp) < len(tp) else "a descendant"
                raise TieError(
                    "two blocks neither of which contains the other",
                    f"source {source!r} is {rel} of target {target!r}",
                    "tie sibling blocks of the same structure",
                )
            t = _entries(_find(self._handle.tree(), tp), tp)
            s = _entries(_find(self._handle.tree(), sp), sp)
            t_names, s_names = [e.name for e in t], [e.name for e in s]
            if t_names != s_names:
                raise TieError(
                    f"blocks of matching structure; {source!r} holds {s_names}",
                    f"{target!r} holds {t_names}",
                    "tie blocks built the same way",
                )
            for te, se in zip(t, s):
                pairs.append((te.leaf, se.leaf))
            tnames = [f"{target}.{e.name}" for e in t]
        elif target in params and source in params:
            pairs.append((params[target]._leaf, params[source]._leaf))
            tnames = [target]
        else:
            known = sorted(set(blocks) | set(params))
            bad = target if target not in blocks and target not in params else source
            close = difflib.get_close_matches(bad, known, n=5, cutoff=0.4)
            raise TieError(
                "two sub-block names, or two parameter names, of this block",
                f"target={target!r}, source={source!r}",
                f"{bad!r} is unknown; did you mean {close}?" if close else f"{bad!r} is unknown",
            )
        handle = self._handle
        for (tl, sl), name in zip(pairs, tnames):
            ts = shape_to_canonical(handle.shape(tl), tl.layout)
            ss = shape_to_canonical(handle.shape(sl), sl.layout)
            if ts != ss or None in ts:
                raise TieError(
                    f"matching concrete shapes; the source's is {ss}",
                    f"{name!r} has shape {ts}",
                    "materialize the model first (m.materialize(x)), and tie layers of equal sizes",
                )
            if handle.dtype(tl) != handle.dtype(sl):
                raise TieError(f"matching dtypes; the source's is {handle.dtype(sl)}",
                               f"{name!r} is {handle.dtype(tl)}", "cast one model first")
        if all(tl.storage == sl.storage for tl, sl in pairs):
            raise TieError(
                f"{target!r} and {source!r} to hold different storages before a tie",
                "they already share their storages (tying again would make a cycle)",
                "nothing to do: they are tied",
            )
        handle.tie(pairs)

    # -- initialization -----------------------------------------------------
    def initialize(
        self,
        init: Any = None,
        *,
        seed: int | None = None,
    ) -> None:
        """Initialize the parameters of this block.

        ``init`` is an initializer, ``{regex: initializer}`` (first full match
        wins, unmatched keep their values) or ``None`` for the framework's own
        defaults. With ``seed``, values are the same on every backend (see
        ``unified_params.init`` for the recipe).

        >>> import unified_params as up
        >>> from unified_params import reference as ref
        >>> m = up.wrap(ref.Sequential(ref.Dense(2, in_units=3)))
        >>> m.initialize({r'.*weight': up.init.Normal(0, 0.01), r'.*bias': up.init.Zeros()}, seed=0)
        >>> m.params['0.bias'].value
        array([0., 0.], dtype=float32)
        """
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ArgumentError("a seed that is a non-negative int, or None", f"seed={seed!r}",
                                "pass e.g. seed=0")
        if init is None:
            self._handle.reset(self._path, seed)
            return
        if isinstance(init, Mapping):
            rules = []
            for pat, fn in init.items():
                try:
                    rules.append((re.compile(pat), fn))
                except (re.error, TypeError) as exc:
                    raise ParamNotFoundError("a valid regular expression as a key of the init mapping",
                                             f"{pat!r} ({exc})", r"e.g. r'.*\.weight'") from None
        else:
            rules = [(re.compile(".*"), init)]
        for _, fn in rules:
            if not callable(fn):
                raise ArgumentError(
                    "an initializer: an up.init.Initializer or a callable (shape, rng, param)",
                    f"{fn!r}",
                    "pass e.g. up.init.Zeros() or up.init.Normal(0, 0.01)",
                )
        params = self.params
        groups: dict[Any, list[str]] = {}
        for n, p in params.items():
            groups.setdefault(p.storage, []).append(n)
        plan: list[tuple[int, Param, Any]] = []
        for i, p in enumerate(params.distinct().values()):
            names = groups[p.storage]
            fn = next((f for rx, f in rules if any(rx.fullmatch(x) for x in names)), None)
            if fn is None:
                continue
            p._require_concrete("initialize")
            plan.append((i, p, fn))
        custom = any(not isinstance(fn, _init.Initializer) for _, _, fn in plan)
        if custom:  # a user's callable may fail midway: keep the old values
            values = [(p, _check_value(p, _init.draw(fn, p._concrete_shape(), p.dtype, seed, i, p), "the initializer"))
                      for i, p, fn in plan]
            write_atomic(values)
            return
        for i, p, fn in plan:  # stream: one storage drawn and written at a time
            v = _init.draw(fn, p._concrete_shape(), p.dtype, seed, i, p)
            p._write_canonical(v.astype(p.dtype, copy=False))

    def materialize(self, x: Any) -> Block:
        """Run what the framework needs (a forward pass, ``build``,
        ``module.init``) so that every parameter is concrete."""
        with _framework_errors(self, "materialize", x):
            self._handle.materialize(x)
        return self

    # -- running ------------------------------------------------------------
    def __call__(self, x: Any) -> Any:
        with _framework_errors(self, "run", x):
            return self._handle.forward(self._path, x)

    def backward(self, x: Any, loss: Callable[[Any], Any] | None = None) -> float:
        """Gradients of ``loss(self(x))`` (default: the sum of the outputs)
        with the framework's autodiff, kept for ``p.grad`` and added to the
        gradients already there (as PyTorch does) until ``zero_grad()``;
        returns the loss."""
        for p in self.params.values():
            p._require_concrete("differentiate")
        with _framework_errors(self, "differentiate", x):
            return float(self._handle.backward(self._path, x, loss))

    def zero_grad(self) -> None:
        self._handle.zero_grad(self._path)

    # -- state --------------------------------------------------------------
    def state(self, copy: bool = True) -> dict[str, np.ndarray]:
        """``{name: array}`` for every parameter and buffer, canonical layout;
        tied names map to one array."""
        out: dict[str, np.ndarray] = {}
        by_storage: dict[Any, np.ndarray] = {}
        for n, p in self._all().items():
            if p.storage not in by_storage:
                by_storage[p.storage] = p.read(copy=copy)
            out[n] = by_storage[p.storage]
        return out

    def load_state(self, state: Mapping[str, Any], strict: bool = True) -> LoadReport:
        """Write ``state`` (canonical layout); atomic. Returns a LoadReport;
        a strict load that does not fit raises StateError and changes nothing."""
        return load_into(self, state, strict=strict, what="load_state")

    # -- reporting ----------------------------------------------------------
    def summary(self) -> Summary:
        from ._report import summarize

        return summarize(self)

    def __repr__(self) -> str:
        from ._report import tree_text

        return tree_text(self)

    def __rich__(self) -> Any:
        """The tree as a ``rich.tree.Tree`` (``rich.print(m)``)."""
        from ._report import tree_rich

        return tree_rich(self)


class _framework_errors:
    """Re-raise a framework's exception from a forward, backward or
    materialize as a ForwardError that names the block and the input, with
    the framework's exception chained as its cause."""

    def __init__(self, block: Block, action: str, x: Any):
        self.block, self.action, self.x = block, action, x

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, UnifiedParamsError):
            return False
        shape = getattr(self.x, "shape", None)
        what = f"an input of shape {tuple(shape)}" if shape is not None else f"a {type(self.x).__name__}"
        where = self.block.path or "the root"
        raise ForwardError(
            f"an input (and loss) the {self.block.backend} block at {where} can {self.action} with",
            f"{what}; {type(exc).__name__}: {exc}",
            "check the input's shape (batch first) and dtype, and that the loss returns a scalar",
        ) from exc


def load_into(
    block: Block, state: Mapping[str, Any], *, strict: bool, what: str, progress: bool | None = False,
    backup: bool | None = None, verify: Callable[[], None] | None = None,
) -> LoadReport:
    """Shared by ``load_state``, ``up.load`` and ``up.port``; ``backup`` and
    ``verify`` go to ``write_atomic``."""
    if not isinstance(state, Mapping):
        raise StateError(
            "a mapping {name: array} (what m.state() returns)",
            f"a {type(state).__name__}",
            "pass a dict of canonical arrays keyed by parameter names",
        )
    allp = block._all()
    report = LoadReport()
    groups: dict[Any, list[str]] = {}
    for n, p in allp.items():
        groups.setdefault(p.storage, []).append(n)
    report.unexpected = [k for k in state if k not in allp]
    chosen: dict[Any, tuple[str, Any]] = {}
    for names in groups.values():
        given = [n for n in names if n in state]
        if not given:
            report.missing.extend(names)
            continue
        first = given[0]
        for other in given[1:]:
            a, b = np.asarray(state[first]), np.asarray(state[other])
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
                raise StateError(
                    f"one value for the tied names {names}",
                    f"different values under {first!r} and {other!r}",
                    "give one name of the tie group, or equal values",
                )
        chosen[allp[first].storage] = (first, state[first])
    items: list[tuple[Param, Any]] = []
    for storage, (name, value) in chosen.items():
        p = allp[name]
        arr = value if isinstance(value, Deferred) else np.asarray(value)
        if p.deferred:
            raise NotInitializedError(
                f"a concrete model to {what} into",
                f"{name!r} has the deferred shape {p.shape}",
                "call m.materialize(x) with an example input first",
            )
        if arr.shape != p.shape:
            report.mismatched.append((name, p.shape, arr.shape))
            continue
        items.append((p, arr))
        report.loaded.extend(groups[storage])
    if strict and not report.ok:
        raise StateError(
            f"a state that fits the model exactly (strict {what})",
            str(LoadReport(report.missing, report.unexpected, report.mismatched)),
            "fix the names or shapes, or pass strict=False to load what matches",
            report=report,
        )
    checked = [(p, _check_deferred(p, v, what) if isinstance(v, Deferred) else _check_value(p, v, what))
               for p, v in items]
    write_atomic(checked, what=what, progress=progress, backup=backup, verify=verify)
    return report


from ._report import Summary  # noqa: E402  (cycle: _report formats Blocks)
