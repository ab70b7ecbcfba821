"""Models: backbones, conversions, the CNN-RNN, CNN-S2S and flat heads, behind one registry.

The registry is imported on first use, so that importing one model module (as inference does)
does not build the whole registry and its backbones' imports.
"""
from __future__ import annotations

__all__ = ["MODEL_KINDS", "conversion_summary", "count_parameters", "create_model"]


def __getattr__(name: str):
    if name in __all__:
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'dhnn.models' has no attribute {name!r}")
