"""``check=``: outputs compared after a port or a load (contract 12.3).

Design constraints: a pairing by order and shape can be right in shape and
wrong in meaning (a channels-first flatten feeding a dense layer, same-shaped
layers in another order); running the models is the only test of meaning.
The comparison runs inside the write's transaction (``write_atomic``'s
``verify``), so a mismatch restores every value before the PortError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import ArgumentError, PortError

if TYPE_CHECKING:
    from ._block import Block

__all__ = ["outputs_agree", "output_matches", "RTOL", "ATOL"]

#: float32 tolerance: two frameworks differ in summation order, not more.
RTOL, ATOL = 1e-4, 1e-5

_FIX = ("the pairs match by order and shape but not by meaning: print the report to see them; for a "
        "flatten between a convolution and a dense layer, permute that dense weight's input columns "
        "(docs/library-authors.md), or load by name")


def _flat(y: Any) -> list[np.ndarray]:
    from . import asnumpy

    if isinstance(y, (tuple, list)):
        return [a for item in y for a in _flat(item)]
    if isinstance(y, dict):
        return [a for k in sorted(y) for a in _flat(y[k])]
    return [np.asarray(asnumpy(y), dtype=np.float64)]


def _compare(got: Any, want: Any, what: str, rtol: float, atol: float) -> None:
    a, b = _flat(got), _flat(want)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise PortError(
            f"outputs of the same structure {what}",
            f"shapes {[x.shape for x in a]} and {[y.shape for y in b]}",
            "pass inputs each model accepts: check=(x_source, x_destination)",
        )
    for i, (x, y) in enumerate(zip(a, b)):
        if not np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
            diff = np.abs(x - y)
            where = np.unravel_index(int(np.nanargmax(diff)), diff.shape) if diff.size else ()
            raise PortError(
                f"equal outputs {what} (rtol={rtol}, atol={atol})",
                f"max |dy| = {float(np.nanmax(diff)):.3g} at output {i} index {tuple(int(j) for j in where)}",
                _FIX,
            )


def outputs_agree(src: Block, dst: Block, check: Any, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Run both models on ``check`` (one input, or ``(x_src, x_dst)`` when
    their layouts differ) and raise PortError when the outputs differ."""
    x_src, x_dst = check if isinstance(check, tuple) and len(check) == 2 else (check, check)
    _compare(dst(x_dst), src(x_src), f"of the {src.backend} source and the {dst.backend} destination", rtol, atol)


def output_matches(block: Block, check: Any, rtol: float = RTOL, atol: float = ATOL) -> None:
    """``check=(x, expected)``: the loaded model's output on ``x`` must be
    ``expected`` (the output the file's model gave)."""
    if not (isinstance(check, tuple) and len(check) == 2):
        raise ArgumentError(
            "check=(x, expected_output) for a load: an input and the output the saved model gave for it",
            f"check of type {type(check).__name__}",
            "save y = model(x) beside the file and pass check=(x, y)",
        )
    x, expected = check
    _compare(block(x), expected, "to the expected output after the load", rtol, atol)
