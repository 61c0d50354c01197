"""docs/parameter-management.md runs on every installed backend, with the
same numbers.

Each ``python`` block of the page runs in order in one namespace, with the
first block's ``backend = "..."`` line pointed at the backend under test.
What a block prints is compared, number by number, with what the NumPy
reference backend prints for it (same seeds: same initial values, gradients
and losses); blocks fenced ``python no-compare`` run but print names or trees
that differ between frameworks. ``native-*`` blocks are the frameworks' own
code, shown beside, and are not run. One test id per backend.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("safetensors")

DOC = Path(__file__).resolve().parents[1] / "docs" / "parameter-management.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
BACKEND_LINE = re.compile(r'^backend = "[^"]*"', re.M)
# A number standing alone: not part of a name (layers_2, float32, 2.weight,
# cpu:0), so only values, shapes and counts are compared.
NUMBER = re.compile(r"(?<![\w.:/'\"-])-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]|\.\w)")


def blocks() -> list[tuple[str, str]]:
    """``(info, code)`` of every fenced block of the page, in order."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(DOC.read_text(encoding="utf-8"))]


def runnable() -> list[tuple[bool, str]]:
    """``(compared, code)`` of the blocks the test runs."""
    out = []
    for info, code in blocks():
        words = info.split()
        if not words or words[0] != "python" or any(w.startswith("native-") for w in words):
            continue
        out.append(("no-compare" not in words, code))
    return out


def run_page(backend: str) -> list[str]:
    """What each runnable block prints, on ``backend``."""
    steps = runnable()
    assert steps and BACKEND_LINE.search(steps[0][1]), "the first block chooses the backend"
    namespace: dict[str, object] = {"__name__": "parameter_management"}
    printed = []
    with np.printoptions():  # the page sets print options; leave the process as it was
        for i, (_, code) in enumerate(steps):
            if i == 0:
                code = BACKEND_LINE.sub(f"backend = {backend!r}", code, count=1)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(code, f"{DOC.name}, block {i}", "exec"), namespace)  # noqa: S102
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


@pytest.fixture(scope="module")
def reference() -> list[str]:
    return run_page("numpy")


def test_page_has_native_code_beside_unified_code() -> None:
    infos = [info for info, _ in blocks()]
    for fw in ("torch", "tensorflow", "jax", "mxnet"):
        assert any(f"native-{fw}" in i for i in infos), fw
    assert sum(1 for compared, _ in runnable() if compared) >= 12


def test_number_pattern_skips_names() -> None:
    assert numbers("layers_2.weight (8, 4) float32 cpu:0 '2.bias' [-0.1234  1e-05] 42.") == [
        "8", "4", "-0.1234", "1e-05", "42.",
    ]


def test_page_runs_with_the_same_numbers(up_backend: Any, reference: list[str]) -> None:
    """``up_backend``: the plugin's fixture, one test id per installed backend."""
    backend = up_backend.name
    printed = run_page(backend) if backend != "numpy" else reference
    for i, ((compared, code), got, want) in enumerate(zip(runnable(), printed, reference)):
        if not compared:
            continue
        g, w = numbers(got), numbers(want)
        where = f"block {i} on {backend}:\n{code}\n--- {backend} printed:\n{got}\n--- numpy printed:\n{want}"
        assert len(g) == len(w), f"a different count of numbers in {where}"
        bad = [(x, y) for x, y in zip(g, w) if not agree(x, y)]
        assert not bad, f"numbers differ {bad[:5]} in {where}"
    if backend == "numpy":
        assert all(numbers(p) for (compared, _), p in zip(runnable(), printed) if compared)
