"""Loading a state into a block: ``load_state``, and the core of ``load``
and ``port`` (contract 7.2).

Design constraints: names are matched against one listing of the block;
a strict load that does not fit changes nothing; tied names need one value;
the write is one transaction (``_transaction.write_atomic``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import NotInitializedError, StateError
from ._transaction import write_atomic
from ._values import Deferred, check_deferred, check_value

if TYPE_CHECKING:
    from ._block import Block
    from ._param import Param

__all__ = ["LoadReport", "load_into"]


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


def load_into(
    block: Block, state: Mapping[str, Any], *, strict: bool, what: str, progress: bool | None = False
) -> LoadReport:
    """Shared by ``load_state``, ``up.load`` and ``up.port``."""
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
    checked = [(p, check_deferred(p, v, what) if isinstance(v, Deferred) else check_value(p, v, what))
               for p, v in items]
    write_atomic(checked, what=what, progress=progress)
    return report

