"""Detection, registration and the errors of section 9."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest

import unified_params as up
from unified_params import _registry


def test_unsupported_object_lists_installed_backends() -> None:
    with pytest.raises(up.UnsupportedModelError) as info:
        up.wrap(object())
    msg = str(info.value)
    assert "numpy" in msg and "Received" in msg and "builtins.object" in msg
    assert isinstance(info.value, TypeError)


def test_known_framework_without_adapter_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_entry_points", {})
    monkeypatch.setattr(_registry, "_type_cache", {})
    Fake = type("Linear", (), {"__module__": "torch.nn.modules.linear"})
    with pytest.raises(up.BackendNotInstalledError) as info:
        up.wrap(Fake())
    assert "pip install unified-params-torch" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_a_bad_adapter_is_refused_with_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = metadata.EntryPoint(name="broken", value="json:JSONDecoder", group=_registry.GROUP)
    monkeypatch.setattr(_registry, "_entry_points", {"broken": ep})
    monkeypatch.setattr(_registry, "_loaded", {})
    with pytest.raises(up.UnifiedParamsError) as info:
        _registry.get_backend("broken")
    assert "entry point broken = json:JSONDecoder" in str(info.value)
    assert "owns" in str(info.value)


def test_an_adapter_that_cannot_import_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = metadata.EntryPoint(name="ghost", value="no_such_module_xyz:Backend", group=_registry.GROUP)
    monkeypatch.setattr(_registry, "_entry_points", {"ghost": ep})
    monkeypatch.setattr(_registry, "_loaded", {})
    with pytest.raises(up.BackendNotInstalledError, match="no_such_module_xyz"):
        _registry.get_backend("ghost")


def test_unknown_backend_name() -> None:
    with pytest.raises(up.BackendNotInstalledError, match="installed backend among"):
        up.get_backend("caffe")


def test_backends_lists_numpy_with_version() -> None:
    import numpy as np

    assert up.backends()["numpy"] == np.__version__


def test_detection_is_cached_per_type() -> None:
    from unified_params import reference as ref

    up.wrap(ref.Dense(2, in_units=2))
    assert _registry._type_cache[ref.Dense].name == "numpy"


def test_an_adapter_of_another_protocol_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from unified_params import _registry
    from unified_params.adapter import PROTOCOL_VERSION
    from unified_params.reference._backend import NumpyBackend

    class Old(NumpyBackend):
        name = "old"
        protocol = PROTOCOL_VERSION - 1

    with pytest.raises(up.UnifiedParamsError, match=f"protocol version {PROTOCOL_VERSION}") as info:
        up.adapter.register(Old)
    assert "protocol=1" in str(info.value) and "old" not in up.backends()

    class EP:
        name, value = "old", "old_pkg:Old"

        def load(self) -> Any:
            return Old

    monkeypatch.setattr(_registry, "_entry_points", {"old": EP()})
    monkeypatch.setattr(_registry, "_loaded", {})
    with pytest.raises(up.UnifiedParamsError, match="entry point old = old_pkg:Old"):
        _registry.get_backend("old")


def test_register_and_unregister_in_process() -> None:
    from unified_params.reference._backend import NumpyBackend

    class Mine(NumpyBackend):
        name = "mine"

    be = up.adapter.register(Mine)
    try:
        assert "mine" in up.backends() and up.get_backend("mine") is be
    finally:
        up.adapter.unregister("mine")
    assert "mine" not in up.backends()
