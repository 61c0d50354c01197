"""Block: a wrapped model or one of its sub-blocks, the user's entry point.

Design constraints:

* Written once for every backend; a framework is reached only through the
  adapter API (``adapter.Handle``), and every call into it goes through the
  one error boundary (``_boundary``).
* One walk per public call (``_tree.Listing``); structure is read again at
  the next call, so a Block never goes stale when the user edits
  ``m.native``. A lookup by name costs O(depth) where the adapter can find
  one node (``Handle.node``).
* Each policy has one home: values are checked in ``_values``, written as
  one transaction in ``_transaction``, loaded in ``_state``, tied in
  ``_ties``; gradients are added up here (``backward``) and kept per native
  model with its lock (``_shared``), so that each public call is atomic with
  respect to other threads.
"""

from __future__ import annotations

import difflib
import functools
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np

from . import _limits
from ._boundary import adapter_call, framework_errors
from ._errors import ArgumentError, ParamNotFoundError
from ._param import Param, ParamDict
from ._shards import may_shard, state_pieces
from ._shared import shared_for
from ._state import LoadReport, load_into
from ._transaction import progress_bar, write_atomic
from ._tree import Listing, Path, find_leaf, listing_of, no_gc
from ._values import Deferred, check_deferred, check_value
from .adapter import Handle, Node

__all__ = ["Block", "Param", "ParamDict", "LoadReport"]

# Names other modules imported from here before the core was split; kept so
# that code written against them keeps working.
_check_value, _check_deferred = check_value, check_deferred
LARGE_BYTES = _limits.LARGE_BYTES
__compat__ = (Deferred, progress_bar, write_atomic, load_into)

_PARAMS = ("param",)
_BUFFERS = ("buffer",)
_ALL = ("param", "buffer")

F = TypeVar("F", bound=Callable[..., Any])


def _locked(fn: F) -> F:
    """Run a public method holding the native model's lock (contract 14)."""

    @functools.wraps(fn)
    def inner(self: Block, *args: Any, **kwargs: Any) -> Any:
        with self._shared.lock:
            return fn(self, *args, **kwargs)

    return inner  # type: ignore[return-value]


class Block:
    """A wrapped model or one of its sub-blocks.

    Indexing mirrors the native model: ``m[2]`` is the third child,
    ``m['block 0']`` the child with that key.
    """

    __slots__ = ("_handle", "_path", "_shared", "_kept")

    def __init__(self, handle: Handle, path: Path = ()):
        self._handle = handle
        self._path = path
        self._shared = shared_for(handle)
        self._kept: dict[tuple[str, ...], ParamDict] | None = None  # see _keep

    # -- identity -----------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._handle.backend.name

    @property
    def path(self) -> str:
        """Dotted path of this block from the wrapped root (``''`` for it)."""
        return ".".join(self._path)

    def _listing(self) -> Listing:
        with adapter_call(self.backend, "walk the model"):
            return listing_of(self._handle, self._path)

    def _node(self) -> Node:
        return self._listing().node

    @property
    def native(self) -> Any:
        if not self._path:
            return self._handle.native
        try:
            node = self._handle.node(self._path)
        except Exception:  # the listing finds it, or says why not
            node = None
        return (node if node is not None else self._node()).native

    @property
    def variables(self) -> Any:
        """The variables a functional model's Block holds (Flax linen)."""
        if not hasattr(self._handle, "variables"):
            raise AttributeError(f"a {self.backend} Block keeps no separate variables; use m.native")
        return self._handle.variables

    # -- structure ----------------------------------------------------------
    def _child(self, key: str) -> Block:
        return Block(self._handle, (*self._path, key))

    def children(self) -> dict[str, Block]:
        return {c.key: self._child(c.key) for c in self._node().children}

    def __getitem__(self, key: int | str) -> Block:
        if isinstance(key, str) and "." not in key:  # a child key: found alone where the adapter can
            try:
                found = self._handle.node((*self._path, key))
            except Exception:  # a key the adapter cannot follow: the listing below decides and words it
                found = None
            if found is not None:
                return self._child(key)
        listing = self._listing()
        keys = [c.key for c in listing.node.children]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            try:
                k = keys[int(key)]
            except IndexError:
                raise ParamNotFoundError(
                    f"a child index in range({len(keys)}) of block {self.path or '<root>'!r}",
                    f"{key}",
                    f"its children are {keys}",
                ) from None
            return self._child(k)
        if isinstance(key, str):
            if key in keys:
                return self._child(key)
            path = listing.block_paths().get(key)
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

    def _block_paths(self) -> dict[str, Path]:
        return self._listing().block_paths()

    def __len__(self) -> int:
        return len(self._node().children)

    def __iter__(self) -> Iterator[Block]:
        return iter(self.children().values())

    # -- parameters ---------------------------------------------------------
    def _dict(self, kinds: tuple[str, ...], listing: Listing | None = None) -> ParamDict:
        """Every Param of ``kinds`` from one listing (made now if not given)."""
        listing = listing if listing is not None else self._listing()
        ref = listing.dicts.get(kinds)
        made = ref() if ref is not None else None
        if made is not None:
            return self._keep(kinds, made)
        handle, lock = self._handle, self._shared.lock
        out: dict[str, Param] = {}
        firsts: dict[Any, str] = {}  # storage -> its first name: one pass, ties named after it
        tied: list[Param] = []
        with no_gc():
            for name, leaf, node_path in listing.entries:
                if leaf.kind in kinds and name not in out:
                    out[name] = p = Param(handle, leaf, name, (), node_path, lock=lock)
                    if firsts.setdefault(leaf.storage, name) is not name:
                        tied.append(p)
            if tied:
                groups = listing.groups(kinds)
                for p in tied:
                    group = groups[p._leaf.storage]
                    for n in group:
                        out[n]._tied = tuple(o for o in group if o != n)
        made = ParamDict(out)
        listing.dicts[kinds] = weakref.ref(made)
        return self._keep(kinds, made)

    def _keep(self, kinds: tuple[str, ...], made: ParamDict) -> ParamDict:
        """Hold ``made`` for as long as this Block lives. The listing cached on
        the handle refers to it weakly: its Params refer to the handle, so a
        strong reference there would make a cycle per wrapped model (garbage
        left to the cyclic collector, whose full passes over a large heap
        cost more than the listing)."""
        kept = self._kept
        if kept is None:
            self._kept = kept = {}
        kept[kinds] = made
        return made

    def _lazy(self, kinds: tuple[str, ...]) -> ParamDict:
        handle, base = self._handle, self._path

        def lookup(name: str) -> Param | None:
            with adapter_call(self.backend, "find a parameter"):
                found = find_leaf(handle, base, name, kinds)
            if found is None:
                return None
            leaf, node_path = found
            return Param(handle, leaf, name, None, node_path, tied=lambda: self._tied_with(name, kinds),
                         lock=self._shared.lock)

        return ParamDict(None, listing=lambda: self._dict(kinds), lookup=lookup)

    def _tied_with(self, name: str, kinds: tuple[str, ...]) -> tuple[str, ...]:
        listing = self._listing()
        for n, leaf, _ in listing.of(kinds):
            if n == name:
                group = listing.groups(kinds)[leaf.storage]
                return () if len(group) == 1 else tuple(n for n in group if n != name)
        return ()

    @property
    def params(self) -> ParamDict:
        """Trainable parameters (``named_parameters``' names, every name of a tie)."""
        return self._lazy(_PARAMS)

    @property
    def buffers(self) -> ParamDict:
        """Non-trainable state (running statistics)."""
        return self._lazy(_BUFFERS)

    def _all(self, listing: Listing | None = None) -> ParamDict:
        return self._dict(_ALL, listing)

    # -- ties ---------------------------------------------------------------
    def tied(self) -> list[tuple[str, ...]]:
        """Groups of names sharing one storage, in order."""
        return [tuple(g) for g in self._listing().groups(_ALL).values() if len(g) > 1]

    @_locked
    def tie(self, target: str, source: str) -> None:
        """Make every parameter of ``target`` the storage of the matching one
        of ``source`` (sub-block or parameter names, relative to this block)."""
        from ._ties import tie

        tie(self, target, source)

    # -- initialization -----------------------------------------------------
    @_locked
    def initialize(self, init: Any = None, *, seed: int | None = None, allow_unmatched: bool = False) -> None:
        """Initialize the parameters of this block, atomically.

        ``init`` is an initializer, ``{regex: initializer}`` (first full match
        wins, unmatched parameters keep their values; a key that matches no
        parameter is an error unless ``allow_unmatched``) or ``None`` for the
        framework's own defaults. With ``seed``, values are the same on every
        backend (see ``unified_params.init`` for the recipe).

        >>> import unified_params as up
        >>> from unified_params import reference as ref
        >>> m = up.wrap(ref.Sequential(ref.Dense(2, in_units=3)))
        >>> m.initialize({r'.*weight': up.init.Normal(0, 0.01), r'.*bias': up.init.Zeros()}, seed=0)
        >>> m.params['0.bias'].value
        array([0., 0.], dtype=float32)
        """
        from ._initialize import initialize

        initialize(self, init, seed=seed, allow_unmatched=allow_unmatched)

    def materialize(self, x: Any) -> Block:
        """Run what the framework needs (a forward pass, ``build``,
        ``module.init``) so that every parameter is concrete."""
        with self._shared.lock, framework_errors(self.backend, self.path, "materialize", x):
            self._handle.materialize(x)
        return self

    # -- running ------------------------------------------------------------
    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """The native call with every argument (``m(x, train=False)``)."""
        with self._shared.lock:
            node = self._node()
            with framework_errors(self.backend, self.path, "run", x):
                return self._handle.forward(node, x, *args, **kwargs)

    @_locked
    def backward(self, x: Any, loss: Callable[[Any], Any] | None = None) -> float:
        """Gradients of ``loss(self(x))`` (default: the sum of the outputs)
        with the framework's autodiff, kept for ``p.grad`` and added to the
        gradients already there (as PyTorch does) until ``zero_grad()``;
        returns the loss."""
        listing = self._listing()
        params = self._dict(_PARAMS, listing)
        for p in params.values():
            p._require_concrete("differentiate")
        leaves = listing.distinct_leaves(_PARAMS)
        with framework_errors(self.backend, self.path, "differentiate", x):
            value, grads = self._handle.backward(listing.node, leaves, x, loss)
            value = float(value)
        if len(grads) != len(leaves):
            raise ArgumentError(
                f"one gradient per leaf ({len(leaves)}) from the {self.backend} adapter's backward",
                f"{len(grads)} gradients",
                "report this as a bug of the adapter",
            )
        store = self._shared.grads
        for leaf, g in zip(leaves, grads):
            if g is None:
                continue
            g = np.asarray(g)
            previous = store.get(leaf.storage)
            store[leaf.storage] = g.copy() if previous is None else previous + g
        return value

    @_locked
    def zero_grad(self) -> None:
        """Forget the gradients of this block's parameters."""
        leaves = self._listing().distinct_leaves(_PARAMS)
        for leaf in leaves:
            self._shared.grads.pop(leaf.storage, None)
        with adapter_call(self.backend, "clear gradients"):
            self._handle.clear_grads(leaves)

    # -- state --------------------------------------------------------------
    @_locked
    def state(self, copy: bool = True) -> dict[str, np.ndarray]:
        """``{name: array}`` for every parameter and buffer, canonical layout;
        tied names map to one array. ``copy=False`` never gathers: a sharded
        parameter's entry is a ``ShardedValue`` of this process's pieces
        (contract 15.1; ``state()`` gathers, as ``p.value`` does)."""
        if not copy and may_shard(self._handle):
            return state_pieces(self)
        from ._fastpath import read_values

        named = self._all()._params
        firsts = self._all().distinct()._params  # one name per storage
        values = dict(zip((p._leaf.storage for p in firsts.values()),
                          read_values(list(firsts.values()), copy)))  # one read_many for all (issue 13)
        return {n: values[p._leaf.storage] for n, p in named.items()}

    @_locked
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


from ._report import Summary  # noqa: E402  (cycle: _report formats Blocks)
