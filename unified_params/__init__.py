"""unified_params: one interface to the parameters of any framework's model.

``import unified_params`` imports NumPy and nothing else: frameworks are
looked up in ``sys.modules`` when a model is wrapped, never imported here.

>>> import unified_params as up
>>> from unified_params import reference as ref
>>> m = up.wrap(ref.Sequential(ref.Dense(8, in_units=4), ref.ReLU(), ref.Dense(1, in_units=8)))
>>> list(m.params)
['0.weight', '0.bias', '2.weight', '2.bias']
"""

from __future__ import annotations

from typing import Any

from . import adapter, init
from ._block import Block, LoadReport, Param, ParamDict
from ._errors import (
    ArgumentError,
    BackendNotInstalledError,
    DTypeError,
    FileFormatError,
    ForwardError,
    NotInitializedError,
    ParamNotFoundError,
    PortError,
    ShapeMismatchError,
    StateError,
    TieError,
    UnifiedParamsError,
    UnsupportedModelError,
)
from ._io import PortReport, load, port, save
from ._pieces import consolidate
from ._registry import backend_for, backends, get_backend
from ._report import Summary
from ._shards import Shard, ShardedValue

__version__ = "0.2.0"

__all__ = [
    "wrap",
    "asnumpy",
    "backends",
    "get_backend",
    "save",
    "load",
    "port",
    "consolidate",
    "init",
    "adapter",
    "Block",
    "Param",
    "ParamDict",
    "LoadReport",
    "PortReport",
    "Summary",
    "Shard",
    "ShardedValue",
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


def wrap(model: Any, variables: Any = None) -> Block:
    """Wrap a framework's model in a :class:`Block`.

    ``variables`` is for functional models whose parameters live apart
    (Flax linen); the Block then holds them (``m.variables``).

    >>> import unified_params as up
    >>> from unified_params import reference as ref
    >>> up.wrap(ref.Dense(2, in_units=3)).backend
    'numpy'
    """
    if isinstance(model, Block):
        return model
    backend = backend_for(model)
    handle = backend.open(model, variables)
    if variables is not None and not hasattr(handle, "variables"):
        raise ArgumentError(
            f"variables only for functional models that keep their parameters apart (Flax linen); a "
            f"{backend.name} model holds its own",
            f"variables of type {type(variables).__name__}",
            "call up.wrap(model) and, to set values, m.load_state(state)",
        )
    return Block(handle)


def asnumpy(x: Any) -> Any:
    """A framework tensor (a forward output) as a NumPy array."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return x
    return backend_for_tensor(x).to_numpy(x)


def backend_for_tensor(x: Any) -> Any:
    from ._registry import _type_modules, names

    mods = _type_modules(type(x))
    for name in names():
        be = get_backend(name)
        if any(m in mods for m in be.modules) or (name == "jax" and "jaxlib" in mods):
            return be
    import numpy as np

    class _Plain:
        @staticmethod
        def to_numpy(v: Any) -> Any:
            return np.asarray(v)

    return _Plain()
