"""Compatibility alias of :mod:`unified_params.adapter` (the public adapter API)."""

from .adapter import *  # noqa: F403
from .adapter import __all__  # noqa: F401
