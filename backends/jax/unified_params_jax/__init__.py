"""JAX/Flax adapter for unified_params: Flax linen modules (with the variables
they are applied with) and Flax NNX modules.

Design constraints of this module: it is what the entry points
``unified_params.backends: jax`` and ``jax-nnx`` load, so it must not import
jax or flax at import time (nor does :meth:`JaxBackend.version`). They are
imported by :meth:`JaxBackend.owns` (only called when flax is already in
``sys.modules``), :meth:`JaxBackend.open`, :meth:`JaxBackend.to_numpy` and
the zoos.

Two entry points, one backend: ``jax`` owns every Flax model (linen and NNX,
``m.backend == 'jax'``) and its zoo is the linen one; ``jax-nnx`` owns nothing
(wrapping never picks it) and exists so that the conformance suite runs the
very same checks on NNX models: ``--backend jax-nnx`` uses the NNX zoo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from unified_params.adapter import PROTOCOL_VERSION, Backend

if TYPE_CHECKING:
    from unified_params.adapter import Handle, Zoo

__all__ = ["JaxBackend", "NnxBackend", "__version__"]

__version__ = "0.2.0"


class JaxBackend(Backend):
    """Wraps Flax linen modules (``up.wrap(module, variables)``) and NNX modules
    (``up.wrap(module)``); Flax kernels are ``(in, out)`` / ``HWIO``."""

    name: ClassVar[str] = "jax"
    modules: ClassVar[tuple[str, ...]] = ("flax",)
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"deferred", "buffers", "grad", "tie", "zero_copy"}
    )
    install: ClassVar[str] = "pip install unified-params-jax"
    protocol: ClassVar[int] = PROTOCOL_VERSION
    variants: ClassVar[tuple[str, ...]] = ("jax-nnx",)

    def version(self) -> str:
        """jax's version and flax's, read from the installed distributions
        (nothing is imported), or from the modules when not installed as such."""
        from importlib import metadata

        try:
            return f"{metadata.version('jax')} (flax {metadata.version('flax')})"
        except metadata.PackageNotFoundError:
            import flax
            import jax

            return f"{jax.__version__} (flax {flax.__version__})"

    def owns(self, obj: Any) -> bool:
        from flax import linen, nnx

        return isinstance(obj, (linen.Module, nnx.Module))

    def open(self, obj: Any, variables: Any = None) -> Handle:
        from flax import nnx

        if isinstance(obj, nnx.Module):
            from unified_params_jax._nnx import NnxHandle

            return NnxHandle(_backend(), obj)
        from unified_params_jax._linen import LinenHandle

        return LinenHandle(_backend(), obj, variables)

    def to_numpy(self, x: Any) -> np.ndarray:
        from unified_params_jax._common import to_numpy

        return to_numpy(x)

    def zoo(self) -> Zoo:
        from unified_params_jax.zoo import LinenZoo

        return LinenZoo()


class NnxBackend(JaxBackend):
    """The conformance suite's view of the NNX half of the ``jax`` backend: the
    same adapter with the NNX zoo. It owns no object, so wrapped models always
    report ``m.backend == 'jax'``; select it with ``--backend jax-nnx``."""

    name: ClassVar[str] = "jax-nnx"
    variants: ClassVar[tuple[str, ...]] = ()
    #: What ``m.backend`` says for the models it wraps.
    reports_as: ClassVar[str] = "jax"
    #: NNX creates every variable with its shape: no model is deferred.
    capabilities: ClassVar[frozenset[str]] = JaxBackend.capabilities - {"deferred"}

    def owns(self, obj: Any) -> bool:
        return False

    def zoo(self) -> Zoo:
        from unified_params_jax.zoo import NnxZoo

        return NnxZoo()


def _backend() -> Backend:
    """The registered ``jax`` backend (handles report it, whichever entry
    point opened them)."""
    from unified_params import get_backend

    try:
        return get_backend("jax")
    except Exception:  # not installed as a distribution (a source checkout)
        return JaxBackend()
