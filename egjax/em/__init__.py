"""The EM kernel of the explanatory graph, and inference of a fitted graph on new images."""

from egjax.em.fit import fit_graph, fit_layer, random_init
from egjax.em.inference import LayerInference, infer_graph, infer_layer

__all__ = ["LayerInference", "fit_graph", "fit_layer", "infer_graph", "infer_layer", "random_init"]
