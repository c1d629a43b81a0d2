"""egjax: explanatory graphs of CNN knowledge (Zhang et al., AAAI 2018) in JAX."""

from egjax import continuity, contrastive, evaluate, finetune, localize, saliency, synthesis
from egjax.config import GraphConfig, LayerConfig
from egjax.em import LayerInference, fit_graph, fit_layer, infer_graph, infer_layer
from egjax.graph import ExplanatoryGraph, LayerFit

__all__ = ["ExplanatoryGraph", "GraphConfig", "LayerConfig", "LayerFit", "LayerInference",
           "continuity", "contrastive", "evaluate", "finetune", "fit_graph", "fit_layer",
           "infer_graph", "infer_layer", "localize", "saliency", "synthesis"]
