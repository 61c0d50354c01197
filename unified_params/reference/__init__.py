"""The NumPy reference model kit: the ``numpy`` backend.

>>> from unified_params import reference as ref
>>> net = ref.Sequential(ref.Dense(8), ref.ReLU(), ref.Dense(1))
"""

from ._kit import BatchNorm, Conv2d, Dense, GlobalAvgPool2d, Module, Parameter, ReLU, Sequential, Var

__all__ = ["BatchNorm", "Conv2d", "Dense", "GlobalAvgPool2d", "Module", "Parameter", "ReLU", "Sequential", "Var"]
