"""Models: backbones, conversions, the CNN-RNN, CNN-S2S and flat heads, behind one registry."""
from .registry import MODEL_KINDS, conversion_summary, count_parameters, create_model

__all__ = ["MODEL_KINDS", "conversion_summary", "count_parameters", "create_model"]
