"""The one error boundary between the core and an adapter (contract 10).

Design constraints: every call into a Handle goes through one of the two
context managers here, so no public call ends in a bare framework traceback.
A forward, backward or materialize failure is the user's input most of the
time (``ForwardError`` naming the block and the input); any other adapter
failure is reported as the adapter's, with the framework's exception chained.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._errors import ForwardError, UnifiedParamsError

__all__ = ["adapter_call", "framework_errors"]


class adapter_call:  # noqa: N801 - used as a function: ``with adapter_call(...):``
    """Re-raise an adapter's exception as ``error`` saying what failed.

    A class, not a generator context manager: it wraps every read and write
    of every parameter, so entering it must cost next to nothing."""

    __slots__ = ("backend", "action", "error", "fix")

    def __init__(
        self,
        backend: str,
        action: str,
        *,
        error: type[UnifiedParamsError] = UnifiedParamsError,
        fix: str = "report this as a bug of the adapter; nothing was changed",
    ) -> None:
        self.backend, self.action, self.error, self.fix = backend, action, error, fix

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, UnifiedParamsError):
            return None  # propagates as it is
        raise self.error(f"the {self.backend} backend to {self.action}", f"{type(exc).__name__}: {exc}",
                         self.fix) from exc


@contextmanager
def framework_errors(backend: str, where: str, action: str, x: Any) -> Iterator[None]:
    """A framework's exception from running a block, as a ForwardError that
    names the block and the input, with the framework's exception chained."""
    try:
        yield
    except UnifiedParamsError:
        raise
    except Exception as exc:
        shape = getattr(x, "shape", None)
        what = f"an input of shape {tuple(shape)}" if shape is not None else f"a {type(x).__name__}"
        raise ForwardError(
            f"an input (and loss) the {backend} block at {where or 'the root'} can {action} with",
            f"{what}; {type(exc).__name__}: {exc}",
            "check the input's shape (batch first) and dtype, and that the loss returns a scalar",
        ) from exc
