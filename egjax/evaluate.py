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

from egjax import distributed, geometry
from egjax.maps import QuantizedMaps, dequantize

TOP_IMAGES = 20
TOP_NODES = 167
RECORDS = ("score", "alt_score", "pos", "alt_pos", "flip")   # what node detections read


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
    return detections(fit.config, image_size, *(np.asarray(getattr(fit, f)) for f in RECORDS))


def detections(cfg, image_size: int, score, alt_score, pos, alt_pos, flip) -> Detections:
    """`node_detections` of the records `RECORDS` (`score [V, n]` ...) of a layer `cfg`."""
    use_alt = alt_score > score
    cells = np.where(use_alt[..., None], alt_pos, pos)
    px = geometry.cells_to_pixels(cells, cfg, flip[None, :] != use_alt, image_size)
    return Detections(np.maximum(score, alt_score), px)


def filter_detections(maps: np.ndarray, stride: float, center: float) -> Detections:
    """Raw-filter baseline: each filter's position is the argmax of its map (first in
    w-major order), its score the maximum. `maps [N, S, S, C]` normalised maps."""
    n, s, _, c = maps.shape
    flat = np.asarray(maps).transpose(3, 0, 2, 1).reshape(c, n, s * s)   # w-major cells
    index = np.argmax(flat, axis=-1)
    cells = np.stack([index % s, index // s], -1)
    return Detections(np.max(flat, axis=-1), geometry.to_pixels(cells, stride, center))


class Best(NamedTuple):
    """Per pattern, its best images, best first (ties: the lower image first): their
    `score [V, k]`, `image [V, k]` indices, and per landmark the pixel distance `dist
    [V, k, P]` to the pattern and whether it is visible there, `seen [V, k, P]`. Of some
    images (`best_images`) or, merged, of all (`merged`)."""

    score: np.ndarray
    image: np.ndarray
    dist: np.ndarray
    seen: np.ndarray


def best_images(det: Detections, landmarks: np.ndarray, visible: np.ndarray,
                top_images: int = TOP_IMAGES, images=None) -> Best:
    """Each pattern's `top_images` best of the images of `det` (`score [V, n]`): `images
    [n]` their increasing indices among all images (default 0..n-1), `landmarks [n, P, 2]`
    and `visible [n, P]` theirs."""
    score, px = np.asarray(det.score), np.asarray(det.px)
    images = np.arange(score.shape[1]) if images is None else np.asarray(images)
    k = min(top_images, score.shape[1])
    best = np.argsort(-score, axis=1, kind="stable")[:, :k]                          # [V, k]
    dist = []
    for start in range(0, len(best), 4096):                         # bounded memory
        chosen = best[start:start + 4096]
        where = np.take_along_axis(px[start:start + 4096], chosen[..., None], axis=1)
        dist.append(np.linalg.norm(landmarks[chosen] - where[:, :, None, :], axis=-1))
    dist = np.concatenate(dist) if dist else np.zeros((0, k, visible.shape[1]))
    return Best(np.take_along_axis(score, best, axis=1), images[best], dist, visible[best])


def merged(parts, top_images: int = TOP_IMAGES):
    """`Best` of several disjoint sets of images, stacked along a first axis `[S, V, k, ...]`
    -> the `Best` of all of them, each pattern's best first as `best_images` orders them
    (by score, then image), so with the same values as `best_images` of all the images.
    `parts` may be any NamedTuple whose first two fields are `score` and `image` (per image
    fields `[S, V, k, ...]` after them); the result is of its type."""
    flat = [np.moveaxis(x, 0, 1).reshape(x.shape[1], x.shape[0] * x.shape[2], *x.shape[3:])
            for x in parts]
    score, image = flat[:2]
    order = np.lexsort((image, -score), axis=-1)[:, :min(top_images, score.shape[1])]
    return type(parts)._make(
        np.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
        for x in flat)


def padded(best, top_images: int, num_images: int):
    """`best` (as `merged` takes it, one set `[V, k, ...]`) padded to `top_images` images
    per pattern with entries that sort last: score -inf, image `num_images`, zeros."""
    pad = top_images - best.score.shape[1]
    return type(best)._make(
        np.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        for x, fill in zip(best, (-np.inf, num_images) + (0,) * (len(best) - 2)))


def ranked(det: Detections, top_images: int = TOP_IMAGES) -> np.ndarray:
    """Pattern indices by the mean of their `top_images` best scores, best first (stable)."""
    score = np.asarray(det.score)
    best = -np.sort(-score, axis=1)[:, :min(top_images, score.shape[1])]
    return _ranked(best)


def _ranked(best_scores: np.ndarray) -> np.ndarray:
    return np.argsort(-best_scores.mean(axis=1), kind="stable")


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
    _check_images(score.shape[1])
    if patterns is not None:
        score, px = score[np.asarray(patterns)], px[np.asarray(patterns)]
    return spread(best_images(Detections(score, px), landmarks, visible, top_images))


def spread(best: Best) -> np.ndarray:
    """`node_instability` of each pattern of `best`: `[V]`."""
    dist, seen = best.dist, best.seen
    out = np.full(len(dist), np.nan)
    for start in range(0, len(dist), 4096):                         # bounded memory
        d, s = dist[start:start + 4096], seen[start:start + 4096]
        count = s.sum(axis=1)                                                        # [B, P]
        mean = np.where(s, d, 0).sum(axis=1) / np.maximum(count, 1)
        squares = np.where(s, (d - mean[:, None]) ** 2, 0).sum(axis=1)
        deviation = np.sqrt(squares / np.maximum(count - 1, 1))
        parts = count > 0
        with np.errstate(invalid="ignore"):
            out[start:start + 4096] = np.where(parts, deviation, 0).sum(1) / parts.sum(1)
    return out


def _check_images(num_images: int) -> None:
    if num_images < 2:
        raise ValueError(f"instability needs at least 2 images, got {num_images}")


def instability(det: Detections, landmarks: np.ndarray, visible: np.ndarray,
                top_nodes: int = TOP_NODES, top_images: int = TOP_IMAGES) -> float:
    """Mean of `node_instability` over the top patterns (pixels).

    Patterns are ranked by the mean of their `top_images` best scores and the first
    `top_nodes` kept; patterns that see no landmark are left out. `landmarks [N, P, 2]`
    pixels, `visible [N, P]`.
    """
    _check_images(np.shape(det.score)[1])
    return _instability(best_images(det, landmarks, visible, top_images), top_nodes)


def _instability(best: Best, top_nodes: int = TOP_NODES) -> float:
    """`instability` from every image's `Best`."""
    chosen = _ranked(best.score)[:top_nodes]
    per_pattern = spread(Best(*(x[chosen] for x in best)))
    return float(np.mean(per_pattern[~np.isnan(per_pattern)]))


def diagonal(image_size: int) -> float:
    """Length of the image diagonal in pixels (square images)."""
    return math.hypot(image_size, image_size)


def compare(graph, maps, landmarks: np.ndarray, visible: np.ndarray, *,
            across_processes: bool = False) -> dict:
    """Location instability of every graph layer's nodes and of its raw filters, side by side.

    `graph` an ExplanatoryGraph fitted on the images whose unmirrored normalised maps are
    `maps` (one `[N, S, S, C]` array per layer, bottom to top; uint8 `QuantizedMaps` are
    decoded); `landmarks [N, P, 2]` pixels, `visible [N, P]`. Values are divided by the image
    diagonal; `ratio` is nodes / filters (below 1: nodes are more stable).

    `across_processes`: under several processes (`egjax.distributed`) every process calls
    it, with its share of the maps (images p, p + P, ...: `distributed.shard()`), the graph
    as fitted (its records split over the devices of all processes) and the landmarks of
    all images. Each takes the best images of every pattern among the images it holds; only
    those are exchanged, never a layer's records, and all get the one-process metrics, bit
    for bit.
    """
    graph.require_records("evaluate.compare")
    size = graph.config.image_size
    index, count = distributed.shard() if across_processes else (0, 1)
    rows = []
    for fit, layer_maps in zip(graph.layers, maps):
        cfg, num = fit.config, fit.num_images
        _check_images(num)
        share, layer_maps = len(range(index, num, count)), np.asarray(decoded(layer_maps))
        if len(landmarks) != num or len(visible) != num or len(layer_maps) != share:
            raise ValueError(f"the graph holds {num} images: landmarks and visible must hold "
                             f"{num}, maps {share} (this process's share), got "
                             f"{len(landmarks)}, {len(visible)}, {len(layer_maps)}")
        held, det = _held_detections(fit, size) if count > 1 else (
            np.arange(num), node_detections(fit, size))
        nodes = _instability(_all(best_images(det, landmarks[held], visible[held],
                                              images=held), num, count)) / diagonal(size)
        det = filter_detections(layer_maps, cfg.stride, cfg.center)
        held = np.arange(index, num, count)
        filters = _instability(_all(best_images(det, landmarks[held], visible[held],
                                                images=held), num, count)) / diagonal(size)
        rows.append({"tap": cfg.tap, "nodes": nodes, "filters": filters, "ratio": nodes / filters})
    nodes = float(np.mean([r["nodes"] for r in rows]))
    filters = float(np.mean([r["filters"] for r in rows]))
    return {"layers": rows, "nodes": nodes, "filters": filters, "ratio": nodes / filters}


def _held_detections(fit, image_size: int) -> tuple[np.ndarray, Detections]:
    """The images of `fit`'s records that this process holds (increasing) and their
    detections, as `node_detections`."""
    held, records = held_records(fit)
    return held, detections(fit.config, image_size, *records)


def held_records(fit) -> tuple[np.ndarray, list[np.ndarray]]:
    """The images of `fit`'s records that this process holds (increasing; all of them
    unless the records are split over several processes) and its records of them, in
    `RECORDS` order, on the host."""
    held, parts = None, []
    for name in RECORDS:
        held, values = distributed.addressable(getattr(fit.records, name),
                                               0 if name == "flip" else 1)
        real = held < fit.num_images   # not the padding (`LayerFit.records`)
        parts.append(np.compress(real, values, axis=0 if name == "flip" else 1))
    return held[real], parts


def _all(best: Best, num_images: int, processes: int) -> Best:
    """The `Best` of every process's images, from this process's `best` (of its images)."""
    if processes == 1:
        return best
    same_shape = padded(best, TOP_IMAGES, num_images)   # on every process
    return merged(Best(*(distributed.gather_exact(x) for x in same_shape)),
                  min(TOP_IMAGES, num_images))


def decoded(maps):
    """Float maps as they are; uint8 `QuantizedMaps` decoded."""
    return dequantize(maps) if isinstance(maps, QuantizedMaps) else maps
