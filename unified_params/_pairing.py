"""Pairing by order and canonical shape: the one rule of ``up.port`` and
``up.load(match='order')``.

Design constraints: both sides are lists of :class:`Entry` in model order
(distinct storages). Pairs are one-to-one, except recurrent biases, which
PyTorch keeps as two (``bias_ih``, ``bias_hh``) where Keras keeps one
(``BIAS_SINGLE``: ported into ``bias_ih`` with ``bias_hh`` zero, the two
summed the other way) or both stacked (``BIAS_STACKED``). A ``native``
value (a layer type whose canonical layout is not known) is never paired
with a converted one. Every check runs before any value is read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._errors import PortError
from ._format import short
from ._layout import NATIVE
from ._layout_table import BIAS_SINGLE

#: Roles of PyTorch's (and Gluon's) two recurrent biases, in their order.
_BIAS_IH = re.compile(r"(bias_ih(_l\d+)?(_reverse)?|(.*_)?i2h_bias)")
_BIAS_HH = re.compile(r"(bias_hh(_l\d+)?(_reverse)?|(.*_)?h2h_bias)")


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int | None, ...]
    layout: str = "canonical"
    role: str = ""
    rnn_bias: str = ""


@dataclass(frozen=True)
class Link:
    """``src`` indices feed ``dst`` indices; ``how``: ``copy`` (1:1),
    ``split`` (one bias -> bias_ih, zero bias_hh), ``sum`` (bias_ih +
    bias_hh -> one), ``unstack`` ((2, n) -> two), ``stack`` (two -> (2, n))."""

    src: tuple[int, ...]
    dst: tuple[int, ...]
    how: str = "copy"


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

    if len(src) != len(dst) and not any(e.rnn_bias for e in (*src, *dst)):
        raise count_error(min(len(src), len(dst)), min(len(src), len(dst)))
    links: list[Link] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        s, d = src[i], dst[j]
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


def combine(how: str, values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The destination values of one link from its source values."""
    if how == "copy":
        return [values[0]]
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
