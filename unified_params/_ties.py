"""Ties: one storage under several names (contract 5).

Design constraints: every check (names, structure, shapes, dtypes, cycles)
runs on one listing of the block before the adapter is asked to tie
anything, so a refused tie changes nothing.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from ._boundary import adapter_call
from ._errors import TieError
from ._layout import shape_to_canonical
from ._tree import entries, find
from .adapter import Leaf

if TYPE_CHECKING:
    from ._block import Block

__all__ = ["tie"]


def tie(block: Block, target: str, source: str) -> None:
    if not isinstance(target, str) or not isinstance(source, str):
        raise TieError(
            "two names (str) of sub-blocks or parameters",
            f"target={target!r}, source={source!r}",
            "name them as m.children() and m.params do, e.g. m.tie('block 1', 'block 0')",
        )
    if target == source:
        raise TieError("two different blocks or parameters to tie", f"target=source={target!r}",
                       "name the block whose parameters should be replaced, then the one to share")
    listing = block._listing()
    blocks = listing.block_paths()
    params = block._all(listing)
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
        rel_t, rel_s = tp[len(block._path):], sp[len(block._path):]
        t = entries(find(listing.node, rel_t, block._path), tp)
        s = entries(find(listing.node, rel_s, block._path), sp)
        t_names, s_names = [e[0] for e in t], [e[0] for e in s]
        if t_names != s_names:
            raise TieError(
                f"blocks of matching structure; {source!r} holds {s_names[:8]}",
                f"{target!r} holds {t_names[:8]}",
                "tie blocks built the same way",
            )
        pairs = [(te[1], se[1]) for te, se in zip(t, s)]
        tnames = [f"{target}.{e[0]}" for e in t]
    elif target in params and source in params:
        pairs = [(params[target]._leaf, params[source]._leaf)]
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
    handle = block._handle
    for (tl, sl), name in zip(pairs, tnames):
        if tl.kind != sl.kind:
            raise TieError(
                f"a {tl.kind} to tie to another {tl.kind}",
                f"{name!r} is a {tl.kind} and its source a {sl.kind}",
                "tie parameters to parameters and buffers to buffers",
            )
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
    with adapter_call(block.backend, f"tie {target!r} to {source!r}", error=TieError,
                      fix="materialize the model first (m.materialize(x)) and tie blocks of one structure"):
        handle.tie(pairs)
    for tl, _ in pairs:  # the target's storage is gone: so are its gradients
        block._shared.grads.pop(tl.storage, None)
