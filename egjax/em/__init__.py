"""The EM kernel of the explanatory graph."""

from egjax.em.fit import fit_graph, fit_layer, random_init

__all__ = ["fit_graph", "fit_layer", "random_init"]
