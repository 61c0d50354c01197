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

from ._errors import UnifiedParamsError

__all__ = ["plot_tensors", "MAX_HISTOGRAMS"]

#: Histograms drawn at most; the norms panel always lists every tensor.
MAX_HISTOGRAMS = 16
_MAX_SAMPLES = 200_000


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UnifiedParamsError(
            "matplotlib, to draw parameters",
            "it is not installed",
            "install the plot extra: pip install 'unified-params[plot]'",
        ) from None


def _sample(a: np.ndarray) -> np.ndarray:
    flat = np.asarray(a, dtype=np.float64).ravel()
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
        values = _sample(a)
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
    norms = [float(np.linalg.norm(np.asarray(tensors[n], dtype=np.float64).ravel())) for n in names]
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
    fig.savefig(target, format="png")
    return target
