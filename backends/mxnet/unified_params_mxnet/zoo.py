"""The conformance zoo in Gluon, built the way the "Parameter Management"
chapter builds it (``nn.Sequential`` and ``add``), with Gluon's default
initializer.

Design constraints: ``unified_params`` is imported inside the methods (the
zoo is loaded by the suite after the core). The zoo never calls
``npx.set_np()``: models are built in whichever interface (``mx.np`` or
``mx.nd``) the caller's process uses. Activations are separate blocks, so that
positional indexing (``m[2]``) matches the other backends' zoos.
"""

from __future__ import annotations

from typing import Any

from mxnet.gluon import nn

from unified_params.adapter import Zoo

__all__ = ["MXNetZoo", "block1", "block2"]


def block1() -> nn.Sequential:
    """The chapter's ``block1``: Dense(4->8), ReLU, Dense(8->4), ReLU."""
    net = nn.Sequential()
    net.add(
        nn.Dense(8, in_units=4),
        nn.Activation("relu"),
        nn.Dense(4, in_units=8),
        nn.Activation("relu"),
    )
    return net


def block2() -> nn.Sequential:
    """The chapter's ``block2``: four ``block1``, registered under the keys
    ``block 0`` ... ``block 3`` (as the PyTorch and Keras zoos name them, so that
    a file saved from one loads by name into the other); ``Sequential`` still
    runs and indexes them by position."""
    net = nn.Sequential()
    for i in range(4):
        net.register_child(block1(), f"block {i}")
    return net


class MXNetZoo(Zoo):
    """The suite's five architectures as Gluon blocks, wrapped."""

    @staticmethod
    def _wrap(net: nn.Block, initialize: bool = True) -> Any:
        import unified_params as up

        if initialize:
            net.initialize()
        return up.wrap(net)

    def mlp(self) -> Any:
        net = nn.Sequential()
        net.add(nn.Dense(8, in_units=4), nn.Activation("relu"), nn.Dense(1, in_units=8))
        return self._wrap(net)

    def nested(self) -> Any:
        net = nn.Sequential()
        net.add(block2(), nn.Dense(1, in_units=4))
        return self._wrap(net)

    def shared(self) -> Any:
        shared = nn.Dense(8, in_units=8)
        net = nn.Sequential()
        net.add(
            nn.Dense(8, in_units=4),
            nn.Activation("relu"),
            shared,
            nn.Activation("relu"),
            shared,
            nn.Activation("relu"),
            nn.Dense(1, in_units=8),
        )
        return self._wrap(net)

    def lazy(self) -> Any:
        net = nn.Sequential()
        net.add(nn.Dense(8), nn.Activation("relu"), nn.Dense(1))
        return self._wrap(net, initialize=False)

    def cnn(self) -> Any:
        net = nn.Sequential()
        net.add(
            nn.Conv2D(4, 3, in_channels=1),
            nn.Activation("relu"),
            nn.GlobalAvgPool2D(),
            nn.Flatten(),
            nn.Dense(2, in_units=4),
        )
        return self._wrap(net)

    def norm(self) -> Any:
        # use_global_stats: the batch norm normalizes with its running
        # statistics even inside autograd.record() (PyTorch's eval() form).
        net = nn.Sequential()
        net.add(
            nn.Dense(8, in_units=4),
            nn.BatchNorm(in_channels=8, use_global_stats=True),
            nn.Activation("relu"),
            nn.Dense(1, in_units=8),
        )
        return self._wrap(net)
