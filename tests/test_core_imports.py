"""`import unified_params` and wrapping a NumPy model import no framework."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "mxnet", "safetensors", "rich", "tqdm",
              "matplotlib")


def test_import_pulls_in_no_framework() -> None:
    code = (
        "import sys\n"
        "import unified_params as up\n"
        "from unified_params import reference as ref\n"
        "m = up.wrap(ref.Sequential(ref.Dense(8, in_units=4), ref.ReLU(), ref.Dense(1)))\n"
        "m.materialize([[1.0, 2.0, 3.0, 4.0]])\n"
        "m.initialize(up.init.Normal(), seed=0); m.state(); print(m); m.summary()\n"
        "from unified_params._registry import names; names()\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {FRAMEWORKS!r})\n"
        "print('LOADED', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out, out[-2000:]


def test_core_uses_no_numpy2_only_api() -> None:
    """The core must import under NumPy 1.23 (MXNet's): no NumPy-2-only names."""
    import pathlib

    import unified_params

    root = pathlib.Path(unified_params.__file__).parent
    banned = ("np.bool(", "np.long(", "np.isdtype", "np.unstack", "np.astype(", "np.matrix_transpose",
              "np.concat(", "np.permute_dims", "np.pow(", "np.trapezoid")
    for f in root.rglob("*.py"):
        text = f.read_text()
        for word in banned:
            assert word not in text, f"{f}: {word}"
