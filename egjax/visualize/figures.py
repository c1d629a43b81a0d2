"""Summary figures of a run: instability per layer, and where chosen nodes are found."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from egjax import evaluate  # noqa: E402
from egjax.visualize import raster, selection, summary  # noqa: E402

LAYER_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628")
NODE_COLOURS = ((228, 26, 28), (30, 110, 220), (40, 170, 60), (170, 60, 190), (255, 127, 0),
                (0, 200, 220))
RING_RADIUS = (3, 8)          # px in the thumbnail: at a score of 0+ and at the node's best
RING_WIDTH = 2
LABEL_WIDTH = 96
TITLE_HEIGHT = 36


def instability_chart(metrics: dict, path) -> None:
    """Bar chart: location instability of nodes and raw filters per layer (`evaluate.compare`)."""
    rows = metrics["layers"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=120)
    ax.bar(x - 0.2, [r["filters"] for r in rows], 0.4, label="raw filters", color="#bbbbbb")
    ax.bar(x + 0.2, [r["nodes"] for r in rows], 0.4, label="graph nodes", color="#377eb8")
    for i, r in enumerate(rows):
        ax.text(i + 0.2, r["nodes"], f"{r['ratio']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [r["tap"] or f"layer {i}" for i, r in enumerate(rows)])
    ax.set_ylabel("instability / image diagonal")
    ax.set_title(f"Location instability of each layer's {evaluate.TOP_NODES} highest-scoring "
                 f"nodes\nand filters, over their top-{evaluate.TOP_IMAGES} images (lower is "
                 "better)", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def detections(images: np.ndarray, graph, path, *, landmarks=None, visible=None,
               images_shown: int = 6, nodes_per_layer: int = 6, summaries=None) -> None:
    """PNG of `detections_grid` (same arguments)."""
    raster.save(detections_grid(images, graph, landmarks=landmarks, visible=visible,
                                images_shown=images_shown, nodes_per_layer=nodes_per_layer,
                                summaries=summaries), path)


def detections_grid(images: np.ndarray, graph, *, landmarks=None, visible=None,
                    images_shown: int = 6, nodes_per_layer: int = 6,
                    cell: int = 150, summaries=None) -> np.ndarray:
    """uint8 picture: where chosen nodes are found in the first `images_shown` images
    `[N, H, W, 3]` (unmirrored). Under a title (`TITLE_HEIGHT` px), one row per layer (top
    layer first): a label (`LABEL_WIDTH` px: the layer, the nodes in their colours), then
    each image resized to `cell` px, 2 px apart, with a ring per node at its position there
    (image pixel p at `(p + 1/2) cell / size - 1/2`), radius growing with the node's score in
    that image relative to its best. No ring where the node scores 0 or lies outside the
    image; rings are drawn inside the thumbnail, clipped by its edges.

    Nodes per layer: the `nodes_per_layer` stablest (`selection.stablest`; `landmarks
    [N, P, 2]` px and `visible [N, P]` given), else the highest-scoring live ones.

    `summaries`: the graph's `summary.summarize` (with the landmarks, if given), if already
    made; then only the first `images_shown` (at most `summary.FIRST`) `images` are read."""
    if nodes_per_layer > len(NODE_COLOURS):
        raise ValueError(f"nodes_per_layer must be at most {len(NODE_COLOURS)} (one colour "
                         f"each), got {nodes_per_layer}")
    summaries = summaries or summary.summarize(graph, landmarks, visible, first=images_shown)
    shown = min(images_shown, summaries[0].num_images)
    if shown > summaries[0].first_score.shape[1]:
        raise ValueError(f"images_shown must be at most {summaries[0].first_score.shape[1]} "
                         f"(the summaries' first images), got {images_shown}")
    rows = []
    for index in reversed(range(len(graph.layers))):
        fit, det = graph.layers[index], summaries[index]
        if landmarks is None:
            nodes = selection.strongest(det, nodes_per_layer)
        else:
            nodes = selection.stablest(det, det.instability, nodes_per_layer)
        per_filter = np.shape(fit.deform)[1]
        names = [f"f{v // per_filter}·{v % per_filter}" for v in nodes.tolist()]
        label = raster.text_block([fit.config.tap or f"layer {index}"] + names, LABEL_WIDTH,
                                  cell, colours=[raster.TEXT] + list(NODE_COLOURS))
        tiles = [_rings(images[n], det, nodes, n, cell) for n in range(shown)]
        rows.append(raster.row([label] + tiles, 2))
    if landmarks is None:
        chosen = (f"the {nodes_per_layer} highest-scoring nodes of each layer (score: the mean "
                  f"of a node's top-{evaluate.TOP_IMAGES} image scores)")
    else:
        chosen = (f"the {nodes_per_layer} stablest nodes of each layer (lowest location "
                  f"instability among nodes scoring >= {selection.MIN_SCORE:g}, score: the "
                  f"mean of a node's top-{evaluate.TOP_IMAGES} image scores)")
    title = raster.text_block([f"Where {chosen} are found in images 0-{shown - 1}.",
                               "Ring: the node's position, larger where it scores higher; "
                               "none where it scores 0 or lies outside the image."],
                              rows[0].shape[1], TITLE_HEIGHT)
    return raster.column([title] + rows, 4)


def _rings(image: np.ndarray, det: summary.LayerSummary, nodes: np.ndarray, n: int,
           cell: int) -> np.ndarray:
    """`image` (number `n`) resized to `cell` px with a ring per node of `nodes` found in it."""
    size = image.shape[0]
    tile = Image.fromarray(raster.resized(image, cell))
    draw = ImageDraw.Draw(tile)
    best = det.score[nodes, 0]
    for colour, v, top in zip(NODE_COLOURS, nodes.tolist(), best):
        score, (h, w) = det.first_score[v, n], det.first_px[v, n]
        if score <= 0 or not (-0.5 <= h < size - 0.5 and -0.5 <= w < size - 0.5):
            continue
        y, x = ((p + 0.5) * cell / size - 0.5 for p in (h, w))
        radius = RING_RADIUS[0] + (RING_RADIUS[1] - RING_RADIUS[0]) * score / top
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour,
                     width=RING_WIDTH)
    return np.asarray(tile)
