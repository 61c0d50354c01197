"""Every script of examples/ runs, in the environments that have its
frameworks. A script whose header says ``# runs on: every backend`` runs
once per installed backend (``--backend NAME``) and must print the same
numbers as on the NumPy reference backend; one that says ``# needs: a b``
runs where modules ``a`` and ``b`` import. No script may print ``False``
(each prints its checks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from unified_params.testing import load_script

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _docs_test() -> Any:
    return load_script(ROOT / "tests" / "test_docs.py", "docs_test")


def header(script: Path, key: str) -> str | None:
    m = re.search(rf"^# {key}:(.*)$", script.read_text(encoding="utf-8"), re.M)
    return m.group(1).strip() if m else None


def run(script: Path, *args: str, cwd: Path) -> str:
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{script.name} {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-4000:]}"
    assert "False" not in done.stdout, f"{script.name} {' '.join(args)} printed a failed check:\n{done.stdout}"
    return done.stdout


EVERY = [s for s in EXAMPLES if header(s, "runs on") == "every backend"]
NEEDS = [s for s in EXAMPLES if header(s, "needs")]


def test_every_example_says_where_it_runs() -> None:
    assert EXAMPLES
    for script in EXAMPLES:
        assert (script in EVERY) != (script in NEEDS), f"{script.name}: one of '# runs on:' or '# needs:'"
    readme = (ROOT / "examples" / "README.md").read_text(encoding="utf-8")
    for script in EXAMPLES:
        assert script.name in readme, f"examples/README.md does not list {script.name}"


_numpy_output: dict[Path, str] = {}


@pytest.mark.parametrize("script", EVERY, ids=lambda s: s.stem)
def test_example_prints_the_same_numbers_on_every_backend(script: Path, up_backend: Any, tmp_path: Path) -> None:
    docs = _docs_test()
    if script not in _numpy_output:
        _numpy_output[script] = run(script, "--backend", "numpy", cwd=tmp_path)
    got = run(script, "--backend", up_backend.name, cwd=tmp_path)
    want = _numpy_output[script]
    g, w = docs.numbers(got), docs.numbers(want)
    assert g and len(g) == len(w), f"{script.name} on {up_backend.name}:\n{got}\n--- numpy:\n{want}"
    bad = [(x, y) for x, y in zip(g, w) if not docs.agree(x, y)]
    assert not bad, f"{script.name} on {up_backend.name}: {bad[:5]}\n{got}\n--- numpy:\n{want}"


@pytest.mark.parametrize("script", NEEDS, ids=lambda s: s.stem)
def test_example_runs_where_its_frameworks_are(script: Path, tmp_path: Path) -> None:
    for module in (header(script, "needs") or "").split():
        pytest.importorskip(module)  # this environment does not have the framework
    assert run(script, cwd=tmp_path).strip()
