"""Location instability of graph nodes and of raw filters (the paper's Table 1 metric).

Implements `computeStability.m`, `computeStability_raw.m` and `getDistSqrtVar.m` of the
original release: a part pattern is stable when its distance to an object landmark varies
little over the images where it fires most. Lower is better; the result is divided by the
image diagonal.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from egjax import geometry
from egjax.maps import QuantizedMaps, dequantize

TOP_IMAGES = 20
TOP_NODES = 167


class Detections(NamedTuple):
    """Per pattern (node or filter) and image: `score [V, N]` and pixel position `px [V, N, 2]`
    (h, w, 0-based, in the frame of the unmirrored image)."""

    score: np.ndarray
    px: np.ndarray


def node_detections(fit, image_size: int) -> Detections:
    """A fitted layer's detections: each node takes the orientation with the higher score,
    and positions found in a mirrored image are mirrored back in pixels (`getAlterProbPos`;
    `geometry.cells_to_pixels`)."""
    if not fit.has_records:
        raise ValueError("node_detections needs the layer's records of its training images, "
                         "and this graph was saved without them (`save(path, "
                         "records=False)`); use a graph saved with its records")
    cfg = fit.config
    score, alt_score = np.asarray(fit.score), np.asarray(fit.alt_score)
    use_alt = alt_score > score
    cells = np.where(use_alt[..., None], np.asarray(fit.alt_pos), np.asarray(fit.pos))
    mirrored = np.asarray(fit.flip)[None, :] != use_alt
    px = geometry.cells_to_pixels(cells, cfg, mirrored, image_size)
    return Detections(np.maximum(score, alt_score), px)


def filter_detections(maps: np.ndarray, stride: float, center: float) -> Detections:
    """Raw-filter baseline: each filter's position is the argmax of its map (first in
    w-major order), its score the maximum. `maps [N, S, S, C]` normalised maps."""
    n, s, _, c = maps.shape
    flat = np.asarray(maps).transpose(3, 0, 2, 1).reshape(c, n, s * s)   # w-major cells
    index = np.argmax(flat, axis=-1)
    cells = np.stack([index % s, index // s], -1)
    return Detections(np.max(flat, axis=-1), geometry.to_pixels(cells, stride, center))


def ranked(det: Detections, top_images: int = TOP_IMAGES) -> np.ndarray:
    """Pattern indices by the mean of their `top_images` best scores, best first (stable)."""
    score = np.asarray(det.score)
    best = -np.sort(-score, axis=1)[:, :min(top_images, score.shape[1])]
    return np.argsort(-best.mean(axis=1), kind="stable")


def node_instability(det: Detections, landmarks: np.ndarray, visible: np.ndarray,
                     top_images: int = TOP_IMAGES, patterns=None) -> np.ndarray:
    """Per pattern, the landmark-averaged std of its distance to each landmark (pixels).

    Over the pattern's `top_images` best images and each landmark visible there, the
    standard deviation (N-1) of the pixel distance to the landmark (0 for a landmark seen in
    a single image, as in the original), averaged over the landmarks seen at all; NaN where
    none is seen. `patterns` selects patterns (default all). `landmarks [N, P, 2]` pixels,
    `visible [N, P]`. Returns `[len(patterns)]`.
    """
    score, px = np.asarray(det.score), np.asarray(det.px)
    num_images = score.shape[1]
    if num_images < 2:
        raise ValueError(f"instability needs at least 2 images, got {num_images}")
    patterns = np.arange(score.shape[0]) if patterns is None else np.asarray(patterns)
    k = min(top_images, num_images)
    out = np.full(len(patterns), np.nan)
    for start in range(0, len(patterns), 4096):                     # bounded memory
        chosen = patterns[start:start + 4096]
        images = np.argsort(-score[chosen], axis=1, kind="stable")[:, :k]          # [B, k]
        where = np.take_along_axis(px[chosen], images[..., None], axis=1)           # [B, k, 2]
        dist = np.linalg.norm(landmarks[images] - where[:, :, None, :], axis=-1)    # [B, k, P]
        seen = visible[images]
        count = seen.sum(axis=1)                                                     # [B, P]
        mean = np.where(seen, dist, 0).sum(axis=1) / np.maximum(count, 1)
        squares = np.where(seen, (dist - mean[:, None]) ** 2, 0).sum(axis=1)
        spread = np.sqrt(squares / np.maximum(count - 1, 1))
        parts = count > 0
        with np.errstate(invalid="ignore"):
            out[start:start + 4096] = np.where(parts, spread, 0).sum(1) / parts.sum(1)
    return out


def instability(det: Detections, landmarks: np.ndarray, visible: np.ndarray,
                top_nodes: int = TOP_NODES, top_images: int = TOP_IMAGES) -> float:
    """Mean of `node_instability` over the top patterns (pixels).

    Patterns are ranked by the mean of their `top_images` best scores and the first
    `top_nodes` kept; patterns that see no landmark are left out. `landmarks [N, P, 2]`
    pixels, `visible [N, P]`.
    """
    patterns = ranked(det, top_images)[:top_nodes]
    per_pattern = node_instability(det, landmarks, visible, top_images, patterns)
    return float(np.mean(per_pattern[~np.isnan(per_pattern)]))


def diagonal(image_size: int) -> float:
    """Length of the image diagonal in pixels (square images)."""
    return math.hypot(image_size, image_size)


def compare(graph, maps, landmarks: np.ndarray, visible: np.ndarray) -> dict:
    """Location instability of every graph layer's nodes and of its raw filters, side by side.

    `graph` an ExplanatoryGraph fitted on the images whose unmirrored normalised maps are
    `maps` (one `[N, S, S, C]` array per layer, bottom to top; uint8 `QuantizedMaps` are
    decoded); `landmarks [N, P, 2]` pixels, `visible [N, P]`. Values are divided by the image
    diagonal; `ratio` is nodes / filters (below 1: nodes are more stable).
    """
    graph.require_records("evaluate.compare")
    size = graph.config.image_size
    rows = []
    for fit, layer_maps in zip(graph.layers, maps):
        cfg = fit.config
        nodes = instability(node_detections(fit, size), landmarks, visible) / diagonal(size)
        raw = filter_detections(np.asarray(decoded(layer_maps)), cfg.stride, cfg.center)
        filters = instability(raw, landmarks, visible) / diagonal(size)
        rows.append({"tap": cfg.tap, "nodes": nodes, "filters": filters, "ratio": nodes / filters})
    nodes = float(np.mean([r["nodes"] for r in rows]))
    filters = float(np.mean([r["filters"] for r in rows]))
    return {"layers": rows, "nodes": nodes, "filters": filters, "ratio": nodes / filters}


def decoded(maps):
    """Float maps as they are; uint8 `QuantizedMaps` decoded."""
    return dequantize(maps) if isinstance(maps, QuantizedMaps) else maps
