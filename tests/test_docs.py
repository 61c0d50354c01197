"""Every ``python`` block of ``docs/*.md`` runs: the unified code on every
installed backend with the same printed numbers, each framework's native
code in the environment that has the framework.

How a block is marked (the words after ``python`` on its opening fence):

* ``python``: unified code. A page's unified blocks run in order in one
  namespace, once per installed backend, the first block's
  ``backend = "..."`` line pointed at the backend under test. What each block
  prints is compared, number by number, with what the NumPy reference backend
  prints for it (same seeds: same values, gradients and losses).
* ``python no-compare``: unified code that runs on every backend but prints
  names or trees that differ between frameworks.
* ``python native-FW`` (``torch``, ``keras``, ``linen``, ``nnx``, ``gluon``):
  the framework's own code. A page's blocks of one framework run in order in
  one fresh interpreter, in an empty working directory, as a reader pasting
  them would.
* ``python file=NAME``: a file of a small project (``docs/test-authors.md``);
  ``tests/test_docs_guides.py`` writes and runs it.

A ``python`` block with any other word is an error: nothing in ``docs/`` goes
unrun.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors  # noqa: F401 - a test dependency: missing is a failure

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
BACKEND_LINE = re.compile(r'^backend = "[^"]*"', re.M)
# A number standing alone: not part of a name (layers_2, float32, 2.weight,
# cpu:0), so only values, shapes and counts are compared.
NUMBER = re.compile(r"(?<![\w.:/'\"-])-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]|\.\w)")
#: native block marker -> the modules its environment must have.
FRAMEWORKS = {
    "torch": ("torch",),
    "keras": ("keras", "tensorflow"),
    "linen": ("flax", "jax"),
    "nnx": ("flax", "jax"),
    "gluon": ("mxnet",),
}
CHAPTER = DOCS / "parameter-management.md"


def blocks(page: Path) -> list[tuple[list[str], str]]:
    """``(words after the language, code)`` of every ``python`` block of ``page``."""
    out = []
    for m in FENCE.finditer(page.read_text(encoding="utf-8")):
        words = m.group(1).split()
        if words and words[0] == "python":
            out.append((words[1:], m.group(2)))
    return out


def pages() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if blocks(p))


def unified(page: Path) -> list[tuple[bool, str]]:
    """``(compared, code)`` of the unified blocks of ``page``."""
    return [(words != ["no-compare"], code) for words, code in blocks(page) if not words or words == ["no-compare"]]


def native(page: Path, framework: str) -> list[str]:
    return [code for words, code in blocks(page) if words == [f"native-{framework}"]]


def run_unified(page: Path, backend: str) -> list[str]:
    """What each unified block of ``page`` prints, on ``backend``."""
    steps = unified(page)
    assert steps and BACKEND_LINE.search(steps[0][1]), f"{page.name}: the first block chooses the backend"
    namespace: dict[str, object] = {"__name__": page.stem.replace("-", "_")}
    printed = []
    with np.printoptions():  # the page sets print options; leave the process as it was
        for i, (_, code) in enumerate(steps):
            if i == 0:
                code = BACKEND_LINE.sub(f"backend = {backend!r}", code, count=1)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(code, f"{page.name}, block {i}", "exec"), namespace)  # noqa: S102
            printed.append(buf.getvalue())
    return printed


def numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


def agree(got: str, want: str) -> bool:
    """Equal to float32 precision, or to one unit of the last printed digit."""
    a, b = float(got), float(want)
    decimals = len(want.split(".")[1]) if "." in want and "e" not in want.lower() else 0
    tol = max(1e-5 * abs(b), 1e-6, 1.01 * 10.0**-decimals if decimals else 0.0)
    return abs(a - b) <= tol


_reference: dict[Path, list[str]] = {}


def reference(page: Path) -> list[str]:
    if page not in _reference:
        _reference[page] = run_unified(page, "numpy")
    return _reference[page]


UNIFIED_PAGES = [p for p in pages() if unified(p)]


def test_every_python_block_is_marked() -> None:
    known = {(), ("no-compare",), *((f"native-{fw}",) for fw in FRAMEWORKS)}
    for page in pages():
        for words, code in blocks(page):
            ok = tuple(words) in known or (len(words) == 1 and words[0].startswith("file="))
            assert ok, f"{page.name}: unknown block marker {words!r} on\n{code}"


def test_chapter_has_native_code_for_every_framework() -> None:
    for fw in FRAMEWORKS:
        assert len(native(CHAPTER, fw)) >= 15, fw
    assert sum(1 for compared, _ in unified(CHAPTER) if compared) >= 15


def test_number_pattern_skips_names() -> None:
    assert numbers("layers_2.weight (8, 4) float32 cpu:0 '2.bias' [-0.1234  1e-05] 42.") == [
        "8", "4", "-0.1234", "1e-05", "42.",
    ]


@pytest.mark.parametrize("page", UNIFIED_PAGES, ids=lambda p: p.stem)
def test_unified_code_prints_the_same_numbers(page: Path, up_backend: Any) -> None:
    """``up_backend``: the plugin's fixture, one test id per installed backend."""
    backend = up_backend.name
    want_all = reference(page)
    printed = run_unified(page, backend) if backend != "numpy" else want_all
    for i, ((compared, code), got, want) in enumerate(zip(unified(page), printed, want_all)):
        if not compared:
            continue
        g, w = numbers(got), numbers(want)
        where = (f"{page.name} block {i} on {backend}:\n{code}\n--- {backend} printed:\n{got}\n"
                 f"--- numpy printed:\n{want}")
        assert len(g) == len(w), f"a different count of numbers in {where}"
        bad = [(x, y) for x, y in zip(g, w) if not agree(x, y)]
        assert not bad, f"numbers differ {bad[:5]} in {where}"
    if backend == "numpy":
        assert all(numbers(p) for (compared, _), p in zip(unified(page), printed) if compared and p.strip())


# The driver a fresh interpreter runs: every block in order in one namespace,
# naming the block that fails.
DRIVER = """
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
for i, code in enumerate(blocks):
    print(f"--- block {i}", flush=True)
    try:
        exec(compile(code, f"{sys.argv[2]}, native block {i}", "exec"), ns)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED in block {i}:\\n{code}", file=sys.stderr)
        sys.exit(1)
"""

NATIVE = [(p, fw) for p in pages() for fw in FRAMEWORKS if native(p, fw)]


def run_native(page: Path, framework: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    for mod in FRAMEWORKS[framework]:
        pytest.importorskip(mod)  # this environment does not have the framework
    (cwd / "blocks.json").write_text(json.dumps(native(page, framework)), encoding="utf-8")
    (cwd / "driver.py").write_text(DRIVER, encoding="utf-8")
    path = [str(DOCS.parent), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), MPLBACKEND="Agg")
    run_dir = cwd / "work"
    run_dir.mkdir()
    return subprocess.run(
        [sys.executable, str(cwd / "driver.py"), str(cwd / "blocks.json"), page.name],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.parametrize(("page", "framework"), NATIVE, ids=[f"{p.stem}-{fw}" for p, fw in NATIVE])
def test_native_code_runs_in_order(page: Path, framework: str, tmp_path: Path) -> None:
    done = run_native(page, framework, tmp_path)
    assert done.returncode == 0, f"{page.name} native-{framework}:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
