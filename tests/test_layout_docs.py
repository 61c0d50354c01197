"""docs/layouts.md and the README's coverage table are what
docs/gen_layouts.py writes from the layout table (contract 3.3: the table
is the one source; a row added there must show in the docs)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from unified_params import _layout_table as T
from unified_params.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


def _generator() -> ModuleType:
    return load_script(ROOT / "docs" / "gen_layouts.py", "gen_layouts")


def test_layout_docs_are_current() -> None:
    gen = _generator()
    assert (ROOT / "docs" / "layouts.md").read_text(encoding="utf-8") == gen.render(), (
        "docs/layouts.md is stale: run python docs/gen_layouts.py")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert gen.readme(readme) == readme, "the README's coverage table is stale: run python docs/gen_layouts.py"


def test_every_rule_is_in_the_docs() -> None:
    text = (ROOT / "docs" / "layouts.md").read_text(encoding="utf-8")
    for r in T.RULES:
        assert f"| {r.framework} | `{r.layer}` | `{r.var}` |" in text, r


def test_kinds_name_layers_of_the_table() -> None:
    for _, per in T.KINDS:
        for fw in ("keras", "flax"):
            for layer in per.get(fw) or ():
                assert any(r.framework == fw and r.layer == layer for r in T.RULES), (fw, layer)
