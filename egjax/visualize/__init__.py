"""Pictures of what the graph's nodes mean."""

from egjax.visualize import (explorer, figures, graph_figure, heatmaps, patches, pictures, raster,
                             selection)

__all__ = ["explorer", "figures", "graph_figure", "heatmaps", "patches", "pictures", "raster",
           "selection"]
