"""Heat maps: where in an image a node finds its evidence, drawn over the image.

A node's heat map in image n, on its layer's map grid (cells q), is

    heat(q) = max(x_c(q), 0) * exp(-|q - p|^2 / (2 d^2))   for |q - round(p)|_inf <= h,
    heat(q) = 0                                              elsewhere,

with x_c the normalised map of the node's filter c in image n as stored (unmirrored), p its
detection there in cells (`evaluate.node_detections`, mirrored detections mapped back), d its
deformation scale (cells) and h its search half-range `round(min(search_max_range * S / 2,
deform_ratio * d))` (`getBasicSettings.m`). It is the filter's rectified response inside the
node's search window, weighted by the node's own positional spread around where it was found:
the part of the filter's activity this node accounts for. (The EM's window is centred on the
node's expected position given its parents, within h of the detection, and weighs cells
with a narrower kernel; the heat map shows the response, not the EM's exact score.) A
layer's heat map is the cell-wise maximum over the chosen nodes. Cells are drawn at their
centres' pixels, `center + cell * stride`, bilinearly in between.
"""

from __future__ import annotations

import numpy as np

from egjax import evaluate, geometry
from egjax.config import LayerConfig
from egjax.visualize import raster, selection, summary

OPACITY = 0.8
LABEL_WIDTH = 86
TITLE_HEIGHT = 36
BAR_BLOCK, BAR_WIDTH, BAR_MARGIN = 80, 14, 10


def search_half_range(deform, config: LayerConfig) -> np.ndarray:
    """A node's search half-range in cells: `round(min(search_max_range * S / 2,
    deform_ratio * deform))`, rounding half away from zero."""
    limit = np.minimum(config.search_max_range * config.map_size / 2,
                       config.deform_ratio * np.asarray(deform, np.float64))
    return np.floor(limit + 0.5).astype(np.int64)


def detected_cells(fit, image_size: int) -> np.ndarray:
    """`[V, N, 2]` fractional cells (h, w) of each node's detection in the unmirrored image."""
    cfg = fit.config
    return geometry.to_cells(evaluate.node_detections(fit, image_size).px, cfg.stride, cfg.center)


def evidence(values: np.ndarray, cells: np.ndarray, deform: np.ndarray,
             half_range: np.ndarray) -> np.ndarray:
    """Heat maps `[B, S, S]` (module docstring) from maps `values [B, S, S]` of the nodes'
    filters, detections `cells [B, 2]`, deformation scales `deform [B]` and search
    half-ranges `half_range [B]` (cells)."""
    size = values.shape[-1]
    grid = np.arange(size)
    cells = np.asarray(cells, np.float64)
    centre = np.floor(cells + 0.5)
    dh = grid[None, :] - cells[:, :1]                                        # [B, S]
    dw = grid[None, :] - cells[:, 1:]
    inside_h = np.abs(grid[None, :] - centre[:, :1]) <= half_range[:, None]
    inside_w = np.abs(grid[None, :] - centre[:, 1:]) <= half_range[:, None]
    two_var = 2 * np.asarray(deform, np.float64)[:, None] ** 2
    along_h = np.where(inside_h, np.exp(-dh ** 2 / two_var), 0)
    along_w = np.where(inside_w, np.exp(-dw ** 2 / two_var), 0)
    weight = along_h[:, :, None] * along_w[:, None, :]
    return (np.maximum(values, 0) * weight).astype(np.float32)


def node_heatmaps(maps, fit, node: int, image_size: int) -> np.ndarray:
    """`[N, S, S]` heat maps of one node of `fit` in every image; `maps [N, S, S, C]` the
    layer's normalised unmirrored maps (uint8 `QuantizedMaps` decoded)."""
    return layer_heatmaps(maps, fit, [node], image_size)


def layer_heatmaps(maps, fit, nodes, image_size: int) -> np.ndarray:
    """`[N, S, S]` cell-wise maximum of the heat maps of `nodes` of `fit` in every image."""
    nodes = np.asarray(nodes)
    return _maximum(np.asarray(evaluate.decoded(maps)), fit, nodes,
                    detected_cells(fit, image_size)[nodes])


def _maximum(values: np.ndarray, fit, nodes: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """`layer_heatmaps` in the images of `values [n, S, S, C]`, the nodes detected at `cells
    [B, n, 2]` there."""
    per_filter = np.shape(fit.deform)[1]
    deform = np.asarray(fit.deform).reshape(-1)[nodes]
    half = search_half_range(deform, fit.config)
    out = np.zeros(values.shape[:3], np.float32)
    for i, v in enumerate(nodes):
        filter_maps = values[..., v // per_filter]                            # [N, S, S]
        count = len(filter_maps)
        heat = evidence(filter_maps, cells[i], np.full(count, deform[i]),
                        np.full(count, half[i]))
        out = np.maximum(out, heat)
    return out


def upsample(heat: np.ndarray, config: LayerConfig, image_size: int) -> np.ndarray:
    """`[..., S, S]` -> `[..., image_size, image_size]`: bilinear between cell centres
    (`center + cell * stride` px), the outer cells' values beyond them."""
    pixels = np.arange(image_size)
    where = np.clip(geometry.to_cells(pixels, config.stride, config.center), 0,
                    config.map_size - 1)
    low = np.minimum(np.floor(where).astype(int), config.map_size - 2)
    frac = where - low
    rows = heat[..., low, :] * (1 - frac)[:, None] + heat[..., low + 1, :] * frac[:, None]
    return rows[..., low] * (1 - frac) + rows[..., low + 1] * frac


def colours(value: np.ndarray) -> np.ndarray:
    """The 'hot' ramp: `[...]` in [0, 1] -> RGB `[..., 3]` in [0, 1] (black, red, yellow,
    white); the explorer page draws with the same ramp."""
    value = np.clip(value, 0, 1)[..., None]
    return np.clip(3 * value - np.array([0, 1, 2]), 0, 1)


def overlay(image: np.ndarray, heat: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """uint8 `image [H, W, 3]` with `heat [H, W]` drawn over it: colour `colours(heat / vmax)`
    at opacity `0.8 * heat / vmax` (vmax: the heat map's maximum by default)."""
    vmax = float(np.max(heat)) if vmax is None else float(vmax)
    value = np.clip(heat / vmax, 0, 1) if vmax > 0 else np.zeros_like(heat)
    alpha = (OPACITY * value)[..., None]
    blended = image.astype(np.float32) * (1 - alpha) + 255 * colours(value) * alpha
    return np.round(blended).astype(np.uint8)


def heatmap_grid(images: np.ndarray, graph, maps, *, images_shown: int = 6, nodes: int = 10,
                 cell: int = 160, summaries=None) -> np.ndarray:
    """uint8 picture: under a title (`TITLE_HEIGHT` px), one row per layer (top layer
    first): a label (`LABEL_WIDTH` px), then per image (`cell` px, 2 px apart) the layer heat
    map of its `nodes` highest-scoring live nodes (`selection.strongest`) over the image,
    then the row's colour bar (`colour_bar`): one colour scale per row, 0 to its maximum.
    `summaries`: the graph's `summary.summarize`, if already made; then only the first
    `images_shown` (at most `summary.FIRST`) images and maps are read."""
    size = graph.config.image_size
    summaries = summaries or summary.summarize(graph, first=images_shown)
    shown = min(images_shown, summaries[0].num_images)
    if shown > summaries[0].first_score.shape[1]:
        raise ValueError(f"images_shown must be at most {summaries[0].first_score.shape[1]} "
                         f"(the summaries' first images), got {images_shown}")
    rows = []
    for index in reversed(range(len(graph.layers))):
        fit, det = graph.layers[index], summaries[index]
        chosen = selection.strongest(det, nodes)
        first = np.asarray(evaluate.decoded(maps[index]))[:shown]
        cells = geometry.to_cells(det.first_px[chosen, :shown], fit.config.stride,
                                  fit.config.center)
        heat = upsample(_maximum(first, fit, chosen, cells), fit.config, size)
        vmax = float(heat.max())
        label = raster.text_block([fit.config.tap or f"layer {index}", f"top {len(chosen)}",
                                   "nodes"], LABEL_WIDTH, cell)
        tiles = [raster.resized(overlay(images[n], heat[n], vmax), cell) for n in range(shown)]
        rows.append(raster.row([label] + tiles + [colour_bar(vmax, cell)], 2))
    title = raster.text_block([
        f"Heat maps of each layer's {nodes} highest-scoring nodes (mean of their top-"
        f"{evaluate.TOP_IMAGES} image scores), cell-wise maximum, in images 0-{shown - 1}: "
        "a node's filter response inside its search window,",
        "weighted by its deformation Gaussian around its position. Colour: 0 to the row's "
        "maximum, in the maps' normalised units (response / its s.d. on negative images); "
        f"opacity {OPACITY:g} x value / maximum."], rows[0].shape[1], TITLE_HEIGHT)
    return raster.column([title] + rows, 4)


def colour_bar(vmax: float, height: int) -> np.ndarray:
    """uint8 `[height, BAR_BLOCK, 3]`: a bar `BAR_WIDTH` px wide from row `BAR_MARGIN` to
    `height - BAR_MARGIN` (exclusive), at `BAR_MARGIN` px from the left, value vmax at its
    top row falling linearly to 0 at its bottom row, drawn as `overlay` draws it over
    mid-grey; labelled, right of it, `vmax` (3 significant digits) at the top and 0 at the
    bottom (`raster.text_block`s 18 px high from rows `BAR_MARGIN - 4` and `height -
    BAR_MARGIN - 14`)."""
    length, right = height - 2 * BAR_MARGIN, BAR_MARGIN + BAR_WIDTH
    value = np.linspace(1, 0, length)[:, None] * np.ones(BAR_WIDTH)
    block = np.full((height, BAR_BLOCK, 3), raster.BACKGROUND, np.uint8)
    block[BAR_MARGIN:height - BAR_MARGIN, BAR_MARGIN:right] = overlay(
        np.full((length, BAR_WIDTH, 3), 128, np.uint8), value, 1)
    for text, row in ((f"{vmax:.3g}", BAR_MARGIN - 4), ("0", height - BAR_MARGIN - 14)):
        block[row:row + 18, right:] = raster.text_block([text], BAR_BLOCK - right, 18)
    return block
