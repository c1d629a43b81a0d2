"""egjax: explanatory graphs of CNN knowledge (Zhang et al., AAAI 2018) in JAX."""

from egjax.config import GraphConfig, LayerConfig

__all__ = ["GraphConfig", "LayerConfig"]
