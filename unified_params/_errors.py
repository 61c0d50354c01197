"""One exception root; each subclass also derives from the builtin a user
would catch. Every message says what was expected, what was received and
what to do, in that order, so that a user never has to read a framework's
traceback to know how to fix a call."""

from __future__ import annotations

__all__ = [
    "UnifiedParamsError",
    "UnsupportedModelError",
    "BackendNotInstalledError",
    "ParamNotFoundError",
    "ShapeMismatchError",
    "DTypeError",
    "NotInitializedError",
    "TieError",
    "StateError",
    "FileFormatError",
    "PortError",
    "ForwardError",
    "ArgumentError",
]


def _end(text: str) -> str:
    """``text`` ending in one full stop (none after a question mark)."""
    text = text.rstrip().rstrip(".")
    return text if text.endswith(("?", "!")) else text + "."


class UnifiedParamsError(Exception):
    """Root of every error raised by unified_params."""

    def __init__(self, expected: str, received: str = "", todo: str = "") -> None:
        parts = [f"Expected: {_end(expected)}"]
        if received:
            parts.append(f"Received: {_end(received)}")
        if todo:
            parts.append(f"What to do: {_end(todo)}")
        self.expected, self.received, self.todo = expected, received, todo
        super().__init__(" ".join(parts))

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0]) if self.args else ""


class UnsupportedModelError(UnifiedParamsError, TypeError):
    """No installed adapter accepts the object."""


class BackendNotInstalledError(UnifiedParamsError, ImportError):
    """The object belongs to a known framework whose adapter is missing."""


class ParamNotFoundError(UnifiedParamsError, KeyError):
    """A name that is not in the ParamDict (the message lists close names)."""


class ShapeMismatchError(UnifiedParamsError, ValueError):
    """A value or a block whose shape differs from the one expected."""


class DTypeError(UnifiedParamsError, TypeError):
    """A value that cannot be cast safely (``same_kind``) to the storage."""


class NotInitializedError(UnifiedParamsError, RuntimeError):
    """A deferred parameter was read or written before ``materialize``."""


class TieError(UnifiedParamsError, ValueError):
    """A tie that cannot be made (self, ancestor, descendant, shapes)."""


class StateError(UnifiedParamsError, ValueError):
    """A state dict that does not fit the model."""

    def __init__(self, expected: str, received: str = "", todo: str = "", report: object = None) -> None:
        super().__init__(expected, received, todo)
        self.report = report


class FileFormatError(UnifiedParamsError, ValueError):
    """A file that is not a readable safetensors file, or cannot be written."""


class PortError(UnifiedParamsError, ValueError):
    """Two models whose parameters do not pair up by order and shape."""


class ForwardError(UnifiedParamsError, RuntimeError):
    """The framework refused a forward or backward pass (still a
    ``RuntimeError``, as most frameworks' own); the framework's exception is
    chained as the cause."""


class ArgumentError(UnifiedParamsError, TypeError, ValueError):
    """An argument of the wrong type or value (an index, an initializer, a
    seed); both a ``TypeError`` and a ``ValueError`` so that either catches it."""
