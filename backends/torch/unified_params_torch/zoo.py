"""The conformance zoo in PyTorch, built the way the "Parameter Management"
chapter builds it, with torch's default initializers.

Design constraints: ``unified_params`` is imported inside the methods (the
zoo is loaded by the suite after the core, and a zoo module must not make the
core import itself at import time of the adapter).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from unified_params.adapter import Zoo

__all__ = ["TorchZoo", "block1", "block2"]


def block1() -> nn.Sequential:
    """The chapter's ``block1``: Linear(4->8), ReLU, Linear(8->4), ReLU."""
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU())


def block2() -> nn.Sequential:
    """The chapter's ``block2``: four ``block1`` named ``block 0`` ... ``block 3``."""
    net = nn.Sequential()
    for i in range(4):
        net.add_module(f"block {i}", block1())
    return net


class TorchZoo(Zoo):
    """The suite's architectures as ``nn.Module`` trees, wrapped."""

    @staticmethod
    def _wrap(model: nn.Module) -> Any:
        import unified_params as up

        return up.wrap(model)

    def mlp(self) -> Any:
        return self._wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)))

    def nested(self) -> Any:
        return self._wrap(nn.Sequential(block2(), nn.Linear(4, 1)))

    def shared(self) -> Any:
        shared = nn.Linear(8, 8)
        return self._wrap(
            nn.Sequential(nn.Linear(4, 8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(8, 1))
        )

    def lazy(self) -> Any:
        return self._wrap(nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1)))

    def norm(self) -> Any:
        """BatchNorm in inference form: ``.eval()`` makes its forward use the
        running statistics."""
        return self._wrap(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)).eval())

    def cnn(self) -> Any:
        return self._wrap(
            nn.Sequential(
                nn.Conv2d(1, 4, 3),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(4, 2),
            )
        )
