"""Keras 3 / TensorFlow adapter for unified_params.

Design constraints of this module: it is what the entry point
``unified_params.backends: tensorflow`` loads, so it must not import keras or
tensorflow at import time. Keras is imported by :meth:`KerasBackend.version`,
:meth:`KerasBackend.owns` (only asked when keras or tensorflow is already in
``sys.modules``), :meth:`KerasBackend.open` and the zoo, through the
submodules ``_handle`` and ``zoo``.

``tf.keras`` is Keras 3 here, so one adapter serves both spellings. Keras 3
can also run on JAX or PyTorch (``KERAS_BACKEND``); the handle reads, writes,
ties and resets through Keras' own ``Variable`` API, which is the same on all
three, and computes gradients with whichever autodiff Keras runs on.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from unified_params.adapter import PROTOCOL_VERSION, Backend

if TYPE_CHECKING:
    from unified_params.adapter import Handle, Zoo

__all__ = ["KerasBackend", "__version__"]

__version__ = "0.2.0"


class KerasBackend(Backend):
    """Wraps Keras 3 layers and models (Sequential, functional, subclassed).

    Every variable's role, layout and recurrent-bias mark come from the one
    layout table (``unified_params.adapter.layout_rule('keras', ...)``); the
    core converts them to the canonical layout, and a layer type the table
    does not know is ``native``.
    On TensorFlow, ``read(copy=False)`` is a read-only DLPack view of the
    variable's own buffer (``_fast``); ``zero_copy`` is not claimed because
    Keras on JAX or PyTorch copies.
    """

    name: ClassVar[str] = "tensorflow"
    modules: ClassVar[tuple[str, ...]] = ("keras", "tensorflow")
    capabilities: ClassVar[frozenset[str]] = frozenset({"deferred", "buffers", "grad", "tie"})
    install: ClassVar[str] = "pip install unified-params-tensorflow"
    protocol: ClassVar[int] = PROTOCOL_VERSION

    def version(self) -> str:
        """Keras' version, then the framework it runs on; read from the
        installed distributions when Keras is not imported yet, so that
        ``up.backends()`` imports nothing."""
        if "keras" in sys.modules:
            import keras

            backend = keras.backend.backend()
            version = keras.__version__
        else:
            backend = os.environ.get("KERAS_BACKEND", "tensorflow")
            version = _dist_version("keras")
        if backend == "tensorflow":
            tf = _dist_version("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly")
            return f"{version} (keras; tensorflow {tf})"
        return f"{version} (keras on {backend})"

    def owns(self, obj: Any) -> bool:
        if "keras" not in sys.modules:  # then obj cannot be a Keras layer
            return False
        import keras

        return isinstance(obj, keras.layers.Layer)

    def open(self, obj: Any, variables: Any = None) -> Handle:
        from unified_params_tensorflow._handle import KerasHandle

        return KerasHandle(self, obj)

    def to_numpy(self, x: Any) -> np.ndarray:
        from unified_params_tensorflow._handle import to_numpy

        return to_numpy(x)

    def zoo(self) -> Zoo:
        from unified_params_tensorflow.zoo import KerasZoo

        return KerasZoo()


def _dist_version(*names: str) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"
