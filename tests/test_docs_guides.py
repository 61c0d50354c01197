"""docs/test-authors.md does what it says: its ``python file=PATH`` blocks
are written into a fresh folder and each line of its ``bash run=DIR`` blocks
runs there (``pytest`` as this interpreter's), succeeding and printing what
follows ``# ->``. A block marked ``needs=FRAMEWORK`` runs where that
framework's backend is installed."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "test-authors.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def fenced() -> list[tuple[list[str], str]]:
    return [(m.group(1).split(), m.group(2)) for m in FENCE.finditer(PAGE.read_text(encoding="utf-8"))]


def option(words: list[str], key: str) -> str | None:
    return next((w.split("=", 1)[1] for w in words if w.startswith(f"{key}=")), None)


def commands() -> list[tuple[str, str | None, str, str | None]]:
    """``(folder, needed framework, command, expected text)`` of every command line."""
    out = []
    for words, code in fenced():
        if not words or words[0] != "bash" or option(words, "run") is None:
            continue
        for line in code.splitlines():
            cmd, _, comment = line.partition("#")
            if cmd.strip():
                expect = comment.split("->", 1)[1].strip() if "->" in comment else None
                out.append((option(words, "run") or "", option(words, "needs"), cmd.strip(), expect))
    return out


def test_page_has_files_and_commands() -> None:
    files = [option(w, "file") for w, _ in fenced() if w and w[0] == "python"]
    assert files and all(files), "every python block of test-authors.md is a file of a project"
    assert len(commands()) >= 8


def test_commands_do_what_the_page_says(tmp_path: Path) -> None:
    for words, code in fenced():
        name = option(words, "file")
        if words and words[0] == "python" and name:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(code, encoding="utf-8")
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    ran = 0
    for folder, needs, cmd, expect in commands():
        if needs and importlib.util.find_spec(needs) is None:
            continue  # this environment does not have the framework
        argv = shlex.split(cmd)
        assert argv[0] == "pytest", cmd
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv[1:]]
        done = subprocess.run(argv, cwd=tmp_path / folder, env=env, capture_output=True, text=True, timeout=600)
        where = f"`{cmd}` in {folder}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
        assert done.returncode == 0, where
        if expect:
            assert expect in done.stdout, where
        ran += 1
    if ran == 0:
        pytest.fail("no command ran")
