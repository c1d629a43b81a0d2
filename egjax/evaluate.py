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
    and positions found in a mirrored image are mirrored back (`getAlterProbPos`)."""
    cfg = fit.config
    score, alt_score = np.asarray(fit.score), np.asarray(fit.alt_score)
    use_alt = alt_score > score
    cells = np.where(use_alt[..., None], np.asarray(fit.alt_pos), np.asarray(fit.pos))
    px = cfg.center + cells * cfg.stride
    mirrored = np.asarray(fit.flip)[None, :] != use_alt
    px[..., 1] = np.where(mirrored, image_size - 1 - px[..., 1], px[..., 1])
    return Detections(np.maximum(score, alt_score), px)


def filter_detections(maps: np.ndarray, stride: float, center: float) -> Detections:
    """Raw-filter baseline: each filter's position is the argmax of its map (first in
    w-major order), its score the maximum. `maps [N, S, S, C]` normalised maps."""
    n, s, _, c = maps.shape
    flat = np.asarray(maps).transpose(3, 0, 2, 1).reshape(c, n, s * s)   # w-major cells
    index = np.argmax(flat, axis=-1)
    cells = np.stack([index % s, index // s], -1)
    return Detections(np.max(flat, axis=-1), center + cells * stride)


def instability(det: Detections, landmarks: np.ndarray, visible: np.ndarray,
                top_nodes: int = TOP_NODES, top_images: int = TOP_IMAGES) -> float:
    """Mean over the top patterns of the landmark-averaged std of pattern-landmark distance.

    Patterns are ranked by the mean of their `top_images` best scores and the first
    `top_nodes` kept; for each, over its `top_images` best images and each landmark
    visible there, the standard deviation (N-1) of the pixel distance to the landmark
    (0 for a landmark seen in a single image, as in the original); averaged over the
    landmarks seen at all, then over patterns. `landmarks [N, P, 2]` pixels,
    `visible [N, P]`. Returns pixels.
    """
    score, px = np.asarray(det.score), np.asarray(det.px)
    num_images = score.shape[1]
    if num_images < 2:
        raise ValueError(f"instability needs at least 2 images, got {num_images}")
    k = min(top_images, num_images)
    best = -np.sort(-score, axis=1)[:, :k]
    patterns = np.argsort(-best.mean(axis=1), kind="stable")[:min(top_nodes, score.shape[0])]
    per_pattern = []
    for v in patterns:
        images = np.argsort(-score[v], kind="stable")[:k]
        dist = np.linalg.norm(landmarks[images] - px[v, images][:, None, :], axis=-1)  # [k, P]
        seen = visible[images]
        spreads = []
        for part in range(landmarks.shape[1]):
            d = dist[seen[:, part], part]
            if d.size:
                spreads.append(np.std(d, ddof=1) if d.size > 1 else 0.0)
        if spreads:
            per_pattern.append(np.mean(spreads))
    return float(np.mean(per_pattern))


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
