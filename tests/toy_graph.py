"""A small hand-made explanatory graph with images, maps and landmarks, for the picture tests:
two layers (12x12 maps at stride 8 under 6x6 maps at stride 16) on 96-px images; node
positions stay well inside the images; about half the images are taken mirrored."""

from __future__ import annotations

import numpy as np

from egjax import ExplanatoryGraph, GraphConfig, LayerConfig, LayerFit
from egjax.graph import validate

LOW = LayerConfig(map_size=12, stride=8, center=3.5, density=0.05, top_n=3, top_m=6,
                  tap="low")
TOP = LayerConfig(map_size=6, stride=16, center=7.5, density=0.1, tap="top")
CONFIG = GraphConfig(layers=(LOW, TOP), image_size=96)
IMAGES, FILTERS = 7, (3, 2)


def images(seed: int = 0) -> np.ndarray:
    """uint8 `[IMAGES, 96, 96, 3]` with structure everywhere (no two patches alike)."""
    rng = np.random.default_rng(seed)
    grid = np.arange(96)
    smooth = grid[:, None, None] * np.array([2, 1, 0]) + grid[None, :, None] * np.array([0, 1, 2])
    noise = rng.integers(0, 60, (IMAGES, 96, 96, 3))
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
