"""``Block.initialize``: which initializer each storage gets, then one
transaction (contract 4).

Design constraints: every rule is checked (regex, callable, keys that match
nothing) and every storage's shape is known before anything is drawn; values
are drawn one storage at a time inside the transaction and checked like any
write, so a failing initializer (a wrong shape, complex values, a bare
exception) leaves every value as it was.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import init as _init
from ._boundary import adapter_call
from ._errors import ArgumentError, ParamNotFoundError, UnifiedParamsError
from ._transaction import write_atomic
from ._values import Deferred, check_value

if TYPE_CHECKING:
    from ._block import Block
    from ._param import Param

__all__ = ["initialize"]


def _rules(init: Any) -> list[tuple[re.Pattern[str], Any, Any]]:
    if isinstance(init, Mapping):
        rules = []
        for pat, fn in init.items():
            try:
                rules.append((re.compile(pat), fn, pat))
            except (re.error, TypeError) as exc:
                raise ParamNotFoundError("a valid regular expression as a key of the init mapping",
                                         f"{pat!r} ({exc})", r"e.g. r'.*\.weight'") from None
    else:
        rules = [(re.compile(".*"), init, None)]
    for _, fn, _ in rules:
        if not callable(fn):
            raise ArgumentError(
                "an initializer: an up.init.Initializer or a callable (shape, rng, param)",
                f"{fn!r}",
                "pass e.g. up.init.Zeros() or up.init.Normal(0, 0.01)",
            )
    return rules


def initialize(block: Block, init: Any, *, seed: int | None, allow_unmatched: bool) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed < 2**128):
        raise ArgumentError("a seed that is an int in [0, 2**128), or None", f"seed={seed!r}",
                            "pass e.g. seed=0")
    if init is None:
        if seed is not None and seed >= 2**63:
            raise ArgumentError(
                "a seed in [0, 2**63) for the framework's own initializers (init=None)",
                f"seed={seed!r}",
                "pass a smaller seed; seeds up to 2**128 work with up.init initializers",
            )
        listing = block._listing()
        leaves = listing.distinct_leaves()
        with adapter_call(block.backend, "reset the parameters with its own initializers"):
            block._handle.reset(listing.node, leaves, None if seed is None else int(seed))
        return
    rules = _rules(init)
    params = block.params._materialized()
    groups: dict[Any, list[str]] = {}
    for n, p in params.items():
        groups.setdefault(p.storage, []).append(n)
    used: set[int] = set()
    plan: list[tuple[int, Param, Any]] = []
    for i, p in enumerate(params.distinct().values()):
        names = groups[p.storage]
        for k, (rx, fn, _) in enumerate(rules):
            if any(rx.fullmatch(x) for x in names):
                used.add(k)
                p._require_concrete("initialize")
                plan.append((i, p, fn))
                break
    unmatched = [pat for k, (_, _, pat) in enumerate(rules) if k not in used and pat is not None]
    if unmatched and not allow_unmatched:
        close = difflib.get_close_matches(str(unmatched[0]), list(params), n=3, cutoff=0.3)
        raise ParamNotFoundError(
            "every key of the init mapping to match at least one parameter name (re.fullmatch)",
            f"{unmatched} matched none of {len(params)} parameters"
            + (f" (close names: {close})" if close else ""),
            "fix the pattern, or pass allow_unmatched=True to accept keys that match nothing",
        )
    items: list[tuple[Param, Any]] = []
    for i, p, fn in plan:
        shape = p._concrete_shape()
        get = functools.partial(_draw, fn, p, i, shape, seed)
        if isinstance(fn, _init.Initializer) and fn.elementwise and _init._draw_dtype(p.dtype) == p.dtype:
            items.append((p, _InPlace(shape, p.dtype, get, functools.partial(_init.draw, fn, shape, p.dtype,
                                                                             seed, i, p))))
        else:
            items.append((p, _Fresh(shape, p.dtype, get)))
    custom = any(not isinstance(fn, _init.Initializer) for _, _, fn in plan)
    # A built-in initializer fails, if at all, on the first storage it sees of
    # a shape it cannot fill: those are checked up front; a user's callable
    # may fail anywhere, so its transaction always keeps backups.
    for _, p, fn in plan:
        check = getattr(fn, "check_shape", None)
        if callable(check):
            check(p._concrete_shape(), p)
    write_atomic(items, what="initialize", backup=True if custom else None)


class _Fresh(Deferred):
    """A seeded draw: a new array each time, which the writer may hand over."""

    __slots__ = ()
    private = True


class _InPlace(_Fresh):
    """A built-in elementwise draw in the storage's dtype: drawn straight
    into the storage's host memory where the adapter offers it (no array,
    no copy), the same numbers as drawn into a new array (the recipe fills
    chunks of the flattened storage wherever they live)."""

    __slots__ = ("_into",)

    def __init__(self, shape: tuple[int, ...], dtype: Any, get: Any, into: Any) -> None:
        super().__init__(shape, dtype, get)
        self._into = into

    def read_into(self, out: np.ndarray) -> None:
        self._into(out=out)


def _draw(fn: Any, p: Param, i: int, shape: tuple[int, ...], seed: int | None) -> np.ndarray:
    try:
        value = _init.draw(fn, shape, p.dtype, seed, i, p)
    except UnifiedParamsError:
        raise
    except Exception as exc:
        raise ArgumentError(
            f"an initializer that can fill {p.name!r} of shape {shape}",
            f"{type(exc).__name__} from {fn!r}: {exc}",
            "use an initializer suited to this parameter, or match it with a narrower regex",
        ) from exc
    arr = np.asarray(value)
    if arr.dtype.kind == "c":  # never a silent ComplexWarning
        raise ArgumentError(
            f"real values for {p.name!r} ({p.dtype})",
            f"complex values (dtype {arr.dtype}) from {fn!r}",
            "return real numbers from the initializer",
        )
    return check_value(p, arr, "the initializer")
