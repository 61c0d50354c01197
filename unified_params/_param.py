"""Param and ParamDict: one parameter by name, and ordered mappings of them.

Design constraints: reads return NumPy copies in canonical layout, writes go
to the framework's own storage in place, checked first (``_values``). A Param
holds its leaf, not a value, so it stays current; what needs the whole model
(the other names of a tied storage) is computed only when asked for. A
ParamDict from ``m.params`` looks a name up through ``Handle.node`` (O(depth))
and lists the block only when iterated.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ._boundary import adapter_call
from ._errors import DTypeError, NotInitializedError, ParamNotFoundError, ShapeMismatchError
from ._layout import copy_canonical, shape_to_canonical, to_canonical
from ._shared import shared_for
from ._values import can_cast, check_value
from .adapter import CANONICAL, Handle, Leaf

if TYPE_CHECKING:
    from ._shards import Shard

__all__ = ["Param", "ParamDict"]

Path = tuple[str, ...]
F = TypeVar("F", bound=Callable[..., Any])


def _locked(fn: F) -> F:
    """Hold the native model's lock: a read never sees a half-written
    tensor, and ``p += 1`` from several threads loses no update (contract 14)."""

    @functools.wraps(fn)
    def inner(self: Param, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)

    return inner  # type: ignore[return-value]


class Param:
    """One parameter (or buffer) of a wrapped model, by name.

    Reads return NumPy copies in canonical layout; writes go to the
    framework's own storage, in place.
    """

    __slots__ = ("_handle", "_leaf", "name", "_tied", "_tied_fn", "_node_path", "_lock", "_shapes")

    def __init__(
        self,
        handle: Handle,
        leaf: Leaf,
        name: str,
        tied_with: tuple[str, ...] | None,
        node_path: Path,
        *,
        tied: Callable[[], tuple[str, ...]] | None = None,
        lock: Any = None,
    ):
        self._handle = handle
        self._leaf = leaf
        self.name = name
        self._tied = tied_with  # None: computed by ``tied`` when first asked for
        self._tied_fn = tied
        self._node_path = node_path
        self._lock = lock if lock is not None else shared_for(handle).lock
        self._shapes: tuple[Any, tuple[int | None, ...]] | None = None  # (native, canonical) last converted

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
        if type(native) is not tuple:
            native = tuple(native)
        if leaf.layout == CANONICAL:
            return native
        last = self._shapes  # a listing asks again and again: convert once per native shape
        if last is not None and last[0] == native:
            return last[1]
        canonical = shape_to_canonical(native, leaf.layout)
        self._shapes = (native, canonical)
        return canonical

    @property
    def layout(self) -> str:
        """How the native value maps onto the canonical one: ``'canonical'``
        (stored so), a conversion such as ``'kernel_last'``, or ``'native'``
        for a layer type whose canonical layout is not known (values cross
        unconverted, and ports refuse to pair it with a converted one)."""
        return self._leaf.layout

    @property
    def deferred(self) -> bool:
        return None in self._handle.shape(self._leaf)

    @property
    def dtype(self) -> np.dtype:
        d = self._handle.dtype(self._leaf)
        return d if isinstance(d, np.dtype) else np.dtype(d)

    @property
    def size(self) -> int | None:
        shape = self.shape
        if None in shape:
            return None
        n = 1
        for d in shape:
            n *= int(d)  # type: ignore[arg-type]
        return n

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
        if self._tied is None:
            self._tied = self._tied_fn() if self._tied_fn is not None else ()
        return self._tied

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

    def _concrete_shape_native(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._handle.shape(self._leaf) if d is not None)

    def _concrete_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.shape if d is not None)

    @_locked
    def read(self, copy: bool = True) -> np.ndarray:
        """The value in canonical layout; ``copy=False`` may return a
        read-only view of host memory."""
        self._require_concrete("read")
        layout = self._leaf.layout
        with adapter_call(self._handle.backend.name, f"read {self.name!r}"):
            raw = self._handle.read(self._leaf, copy=copy and layout == CANONICAL)
        if copy and layout != CANONICAL:  # one copy of the native view, at memory speed (issue 18)
            return copy_canonical(raw, layout)
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

    def shards(self) -> list[Shard]:
        """The pieces of this parameter that this process holds (contract
        15.1), each placed in the global canonical array by ``index``; one
        piece, the whole array, when it is not sharded. ``p.value`` of a
        sharded parameter gathers the pieces (a collective for a PyTorch
        DTensor: every process must read it); ``shard.value`` never does."""
        from ._shards import shards_of

        self._require_concrete("list the pieces of")
        return shards_of(self)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        v = self.read(copy=True)
        return v if dtype is None else v.astype(dtype, copy=False)

    @property
    def grad(self) -> np.ndarray | None:
        if self.deferred:
            return None
        g = shared_for(self._handle).grads.get(self._leaf.storage)
        if g is None:
            with adapter_call(self._handle.backend.name, f"read the gradient of {self.name!r}"):
                g = self._handle.grad(self._leaf)
        if g is None:
            return None
        return np.array(to_canonical(np.asarray(g), self._leaf.layout), order="C", copy=True)

    # -- writing ------------------------------------------------------------
    def _write_canonical(self, arr: np.ndarray) -> None:
        from ._fastpath import write_canonical

        write_canonical(self, arr)  # a converted copy is handed over, not copied again (issue 18)

    @_locked
    def set(self, value: Any) -> None:
        """Write ``value`` (canonical layout, exact shape)."""
        self._require_concrete("write")
        self._write_canonical(check_value(self, value, "set()"))

    @_locked
    def fill(self, c: float) -> None:
        """Every element ``c``."""
        self._require_concrete("write")
        arr = np.full(self._concrete_shape(), c)
        self._write_canonical(check_value(self, arr, "fill()"))

    def __getitem__(self, idx: Any) -> Any:
        return self.value[idx]

    @_locked
    def __setitem__(self, idx: Any, v: Any) -> None:
        self._require_concrete("write")
        cur = self.value
        src = np.asarray(v)
        if not can_cast(src.dtype, self.dtype):
            check_value(self, np.broadcast_to(src, cur.shape) if src.ndim == 0 else src, f"p[{idx!r}] = ...")
        try:
            cur[idx] = src
        except (ValueError, IndexError) as exc:
            raise ShapeMismatchError(
                f"a value and an index that fit the canonical shape {self.shape} of {self.name!r}",
                f"index {idx!r} with a value of shape {src.shape} ({exc})",
                "check the index and the value's shape",
            ) from None
        self._write_canonical(check_value(self, cur, f"p[{idx!r}] = ..."))

    @_locked
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
        self._write_canonical(check_value(self, res, f"p {sym}= ..."))
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
        extra = f", tied_with={list(self.tied_with)}" if self.tied_with else ""
        shape = self.shape
        if self.deferred:
            return f"Param({self.name!r}, shape={shape}, dtype={self.dtype}, deferred{extra})"
        return f"Param({self.name!r}, shape={shape}, dtype={self.dtype}{extra})\n{self.value!r}"




class ParamDict(Mapping[str, Param]):
    """An ordered mapping name -> Param, in definition order."""

    def __init__(
        self,
        params: dict[str, Param] | None,
        *,
        listing: Callable[[], ParamDict] | None = None,
        lookup: Callable[[str], Param | None] | None = None,
    ):
        # ``m.params`` is lazy: a name is looked up alone (``lookup``, O(depth)
        # where the adapter can), the block is listed only when iterated.
        self._data = params
        self._listing = listing
        self._lookup = lookup
        self._distinct: tuple[dict[str, Param], ParamDict] | None = None
        self._groups: tuple[dict[str, Param], dict[Any, list[str]]] | None = None

    @property
    def _params(self) -> dict[str, Param]:
        if self._data is None:
            assert self._listing is not None
            self._data = self._listing()._params
        return self._data

    def _materialized(self) -> ParamDict:
        self._params  # noqa: B018 - list now
        return self

    def __getitem__(self, name: str) -> Param:
        if self._data is None and self._lookup is not None:
            found = self._lookup(name)
            if found is not None:
                return found
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

    def items(self) -> Any:  # the dict's own views: no lookup per name
        return self._params.items()

    def values(self) -> Any:
        return self._params.values()

    def keys(self) -> Any:
        return self._params.keys()

    def __len__(self) -> int:
        return len(self._params)

    def __contains__(self, name: object) -> bool:
        if self._data is None and self._lookup is not None and isinstance(name, str) \
                and self._lookup(name) is not None:
            return True
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
        """One name per storage: the first. Kept with the listing it was
        made of (reused while the model is unchanged, issue 13)."""
        if self._data is None and self._listing is not None:
            return self._listing().distinct()
        params = self._params
        cached = self._distinct
        if cached is not None and cached[0] is params:
            return cached[1]
        seen: set[Any] = set()
        out: dict[str, Param] = {}
        for n, p in params.items():
            storage = p._leaf.storage
            if storage not in seen:
                seen.add(storage)
                out[n] = p
        made = ParamDict(out)
        self._distinct = (params, made)
        return made

    def _storage_groups(self) -> dict[Any, list[str]]:
        """Storage -> its names in order, kept with the listing as
        ``distinct`` is (callers must not change the lists)."""
        params = self._params
        cached = self._groups
        if cached is not None and cached[0] is params:
            return cached[1]
        groups: dict[Any, list[str]] = {}
        for n, p in params.items():
            groups.setdefault(p._leaf.storage, []).append(n)
        self._groups = (params, groups)
        return groups

    def numpy(self) -> dict[str, np.ndarray]:
        """``{name: value}`` copies."""
        return {n: p.value for n, p in self._params.items()}

    def __repr__(self) -> str:
        rows = [f"  {n}: {p.shape} {p.dtype}" + (f" (tied: {', '.join(p.tied_with)})" if p.tied_with else "")
                for n, p in self._params.items()]
        return "ParamDict(\n" + "\n".join(rows) + "\n)" if rows else "ParamDict()"

