"""Walking an adapter's tree and naming what is in it (contract 1).

Design constraints: one walk per public call. A :class:`Listing` is made
from one ``Handle.tree()`` walk and answers every question of that call
(entries in order, storage groups, sub-block paths); a lookup by name asks
``Handle.node(path)`` first, which costs O(depth) where the adapter supports
it, and walks the whole tree only where it does not.
"""

from __future__ import annotations

from typing import Any

from ._errors import ParamNotFoundError
from ._format import no_gc
from .adapter import Handle, Leaf, Node

__all__ = ["Path", "Entry", "Listing", "listing_of", "sorted_leaves", "find", "entries", "find_leaf", "no_gc"]

Path = tuple[str, ...]
_ROLE_PAIRS = (("weight", "bias"), ("running_mean", "running_var"))


#: ``(name relative to the listed block, leaf, absolute path of its node)``:
#: a plain tuple, since a listing makes one per parameter.
Entry = tuple[str, Leaf, Path]


def sorted_leaves(node: Node) -> list[Leaf]:
    """The native order, except that ``weight`` comes before ``bias`` and
    ``running_mean`` before ``running_var`` (contract 1.3), so that PyTorch
    names keep ``named_parameters``' order and Flax's sorted dicts do not put
    ``bias`` first."""
    leaves = node.leaves
    if len(leaves) < 2:
        return list(leaves)
    leaves = list(leaves)
    roles = [lf.role for lf in leaves]
    for first, second in _ROLE_PAIRS:
        if first in roles and second in roles:
            i, j = roles.index(first), roles.index(second)
            if j < i:
                leaves[i], leaves[j] = leaves[j], leaves[i]
                roles[i], roles[j] = roles[j], roles[i]
    return leaves


def find(root: Node, path: Path, base: Path = ()) -> Node:
    """The node at ``path`` below ``root`` (whose own path is ``base``),
    ``node.path`` set."""
    node = root
    for i, key in enumerate(path):
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
        node.path = (*base, *path[: i + 1])
    return node


def entries(node: Node, base: Path) -> list[Entry]:
    """Every leaf below ``node`` in definition order, named relative to it."""
    out: list[Entry] = []
    append = out.append
    stack: list[tuple[Node, Path, str]] = [(node, base, "")]
    push, pop = stack.append, stack.pop
    while stack:
        cur, path, prefix = pop()
        leaves = cur.leaves
        if leaves:
            for leaf in (leaves if len(leaves) == 1 else sorted_leaves(cur)):
                append((prefix + leaf.role, leaf, path))
        children = cur.children
        if children:
            for child in reversed(children):
                key = child.key
                push((child, (*path, key), f"{prefix}{key}."))
    return out


class Listing:
    """One walk of the tree below a block, shared by everything one public
    call needs from it."""

    __slots__ = ("node", "base", "_entries", "_groups", "dicts")

    def __init__(self, handle: Handle, base: Path, root: Node | None = None):
        self.base = base
        if root is None:
            with no_gc():
                root = handle.tree()
        self.node = find(root, base)
        self.node.path = base
        self._entries: list[Entry] | None = None
        self._groups: dict[Any, list[str]] | None = None
        #: ParamDicts made from this listing, by kinds (reused with it while
        #: a Block holds them): weak references, since their Params refer to
        #: the handle that caches this listing.
        self.dicts: dict[tuple[str, ...], Any] = {}

    @property
    def entries(self) -> list[Entry]:
        if self._entries is None:
            with no_gc():
                self._entries = entries(self.node, self.base)
        return self._entries

    def of(self, kinds: tuple[str, ...]) -> list[Entry]:
        return [e for e in self.entries if e[1].kind in kinds]

    def groups(self, kinds: tuple[str, ...] = ("param", "buffer")) -> dict[Any, list[str]]:
        """Storage -> every name of it, in order (ties are groups of two or more)."""
        if kinds == ("param", "buffer") and self._groups is not None:
            return self._groups
        groups: dict[Any, list[str]] = {}
        with no_gc():
            for name, leaf, _ in self.entries:
                if leaf.kind in kinds:
                    groups.setdefault(leaf.storage, []).append(name)
        if kinds == ("param", "buffer"):
            self._groups = groups
        return groups

    def distinct_leaves(self, kinds: tuple[str, ...] = ("param", "buffer")) -> list[Leaf]:
        seen: set[Any] = set()
        out: list[Leaf] = []
        for _, leaf, _ in self.entries:
            if leaf.kind in kinds and leaf.storage not in seen:
                seen.add(leaf.storage)
                out.append(leaf)
        return out

    def block_paths(self) -> dict[str, Path]:
        """Dotted relative name -> absolute path, for every sub-block."""
        out: dict[str, Path] = {}
        stack: list[tuple[Node, Path, str]] = [(c, (*self.base, c.key), c.key) for c in self.node.children]
        while stack:
            cur, path, name = stack.pop()
            out.setdefault(name, path)
            stack.extend((c, (*path, c.key), f"{name}.{c.key}") for c in cur.children)
        return out


def listing_of(handle: Handle, base: Path) -> Listing:
    """The listing of the block at ``base``: the last one made for this
    handle and path while the handle's ``stamp()`` is unchanged, else a new
    walk. Where there is no last one (a model just wrapped) and the adapter
    has the optional ``tree_and_stamp()``, one walk gives both the tree and
    the stamp to keep it under."""
    cache: dict[Path, tuple[Any, Listing]] | None = getattr(handle, "_up_listings", None)
    hit = cache.get(base) if cache else None
    if hit is None:
        both = getattr(handle, "tree_and_stamp", None)
        if both is not None:
            with no_gc():
                root, stamp = both()
            return _kept(handle, cache, base, stamp, Listing(handle, base, root))
    stamp = handle.stamp()
    if stamp is None:
        return Listing(handle, base)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    return _kept(handle, cache, base, stamp, Listing(handle, base))


def _kept(handle: Handle, cache: dict[Path, tuple[Any, Listing]] | None, base: Path, stamp: Any,
          listing: Listing) -> Listing:
    """``listing``, kept in the handle's cache under ``stamp``."""
    if stamp is None:
        return listing
    if cache is None:
        cache = {}
        try:
            handle._up_listings = cache  # type: ignore[attr-defined]
        except AttributeError:
            return listing
    if len(cache) > 64:  # sub-blocks of one model: keep a bounded few
        cache.clear()
    cache[base] = (stamp, listing)
    return listing


def find_leaf(handle: Handle, base: Path, name: str, kinds: tuple[str, ...]) -> tuple[Leaf, Path] | None:
    """The leaf named ``name`` (relative to ``base``) by ``Handle.node``,
    without walking the model; ``None`` where the adapter cannot say (the
    caller then lists the block)."""
    if not isinstance(name, str):
        return None
    *keys, role = name.split(".")
    path = (*base, *keys)
    try:
        node = handle.node(path)
    except Exception:  # a key the adapter cannot follow: the listing decides
        return None
    if node is None:
        return None
    for leaf in node.leaves:
        if leaf.role == role and leaf.kind in kinds:
            return leaf, path
    return None
