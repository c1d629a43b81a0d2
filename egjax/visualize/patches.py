"""Top patches: what a node looks at, cut from the images where it scores highest.

A node's patch in an image is the square of `patch_side` pixels centred on the node's
detection there (`evaluate.node_detections`: the better orientation, positions found in a
mirrored image mapped back to the image as stored). Pixels outside the image are grey.
"""

from __future__ import annotations

import numpy as np

from egjax import evaluate
from egjax.config import LayerConfig
from egjax.visualize import raster, selection, summary

PAPER_SIDE = 70      # px: the paper's patches for conv4 of VGG-16 (stride 8) at 224 px
PAPER_STRIDE = 8
PADDING = 128        # grey outside the image
NODES, COUNT = 12, 10   # `layer_patch_grid`: nodes shown, patches per node


def patch_side(config: LayerConfig) -> int:
    """A node's patch side in pixels: the paper's 70 px at stride 8 (VGG-16 conv4), scaled
    with the layer's stride (140 px for conv5). Theoretical receptive fields (conv5_3: 196
    px) cover nearly the whole 224-px image, so they show little."""
    return int(round(PAPER_SIDE * config.stride / PAPER_STRIDE))


def crop(image: np.ndarray, center, side: int) -> np.ndarray:
    """The `side` x `side` patch of `image [H, W, 3]` centred on pixel `center` (h, w; 0-based
    pixel centres; fractions are rounded: first row `floor(h - (side - 1) / 2 + 1/2)`, so the
    patch of a mirrored position is the mirrored patch); grey where it leaves the image."""
    height, width = image.shape[:2]
    top, left = (int(np.floor(c - (side - 1) / 2 + 0.5)) for c in center)
    patch = np.full((side, side) + image.shape[2:], PADDING, image.dtype)
    h0, w0 = max(top, 0), max(left, 0)
    h1, w1 = min(top + side, height), min(left + side, width)
    if h0 < h1 and w0 < w1:
        patch[h0 - top:h1 - top, w0 - left:w1 - left] = image[h0:h1, w0:w1]
    return patch


def best_images(score: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` images with the highest scores `[N]`, best first (stable)."""
    return np.argsort(-np.asarray(score), kind="stable")[:count]


def node_patches(images: np.ndarray, det: evaluate.Detections, node: int, count: int,
                 side: int) -> np.ndarray:
    """`[count, side, side, 3]` patches of `node` in its `count` best images, best first.

    `images [N, H, W, 3]` uint8 as stored (unmirrored), `det` the layer's detections.
    """
    chosen = best_images(det.score[node], count)
    return np.stack([crop(images[n], det.px[node, n], side) for n in chosen])


def patch_grid(images: np.ndarray, fit, image_size: int, nodes, *, count: int = 10,
               side: int | None = None, cell: int = 64, title: str | None = None,
               layer_summary=None) -> np.ndarray:
    """One row per node of `fit` (in the order of `nodes`): a label (filter, node, mean of
    its top-20 scores) and its `count` (at most `summary.TOP`) best patches, each resized to
    `cell` px; under `title` (its lines 15 px apart) if given. uint8. `layer_summary`: the
    layer's `summary.LayerSummary`, if already made."""
    if count > summary.TOP:
        raise ValueError(f"count must be at most {summary.TOP}, got {count}")
    side = side or patch_side(fit.config)
    det = layer_summary or summary.summarize_layer(fit, image_size)
    per_filter = np.shape(fit.deform)[1]
    top = selection.strength(det)
    rows = []
    if title:
        lines = title.splitlines()
        rows.append(raster.text_block(lines, 110 + count * (cell + 2), 3 + 15 * len(lines),
                                      size=12))
    for v in nodes:
        f, k = divmod(int(v), per_filter)
        label = raster.text_block([f"filter {f}", f"node {k}", f"score {top[v]:.2f}"], 106, cell)
        tiles = [raster.resized(crop(images[n], px, side), cell)   # as `node_patches`
                 for n, px in zip(det.image[v, :count].tolist(), det.px[v, :count])]
        rows.append(raster.row([label] + tiles, 2))
    return raster.column(rows, 4)


def layer_patch_grid(images: np.ndarray, graph, layer: int, *, nodes: int = NODES,
                     count: int = COUNT, cell: int = 64, summaries=None) -> np.ndarray:
    """`patch_grid` of a graph layer's `nodes` highest-scoring live nodes
    (`selection.strongest`: by the mean of their top-20 image scores, as
    `evaluate.instability` ranks them), with a title that says so. `summaries`: the graph's
    `summary.summarize`, if already made."""
    fit = graph.layers[layer]
    det = (summaries[layer] if summaries else
           summary.summarize_layer(fit, graph.config.image_size))
    chosen = selection.strongest(det, nodes)
    name = fit.config.tap or f"layer {layer}"
    title = (f"{name}: the {len(chosen)} highest-scoring nodes (mean of their top-"
             f"{evaluate.TOP_IMAGES} image scores)\n{patch_side(fit.config)}-px patches at "
             f"each node's position in its {count} best images")
    return patch_grid(images, fit, graph.config.image_size, chosen, count=count, cell=cell,
                      title=title, layer_summary=det)
