"""The conformance zoo in Keras 3: the same architectures as every backend's.

Design constraints: each model is built (``build`` with the input shape) so
its parameters are concrete, except ``lazy``. Activations that PyTorch writes
as ``nn.ReLU`` modules are ``activation='relu'`` in ``mlp`` and ``nested`` (as
the chapter writes them in Keras) and ``ReLU`` layers where the suite needs the
positions of a shared layer (``shared``) or of the CNN's stages. Keras 3's
``Sequential`` keeps a layer added twice at both positions, so ``shared`` is a
``Sequential`` like PyTorch's.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers

from unified_params.adapter import Zoo

__all__ = ["KerasZoo", "rgnet"]


def _wrap(model: Any) -> Any:
    import unified_params as up

    return up.wrap(model)


def _block1(name: str | None = None) -> keras.Sequential:
    return keras.Sequential(
        [layers.Dense(8, activation="relu"), layers.Dense(4, activation="relu")], name=name
    )


def rgnet() -> keras.Sequential:
    """The chapter's nested network: ``block2`` (four ``block1``) then Dense(1)."""
    block2 = keras.Sequential([_block1(f"block {i}") for i in range(4)])
    net = keras.Sequential([block2, layers.Dense(1)])
    net.build((None, 4))
    return net


class KerasZoo(Zoo):
    """:class:`unified_params.Zoo` for the ``tensorflow`` backend."""

    def mlp(self) -> Any:
        net = keras.Sequential([layers.Dense(8, activation="relu"), layers.Dense(1)])
        net.build((None, 4))
        return _wrap(net)

    def nested(self) -> Any:
        return _wrap(rgnet())

    def shared(self) -> Any:
        shared = layers.Dense(8)
        net = keras.Sequential(
            [
                layers.Dense(8),
                layers.ReLU(),
                shared,
                layers.ReLU(),
                shared,
                layers.ReLU(),
                layers.Dense(1),
            ]
        )
        net.build((None, 4))
        return _wrap(net)

    def lazy(self) -> Any:
        return _wrap(keras.Sequential([layers.Dense(8, activation="relu"), layers.Dense(1)]))

    def cnn(self) -> Any:
        net = keras.Sequential(
            [layers.Conv2D(4, 3), layers.ReLU(), layers.GlobalAveragePooling2D(), layers.Dense(2)]
        )
        net.build((None, 6, 6, 1))
        return _wrap(net)

    def norm(self) -> Any:
        """BatchNorm with PyTorch's defaults (``eps=1e-5``, Keras momentum 0.9 is
        PyTorch's 0.1), so that ported values give the same outputs. A plain
        ``model(x)`` call runs it in inference form (``training=False``)."""
        net = keras.Sequential(
            [
                layers.Dense(8),
                layers.BatchNormalization(epsilon=1e-5, momentum=0.9),
                layers.ReLU(),
                layers.Dense(1),
            ]
        )
        net.build((None, 4))
        return _wrap(net)

    def cnn_input(self, x_nchw: np.ndarray) -> Any:
        """NCHW to Keras' channels-last NHWC."""
        return np.ascontiguousarray(np.transpose(np.asarray(x_nchw), (0, 2, 3, 1)))
