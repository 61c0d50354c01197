"""Pictures of parameters: one histogram per tensor and their norms, as a PNG.

Design constraints: matplotlib is optional (``pip install
'unified-params[plot]'``) and imported only when a picture is drawn; the
figure is drawn with the Agg canvas directly (no ``pyplot``: no global state,
no display needed). The input is plain ``{name: ndarray}`` so that a model's
state and any safetensors file are drawn the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._errors import FileFormatError, UnifiedParamsError

__all__ = ["plot_tensors", "as_real", "MAX_HISTOGRAMS"]

#: Histograms drawn at most; the norms panel always lists every tensor.
MAX_HISTOGRAMS = 16
_MAX_SAMPLES = 200_000


def _require_matplotlib() -> None:
    """matplotlib, or a ``BackendNotInstalledError`` (an ``ImportError``)
    naming ``pip install 'unified-params[plot]'``."""
    from ._registry import require

    require("matplotlib", "plot", "to draw parameters")


def as_real(name: str, a: object) -> np.ndarray:
    """``a`` as float64 values to draw: floats of any width (ml_dtypes'
    bfloat16 and float8 through float32, the cast they all define), integers
    and booleans; any other dtype (complex, strings, objects) is refused by
    name rather than drawn wrong."""
    arr = np.asarray(a)
    dt = arr.dtype
    if dt.kind in "fiub":
        return arr.astype(np.float64)
    if dt.kind == "V" and dt.itemsize <= 2 and dt.names is None:  # ml_dtypes' floats (bfloat16, float8_*)
        try:
            return arr.astype(np.float32).astype(np.float64)
        except (TypeError, ValueError):
            pass
    raise UnifiedParamsError(
        "tensors of real numbers to draw (floats of any width, bfloat16 and float8 included, integers, booleans)",
        f"{name!r} of dtype {dt} ({'complex' if dt.kind == 'c' else 'not a real number type'})",
        "draw the other tensors (or a real part) with plot_tensors, or inspect the file with unified-params inspect",
    )


def _sample(name: str, a: np.ndarray) -> np.ndarray:
    flat = as_real(name, a).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size > _MAX_SAMPLES:  # a strided sample keeps the picture fast for large tensors
        flat = flat[:: math.ceil(flat.size / _MAX_SAMPLES)]
    return flat


def plot_tensors(
    tensors: Mapping[str, np.ndarray],
    out: str | os.PathLike[str],
    *,
    title: str = "",
    dpi: int = 90,
) -> Path:
    """Draw a histogram of each tensor's values (the first
    :data:`MAX_HISTOGRAMS`) and a bar chart of every tensor's L2 norm; write
    a PNG to ``out``.

    >>> import numpy as np, tempfile, os                       # doctest: +SKIP
    >>> plot_tensors({"w": np.ones((2, 2))}, os.path.join(tempfile.mkdtemp(), "w.png"))  # doctest: +SKIP
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    target = Path(out)
    if target.suffix.lower() != ".png":
        raise UnifiedParamsError("an output path ending in .png", f"{str(target)!r}", "name the file e.g. params.png")
    if not target.parent.is_dir():
        raise UnifiedParamsError("an existing folder for the picture", f"{str(target.parent)!r} does not exist",
                                 "create it first")
    names = list(tensors)
    if not names:
        raise UnifiedParamsError("at least one tensor to draw", "an empty model or file", "check the input")
    for n in names:  # refuse what cannot be drawn before drawing (a 0-size slice: the dtype, no copy)
        as_real(n, np.asarray(tensors[n]).ravel()[:0])
    shown = names[:MAX_HISTOGRAMS]
    cols = len(shown) if len(shown) <= 4 else (3 if len(shown) in (5, 6, 9) else 4)  # few empty panels
    rows = math.ceil(len(shown) / cols)
    norm_height = 0.6 + 0.22 * len(names)
    fig = Figure(figsize=(3.0 * cols + 0.5, 2.3 * rows + norm_height + 0.8), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[2.3] * rows + [norm_height])
    for i, name in enumerate(shown):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        a = np.asarray(tensors[name])
        values = _sample(name, a)
        if values.size:
            lo, hi = float(values.min()), float(values.max())
            bins = int(np.clip(2 * np.sqrt(values.size), 5, 50)) if hi > lo else 1
            ax.hist(values, bins=bins, color="#3b75af", edgecolor="white", linewidth=0.3)
            stats = f"mean {values.mean():.3g}, std {values.std():.3g}"
        else:
            stats = "no finite values"
        shape = "x".join(str(d) for d in a.shape) or "scalar"
        ax.set_title(f"{name}  [{shape}]\n{stats}", fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(grid[rows, :])
    norms = [float(np.linalg.norm(as_real(n, tensors[n]).ravel())) for n in names]
    ypos = np.arange(len(names))
    ax.barh(ypos, norms, color="#e1812c")
    ax.set_yticks(ypos, labels=names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("L2 norm", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for y, v in enumerate(norms):
        ax.text(v, y, f" {v:.3g}", va="center", fontsize=7)
    ax.set_xlim(0, max(norms) * 1.15 if max(norms) > 0 else 1)
    more = f" (histograms of the first {len(shown)} of {len(names)})" if len(names) > len(shown) else ""
    fig.suptitle((title or "parameters") + more, fontsize=10)
    try:
        fig.savefig(target, format="png")
    except OSError as exc:
        raise FileFormatError(f"a PNG written to {str(target)!r}", f"{type(exc).__name__}: {exc.strerror or exc}",
                              "pick a path you can write (a file, not a folder) on a disk with free space") from exc
    return target
