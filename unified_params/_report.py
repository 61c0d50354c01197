"""``print(m)`` and ``m.summary()``: plain text always, rich where asked.

Plain text is the default so that doctests, logs and tests read the same
everywhere; ``Summary.rich()`` renders a rich table for a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._block import Block

__all__ = ["Summary", "summarize", "tree_text"]

_COLUMNS = ("name", "shape", "dtype", "count", "device", "tied_with")


def _fmt_shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass
class Summary:
    """Rows of ``(name, shape, dtype, count, device, tied_with)`` and totals.

    ``total`` counts each storage once; ``trainable`` likewise for trainable
    parameters; ``buffers`` the elements of non-trainable state.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    trainable: int = 0
    buffers: int = 0
    backend: str = ""

    def _cells(self) -> list[list[str]]:
        return [
            [
                r["name"],
                _fmt_shape(r["shape"]),
                r["dtype"],
                "?" if r["count"] is None else f"{r['count']:,}",
                r["device"],
                ", ".join(r["tied_with"]),
            ]
            for r in self.rows
        ]

    def __str__(self) -> str:
        cells = self._cells()
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(_COLUMNS)]
        line = lambda row: "  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()  # noqa: E731
        out = [line(list(_COLUMNS)), line(["-" * w for w in widths])]
        out += [line(row) for row in cells]
        out.append(
            f"total: {self.total:,} parameters in distinct storages "
            f"({self.trainable:,} trainable), buffers: {self.buffers:,} elements"
        )
        return "\n".join(out)

    __repr__ = __str__

    def rich(self) -> Any:
        """A ``rich.table.Table`` of the summary."""
        from rich.table import Table

        table = Table(*_COLUMNS, title=f"{self.backend} model", caption=str(self).splitlines()[-1])
        for row in self._cells():
            table.add_row(*row)
        return table


def summarize(block: Block) -> Summary:
    out = Summary(backend=block.backend)
    seen: set[Any] = set()
    for kind, params in (("param", block.params), ("buffer", block.buffers)):
        for name, p in params.items():
            count = p.size
            out.rows.append(
                {
                    "name": name,
                    "shape": p.shape,
                    "dtype": str(p.dtype),
                    "count": count,
                    "device": p.device,
                    "tied_with": list(p.tied_with),
                    "kind": kind,
                }
            )
            if p.storage in seen or count is None:
                continue
            seen.add(p.storage)
            if kind == "param":
                out.total += count
                out.trainable += count if p.trainable else 0
            else:
                out.buffers += count
    return out


def tree_text(block: Block) -> str:
    """The tree of blocks with their own parameters' names and shapes."""
    from ._block import _find, _sorted_leaves
    from ._layout import shape_to_canonical

    handle = block._handle
    root = _find(handle.tree(), block._path)
    lines = [f"{block.backend} {root.type_name or type(root.native).__name__}"]

    def walk(node: Any, indent: str) -> None:
        for leaf in _sorted_leaves(node):
            shape = shape_to_canonical(handle.shape(leaf), leaf.layout)
            tag = "" if leaf.kind == "param" else " (buffer)"
            lines.append(f"{indent}{leaf.role}: {_fmt_shape(shape)} {handle.dtype(leaf)}{tag}")
        for child in node.children:
            lines.append(f"{indent}({child.key}): {child.type_name or type(child.native).__name__}")
            walk(child, indent + "  ")

    walk(root, "  ")
    return "\n".join(lines)
