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

import difflib
import importlib
import sys
from importlib import metadata
from types import ModuleType
from typing import Any

from ._errors import BackendNotInstalledError, UnifiedParamsError, UnsupportedModelError
from .adapter import CAPABILITIES, PROTOCOL_VERSION, Backend

__all__ = ["backends", "get_backend", "backend_for", "require", "require_framework", "pip_command", "suggest"]

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

#: Backends we know of, and the frameworks each needs: backend -> pip packages.
KNOWN_BACKENDS = {"numpy": "", "torch": "torch", "tensorflow": "tensorflow", "jax": "jax flax",
                  "jax-nnx": "jax flax", "mxnet": "mxnet"}

#: Names people type for a backend: alias -> backend name.
ALIASES = {
    "pytorch": "torch", "pt": "torch", "th": "torch",
    "tf": "tensorflow", "keras": "tensorflow", "tf.keras": "tensorflow", "tf_keras": "tensorflow",
    "flax": "jax", "linen": "jax", "flax-linen": "jax", "jaxlib": "jax",
    "nnx": "jax-nnx", "flax-nnx": "jax-nnx", "jax_nnx": "jax-nnx",
    "gluon": "mxnet", "mx": "mxnet", "mxnet-gluon": "mxnet",
    "np": "numpy", "reference": "numpy", "ref": "numpy",
}  # fmt: skip

#: Optional dependencies of the core -> the extra of unified-params that installs them.
EXTRAS = {"safetensors": "files", "rich": "cli", "tqdm": "cli", "matplotlib": "plot"}

#: Importable module -> the pip package that provides it, where they differ.
_PIP_NAMES = {"jaxlib": "jax", "tf_keras": "tf-keras", "PIL": "pillow", "yaml": "pyyaml"}

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


def pip_command(module: str, extra: str | None = None) -> str:
    """The command that installs ``module``: the extra of unified-params that
    brings it (``extra``, or the one :data:`EXTRAS` knows), else its package."""
    top = module.split(".")[0]
    extra = extra or EXTRAS.get(top)
    if extra:
        return f"pip install 'unified-params[{extra}]'"
    return f"pip install {_PIP_NAMES.get(top, top)}"


def _install_backend(name: str) -> str:
    """The command that installs backend ``name``: its adapter and framework."""
    adapter = "unified-params-jax" if name == "jax-nnx" else f"unified-params-{name}"
    framework = KNOWN_BACKENDS.get(name, "")
    return f"pip install {adapter}" + (f" {framework}" if framework else "")


def suggest(name: object, installed: list[str] | None = None) -> str | None:
    """The backend a user most likely meant by ``name`` ('pytorch' -> 'torch',
    'tf' -> 'tensorflow', 'flax' -> 'jax', 'gluon' -> 'mxnet', close
    spellings by difflib), installed or not; None when nothing is close."""
    if not isinstance(name, str) or not name.strip():
        return None
    key = name.strip().lower()
    candidates = list(dict.fromkeys([*(installed if installed is not None else names()), *KNOWN_BACKENDS]))
    if key in candidates:
        return key
    if key in ALIASES:
        return ALIASES[key]
    longer = [a for a in ALIASES if len(a) >= 4]  # 'np' or 'tf' would be close to too much
    close = difflib.get_close_matches(key, candidates + longer, n=1, cutoff=0.6)
    return ALIASES.get(close[0], close[0]) if close else None


def unknown_backend_hint(name: object, installed: list[str]) -> str:
    """What to do about a backend name that is not installed: the name meant
    and, if it is not installed, its install command."""
    guess = suggest(name, installed)
    if guess is not None and guess != name:
        if guess in installed:
            return f"did you mean {guess!r}?"
        return f"did you mean {guess!r}? It is not installed: {_install_backend(guess)}"
    if guess is not None:  # a known backend, not installed
        return f"install it: {_install_backend(guess)}"
    known = ", ".join(b for b in KNOWN_BACKENDS if b not in installed and b != "jax-nnx") or "none"
    return (f"use one of {', '.join(installed)}, or install the adapter of another framework: "
            f"pip install unified-params-<backend> (known backends not installed: {known})")


def get_backend(name: str) -> Backend:
    """The backend registered under ``name`` (imports its adapter module)."""
    if name in _loaded:
        return _loaded[name]
    if name == "numpy":
        _loaded[name] = _builtin()
        return _loaded[name]
    eps = _discover()
    if name not in eps:
        installed = names()
        raise BackendNotInstalledError(
            f"an installed backend among {installed}",
            f"backend={name!r}",
            unknown_backend_hint(name, installed),
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


def require(module: str, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import the optional dependency ``module`` (safetensors, rich, tqdm,
    matplotlib, ...), or raise :class:`BackendNotInstalledError` (an
    ``ImportError``) naming the pip command, instead of a bare
    ``ModuleNotFoundError``; ``extra`` is the unified-params extra that
    installs it (default: the one :data:`EXTRAS` knows)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendNotInstalledError(
            f"{module} installed" + (f", {purpose}" if purpose else ""),
            f"{type(exc).__name__}: {_cut(str(exc))}",
            f"install it: {pip_command(module, extra)}",
        ) from None


def require_framework(name: str) -> Backend:
    """The backend ``name`` with its framework imported: an adapter installed
    without its framework (adapters do not depend on the framework build)
    raises :class:`BackendNotInstalledError` naming ``pip install <framework>``
    here, rather than a ``ModuleNotFoundError`` from deep in the adapter."""
    be = get_backend(name)
    for module in getattr(be, "modules", ()):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing = (getattr(exc, "name", None) or module).split(".")[0]
            raise BackendNotInstalledError(
                f"the framework of backend {name!r} ({module}) installed",
                f"{type(exc).__name__}: {_cut(str(exc))}",
                f"install it: {pip_command(missing)} (the adapter of {name!r} is installed, the framework is not)",
            ) from None
        except Exception as exc:  # a framework that is installed but broken
            raise BackendNotInstalledError(
                f"the framework of backend {name!r} ({module}) to import",
                f"{type(exc).__name__}: {_cut(str(exc))}",
                f"reinstall it ({pip_command(module)}) in versions that work together (see the adapter's README)",
            ) from exc
    return be


def _cut(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


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

