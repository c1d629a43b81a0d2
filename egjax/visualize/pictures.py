"""Every picture of a run's nodes in one call: patch grids, heat maps, graph figure, explorer."""

from __future__ import annotations

import pathlib

from egjax.visualize import explorer, graph_figure, heatmaps, patches, raster, summary


def write(directory, graph, images, maps, landmarks=None, visible=None, *,
          title: str = "explanatory graph", summaries=None) -> list[str]:
    """Write into `directory`: `patches_<tap>.png` per layer (`patches.layer_patch_grid`),
    `heatmaps.png` (`heatmaps.heatmap_grid`), `graph.png` (`graph_figure.graph_figure`) and
    `explorer/` (`explorer.write`), all from the graph's `summary.summarize` (`summaries`, if
    already made). Arguments as `explorer.write`. Returns the names written."""
    directory = pathlib.Path(directory)
    summaries = summaries or summary.summarize(graph, landmarks, visible)
    names = []
    for index, fit in enumerate(graph.layers):
        name = f"patches_{fit.config.tap or index}.png"
        raster.save(patches.layer_patch_grid(images, graph, index, summaries=summaries),
                    directory / name)
        names.append(name)
    raster.save(heatmaps.heatmap_grid(images, graph, maps, summaries=summaries),
                directory / "heatmaps.png")
    graph_figure.graph_figure(graph, directory / "graph.png", summaries=summaries)
    explorer.write(directory / "explorer", graph, images, maps, landmarks, visible, title=title,
                   summaries=summaries)
    return names + ["heatmaps.png", "graph.png", "explorer/index.html"]
