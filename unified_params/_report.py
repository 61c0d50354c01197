"""``print(m)`` and ``m.summary()``: plain text always, rich where asked.

Plain text is the default so that doctests, logs and tests read the same
everywhere; ``Summary.rich()`` (also ``rich.print(summary)``) renders a rich
table and ``tree_rich(m)`` a rich tree, and ``show`` picks rich only when the
stream is a terminal and rich is installed. rich is imported lazily.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._block import Block

__all__ = ["Summary", "summarize", "tree_text", "tree_rich", "show"]

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
        count = _COLUMNS.index("count")
        line = lambda row: "  ".join(  # noqa: E731
            x.rjust(w) if i == count else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths))
        ).rstrip()
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
        from ._registry import require

        require("rich", "cli", "for Summary.rich()")
        from rich.table import Table

        table = Table(title=f"{self.backend} model", caption=str(self).splitlines()[-1])
        for col in _COLUMNS:
            table.add_column(col, justify="right" if col == "count" else "left")
        for row in self._cells():
            table.add_row(*row)
        return table

    def __rich__(self) -> Any:
        return self.rich()


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


def _tree(block: Block) -> list[tuple[int, str, str]]:
    """``(depth, label, detail)`` lines of the tree; a storage met again is
    marked with the name it was first met under (a tie)."""
    from ._layout import shape_to_canonical
    from ._tree import sorted_leaves

    handle = block._handle
    root = block._listing().node
    out = [(0, f"{block.backend} {root.type_name or type(root.native).__name__}", "")]
    first: dict[Any, str] = {}

    def walk(node: Any, depth: int, prefix: str) -> None:
        for leaf in sorted_leaves(node):
            shape = shape_to_canonical(handle.shape(leaf), leaf.layout)
            name = prefix + leaf.role
            tags = [] if leaf.kind == "param" else ["buffer"]
            if leaf.storage in first:
                tags.append(f"tied to {first[leaf.storage]}")
            else:
                first[leaf.storage] = name
            detail = f"{_fmt_shape(shape)} {handle.dtype(leaf)}" + (f" ({'; '.join(tags)})" if tags else "")
            out.append((depth, f"{leaf.role}:", detail))
        for child in node.children:
            out.append((depth, f"({child.key}):", child.type_name or type(child.native).__name__))
            walk(child, depth + 1, f"{prefix}{child.key}.")

    walk(root, 1, "")
    return out


def tree_text(block: Block) -> str:
    """The tree of blocks with their own parameters' names and shapes."""
    return "\n".join("  " * depth + (f"{label} {detail}" if detail else label) for depth, label, detail in _tree(block))


def tree_rich(block: Block) -> Any:
    """The same tree as a ``rich.tree.Tree``."""
    from rich.markup import escape
    from rich.tree import Tree

    lines = _tree(block)
    root = Tree(f"[bold]{escape(lines[0][1])}[/bold]")
    stack: list[Any] = [root]
    for depth, label, detail in lines[1:]:
        del stack[depth:]
        style = "cyan" if label.startswith("(") else "green"
        node = stack[-1].add(f"[{style}]{escape(label)}[/{style}] {escape(detail)}")
        stack.append(node)
    return root


def show(obj: Any, file: IO[str] | None = None, *, use_rich: bool | None = None) -> None:
    """Print a Block (its tree), a Summary or text: rich where ``file`` is a
    terminal and rich is installed (or ``use_rich=True``), plain otherwise."""
    from ._block import Block

    file = file if file is not None else sys.stdout
    if isinstance(obj, str):  # text as it is: rich would read "[...]" in it as markup
        print(obj, file=file)
        return
    if use_rich is None:
        use_rich = bool(getattr(file, "isatty", lambda: False)())
    if use_rich:
        try:
            from rich.console import Console
        except ImportError:
            use_rich = False
    if not use_rich:
        print(tree_text(obj) if isinstance(obj, Block) else str(obj), file=file)
        return
    Console(file=file).print(tree_rich(obj) if isinstance(obj, Block) else obj)
