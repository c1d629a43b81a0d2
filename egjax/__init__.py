"""egjax: explanatory graphs of CNN knowledge (Zhang et al., AAAI 2018) in JAX."""

from egjax import continuity, contrastive, saliency
from egjax.config import GraphConfig, LayerConfig

__all__ = ["GraphConfig", "LayerConfig", "continuity", "contrastive", "saliency"]
