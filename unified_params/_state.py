"""Loading a state into a block: ``load_state``, and the core of ``load``
and ``port`` (contract 7.2).

Design constraints: names are matched against one listing of the block;
a strict load that does not fit changes nothing; tied names need one value;
the write is one transaction (``_transaction.write_atomic``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import NotInitializedError, StateError
from ._fastpath import specs_of
from ._format import no_gc
from ._pieces import from_held
from ._shards import ShardedValue
from ._transaction import write_atomic
from ._values import Deferred, as_array, check_deferred, check_value

if TYPE_CHECKING:
    from ._block import Block
    from ._param import Param

__all__ = ["LoadReport", "load_into"]

_SHOWN = 5


def _first(names: list[str]) -> str:
    """``3: ['a', 'b', 'c']`` or ``1200: ['a', ..., 'e'] and 1195 more``."""
    shown = [n[:80] for n in names[:_SHOWN]]
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{len(names)}: {shown}{more}"


@dataclass
class LoadReport:
    """What a load matched. ``mismatched`` holds ``(name, expected, found)``."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    #: a structure load's pairs ``(file name, model name, layout it crossed from)``
    pairs: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        """Counts and the first few names of each list: bounded in length
        whatever the size of the model or the file."""
        parts = [f"{len(self.loaded)} loaded"]
        if self.pairs:
            shown = ", ".join(f"{f[:60]} -> {d[:60]}" + (f" ({lay})" if lay != "canonical" else "")
                              for f, d, lay in self.pairs[:_SHOWN])
            more = f" and {len(self.pairs) - _SHOWN} more" if len(self.pairs) > _SHOWN else ""
            parts.append(f"paired {len(self.pairs)}: {shown}{more} (all: report.pairs)")
        if self.missing:
            parts.append(f"missing {_first(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {_first(self.unexpected)}")
        if self.mismatched:
            shown = ", ".join(f"{n[:80]} (expected {e}, found {f})" for n, e, f in self.mismatched[:_SHOWN])
            more = f" and {len(self.mismatched) - _SHOWN} more" if len(self.mismatched) > _SHOWN else ""
            parts.append(f"mismatched {len(self.mismatched)}: {shown}{more}")
        return "; ".join(parts)


def _not_fitting(report: LoadReport, what: str) -> StateError:
    """The StateError of a strict load whose state does not fit."""
    return StateError(
        f"a state that fits the model exactly (strict {what})",
        str(LoadReport(report.missing, report.unexpected, report.mismatched)),
        "fix the names or shapes, or pass strict=False to load what matches"
        if report.loaded else
        "no name matched: for a file or state of another framework use up.load(m, path, match='order') "
        "(an up.save file: pairs by order and shape) or match='structure' (a checkpoint of another "
        "framework's own tools: pairs layers by name and shape), or rename its keys to the model's names "
        "(m.params)",
        report=report,
    )


_SHAPE, _DTYPE = attrgetter("shape"), attrgetter("dtype")


def _untied_deferred(allp: dict[str, Param], groups: dict[Any, list[str]], state: Mapping[str, Any]
                     ) -> tuple[list[tuple[Param, Any]], list[Any], list[np.dtype], list[str]] | None:
    """``(items, shapes, dtypes, loaded)`` of the common load, in list passes
    (10,000 small storages, issue 13): no tie in the block, every name given
    a ``Deferred`` value (a file's tensor) of the storage's concrete shape and
    dtype, which the loop of ``_load_into`` would pass as it is; ``None``
    otherwise, and that loop decides and words what does not fit."""
    if len(groups) != len(allp):
        return None
    names = list(allp)
    absent = object()
    values = list(map(state.get, names, repeat(absent)))
    if not all(map(isinstance, values, repeat(Deferred))):
        return None
    ps = list(allp.values())
    _, shapes, dtypes = specs_of(ps)
    if (None in chain.from_iterable(shapes) or list(map(_SHAPE, values)) != shapes
            or list(map(_DTYPE, values)) != dtypes):
        return None
    return list(zip(ps, values)), shapes, dtypes, names


def load_into(
    block: Block, state: Mapping[str, Any], *, strict: bool, what: str, progress: bool | None = False,
    backup: bool | None = None, verify: Callable[[], None] | None = None,
) -> LoadReport:
    """Shared by ``load_state``, ``up.load`` and ``up.port``; ``backup`` and
    ``verify`` go to ``write_atomic``."""
    with no_gc():  # many small objects, no cycles: the collector would only walk the model
        return _load_into(block, state, strict, what, progress, backup, verify)


def _load_into(
    block: Block, state: Mapping[str, Any], strict: bool, what: str, progress: bool | None,
    backup: bool | None, verify: Callable[[], None] | None,
) -> LoadReport:
    if not isinstance(state, Mapping):
        raise StateError(
            "a mapping {name: array} (what m.state() returns)",
            f"a {type(state).__name__}",
            "pass a dict of canonical arrays keyed by parameter names",
        )
    listed = block._all()
    allp = listed._params  # the plain dict: one lookup per name, no method call
    report = LoadReport()
    groups = listed._storage_groups()  # kept with the listing
    report.unexpected = [k for k in state if k not in allp]
    lean = _untied_deferred(allp, groups, state)
    if lean is not None:  # every storage untied, given a file's (or port's) value of its shape and dtype
        report.loaded = lean[3]
        if strict and not report.ok:
            raise _not_fitting(report, what)
        write_atomic(lean[0], what=what, progress=progress, backup=backup, verify=verify, shapes=lean[1],
                     dtypes=lean[2])
        return report
    chosen: dict[Any, tuple[str, Any]] = {}
    absent = object()
    get = state.get
    for storage, names in groups.items():
        if len(names) == 1:  # untied: the common case, without building a list
            first = names[0]
            value = get(first, absent)
            if value is not absent:
                chosen[storage] = (first, value)
            elif allp[first]._leaf.persistent:  # non-persistent state is never required
                report.missing.append(first)
            continue
        given = [n for n in names if n in state]
        if not given:
            if any(allp[n]._leaf.persistent for n in names):  # non-persistent state is never required
                report.missing.extend(names)
            continue
        first = given[0]
        for other in given[1:]:
            if state[other] is state[first]:  # one object under both names, as m.state() gives a tie
                continue
            a = as_array(state[first], allp[first].shape, first, what)
            b = as_array(state[other], allp[other].shape, other, what)
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
                raise StateError(
                    f"one value for the tied names {names}",
                    f"different values under {first!r} and {other!r}",
                    "give one name of the tie group, or equal values",
                )
        chosen[allp[first]._leaf.storage] = (first, state[first])
    items: list[tuple[Param, Any]] = []
    shapes: list[Any] = []
    loaded = report.loaded
    for storage, (name, value) in chosen.items():
        p = allp[name]
        shape = p.shape  # an adapter call: asked once
        arr: Deferred | np.ndarray
        if isinstance(value, Deferred):
            arr = value
        elif isinstance(value, ShardedValue):  # m.state(copy=False) of a sharded model: its pieces, no gather
            arr = from_held(value, p, what)
        else:
            a = as_array(value, shape, name, what)
            # a read-only view, such as m.state(copy=False) gives, may be of a
            # storage this very load writes first (two layers swapped)
            arr = a.copy() if not a.flags.writeable and a.base is not None else a
        if None in shape:
            raise NotInitializedError(
                f"a concrete model to {what} into",
                f"{name!r} has the deferred shape {shape}",
                "call m.materialize(x) with an example input first",
            )
        if arr.shape != shape:
            report.mismatched.append((name, shape, arr.shape))
            continue
        items.append((p, arr))
        shapes.append(shape)
        group = groups[storage]
        if len(group) == 1:
            loaded.append(name)
        else:
            loaded.extend(group)
    if strict and not report.ok:
        raise _not_fitting(report, what)
    checked: list[tuple[Param, Any]] = []
    dtypes: list[np.dtype] = []
    for p, v in items:
        dtype = p.dtype  # an adapter call: asked once
        if isinstance(v, Deferred):  # a file's tensor of the storage's dtype and shape passes as it is
            checked.append((p, v if v.dtype == dtype else check_deferred(p, v, what)))
        else:
            checked.append((p, check_value(p, v, what)))
        dtypes.append(dtype)
    write_atomic(checked, what=what, progress=progress, backup=backup, verify=verify, shapes=shapes, dtypes=dtypes)
    return report

