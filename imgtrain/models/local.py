"""The table of our own nets, filled by `@register_model` (small.py); registry.py looks names up in it.

A module of its own so that small.py (which registers) and registry.py (which imports small.py, so that
importing the registry knows every local net) import it without importing each other.
"""
from __future__ import annotations

from typing import Callable

_local: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Register `fn(num_classes, in_chans, img_size, **kw) -> nn.Module` under its function name."""
    if fn.__name__ in _local:
        raise ValueError(f"local model '{fn.__name__}' is registered twice")
    _local[fn.__name__] = fn
    return fn
