"""Detection, registration and the errors of section 9."""

from __future__ import annotations

import re
import sys
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


# -- friendly failures: "did you mean", missing frameworks and extras ------------------------


def _fake_entry_point(name: str) -> Any:
    class EP:
        value = f"fake_{name}:Backend"

        def load(self) -> Any:
            raise AssertionError("a name that is not installed must not load an adapter")

    EP.name = name  # type: ignore[attr-defined]
    return EP()


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("pytorch", "torch"), ("PyTorch", "torch"), ("Torch", "torch"), ("tf", "tensorflow"),
     ("keras", "tensorflow"), ("tensorfow", "tensorflow"), ("flax", "jax"), ("nnx", "jax-nnx"),
     ("gluon", "mxnet"), ("mx", "mxnet"), ("numpyy", "numpy")],
)
def test_get_backend_suggests_the_name_meant(monkeypatch: pytest.MonkeyPatch, typed: str, meant: str) -> None:
    """Installed or not, the message names the backend meant, never a package
    named after the typo (unified-params-pytorch does not exist)."""
    for installed in ({}, {meant: _fake_entry_point(meant)} if meant != "numpy" else {}):
        monkeypatch.setattr(_registry, "_entry_points", installed)
        with pytest.raises(up.BackendNotInstalledError) as info:
            up.get_backend(typed)
        msg = str(info.value)
        assert f"did you mean {meant!r}?" in msg, msg
        assert not re.search(rf"unified-params-{re.escape(typed)}\b", msg)
        assert msg.startswith("Expected: an installed backend among") and "What to do:" in msg
        if meant not in ("numpy", *installed):
            adapter = "unified-params-jax" if meant == "jax-nnx" else f"unified-params-{meant}"
            assert f"It is not installed: pip install {adapter}" in msg


def test_a_name_like_no_backend_gets_no_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_entry_points", {})
    with pytest.raises(up.BackendNotInstalledError) as info:
        up.get_backend("caffe")
    msg = str(info.value)
    assert "did you mean" not in msg and "unified-params-caffe" not in msg
    assert "use one of numpy" in msg and "pip install unified-params-<backend> (known backends" in msg


def test_require_names_the_extra_instead_of_a_bare_module_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails
    with pytest.raises(up.BackendNotInstalledError) as info:
        _registry.require("safetensors")
    assert isinstance(info.value, ImportError)
    assert "pip install 'unified-params[files]'" in str(info.value)
    assert str(info.value).startswith("Expected: safetensors installed")
    assert _registry.require("json").__name__ == "json"


def test_the_conformance_check_without_safetensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one place the library imports safetensors (the suite's file check,
    which compares with safetensors' own reader)."""
    from unified_params.testing import checks

    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(up.BackendNotInstalledError, match=r"pip install 'unified-params\[files\]'"):
        checks.check_save_load_file(up.get_backend("numpy"))


def test_save_with_progress_without_tqdm(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    m = up.get_backend("numpy").zoo().mlp()
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(up.BackendNotInstalledError, match=r"pip install 'unified-params\[cli\]'"):
        up.save(m, tmp_path / "m.safetensors", progress=True)
    assert not (tmp_path / "m.safetensors").exists()
    up.save(m, tmp_path / "m.safetensors")  # no bar asked for: no tqdm needed


def test_summary_rich_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in [m for m in sys.modules if m == "rich" or m.startswith("rich.")] + ["rich"]:
        monkeypatch.setitem(sys.modules, mod, None)
    summary = up.get_backend("numpy").zoo().mlp().summary()
    with pytest.raises(up.BackendNotInstalledError, match=r"pip install 'unified-params\[cli\]'"):
        summary.rich()
    assert str(summary).startswith("name")  # the plain table needs nothing


class _Frameworkless:
    """An adapter installed without its framework, as ``pip install
    unified-params-torch`` without torch leaves it: the adapter imports,
    the framework does not."""

    @staticmethod
    def make(monkeypatch: pytest.MonkeyPatch, name: str = "torch", module: str = "torch") -> Any:
        from unified_params.reference._backend import NumpyBackend

        class Frameworkless(NumpyBackend):
            modules = (module,)

            def zoo(self) -> Any:
                import importlib

                importlib.import_module(module)  # as the real adapter's zoo does
                return super().zoo()

        Frameworkless.name = name  # type: ignore[misc]
        monkeypatch.setitem(sys.modules, module, None)
        monkeypatch.setattr(_registry, "_loaded", {name: Frameworkless()})

        class EP:
            value = "unified_params_fake:Frameworkless"

            def load(self) -> Any:
                return Frameworkless

        EP.name = name  # type: ignore[attr-defined]
        monkeypatch.setattr(_registry, "_entry_points", {name: EP()})
        return Frameworkless


def test_require_framework_names_the_framework(monkeypatch: pytest.MonkeyPatch) -> None:
    _Frameworkless.make(monkeypatch)
    assert up.get_backend("torch").name == "torch"  # the adapter itself imports
    with pytest.raises(up.BackendNotInstalledError) as info:
        _registry.require_framework("torch")
    msg = str(info.value)
    assert "pip install torch" in msg and "the adapter of 'torch' is installed" in msg
    assert _registry.require_framework("numpy").name == "numpy"
