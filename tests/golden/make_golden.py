"""Write the golden files that let backends which cannot share a process
(MXNet needs NumPy < 1.24) meet every other backend.

For each zoo architecture the writer backend supports, the model is seeded
(``kit.seed_model`` with the writer's own seed, so every writer's files
differ) and saved with ``up.save`` to ``<writer>/<arch>.safetensors``; the
fixed canonical input and the writer's own forward output go to
``<writer>/expected.safetensors`` (keys ``<arch>.input``, ``<arch>.output``;
metadata: writer, framework version, seed). ``tests/test_golden.py`` loads
every file into every installed backend's zoo and checks the outputs.

Regenerate (one environment per writer)::

    /tmp/venv-mx/bin/python tests/golden/make_golden.py --backend mxnet
    /tmp/venv-main/bin/python tests/golden/make_golden.py --backend torch --backend numpy \\
        --backend tensorflow --backend jax --backend jax-nnx

Changing the files is a deliberate act: the seeded values in them are the
core's initialization recipe, and ``test_golden.py`` holds them to it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import unified_params as up

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kit  # noqa: E402  (a sibling module, not a package)

#: One seed per writer, so that no two writers' files hold the same values.
SEEDS = {"numpy": 101, "torch": 102, "tensorflow": 103, "jax": 104, "jax-nnx": 105, "mxnet": 106}


def _same(a: Path, b: Path) -> bool:
    """Equal tensors and metadata (safetensors writes its metadata in no
    fixed order, so equal files may differ in bytes)."""
    from safetensors import safe_open

    if not b.exists():
        return False
    with safe_open(str(a), framework="numpy") as fa, safe_open(str(b), framework="numpy") as fb:
        if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
            return False
        return all(np.array_equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())  # noqa: SIM118


def _keep_or_replace(tmp: Path, target: Path) -> Path:
    """Replace ``target`` only when the content changed, so regenerating
    leaves git clean."""
    if _same(tmp, target):
        tmp.unlink()
    else:
        tmp.replace(target)
    return target


def write(backend: str, folder: Path = kit.GOLDEN) -> list[Path]:
    """Write ``backend``'s golden files; return their paths."""
    from safetensors.numpy import save_file

    from unified_params._registry import get_backend

    seed = SEEDS[backend]
    out = folder / backend
    out.mkdir(exist_ok=True)
    expected: dict[str, np.ndarray] = {}
    written = []
    for arch in kit.ARCHS:
        if not kit.supports(backend, arch):
            continue
        m = kit.build(backend, arch)
        kit.seed_model(m, seed)
        tmp = up.save(m, out / f".{arch}.new.safetensors")
        written.append(_keep_or_replace(tmp, out / f"{arch}.safetensors"))
        x = kit.canonical_input(arch)
        expected[f"{arch}.input"] = x
        expected[f"{arch}.output"] = kit.forward(backend, m, arch, x)
    meta = {
        "writer": backend,
        "framework": get_backend(backend).version(),
        "unified_params": up.__version__,
        "seed": str(seed),
    }
    save_file(expected, str(out / ".expected.new.safetensors"), metadata=meta)
    written.append(_keep_or_replace(out / ".expected.new.safetensors", out / "expected.safetensors"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", required=True, choices=sorted(SEEDS),
                        help="writer backend (repeatable); it must be installed in this environment")
    args = parser.parse_args(argv)
    for backend in args.backend:
        for p in write(backend):
            print(f"{p.relative_to(kit.GOLDEN)}  {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
