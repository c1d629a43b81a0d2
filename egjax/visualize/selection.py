"""Which nodes the pictures show: scores, dead nodes, the strongest and the stablest.

A node's *score* here is the mean of its `evaluate.TOP_IMAGES` best image scores (a layer's
scores are normalised to mean 1 over its nodes and images), the order in which
`evaluate.ranked` and the instability metric take nodes. A node is *dead* when it scores 0
in every image: it was never found, so its positions, instability and parents carry no
evidence. Rankings by stability consider only nodes scoring at least `MIN_SCORE`, the
layer's mean score: weaker nodes fire in few images, and the spread of their positions
over their "best" images is noise (in the demo some of them look the stablest of all).

Each function reads only `score [V, n]`, of a layer's `evaluate.Detections` or of its
`summary.LayerSummary` (whose rows hold each node's best scores, enough for all of them).
"""

from __future__ import annotations

import numpy as np

from egjax import evaluate

MIN_SCORE = 1.0


def strength(det: evaluate.Detections) -> np.ndarray:
    """`[V]` the mean of each node's `evaluate.TOP_IMAGES` best image scores."""
    score = np.asarray(det.score)
    best = -np.sort(-score, axis=1)[:, :min(evaluate.TOP_IMAGES, score.shape[1])]
    return best.mean(axis=1)


def dead(det: evaluate.Detections) -> np.ndarray:
    """`[V]` bool: the node scores 0 (or less) in every image."""
    return np.all(np.asarray(det.score) <= 0, axis=1)


def strongest(det: evaluate.Detections, count: int) -> np.ndarray:
    """The `count` highest-scoring live nodes, best first (ties: the lower index first)."""
    order = evaluate.ranked(det)
    return order[~dead(det)[order]][:count]


def stablest(det: evaluate.Detections, instability: np.ndarray, count: int) -> np.ndarray:
    """The `count` nodes with the lowest `instability [V]` among those scoring at least
    `MIN_SCORE` (NaN instability, no landmark seen, left out), stablest first (ties: the
    lower index first)."""
    instability = np.asarray(instability, np.float64)
    eligible = np.flatnonzero((strength(det) >= MIN_SCORE) & ~np.isnan(instability))
    return eligible[np.argsort(instability[eligible], kind="stable")][:count]
