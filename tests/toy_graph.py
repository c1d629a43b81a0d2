"""A small hand-made explanatory graph with images, maps and landmarks, for the picture tests:
two layers (12x12 maps at stride 8 under 6x6 maps at stride 16) on 96-px images; node
positions stay well inside the images; about half the images are taken mirrored.

`planted()`: the same two layers with planted structure whose pictures are worked out by
hand in the tests: known strong, weak and dead nodes, a few parent links, and nodes at known
positions (`PLANTED` lists them)."""

from __future__ import annotations

import math
import statistics
from typing import NamedTuple

import numpy as np

from egjax import ExplanatoryGraph, GraphConfig, LayerConfig, LayerFit
from egjax.graph import validate

LOW = LayerConfig(map_size=12, stride=8, center=3.5, density=0.05, top_n=3, top_m=6,
                  tap="low")
TOP = LayerConfig(map_size=6, stride=16, center=7.5, density=0.1, tap="top")
CONFIG = GraphConfig(layers=(LOW, TOP), image_size=96)
IMAGES, FILTERS = 7, (3, 2)


def images(seed: int = 0, count: int = IMAGES) -> np.ndarray:
    """uint8 `[count, 96, 96, 3]` with structure everywhere (no two patches alike)."""
    rng = np.random.default_rng(seed)
    grid = np.arange(96)
    smooth = grid[:, None, None] * np.array([2, 1, 0]) + grid[None, :, None] * np.array([0, 1, 2])
    noise = rng.integers(0, 60, (count, 96, 96, 3))
    return ((smooth[None] + noise) % 256).astype(np.uint8)


def layer(cfg: LayerConfig, filters: int, parents_above: int | None, rng, flip) -> dict:
    k = cfg.nodes_per_filter
    v = filters * k
    low, high = 2.0, cfg.map_size - 3.0
    parents = (rng.integers(-1, parents_above, (v, cfg.top_n)) if parents_above
               else np.zeros((v, 0), np.int64))
    return dict(
        coord=rng.uniform(low, high, (filters, k, 2)).astype(np.float32),
        deform=rng.uniform(cfg.min_deform, cfg.max_deform, (filters, k)).astype(np.float32),
        parents=parents.astype(np.int32),
        score=rng.gamma(2.0, 0.5, (v, IMAGES)).astype(np.float32),
        pos=rng.uniform(low, high, (v, IMAGES, 2)).astype(np.float32),
        flip=flip,
        alt_score=rng.gamma(2.0, 0.4, (v, IMAGES)).astype(np.float32),
        alt_pos=rng.uniform(low, high, (v, IMAGES, 2)).astype(np.float32))


def graph(seed: int = 0) -> ExplanatoryGraph:
    """The toy graph (validated)."""
    rng = np.random.default_rng(seed)
    flip = rng.random(IMAGES) < 0.5
    top_nodes = FILTERS[1] * TOP.nodes_per_filter
    low = LayerFit(**layer(LOW, FILTERS[0], top_nodes, rng, flip), config=LOW)
    top = LayerFit(**layer(TOP, FILTERS[1], None, rng, flip), config=TOP)
    built = ExplanatoryGraph(layers=(low, top), config=CONFIG)
    validate(built)
    return built


def maps(seed: int = 0) -> list[np.ndarray]:
    """Normalised-looking maps `[IMAGES, S, S, C]` per layer: -1 with a few positive blobs."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for cfg, filters in zip(CONFIG.layers, FILTERS):
        values = rng.normal(-1, 0.3, (IMAGES, cfg.map_size, cfg.map_size, filters))
        hot = rng.random(values.shape) < 0.15
        values[hot] = rng.uniform(1, 4, hot.sum())
        out.append(values.astype(np.float32))
    return out


def landmarks(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`landmarks [IMAGES, 3, 2]` px and `visible [IMAGES, 3]` (one part seen only once)."""
    rng = np.random.default_rng(seed + 2)
    points = rng.uniform(10, 86, (IMAGES, 3, 2)).astype(np.float32)
    visible = rng.random((IMAGES, 3)) < 0.8
    visible[:, 2] = False
    visible[0, 2] = True
    return points, visible


PLANTED_IMAGES = 12
# Node scores (the same in every image but for a 1 % rise per image index, so that a node's
# best image is the last): every other node of the layer scores 0.2 + 0.03 v, or is dead.
PLANTED = {
    "low": {"strong": {17: 6.0, 10: 4.0, 3: 2.5, 12: 2.0, 4: 1.5, 5: 1.2},
            "dead": (0, 1, 2, 20, 21, 22, 23),
            "parents": {10: (1,), 3: (6,), 12: (1, 6), 20: (1,)}},
    "top": {"strong": {2: 9.0, 1: 5.0, 6: 3.0, 0: 0.5}, "dead": (3, 4, 5, 7)},
}
PLANTED_FLIP = np.array([0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 1], bool)


class Planted(NamedTuple):
    graph: ExplanatoryGraph
    images: np.ndarray           # [PLANTED_IMAGES, 96, 96, 3] uint8
    maps: list                   # per layer [PLANTED_IMAGES, S, S, C]
    landmarks: np.ndarray        # [PLANTED_IMAGES, 3, 2] px
    visible: np.ndarray          # [PLANTED_IMAGES, 3]


def _planted_layer(cfg: LayerConfig, filters: int, plan: dict, rng) -> LayerFit:
    k, count = cfg.nodes_per_filter, PLANTED_IMAGES
    v = filters * k
    base = 0.2 + 0.03 * np.arange(v)
    base[list(plan["strong"])] = list(plan["strong"].values())
    base[list(plan["dead"])] = 0
    score = base[:, None] * (1 + 0.01 * np.arange(count))
    parents = np.full((v, cfg.top_n if "parents" in plan else 0), -1)
    for node, chosen in plan.get("parents", {}).items():
        parents[node, :len(chosen)] = chosen
    low, high = 2.0, cfg.map_size - 3.0
    return LayerFit(
        coord=rng.uniform(low, high, (filters, k, 2)).astype(np.float32),
        deform=rng.uniform(cfg.min_deform, cfg.max_deform, (filters, k)).astype(np.float32),
        parents=parents.astype(np.int32), score=score.astype(np.float32),
        pos=rng.uniform(low, high, (v, count, 2)).astype(np.float32), flip=PLANTED_FLIP,
        alt_score=(0.5 * score).astype(np.float32),
        alt_pos=rng.uniform(low, high, (v, count, 2)).astype(np.float32), config=cfg)


def planted(seed: int = 0) -> Planted:
    """The planted graph (validated), its images, maps and landmarks. Besides `PLANTED`:

    * low node 10: in image 11 (its best) the mirrored orientation wins (alt_score twice
      its score) at alt_pos (4, 6.25) cells in the mirrored image 11 (flip), so at (35.5,
      53.5) px in the stored image; in image 10 (its second best) at pos (2.5, 1.75) in the
      mirrored image 10, so at (23.5, 95 - 17.5 = 77.5) px; in image 0 (unmirrored) at
      (5, 6) cells = (43.5, 51.5) px.
    * low node 17: in image 0 at (-0.25, 6) cells = (1.5, 51.5) px (by the top edge); in
      image 1 at (-2, 5) cells = (-12.5, 43.5) px (outside the image); in image 2 it scores
      0 (both orientations).
    * low node 4 scores the same in images 5 and 6 (a tie).
    * top node 1: in image 0 at (2, 3) cells = (39.5, 55.5) px.
    * maps: -1 everywhere but 4.0 at low cell (5, 6) of filter 1 (node 10's) in image 0 and
      2.0 at top cell (2, 3) of filter 0 (node 1's) in image 0.
    """
    rng = np.random.default_rng(seed + 10)
    low = _planted_layer(LOW, FILTERS[0], PLANTED["low"], rng)
    top = _planted_layer(TOP, FILTERS[1], PLANTED["top"], rng)
    low.alt_score[10, 11] = 2 * low.score[10, 11]
    low.alt_pos[10, 11] = (4.0, 6.25)
    low.pos[10, 10] = (2.5, 1.75)
    low.pos[10, 0] = (5.0, 6.0)
    low.pos[17, 0] = (-0.25, 6.0)
    low.pos[17, 1] = (-2.0, 5.0)
    low.score[17, 2] = low.alt_score[17, 2] = 0
    low.score[4, 6] = low.score[4, 5]
    top.pos[1, 0] = (2.0, 3.0)
    built = ExplanatoryGraph(layers=(low, top), config=CONFIG)
    validate(built)
    maps = [np.full((PLANTED_IMAGES, cfg.map_size, cfg.map_size, filters), -1, np.float32)
            for cfg, filters in zip(CONFIG.layers, FILTERS)]
    maps[0][0, 5, 6, 1] = 4.0
    maps[1][0, 2, 3, 0] = 2.0
    points = rng.uniform(10, 86, (PLANTED_IMAGES, 3, 2)).astype(np.float32)
    visible = rng.random((PLANTED_IMAGES, 3)) < 0.8
    return Planted(built, images(seed + 20, PLANTED_IMAGES), maps, points, visible)


# Plain references for expected values: the definitions written out image by image, with no
# code from egjax.evaluate or egjax.visualize.

def plain_detection(fit, v: int, n: int, size: int) -> tuple[float, tuple[float, float]]:
    """Node v's score and (h, w) px in the stored image n: the better orientation, mirrored
    back when it was found in the mirror of the stored image."""
    score, alt = float(fit.score[v, n]), float(fit.alt_score[v, n])
    use_alt = alt > score
    h, w = (np.asarray(fit.alt_pos) if use_alt else np.asarray(fit.pos))[v, n].tolist()
    h, w = fit.config.center + h * fit.config.stride, fit.config.center + w * fit.config.stride
    if bool(fit.flip[n]) != use_alt:
        w = size - 1 - w
    return max(score, alt), (h, w)


def plain_best_images(fit, v: int, count: int, size: int) -> list[int]:
    """Node v's `count` best images, best first, ties to the lower index."""
    scores = [plain_detection(fit, v, n, size)[0] for n in range(fit.score.shape[1])]
    return sorted(range(len(scores)), key=lambda n: (-scores[n], n))[:count]


def plain_strength(fit, v: int, size: int, top: int = 20) -> float:
    """The mean of node v's `top` best image scores."""
    scores = sorted((plain_detection(fit, v, n, size)[0] for n in range(fit.score.shape[1])),
                    reverse=True)[:top]
    return sum(scores) / len(scores)


def plain_instability(fit, v: int, landmarks, visible, size: int, top: int = 20) -> float:
    """Node v's location instability / image diagonal: over its `top` best images, per
    landmark the sample standard deviation of its distance to the landmark where visible
    (0 if seen once), averaged over the landmarks seen; NaN if none is."""
    chosen = plain_best_images(fit, v, top, size)
    spreads = []
    for part in range(landmarks.shape[1]):
        distances = []
        for n in chosen:
            if visible[n, part]:
                h, w = plain_detection(fit, v, n, size)[1]
                distances.append(math.hypot(h - landmarks[n, part, 0], w - landmarks[n, part, 1]))
        if distances:
            spreads.append(statistics.stdev(distances) if len(distances) > 1 else 0.0)
    return sum(spreads) / len(spreads) / math.hypot(size, size) if spreads else math.nan
