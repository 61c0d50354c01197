"""Which backend owns an object, without importing any framework.

Adapters come from the entry-point group ``unified_params.backends`` (the
NumPy reference backend is built in). Entry points are loaded lazily and
validated when loaded; a bad one is refused with a message naming it. An
object's backend is found from the modules of the classes in its type's MRO:
only backends whose ``modules`` appear there *and* in ``sys.modules`` are
asked, so detection never imports a framework (as einops' ``get_backend``).
The type -> backend answer is cached.
"""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Any

from ._errors import BackendNotInstalledError, UnifiedParamsError, UnsupportedModelError
from .adapter import CAPABILITIES, PROTOCOL_VERSION, Backend

__all__ = ["backends", "get_backend", "backend_for"]

GROUP = "unified_params.backends"

#: Frameworks we know of, to say which adapter to install: module -> backend.
KNOWN_FRAMEWORKS = {
    "torch": "torch",
    "keras": "tensorflow",
    "tensorflow": "tensorflow",
    "tf_keras": "tensorflow",
    "flax": "jax",
    "jax": "jax",
    "mxnet": "mxnet",
}

_loaded: dict[str, Backend] = {}
_entry_points: dict[str, metadata.EntryPoint] | None = None
_type_cache: dict[type, Backend] = {}
_REQUIRED = ("name", "modules", "version", "owns", "open", "to_numpy")


def _discover() -> dict[str, metadata.EntryPoint]:
    global _entry_points
    if _entry_points is None:
        found: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=GROUP):
            found.setdefault(ep.name, ep)
        _entry_points = found
    return _entry_points


def _validate(obj: Any, origin: str) -> Backend:
    inst = obj() if isinstance(obj, type) else obj
    missing = [a for a in _REQUIRED if not hasattr(inst, a)]
    if missing:
        raise UnifiedParamsError(
            f"an adapter with the attributes {', '.join(_REQUIRED)}",
            f"{origin} lacks {', '.join(missing)}",
            "fix the adapter package (see docs/adapters.md) or uninstall it",
        )
    protocol = getattr(inst, "protocol", 0)
    if protocol != PROTOCOL_VERSION:
        raise UnifiedParamsError(
            f"an adapter implementing protocol version {PROTOCOL_VERSION} of unified_params.adapter",
            f"{origin} declares protocol={protocol!r}",
            "install the adapter release made for this unified_params (pip install -U the adapter), or the "
            "unified_params release the adapter was written for",
        )
    unknown = set(getattr(inst, "capabilities", ())) - CAPABILITIES
    if unknown:
        raise UnifiedParamsError(
            f"capability flags among {sorted(CAPABILITIES)}",
            f"{origin} declares {sorted(unknown)}",
            "fix the adapter's `capabilities`",
        )
    return inst  # type: ignore[no-any-return]


def _builtin() -> Backend:
    from .reference._backend import NumpyBackend

    return NumpyBackend()


def get_backend(name: str) -> Backend:
    """The backend registered under ``name`` (imports its adapter module)."""
    if name in _loaded:
        return _loaded[name]
    if name == "numpy":
        _loaded[name] = _builtin()
        return _loaded[name]
    eps = _discover()
    if name not in eps:
        raise BackendNotInstalledError(
            f"an installed backend among {sorted(['numpy', *eps])}",
            f"backend={name!r}",
            f"install its adapter: pip install unified-params-{name}",
        )
    ep = eps[name]
    try:
        target = ep.load()
    except Exception as exc:  # an adapter that cannot import is an error, never a skip
        raise BackendNotInstalledError(
            f"the adapter {ep.value!r} of backend {name!r} to import",
            f"{type(exc).__name__}: {exc}",
            f"reinstall it (pip install unified-params-{name}) and its framework",
        ) from exc
    _loaded[name] = _validate(target, f"entry point {name} = {ep.value}")
    return _loaded[name]


_registered: set[str] = set()


def register(backend: Any) -> Backend:
    """Register an adapter in this process, without an entry point: for an
    adapter being written, or tests. Validated as an entry point is (the
    protocol version included); returns the instance."""
    inst = _validate(backend, f"register({getattr(backend, '__name__', type(backend).__name__)})")
    _loaded[inst.name] = inst
    _registered.add(inst.name)
    _type_cache.clear()
    return inst


def unregister(name: str) -> None:
    """Undo :func:`register` (nothing for a backend installed by entry point)."""
    if name in _registered:
        _registered.discard(name)
        _loaded.pop(name, None)
        _type_cache.clear()


def names() -> list[str]:
    """Names of the installed backends, ``numpy`` first."""
    return ["numpy", *sorted((set(_discover()) | _registered) - {"numpy"})]


def backends() -> dict[str, str]:
    """Installed backends and their framework versions.

    Importing a framework to ask its version is unavoidable here; a backend
    whose framework is missing reports ``"not importable: ..."``.

    Examples
    --------
    >>> import unified_params as up
    >>> "numpy" in up.backends()
    True
    """
    out: dict[str, str] = {}
    for name in names():
        try:
            out[name] = get_backend(name).version()
        except Exception as exc:  # report, do not hide
            out[name] = f"not importable: {exc}"
    return out


def _type_modules(tp: type) -> list[str]:
    mods = []
    for klass in getattr(tp, "__mro__", (tp,)):
        top = (getattr(klass, "__module__", "") or "").split(".")[0]
        if top and top not in mods:
            mods.append(top)
    return mods


def backend_for(obj: Any) -> Backend:
    """The backend that owns ``obj``; raises a contract error otherwise."""
    tp = type(obj)
    hit = _type_cache.get(tp)
    if hit is not None:
        return hit
    mods = _type_modules(tp)
    broken: list[str] = []
    for name in names():
        try:
            be = get_backend(name)
        except UnifiedParamsError as exc:
            broken.append(str(exc))
            continue
        if any(m in mods and m in sys.modules for m in be.modules) and be.owns(obj):
            _type_cache[tp] = be
            return be
    for m in mods:
        if m in KNOWN_FRAMEWORKS:
            fw = KNOWN_FRAMEWORKS[m]
            if fw not in _discover():
                raise BackendNotInstalledError(
                    f"the unified_params adapter for {m} models",
                    f"a {tp.__module__}.{tp.__qualname__}, and no {fw!r} adapter is installed",
                    f"install it: pip install unified-params-{fw}",
                )
    raise UnsupportedModelError(
        "a model one installed backend accepts "
        "(a torch nn.Module, a Keras layer, a Flax module, a Gluon Block or a "
        "unified_params.reference model)",
        f"a {tp.__module__}.{tp.__qualname__}; installed backends: {', '.join(names())}",
        "pass the model object itself, or install the adapter of its framework"
        + (f" (adapters that failed to load: {'; '.join(broken)})" if broken else ""),
    )

