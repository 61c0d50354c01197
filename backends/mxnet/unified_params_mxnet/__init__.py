"""MXNet Gluon adapter for unified_params.

Design constraints of this module: it is what the entry point
``unified_params.backends: mxnet`` loads, so it must not import mxnet at
import time (importing mxnet is slow, and mxnet cannot share a process with a
NumPy >= 1.24). mxnet is imported by :meth:`MXNetBackend.version`,
:meth:`MXNetBackend.owns` (only called when mxnet is already in
``sys.modules``), :meth:`MXNetBackend.open` and the zoo, through the
submodules ``_handle`` and ``zoo``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from unified_params.adapter import PROTOCOL_VERSION, Backend

if TYPE_CHECKING:
    from unified_params.adapter import Handle, Zoo

__all__ = ["MXNetBackend", "__version__"]

__version__ = "0.2.0"


class MXNetBackend(Backend):
    """Wraps ``mxnet.gluon.Block`` trees (``mx.np`` and legacy ``mx.nd``
    interfaces); the native layout is the canonical one."""

    name: ClassVar[str] = "mxnet"
    modules: ClassVar[tuple[str, ...]] = ("mxnet",)
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"deferred", "buffers", "grad", "tie", "zero_copy"}
    )
    install: ClassVar[str] = "pip install unified-params-mxnet"
    protocol: ClassVar[int] = PROTOCOL_VERSION

    def version(self) -> str:
        import mxnet

        return str(mxnet.__version__)

    def owns(self, obj: Any) -> bool:
        from mxnet.gluon import Block

        return isinstance(obj, Block)

    def open(self, obj: Any, variables: Any = None) -> Handle:
        from unified_params_mxnet._handle import MXNetHandle

        return MXNetHandle(self, obj)

    def to_numpy(self, x: Any) -> np.ndarray:
        from unified_params_mxnet._handle import to_numpy

        return to_numpy(x)

    def zoo(self) -> Zoo:
        from unified_params_mxnet.zoo import MXNetZoo

        return MXNetZoo()
