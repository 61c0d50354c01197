"""The README stays a two-minute read whose example runs, and every page
links only to files of this repository."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_short() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) < 150


def test_readme_names_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "python -m unified_params tour" in text
    assert "bash .ci/run" in text


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors  # noqa: F401 - a test dependency: missing is a failure
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    assert len(blocks) == 1 and len(blocks[0].strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    assert out.getvalue().startswith("(8, 4)")
    assert (tmp_path / "mlp.safetensors").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_stay_in_the_repository(page: Path) -> None:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        assert "://" not in target and not target.startswith("mailto:"), f"{page.name} links outside: {target}"
        path = target.split("#")[0]
        if path:
            assert (page.parent / path).exists(), f"{page.name} links to a missing file: {target}"
