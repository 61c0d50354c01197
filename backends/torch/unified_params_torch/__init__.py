"""PyTorch adapter for unified_params.

Design constraints of this module: it is what the entry point
``unified_params.backends: torch`` loads, so it must not import torch at
import time. ``import unified_params`` followed by ``up.backends()`` loads this
class and nothing else (the version comes from torch's distribution metadata).
torch is imported by :meth:`TorchBackend.owns` (only called when torch is
already in ``sys.modules``), :meth:`TorchBackend.open`, ``to_numpy`` and the
zoo, through the submodules ``_handle`` and ``zoo``.
"""

from __future__ import annotations

import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from unified_params.adapter import PROTOCOL_VERSION, Backend

if TYPE_CHECKING:
    from unified_params.adapter import Handle, Zoo

__all__ = ["TorchBackend", "__version__"]

__version__ = "0.2.0"


class TorchBackend(Backend):
    """Wraps ``torch.nn.Module`` trees; the native layout is the canonical one."""

    name: ClassVar[str] = "torch"
    modules: ClassVar[tuple[str, ...]] = ("torch",)
    capabilities: ClassVar[frozenset[str]] = frozenset({"deferred", "buffers", "grad", "tie", "zero_copy"})
    install: ClassVar[str] = "pip install unified-params-torch"
    protocol: ClassVar[int] = PROTOCOL_VERSION

    def version(self) -> str:
        """torch's version, read from its distribution's metadata when torch
        is not imported yet, so that ``up.backends()`` stays cheap."""
        if "torch" not in sys.modules:
            try:
                return metadata.version("torch")
            except metadata.PackageNotFoundError:
                pass  # a source build without metadata: ask the module itself
        import torch

        return str(torch.__version__)

    def owns(self, obj: Any) -> bool:
        import torch

        return isinstance(obj, torch.nn.Module)

    def open(self, obj: Any, variables: Any = None) -> Handle:
        from unified_params_torch._handle import TorchHandle

        return TorchHandle(self, obj)

    def to_numpy(self, x: Any) -> np.ndarray:
        from unified_params_torch._handle import to_numpy

        return to_numpy(x)

    def zoo(self) -> Zoo:
        from unified_params_torch.zoo import TorchZoo

        return TorchZoo()
