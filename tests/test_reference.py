"""docs/reference.md is what docs/gen_reference.py writes from the current
docstrings, and it covers every public name and every initializer."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType

import unified_params as up
import unified_params.init as up_init
from unified_params.testing import load_script

ROOT = Path(__file__).resolve().parents[1]


def generator() -> ModuleType:
    return load_script(ROOT / "docs" / "gen_reference.py", "gen_reference")


def test_reference_is_current() -> None:
    committed = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == generator().render(), (
        "docs/reference.md is stale: a docstring or a public name changed. Run: python docs/gen_reference.py"
    )


def test_every_public_name_has_a_section() -> None:
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    for name in up.__all__:
        assert f"### `up.{name}" in text, name
    for name in up_init.__all__:
        assert f"### `up.init.{name}" in text, name


def test_every_initializer_has_a_formula() -> None:
    gen = generator()
    builtins = gen.initializers(up_init, list(up_init.__all__))
    assert {"Normal", "XavierUniform", "Orthogonal"} <= set(builtins)
    for name in builtins:
        assert name in gen.FORMULAS, f"add the formula of up.init.{name} to docs/gen_reference.py FORMULAS"
        assert inspect.isclass(getattr(up_init, name))
    assert set(gen.FORMULAS) <= set(builtins), "a formula for an initializer that is gone"
