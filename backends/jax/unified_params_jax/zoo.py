"""The conformance zoos in Flax: linen (the default, as the chapter's JAX
edition writes it) and NNX, with Flax's default initializers.

Design constraints: ``unified_params`` is imported inside the methods (the
zoo is loaded by the suite after the core). Linen models are initialized on
a ``(2, 4)`` input (the chapter's ``X``) and wrapped with their variables;
``lazy`` is wrapped without variables, so ``m.materialize(x)`` runs
``module.init``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

from unified_params.adapter import Zoo

__all__ = ["LinenZoo", "NnxZoo", "block1", "block2", "nnx_block1", "nnx_block2"]


def _global_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2))


def _nhwc(x_nchw: np.ndarray) -> jax.Array:
    return jnp.asarray(np.transpose(np.asarray(x_nchw), (0, 2, 3, 1)))


def block1() -> nn.Sequential:
    """The chapter's ``block1``: Dense(8), relu, Dense(4), relu."""
    return nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(4), nn.relu])


def block2() -> nn.Sequential:
    """The chapter's ``block2``: four ``block1`` (Flax keys ``layers_0`` ... ``layers_3``)."""
    return nn.Sequential([block1() for _ in range(4)])


def _wrap(module: nn.Module, shape: tuple[int, ...] | None = (2, 4), seed: int = 0) -> Any:
    import unified_params as up

    if shape is None:
        return up.wrap(module)
    variables = module.init(jax.random.key(seed), jnp.zeros(shape, jnp.float32))
    return up.wrap(module, variables)


class LinenZoo(Zoo):
    """The suite's five architectures as linen modules, wrapped with variables."""

    def mlp(self) -> Any:
        return _wrap(nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)]))

    def nested(self) -> Any:
        return _wrap(nn.Sequential([block2(), nn.Dense(1)]))

    def shared(self) -> Any:
        shared = nn.Dense(8)
        return _wrap(
            nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, shared, nn.relu, nn.Dense(1)])
        )

    def norm(self) -> Any:
        return _wrap(
            nn.Sequential(
                [nn.Dense(8), nn.BatchNorm(use_running_average=True), nn.relu, nn.Dense(1)]
            )
        )

    def lazy(self) -> Any:
        return _wrap(nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)]), shape=None)

    def cnn(self) -> Any:
        return _wrap(
            nn.Sequential(
                [nn.Conv(4, (3, 3), padding="VALID"), nn.relu, _global_mean, nn.Dense(2)]
            ),
            shape=(2, 6, 6, 1),
        )

    def cnn_input(self, x_nchw: np.ndarray) -> Any:
        return _nhwc(x_nchw)


def nnx_block1(rngs: nnx.Rngs) -> nnx.Sequential:
    """``block1`` in NNX: Linear(4->8), relu, Linear(8->4), relu."""
    return nnx.Sequential(
        nnx.Linear(4, 8, rngs=rngs), nnx.relu, nnx.Linear(8, 4, rngs=rngs), nnx.relu
    )


def nnx_block2(rngs: nnx.Rngs) -> nnx.Sequential:
    """``block2`` in NNX: four ``block1`` (keys ``0`` ... ``3``)."""
    return nnx.Sequential(*(nnx_block1(rngs) for _ in range(4)))


class NnxZoo(Zoo):
    """The suite's architectures as NNX modules. NNX creates every variable
    with its shape, so there is no deferred model: ``lazy`` returns ``None``
    (the NNX suite runs without the ``deferred`` capability)."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed

    def _rngs(self) -> nnx.Rngs:
        return nnx.Rngs(self._seed)

    @staticmethod
    def _wrap(module: nnx.Module) -> Any:
        import unified_params as up

        return up.wrap(module)

    def mlp(self) -> Any:
        r = self._rngs()
        return self._wrap(
            nnx.Sequential(nnx.Linear(4, 8, rngs=r), nnx.relu, nnx.Linear(8, 1, rngs=r))
        )

    def nested(self) -> Any:
        r = self._rngs()
        return self._wrap(nnx.Sequential(nnx_block2(r), nnx.Linear(4, 1, rngs=r)))

    def shared(self) -> Any:
        r = self._rngs()
        shared = nnx.Linear(8, 8, rngs=r)
        return self._wrap(
            nnx.Sequential(
                nnx.Linear(4, 8, rngs=r),
                nnx.relu,
                shared,
                nnx.relu,
                shared,
                nnx.relu,
                nnx.Linear(8, 1, rngs=r),
            )
        )

    def norm(self) -> Any:
        r = self._rngs()
        return self._wrap(
            nnx.Sequential(
                nnx.Linear(4, 8, rngs=r),
                nnx.BatchNorm(8, use_running_average=True, rngs=r),
                nnx.relu,
                nnx.Linear(8, 1, rngs=r),
            )
        )

    def lazy(self) -> Any:
        return None

    def cnn(self) -> Any:
        r = self._rngs()
        return self._wrap(
            nnx.Sequential(
                nnx.Conv(1, 4, (3, 3), padding="VALID", rngs=r),
                nnx.relu,
                _global_mean,
                nnx.Linear(4, 2, rngs=r),
            )
        )

    def cnn_input(self, x_nchw: np.ndarray) -> Any:
        return _nhwc(x_nchw)
