"""Every error class says what was expected, what was received and what to
do, in that order; real failures carry those parts; no message ends in
"?." (a "did you mean ...?" followed by the formatter's period).

The parts are labelled: "Expected: ... Received: ... What to do: ...".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import _errors

CLASSES = [getattr(_errors, name) for name in _errors.__all__]
PARTS = ("a parameter name of this block", "'0.weigth'", "did you mean '0.weight'?")


def make(cls: type) -> BaseException:
    return cls(*PARTS)


def test_every_class_is_public_and_catchable_as_a_builtin() -> None:
    assert len(CLASSES) >= 13
    for cls in CLASSES:
        assert getattr(up, cls.__name__) is cls, f"up.{cls.__name__} is not exported"
        assert issubclass(cls, up.UnifiedParamsError)
        if cls is not up.UnifiedParamsError:
            builtin = [b for b in cls.__mro__[1:] if b.__module__ == "builtins" and b not in (Exception, object)]
            assert builtin and builtin[0] is not BaseException, f"{cls.__name__} derives from no builtin to catch"
        params = list(inspect.signature(cls).parameters)
        assert params[:3] == ["expected", "received", "todo"], f"{cls.__name__}{inspect.signature(cls)}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_message_has_the_three_parts_in_order(cls: type) -> None:
    e = make(cls)
    msg = str(e)
    expected, received, todo = PARTS
    i, j, k = msg.find(expected), msg.find(f"Received: {received}"), msg.find(todo.rstrip("?"))
    assert -1 < i < j < k, f"{cls.__name__}: {msg!r}"
    assert (e.expected, e.received, e.todo) == PARTS  # type: ignore[attr-defined]
    assert str(e) == e.args[0]  # KeyError subclasses do not quote it


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_message_labels_its_parts(cls: type) -> None:
    msg = str(make(cls))
    assert msg.startswith("Expected"), msg
    assert "Received:" in msg and "What to do" in msg, msg


def _catalogue() -> dict[str, tuple[type, Callable[[], Any]]]:
    """Real failing calls on the NumPy reference backend, and the class each raises."""
    zoo = up.get_backend("numpy").zoo()
    m = zoo.mlp()
    return {
        "misspelled name": (up.ParamNotFoundError, lambda: m.params["0.weigth"]),
        "missing child": (up.ParamNotFoundError, lambda: m["7"]),
        "bad regex": (up.ParamNotFoundError, lambda: m.params.select("(")),
        "float index": (up.ArgumentError, lambda: m[1.5]),
        "negative seed": (up.ArgumentError, lambda: m.initialize(up.init.Zeros(), seed=-1)),
        "wrong shape": (up.ShapeMismatchError, lambda: m.params["0.weight"].set(np.zeros((3, 3)))),
        "complex value": (up.DTypeError, lambda: m.params["0.weight"].set(np.zeros((8, 4), complex))),
        "deferred read": (up.NotInitializedError, lambda: zoo.lazy().params["0.weight"].value),
        "tie of other shapes": (up.TieError, lambda: m.tie("0", "2")),
        "state of another model": (up.StateError, lambda: m.load_state({"x": np.zeros(1)})),
        "port between architectures": (up.PortError, lambda: up.port(zoo.mlp(), zoo.nested())),
        "missing file": (up.FileFormatError, lambda: up.load(m, "/nonexistent/model.safetensors")),
        "not a model": (up.UnsupportedModelError, lambda: up.wrap(42)),
        "unknown backend": (up.BackendNotInstalledError, lambda: up.get_backend("pytorch")),
        "input of another size": (up.ForwardError, lambda: m(np.zeros((2, 5), np.float32))),
    }


@pytest.mark.parametrize("case", list(_catalogue()))
def test_real_failures_carry_the_parts(case: str) -> None:
    import safetensors  # noqa: F401 - a test dependency: missing is a failure
    cls, call = _catalogue()[case]
    with pytest.raises(cls) as info:
        call()
    e = info.value
    assert e.expected and e.received and e.todo, f"{case}: {e}"  # type: ignore[attr-defined]
    assert f"Received: {e.received}" in str(e), f"{case}: {e}"  # type: ignore[attr-defined]


def test_no_message_ends_a_question_with_a_period() -> None:
    messages = [str(make(cls)) for cls in CLASSES]
    for cls, call in _catalogue().values():
        try:
            call()
        except cls as e:
            messages.append(str(e))
    bad = [msg for msg in messages if "?." in msg]
    assert not bad, bad[:3]
