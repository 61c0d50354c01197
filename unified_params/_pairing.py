"""Pairing by order and canonical shape: the one rule of ``up.port`` and
``up.load(match='order')``.

Design constraints: both sides are lists of :class:`Entry` in model order
(distinct storages). Pairs are one-to-one, except recurrent biases, which
PyTorch keeps as two (``bias_ih``, ``bias_hh``) where Keras keeps one
(``BIAS_SINGLE``: ported into ``bias_ih`` with ``bias_hh`` zero, the two
summed the other way) or both stacked (``BIAS_STACKED``); and groups that
PyTorch fuses into one tensor where another framework keeps several, both
described as data in the layout table:

* ``FUSED`` roles (``nn.MultiheadAttention``'s ``in_proj_weight`` ``(3E, E)``
  and ``in_proj_bias``) pair with the next three weights (and biases) of the
  other side, in order (query, key, value), split one way, stacked the other;
* ``GATE_GROUPS`` (Flax cells with one Dense per gate) pair with a stacked
  recurrent run ``weight_ih``, ``weight_hh`` and its biases, concatenated in
  PyTorch's gate order one way, split the other.

A ``native`` value (a layer type whose canonical layout is not known) is
never paired with a converted one. Every check runs before any value is
read: a group that does not fit raises ``PortError`` naming both sides.
Regrouping links carry their plan in ``Link.how`` (``rows:<json>``: row
slices of the sources, summed and concatenated), so callers only ever call
:func:`combine`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ._errors import PortError
from ._format import short
from ._layout import NATIVE
from ._layout_table import BIAS_SINGLE, BIAS_STACKED, FUSED, GATE_GROUPS, GateGroup

if TYPE_CHECKING:
    from .adapter import Leaf

#: Roles of PyTorch's (and Gluon's) two recurrent biases, in their order.
_BIAS_IH = re.compile(r"(bias_ih(_l\d+)?(_reverse)?|(.*_)?i2h_bias)")
_BIAS_HH = re.compile(r"(bias_hh(_l\d+)?(_reverse)?|(.*_)?h2h_bias)")
#: Roles of a stacked recurrent run's weights (PyTorch, Gluon, Keras cells).
_W_IH = re.compile(r"(weight_ih(_l\d+)?(_reverse)?|(.*_)?i2h_weight)")
_W_HH = re.compile(r"(weight_hh(_l\d+)?(_reverse)?|(.*_)?h2h_weight)")
#: Child keys of every gate group.
_GATE_KEYS = frozenset(k for g in GATE_GROUPS for k in (*g.weights, *g.biases))


class Entry(NamedTuple):
    """One distinct storage of a side (a tuple: made once per storage per
    port, so it must cost next to nothing)."""

    name: str
    shape: tuple[int | None, ...]
    layout: str = "canonical"
    role: str = ""
    rnn_bias: str = ""


class Link(NamedTuple):
    """``src`` indices feed ``dst`` indices; ``how``: ``copy`` (1:1),
    ``split`` (one bias -> bias_ih, zero bias_hh), ``sum`` (bias_ih +
    bias_hh -> one), ``unstack`` ((2, n) -> two), ``stack`` (two -> (2, n))."""

    src: tuple[int, ...]
    dst: tuple[int, ...]
    how: str = "copy"


#: role -> whether an entry of that role may pair other than one to one in
#: the loop of :func:`pair` (fused, recurrent weights); roles are few strings
_SPECIAL: dict[str, bool] = {}


def _plain(side: Sequence[Entry]) -> list[bool]:
    """Per entry: pairs one to one by shape alone (no recurrent bias, no
    fused or recurrent role), the common case, checked without regexes."""
    special = _SPECIAL
    out = []
    for e in side:
        role = e.role
        sp = special.get(role)
        if sp is None:
            sp = special[role] = role in FUSED or bool(_W_IH.fullmatch(role))
        out.append(not (sp or e.rnn_bias))
    return out


def _two_biases(side: Sequence[Entry], k: int) -> bool:
    if k + 1 >= len(side):
        return False
    a, b = side[k], side[k + 1]
    return (not a.rnn_bias and not b.rnn_bias and len(a.shape) == 1 and a.shape == b.shape
            and bool(_BIAS_IH.fullmatch(a.role)) and bool(_BIAS_HH.fullmatch(b.role)))


def _combined(one: Entry, two: tuple[Entry, Entry]) -> bool:
    """Shapes of a single or stacked bias agree with a pair of biases."""
    n = two[0].shape
    return one.shape == n if one.rnn_bias == BIAS_SINGLE else one.shape == (2, *n)


def pair(what: str, src: Sequence[Entry], dst: Sequence[Entry],
         src_label: str, dst_label: str, fix: str) -> list[Link]:
    """Pair ``src`` with ``dst`` by order (see the module docstring); a
    ``PortError`` naming the first pair that differs."""
    def count_error(i: int, j: int) -> PortError:
        extra = src[i].name if i < len(src) else dst[j].name
        return PortError(
            f"the same number of distinct {what} in {src_label} and {dst_label}",
            f"{len(src)} in {src_label} and {len(dst)} in {dst_label}; the first unpaired is {short(extra, 80)!r}",
            fix,
        )

    if len(src) != len(dst) and not any(_regroups(e) for e in (*src, *dst)):
        raise count_error(min(len(src), len(dst)), min(len(src), len(dst)))
    links: list[Link] = []
    plain_s, plain_d = _plain(src), _plain(dst)
    make = tuple.__new__
    i = j = 0
    while i < len(src) and j < len(dst):
        s, d = src[i], dst[j]
        if plain_s[i] and plain_d[j] and (s.layout == NATIVE) == (d.layout == NATIVE) \
                and (s.shape == d.shape or tuple(s.shape) == tuple(d.shape)):
            links.append(make(Link, ((i,), (j,), "copy")))  # the common case: the checks below would pass
            i, j = i + 1, j + 1
            continue
        if s.role in FUSED or d.role in FUSED:
            found = _fused(what, src, dst, i, j, src_label, dst_label, len(links))
            if found is not None:
                new, i, j = found
                links += new
                continue
        if _W_IH.fullmatch(s.role) or _W_IH.fullmatch(d.role):
            found = _gates(what, src, dst, i, j, src_label, dst_label, len(links))
            if found is not None:
                new, i, j = found
                links += new
                continue
        if s.rnn_bias and not d.rnn_bias and _two_biases(dst, j) and _combined(s, (dst[j], dst[j + 1])):
            links.append(Link((i,), (j, j + 1), "split" if s.rnn_bias == BIAS_SINGLE else "unstack"))
            i, j = i + 1, j + 2
            continue
        if d.rnn_bias and not s.rnn_bias and _two_biases(src, i) and _combined(d, (src[i], src[i + 1])):
            links.append(Link((i, i + 1), (j,), "sum" if d.rnn_bias == BIAS_SINGLE else "stack"))
            i, j = i + 2, j + 1
            continue
        if (s.layout == NATIVE) != (d.layout == NATIVE):
            native, other = (s, d) if s.layout == NATIVE else (d, s)
            raise PortError(
                f"{what} #{len(links)} in a layout known on both sides",
                f"{short(native.name, 80)!r} is in its framework's native layout (a layer type without a "
                f"canonical layout), {short(other.name, 80)!r} is in the canonical layout ({other.layout})",
                "port between models whose layer types both have canonical layouts (see the coverage table "
                "in the README), or copy this parameter yourself with p.native",
            )
        if tuple(s.shape) != tuple(d.shape):
            raise PortError(
                f"{what} #{len(links)} of matching canonical shapes",
                f"{src_label} {short(s.name, 80)!r} {tuple(s.shape)} vs {dst_label} {short(d.name, 80)!r} "
                f"{tuple(d.shape)}",
                f"{fix} (pairs go by order, then shape)",
            )
        links.append(Link((i,), (j,)))
        i, j = i + 1, j + 1
    if i < len(src) or j < len(dst):
        raise count_error(i, j)
    return links


def one_to_one(src: Sequence[Leaf], dst: Sequence[Leaf], src_shapes: Sequence[tuple[int | None, ...]],
               dst_shapes: Sequence[tuple[int | None, ...]]) -> bool:
    """Whether :func:`pair` of these sides (their leaves, and canonical
    shapes as tuples) pairs entry ``k`` with entry ``k`` as a ``copy`` for
    every ``k``, asked in list passes, not a loop step per pair (a port of
    10,000 small storages, issue 13): as many on both sides, none that may
    regroup (no recurrent bias, fused or recurrent role), each pair native
    on both sides or neither, the same shapes in order. ``False`` does not
    mean an error: :func:`pair` then decides and words it."""
    if len(src) != len(dst) or src_shapes != dst_shapes:
        return False
    if any(map(_RNN_BIAS, src)) or any(map(_RNN_BIAS, dst)):
        return False
    roles = set(map(_ROLE, src)) | set(map(_ROLE, dst))
    plain = _plain([Entry("", (), role=r) for r in roles])
    if not all(plain):
        return False
    layouts = list(map(_LAYOUT, src)), list(map(_LAYOUT, dst))
    return layouts[0] == layouts[1] or [x == NATIVE for x in layouts[0]] == [x == NATIVE for x in layouts[1]]


_ROLE, _LAYOUT, _RNN_BIAS = attrgetter("role"), attrgetter("layout"), attrgetter("rnn_bias")


def combine(how: str, values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The destination values of one link from its source values."""
    if how == "copy":
        return [values[0]]
    if how.startswith("rows:"):
        return [_apply(_plan(how), values)]
    if how == "split":
        v = np.asarray(values[0])
        return [v, np.zeros_like(v)]
    if how == "unstack":
        v = np.asarray(values[0])
        return [v[0], v[1]]
    a, b = np.asarray(values[0]), np.asarray(values[1])
    if how == "sum":
        return [a + b]
    if how == "stack":
        return [np.stack([a, b])]
    raise ValueError(f"a link kind among copy, split, unstack, sum, stack. Received: {how!r}")


# -- regrouping: fused attention projections and per-gate recurrent cells ----------------

def _regroups(e: Entry) -> bool:
    """Whether ``e`` may pair other than one to one."""
    return bool(e.rnn_bias or e.role in FUSED or _W_IH.fullmatch(e.role) or _split_name(e)[1] in _GATE_KEYS)


Piece = list[tuple[int, int, int]] | int  # terms (source position, first row, end row) summed, or zeros(n)


def _rows(shape: tuple[int, ...], pieces: Sequence[Piece], flat: Sequence[int] = ()) -> str:
    """A ``rows:`` link kind: the destination (canonical ``shape``, ``-1``:
    the columns of its sources) is the
    concatenation along axis 0 of ``pieces``; sources in ``flat`` are read
    as one axis first (a stacked ``(2, n)`` bias)."""
    return "rows:" + json.dumps({"shape": list(shape), "pieces": list(pieces), "flat": list(flat)},
                                separators=(",", ":"))


@functools.lru_cache(maxsize=256)
def _plan(how: str) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads(how[len("rows:"):])
    return plan


def _apply(plan: dict[str, Any], values: Sequence[np.ndarray]) -> np.ndarray:
    vals = [np.asarray(v) for v in values]
    vals = [v.reshape(-1) if k in plan["flat"] else v for k, v in enumerate(vals)]
    dtype = vals[0].dtype
    parts: list[np.ndarray] = []
    for piece in plan["pieces"]:
        if isinstance(piece, int):
            parts.append(np.zeros((piece,), dtype))
            continue
        total = None
        for pos, a, b in piece:
            part = vals[pos][a:b]
            total = part if total is None else total + part
        parts.append(total)  # type: ignore[arg-type]
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return np.ascontiguousarray(out.reshape(tuple(plan["shape"])))


def _links(plans: Sequence[tuple[int, tuple[int, ...], tuple[int, ...], Sequence[Piece], Sequence[int]]]
           ) -> list[Link]:
    """One ``rows:`` link per destination: ``(dst index, its canonical shape,
    source indices, pieces over source positions, flat positions)``."""
    return [Link(tuple(srcs), (k,), _rows(shape, pieces, flat)) for k, shape, srcs, pieces, flat in plans]


def _fused(what: str, src: Sequence[Entry], dst: Sequence[Entry], i: int, j: int, src_label: str,
           dst_label: str, n: int) -> tuple[list[Link], int, int] | None:
    """A run of ``FUSED`` entries on one side against the next entries of
    the other; ``None`` where both sides are fused alike (one to one)."""
    (fs, fi, fl), (os_, oi, ol) = ((src, i, src_label), (dst, j, dst_label)) if src[i].role in FUSED \
        else ((dst, j, dst_label), (src, i, src_label))
    if os_[oi].role in FUSED:
        return None
    run: list[int] = []
    while fi + len(run) < len(fs) and fs[fi + len(run)].role in FUSED \
            and fs[fi + len(run)].role not in {fs[k].role for k in run}:
        run.append(fi + len(run))
    parts = [FUSED[fs[k].role] for k in run]
    window = list(range(oi, min(oi + sum(parts), len(os_))))
    f0 = fs[run[0]]

    def refuse(found: str) -> PortError:
        return PortError(
            f"{what} #{n}: {fl} {short(f0.name, 80)!r} {tuple(f0.shape)} fused ({FUSED[f0.role]} projections "
            f"along axis 0) paired with {FUSED[f0.role]} entries of {ol} of {FUSED[f0.role]} times fewer rows each",
            found,
            "port between the same attention layers (the same embedding size; biases on both sides or neither)",
        )

    links: list[tuple[int, tuple[int, ...], tuple[int, ...], list[Piece], list[int]]] = []
    taken: set[int] = set()
    for k, parts_k in zip(run, parts):
        f = fs[k]
        members = [m for m in window if m not in taken and len(os_[m].shape) == len(f.shape)][:parts_k]
        taken.update(members)
        rows = f.shape[0]
        if (len(members) < parts_k or rows is None or rows % parts_k
                or any(tuple(os_[m].shape) != (rows // parts_k, *f.shape[1:]) for m in members)):
            shown = ", ".join(f"{short(os_[m].name, 60)!r} {tuple(os_[m].shape)}" for m in window)
            raise refuse(f"{ol}: {shown or 'nothing'}")
        for m in (k, *members):
            e = (fs if m == k else os_)[m]
            if e.layout == NATIVE:
                shown = ", ".join(f"{short(os_[m].name, 60)!r} {tuple(os_[m].shape)}" for m in window)
                raise refuse(f"{ol}: {shown}; {short(e.name, 80)!r} is in its framework's native layout (a layer "
                             f"type without a canonical layout)")
        step = rows // parts_k
        if fs is src:  # one fused -> several
            links += [(m, _ints(os_[m].shape), (k,), [[(0, q * step, (q + 1) * step)]], [])
                      for q, m in enumerate(members)]
        else:  # several -> one fused
            links.append((k, _ints(f.shape), tuple(members), [[(q, 0, step)] for q in range(parts_k)], []))
    if taken != set(window):
        shown = ", ".join(f"{short(os_[m].name, 60)!r} {tuple(os_[m].shape)}" for m in window)
        raise refuse(f"{ol}: {shown}")
    end_f, end_o = run[-1] + 1, window[-1] + 1
    out = _links(links)
    return (out, end_f, end_o) if fs is src else (out, end_o, end_f)


def _ints(shape: tuple[int | None, ...]) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in shape)


def _split_name(e: Entry) -> tuple[str, str]:
    """``(prefix, child key)`` of ``prefix.key.role``."""
    parts = e.name.split(".")
    return (".".join(parts[:-2]), parts[-2]) if len(parts) >= 2 else ("", "")


def _stacked(side: Sequence[Entry], k: int) -> tuple[int, str] | None:
    """A stacked recurrent run at ``k``: ``(length, bias form)``; forms
    ``two`` (bias_ih, bias_hh), ``single``, ``stacked`` ((2, n)), ``none``."""
    if k + 1 >= len(side) or not _W_IH.fullmatch(side[k].role) or not _W_HH.fullmatch(side[k + 1].role):
        return None
    if k + 2 < len(side) and side[k + 2].rnn_bias in (BIAS_SINGLE, BIAS_STACKED):
        return 3, "single" if side[k + 2].rnn_bias == BIAS_SINGLE else "stacked"
    if _two_biases(side, k + 2):
        return 4, "two"
    return 2, "none"


def _group(side: Sequence[Entry], k: int) -> tuple[dict[tuple[str, str], int], list[GateGroup]] | None:
    """The entries of one gate group at ``k`` (``(child key, role) ->
    index``) and the groups whose keys they are exactly."""
    prefix, key = _split_name(side[k])
    if key not in _GATE_KEYS:
        return None
    cands = [g for g in GATE_GROUPS if key in g.weights or key in g.biases]
    keys = {c for g in cands for c in (*g.weights, *g.biases)}
    seen: dict[tuple[str, str], int] = {}
    m = k
    while m < len(side):
        p, c = _split_name(side[m])
        slot = (c, side[m].role)
        if p != prefix or c not in keys or slot in seen:
            break
        seen[slot] = m
        m += 1
    exact = [g for g in cands
             if set(seen) == {*((c, "weight") for c in g.weights), *((c, "bias") for c in g.biases)}]
    return seen, exact


def _gates(what: str, src: Sequence[Entry], dst: Sequence[Entry], i: int, j: int, src_label: str,
           dst_label: str, n: int) -> tuple[list[Link], int, int] | None:
    """A stacked recurrent run on one side against a gate group on the other;
    ``None`` where the other side is no gate group (one to one)."""
    run = _stacked(src, i)
    if run is not None:
        st, si, sl, gs, gi, gl = src, i, src_label, dst, j, dst_label
    else:
        run = _stacked(dst, j)
        if run is None:
            return None
        st, si, sl, gs, gi, gl = dst, j, dst_label, src, i, src_label
    found = _group(gs, gi)
    if found is None:
        return None
    seen, exact = found
    length, form = run
    w_ih, w_hh = st[si], st[si + 1]
    head = (f"{what} #{n}: {sl} {short(w_ih.name, 80)!r} {tuple(w_ih.shape)} (a stacked recurrent layer) paired "
            f"with the gates of {gl} {short(_split_name(gs[gi])[0] or 'the root', 80)!r}")
    fix = ("port between recurrent layers of the same kind and size (the coverage table lists the cells known); "
           "check=x verifies a port")
    listed = ", ".join(f"{short(gs[m].name, 60)!r} {tuple(gs[m].shape)}" for m in seen.values())
    if not exact:
        raise PortError(f"{head}: one cell's gate layers, as a known cell keeps them",
                        f"{gl}: {listed}", fix)
    if any(e.layout == NATIVE for e in (*st[si:si + length], *(gs[m] for m in seen.values()))):
        raise PortError(f"{head}: layouts known on both sides", "a value in its framework's native layout", fix)
    why = ""
    for g in exact:
        why = _gate_shapes(g, seen, gs, st[si:si + length], form)
        if not why:
            break
    else:
        raise PortError(f"{head}: shapes of a {exact[0].cell} of the same size", f"{why}; {gl}: {listed}", fix)
    to_group = st is src
    why = _inexact(g, form, to_group)
    if why:
        raise PortError(f"{head}: an exact mapping between a {g.cell} and {sl}'s {form} biases", why,
                        f"{fix}; no parameters were changed")
    plans = _gate_plans(g, seen, si, length, form, int(w_hh.shape[1]), to_group)  # type: ignore[arg-type]
    ends = (si + length, gi + len(seen))
    return _links(plans), *((ends[0], ends[1]) if to_group else (ends[1], ends[0]))


def _gate_shapes(g: GateGroup, seen: dict[tuple[str, str], int], gs: Sequence[Entry], st: Sequence[Entry],
                 form: str) -> str:
    """Empty when the shapes fit ``g``, else what differs."""
    h = st[1].shape[1]
    if h is None or st[1].shape[0] != g.gates * h:
        return f"{st[1].name!r} {tuple(st[1].shape)} is not {g.gates} gates of ({h}, {h})"
    inp = st[0].shape[1]
    if st[0].shape != (g.gates * h, inp):
        return f"{st[0].name!r} {tuple(st[0].shape)} is not ({g.gates * h}, in)"
    for c, (t, blocks) in g.weights.items():
        e = gs[seen[(c, "weight")]]
        if tuple(e.shape) != (len(blocks) * h, inp if t == "ih" else h):
            return f"{e.name!r} {tuple(e.shape)} is not ({len(blocks) * h}, {inp if t == 'ih' else h})"
    for c, blocks_b in g.biases.items():
        e = gs[seen[(c, "bias")]]
        if tuple(e.shape) != (len(blocks_b) * h,):
            return f"{e.name!r} {tuple(e.shape)} is not ({len(blocks_b) * h},)"
    biases = st[2:]
    want = {"two": [(g.gates * h,)] * 2, "single": [(g.gates * h,)], "stacked": [(2, g.gates * h)], "none": []}[form]
    if [tuple(b.shape) for b in biases] != want:
        return f"biases {[tuple(b.shape) for b in biases]} are not {want}"
    return ""


def _inexact(g: GateGroup, form: str, to_group: bool) -> str:
    """Empty where the biases map exactly in this direction, else why not."""
    held = {(t, b) for blocks in g.biases.values() for a_b in blocks for t, b in zip(("ih", "hh"), a_b)
            if b is not None}
    if to_group:
        need = {("ih", b) for b in range(g.gates)} if form == "single" else \
            set() if form == "none" else {(t, b) for t in ("ih", "hh") for b in range(g.gates)}
        missing = sorted(need - held)
        return (f"the {g.cell} keeps no bias for PyTorch's {', '.join(f'bias_{t} gate {b}' for t, b in missing)}"
                if missing else "")
    if form == "none" and g.biases:
        return f"the {g.cell}'s biases have no place in a recurrent layer without biases"
    if form == "single":
        apart = [b for blocks in g.biases.values() for a, b in blocks if a is None and b is not None]
        if apart:
            return f"the {g.cell} keeps gate {apart[0]}'s recurrent bias apart, and one bias cannot"
    return ""


def _gate_plans(g: GateGroup, seen: dict[tuple[str, str], int], si: int, length: int, form: str, h: int,
                to_group: bool) -> list[tuple[int, tuple[int, ...], tuple[int, ...], list[Piece], list[int]]]:
    gh = g.gates * h
    w_idx = {"ih": si, "hh": si + 1}
    # where each PyTorch gate block of weight_ih / weight_hh lives in the group
    w_home = {(t, b): (c, q) for c, (t, blocks) in g.weights.items() for q, b in enumerate(blocks)}
    # where each PyTorch bias block lives: (child, block) of a group bias; bias_ih first
    b_home: dict[tuple[str, int], tuple[str, int]] = {}
    for c, blocks_b in g.biases.items():
        for q, (a, b) in enumerate(blocks_b):
            if a is not None:
                b_home[("ih", a)] = (c, q)
            elif b is not None:
                b_home[("hh", b)] = (c, q)
    plans: list[tuple[int, tuple[int, ...], tuple[int, ...], list[Piece], list[int]]] = []
    if to_group:  # stacked (source) -> gate group (destination)
        bias_src = {"two": {"ih": (si + 2, 0), "hh": (si + 3, 0)}, "single": {"ih": (si + 2, 0)},
                    "stacked": {"ih": (si + 2, 0), "hh": (si + 2, gh)}, "none": {}}[form]
        for c, (t, blocks) in g.weights.items():
            k = seen[(c, "weight")]
            plans.append((k, (len(blocks) * h, -1), (w_idx[t],), [[(0, b * h, (b + 1) * h)] for b in blocks], []))
        for c, blocks_b in g.biases.items():
            k = seen[(c, "bias")]
            srcs: list[int] = []
            pieces: list[Piece] = []
            for a_b in blocks_b:
                terms: list[tuple[int, int, int]] = []
                for t, b in zip(("ih", "hh"), a_b):
                    if b is None or t not in bias_src:
                        continue
                    idx, off = bias_src[t]
                    if idx not in srcs:
                        srcs.append(idx)
                    terms.append((srcs.index(idx), off + b * h, off + (b + 1) * h))
                pieces.append(terms or h)
            flat = [srcs.index(si + 2)] if form == "stacked" and si + 2 in srcs else []
            plans.append((k, (len(blocks_b) * h,), tuple(srcs) or (w_idx["ih"],), pieces, flat))
        return plans
    # gate group (source) -> stacked (destination)
    for t in ("ih", "hh"):
        srcs = []
        pieces = []
        for b in range(g.gates):
            c, q = w_home[(t, b)]
            idx = seen[(c, "weight")]
            if idx not in srcs:
                srcs.append(idx)
            pieces.append([(srcs.index(idx), q * h, (q + 1) * h)])
        plans.append((w_idx[t], (gh, -1), tuple(srcs), pieces, []))

    def bias_pieces(t: str, srcs: list[int]) -> list[Piece]:
        out: list[Piece] = []
        for b in range(g.gates):
            home = b_home.get((t, b))
            if home is None:
                out.append(h)
                continue
            idx = seen[(home[0], "bias")]
            if idx not in srcs:
                srcs.append(idx)
            out.append([(srcs.index(idx), home[1] * h, (home[1] + 1) * h)])
        return out

    if form in ("two", "single"):
        for pos, t in enumerate(("ih", "hh")[: 2 if form == "two" else 1]):
            srcs = []
            pieces = bias_pieces(t, srcs)
            plans.append((si + 2 + pos, (gh,), tuple(srcs) or (seen[next(iter(seen))],), pieces, []))
    elif form == "stacked":
        srcs = []
        pieces = bias_pieces("ih", srcs) + bias_pieces("hh", srcs)
        plans.append((si + 2, (2, gh), tuple(srcs) or (seen[next(iter(seen))],), pieces, []))
    return plans
