"""Every picture of a run's nodes in one call: patch grids, heat maps, graph figure, explorer."""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import numpy as np

from egjax import distributed, evaluate
from egjax.visualize import explorer, graph_figure, heatmaps, patches, raster, selection, summary


class Rows:
    """Some rows of an array `[N, ...]`, read as the array is: `rows[n]` for `n` among
    them, `len(rows)` N."""

    def __init__(self, wanted, values, total: int):
        self._rows = dict(zip(np.asarray(wanted).tolist(), values))
        self._total = total

    @property
    def indices(self) -> list[int]:
        """The rows held, increasing."""
        return sorted(self._rows)

    def __getitem__(self, n):
        return self._rows[int(n)]

    def __len__(self) -> int:
        return self._total


class Prepared(NamedTuple):
    """What `write` and `figures.detections` read of the images and maps: the images they
    show (`images`: `Rows`: the first `summary.FIRST` and the patch grids' best ones), the
    decoded maps of the first `summary.FIRST` images (`maps`, per layer) and the explorer's
    `explorer.Prepared`."""

    images: Rows
    maps: list
    explorer: explorer.Prepared


def prepare(graph, images, maps, summaries, *, across_processes: bool = False) -> Prepared:
    """`Prepared` from `images [N, H, W, 3]` and `maps` (as `write` takes them) and the
    graph's `summary.summarize`. `across_processes`: every process calls it with its share
    of the images and maps (images p, p + P, ...: `distributed.shard()`); only the images
    shown, the first images' maps, the explorer's JPEGs and heat-map windows are
    exchanged, and all get the whole."""
    num = summaries[0].num_images
    first = np.arange(min(summary.FIRST, num))
    wanted = set(first.tolist())
    for det in summaries:
        chosen = selection.strongest(det, patches.NODES)
        wanted |= set(det.image[chosen, :patches.COUNT].reshape(-1).tolist())
    wanted = sorted(wanted)
    gather = distributed.gather_rows if across_processes else (lambda x, rows: x[rows])
    shown = Rows(wanted, gather(np.asarray(images), wanted), num)
    first_maps = [gather(np.asarray(evaluate.decoded(m)), first) for m in maps]
    return Prepared(shown, first_maps, explorer.prepare(graph, images, maps, summaries,
                                                        across_processes=across_processes))


def write(directory, graph, images, maps, landmarks=None, visible=None, *,
          title: str = "explanatory graph", summaries=None, prepared=None) -> list[str]:
    """Write into `directory`: `patches_<tap>.png` per layer (`patches.layer_patch_grid`),
    `heatmaps.png` (`heatmaps.heatmap_grid`), `graph.png` (`graph_figure.graph_figure`) and
    `explorer/` (`explorer.write`), all from the graph's `summary.summarize` (`summaries`, if
    already made). Arguments as `explorer.write`; `prepared`: `prepare`'s, if already made
    (`images` and `maps` are not read then). Returns the names written."""
    directory = pathlib.Path(directory)
    summaries = summaries or summary.summarize(graph, landmarks, visible)
    if prepared is not None:
        images, maps = prepared.images, prepared.maps
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
                   summaries=summaries, prepared=prepared and prepared.explorer)
    return names + ["heatmaps.png", "graph.png", "explorer/index.html"]
