"""Write docs/reference.md from the docstrings of the public modules.

    python docs/gen_reference.py          # rewrite docs/reference.md
    python docs/gen_reference.py --check  # exit 1 if docs/reference.md is stale

Every name in ``__all__`` of ``unified_params`` and ``unified_params.init``
(and of ``unified_params.adapter`` where it exists) is listed with its
signature and docstring; classes with their public methods and properties;
errors with the builtins they also derive from; initializers with their
formula (``FORMULAS``, checked to cover every built-in). Only the standard
library and NumPy are imported, so the output is the same in every
environment.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reference.md"
MODULES = ("unified_params", "unified_params.init", "unified_params.adapter")

#: The formula of each built-in initializer, in canonical shapes
#: (``fan_in = shape[1] * prod(shape[2:])``, ``fan_out = shape[0] * prod(shape[2:])``;
#: for 1-D shapes both are ``shape[0]``).
FORMULAS = {
    "Zeros": "`w = 0`",
    "Ones": "`w = 1`",
    "Constant": "`w = value`",
    "Normal": "`w ~ N(mean, std²)`",
    "Uniform": "`w ~ U(low, high)`",
    "XavierUniform": "`w ~ U(-a, a)`, `a = gain · sqrt(6 / (fan_in + fan_out))`",
    "XavierNormal": "`w ~ N(0, std²)`, `std = gain · sqrt(2 / (fan_in + fan_out))`",
    "KaimingUniform": "`w ~ U(-b, b)`, `b = gain · sqrt(3 / fan)`, `gain = calculate_gain(nonlinearity, a)`, "
    "`fan` = `fan_in` or `fan_out` (`mode`)",
    "KaimingNormal": "`w ~ N(0, std²)`, `std = gain / sqrt(fan)`, `gain = calculate_gain(nonlinearity, a)`, "
    "`fan` = `fan_in` or `fan_out` (`mode`)",
    "TruncatedNormal": "`w ~ N(mean, std²)` restricted to `[a, b]` (absolute bounds; redrawn until inside)",
    "Orthogonal": "`w = gain · Q`, `Q` from the QR decomposition of a `N(0, 1)` draw of shape "
    "`(shape[0], prod(shape[1:]))` (sign-corrected), reshaped to `shape`",
}


def _stable_repr(obj: object) -> str:
    """``repr`` with sets sorted: a set's order follows string hashes, which
    change between processes, and the page must not."""
    if isinstance(obj, (set, frozenset)):
        items = ", ".join(repr(x) for x in sorted(obj, key=repr))
        return f"{type(obj).__name__}({{{items}}})" if obj else f"{type(obj).__name__}()"
    return repr(obj)


def _md(doc: str) -> str:
    """A docstring as Markdown: doctest lines fenced as ``pycon``, numpydoc
    section underlines dropped."""
    out: list[str] = []
    lines = doc.strip().splitlines()
    in_code = False
    for i, line in enumerate(lines):
        if line.startswith(">>>") and not in_code:
            out.append("```pycon")
            in_code = True
        elif in_code and not line.strip():
            out.append("```")
            in_code = False
        if not in_code and set(line.strip()) == {"-"} and i and lines[i - 1].strip():
            out[-1] = f"**{out[-1].strip()}**"
            continue
        out.append(line)
    if in_code:
        out.append("```")
    return "\n".join(out)


def _doc(obj: Any) -> str:
    return _md(inspect.getdoc(obj) or "")


def _own_doc(cls: type, name: str) -> str:
    """The docstring a member defines, not one inherited from ``object``."""
    member = inspect.getattr_static(cls, name)
    fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
    doc = getattr(fn, "__doc__", None)
    return _md(inspect.cleandoc(doc)) if doc else ""


def _annotation(a: Any) -> str:
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _signature(obj: Any) -> str:
    """``(a: int, b: str = 'x') -> T``, annotations as written in the source."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = []
    star = False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        star = star or p.kind is p.VAR_POSITIONAL
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {_stable_repr(p.default)}" if p.annotation is not p.empty else f"={_stable_repr(p.default)}"
        params.append(text)
    out = f"({', '.join(params)})"
    ret = sig.return_annotation
    if ret is not sig.empty and not (inspect.isclass(obj) and _annotation(ret) == "None"):
        out += f" -> {_annotation(ret)}"
    return out


def _members(cls: type) -> list[str]:
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in ("__call__", "__getitem__", "__setitem__"):
            continue
        if isinstance(member, (property, staticmethod, classmethod)) or inspect.isfunction(member):
            out.append(name)
    return out


def _class(lines: list[str], qual: str, cls: type) -> None:
    bases = [b.__name__ for b in cls.__bases__ if b is not object]
    init_sig = "" if issubclass(cls, BaseException) else _signature(cls)
    lines += [f"### `{qual}{init_sig}`", ""]
    if bases:
        lines += [f"*Derives from* {', '.join(f'`{b}`' for b in bases)}.", ""]
    if _doc(cls):
        lines += [_doc(cls), ""]
    if dataclasses.is_dataclass(cls):
        fields = ", ".join(f"`{f.name}`" for f in dataclasses.fields(cls))
        lines += [f"Fields: {fields}.", ""]
    short = qual.rsplit(".", 1)[-1]
    for name in _members(cls):
        member = inspect.getattr_static(cls, name)
        if isinstance(member, property):
            head = f"#### `{short}.{name}`" + (" (property, settable)" if member.fset is not None else " (property)")
        else:
            sig = _signature(getattr(cls, name)).replace("(self, ", "(").replace("(self)", "()")
            head = f"#### `{short}.{name}{sig}`"
        doc = _own_doc(cls, name)
        lines += [head, ""] + ([doc, ""] if doc else [])


def _function(lines: list[str], qual: str, fn: Any) -> None:
    lines += [f"### `{qual}{_signature(fn)}`", ""]
    if _doc(fn):
        lines += [_doc(fn), ""]


def _module(lines: list[str], modname: str) -> None:
    mod = importlib.import_module(modname)
    names = list(getattr(mod, "__all__", []))
    lines += [f"## `{modname}`", ""]
    if _doc(mod):
        lines += [_doc(mod), ""]
    if modname == "unified_params.init":
        lines += _initializer_table(mod, names)
    for name in names:
        obj = getattr(mod, name)
        qual = f"{modname.replace('unified_params', 'up')}.{name}"
        if inspect.ismodule(obj):
            lines += [f"### `{qual}`", "", f"The module `{obj.__name__}`: see its section.", ""]
        elif inspect.isclass(obj):
            _class(lines, qual, obj)
        elif callable(obj):
            _function(lines, qual, obj)
        else:
            lines += [f"### `{qual} = {_stable_repr(obj)}`", ""]
            comment = _constant_comment(mod, name)
            if comment:
                lines += [comment, ""]


def _constant_comment(mod: Any, name: str) -> str:
    """The ``#:`` comment above a module constant."""
    try:
        src = inspect.getsource(mod).splitlines()
    except OSError:
        return ""
    for i, line in enumerate(src):
        if line.startswith(f"{name} ="):
            out = []
            j = i - 1
            while j >= 0 and src[j].startswith("#:"):
                out.insert(0, src[j][2:].strip())
                j -= 1
            return " ".join(out)
    return ""


def initializers(mod: Any, names: list[str]) -> list[str]:
    base = mod.Initializer
    return [n for n in names if inspect.isclass(getattr(mod, n)) and issubclass(getattr(mod, n), base)
            and getattr(mod, n) is not base]


def _initializer_table(mod: Any, names: list[str]) -> list[str]:
    rows = ["| initializer | formula |", "|---|---|"]
    for n in initializers(mod, names):
        rows.append(f"| `{n}{_signature(getattr(mod, n))}` | {FORMULAS[n]} |")
    return [
        "Every built-in, with the values it draws for a storage of canonical shape `shape`:",
        "",
        *rows,
        "",
    ]


def render() -> str:
    lines = [
        "# API reference",
        "",
        "<!-- Generated by `python docs/gen_reference.py` from the docstrings: do not edit by hand. -->",
        "",
        "Every public name of `unified_params` (imported as `up`) and `unified_params.init`,",
        "generated from the docstrings (`python docs/gen_reference.py`; `tests/test_reference.py`",
        "fails when this page is stale). The guides show them at work:",
        "[parameter-management.md](parameter-management.md), [library-authors.md](library-authors.md),",
        "[test-authors.md](test-authors.md).",
        "",
    ]
    for modname in MODULES:
        try:
            importlib.import_module(modname)
        except ImportError:
            continue
        _module(lines, modname)
    while lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    text = render()
    if "--check" in argv:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python docs/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
