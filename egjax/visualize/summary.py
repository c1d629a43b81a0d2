"""What the pictures read of a layer's records, as a small summary per node.

The pictures never need every record: per node, its best `TOP` images (score, image,
position: `selection`'s ranking, the patches, the explorer's lists and heat maps), its mean
score and mean position over all images (the explorer's column, `graph_figure`'s edge
offsets), its detections in the first `FIRST` images (`figures.detections`,
`heatmaps.heatmap_grid`) and, given landmarks, its location instability
(`evaluate.node_instability`). Under several processes (`egjax.distributed`) each process
summarises the images whose records it holds (a fitted graph's records are split over the
devices of all processes) and only the summaries are exchanged, never a layer's records; the
merged summary is the one-process summary, bit for bit: best images are merged as
`evaluate.merged` merges them, and sums are exact (`exact_sums`), so their order does not
matter.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from egjax import distributed, evaluate, geometry

TOP = evaluate.TOP_IMAGES   # best images kept per node (>= the explorer's and patches' 10)
FIRST = 6                   # the images 0..FIRST-1 that the detection and heat-map rows show
TINY = -960                 # frexp exponent below which `exact_sums` counts a value as 0
EXPONENTS = 1024 - TINY + 2  # frexp exponents TINY..1024 and one slot for the tiny ones


class LayerSummary(NamedTuple):
    """A layer's records as the pictures read them (module docstring), `V` nodes:
    `score [V, k]`, `image [V, k]`, `px [V, k, 2]` each node's `k = min(TOP, N)` best images,
    best first (ties: the lower image first), and its detections there (`Detections`: pixels
    in the unmirrored image); `mean [V]` its mean score over all `N` images; `position [V, 2]`
    its mean position over all images in the graph's own frame (pixels, `graph_figure.pixels`);
    `first_score [V, F]`, `first_px [V, F, 2]` its detections in images `0..F-1`
    (`F = min(first, N)`, `summarize`); `instability [V]` (pixels, NaN where no landmark is
    seen) or None without landmarks; `num_images` N."""

    score: np.ndarray
    image: np.ndarray
    px: np.ndarray
    mean: np.ndarray
    position: np.ndarray
    first_score: np.ndarray
    first_px: np.ndarray
    instability: np.ndarray | None
    num_images: int


def summarize(graph, landmarks=None, visible=None, *, first: int = FIRST,
              across_processes: bool = False) -> list[LayerSummary]:
    """Every layer's `LayerSummary`, bottom to top. `landmarks [N, P, 2]` px and `visible
    [N, P]` of all N images give the instability (None: none); `first` F, the images whose
    detections are kept. `across_processes`: every
    process calls it with the graph as fitted (records split over the devices of all
    processes); all get the one-process summaries."""
    graph.require_records("the pictures")
    if (landmarks is None) != (visible is None):
        raise ValueError("give both landmarks and visible, or neither")
    return [summarize_layer(fit, graph.config.image_size, landmarks, visible, first=first,
                            across_processes=across_processes) for fit in graph.layers]


def summarize_layer(fit, image_size: int, landmarks=None, visible=None, *,
                    first: int = FIRST, across_processes: bool = False) -> LayerSummary:
    """`summarize` of one fitted layer `fit`."""
    processes = distributed.shard()[1] if across_processes else 1
    num = fit.num_images
    held, records = ((np.arange(num), [np.asarray(getattr(fit, f)) for f in evaluate.RECORDS])
                     if processes == 1 else evaluate.held_records(fit))
    share = summarize_share(fit.config, image_size, held, *records, num_images=num,
                            landmarks=landmarks, visible=visible, first=first)
    if processes == 1:
        return merge([share], num)
    return merge(_exchanged(share), num)


class Top(NamedTuple):
    """A node's best images among some (`evaluate.Best` with their detections `px [V, k,
    2]`), as `evaluate.merged` and `evaluate.padded` take them."""

    score: np.ndarray
    image: np.ndarray
    px: np.ndarray
    dist: np.ndarray
    seen: np.ndarray


class Share(NamedTuple):
    """A `LayerSummary` of the images `held` of one process: the best of them (`top`: score,
    image, px, dist, seen as `evaluate.Best` with px), `exact_sums` of the scores and of the
    positions' h and w (`sums`: `(exponents, [V, E, 2])` each), and the detections in the
    first images it holds (`first`: score `[V, F]`, px `[V, F, 2]`, `mine [F]` which it
    holds)."""

    top: Top
    sums: tuple
    first: tuple


def summarize_share(cfg, image_size: int, held, score, alt_score, pos, alt_pos, flip, *,
                    num_images: int, landmarks=None, visible=None,
                    first: int = FIRST) -> Share:
    """The `Share` of the images `held [n]` (increasing indices among all `num_images`),
    from their records (`evaluate.RECORDS`, e.g. `score [V, n]`); `landmarks [N, P, 2]`,
    `visible [N, P]` of all images or None."""
    det = evaluate.detections(cfg, image_size, score, alt_score, pos, alt_pos, flip)
    k = min(TOP, num_images)
    if landmarks is None:
        landmarks, visible = np.zeros((num_images, 0, 2)), np.zeros((num_images, 0), bool)
    best = evaluate.best_images(det, np.asarray(landmarks)[held], np.asarray(visible)[held],
                                k, images=held)
    local = np.searchsorted(held, best.image)
    px = np.take_along_axis(np.asarray(det.px), local[..., None], axis=1)
    top = evaluate.padded(Top(best.score, best.image, px, best.dist, best.seen), k,
                          num_images)   # fewer images here than k: padding sorts last
    where = geometry.to_pixels(np.asarray(pos, np.float64), cfg.stride, cfg.center)
    sums = tuple(exact_sums(x) for x in (det.score, where[..., 0], where[..., 1]))
    first = min(first, num_images)
    mine = np.isin(np.arange(first), held)
    local = np.searchsorted(held, np.arange(first)[mine])
    first_score = np.zeros((len(det.score), first), np.asarray(det.score).dtype)
    first_px = np.zeros((len(det.score), first, 2), np.asarray(det.px).dtype)
    first_score[:, mine], first_px[:, mine] = det.score[:, local], det.px[:, local]
    return Share(top, sums, (first_score, first_px, mine))


def merge(shares: list[Share], num_images: int) -> LayerSummary:
    """The `LayerSummary` of all images from the `Share`s of disjoint sets of them."""
    score, image, px, dist, seen = evaluate.merged(
        Top(*map(np.stack, zip(*(s.top for s in shares)))), min(TOP, num_images))
    instability = (evaluate.spread(evaluate.Best(score, image, dist, seen))
                   if dist.shape[-1] else None)
    mean, h, w = (rounded_sums([s.sums[i] for s in shares]) for i in range(3))
    first_score, first_px = (np.zeros_like(x) for x in shares[0].first[:2])
    for s in shares:
        first_score[:, s.first[2]] = s.first[0][:, s.first[2]]
        first_px[:, s.first[2]] = s.first[1][:, s.first[2]]
    return LayerSummary(score, image, px, mean / num_images,
                        np.stack([h, w], -1) / num_images, first_score, first_px,
                        instability, num_images)


def exact_sums(x: np.ndarray, rows_per_chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact row sums of `x [V, n]` as integers per binary exponent: `(exponents [E],
    sums [V, E, 2])` with `sum_v = sum_e (sums[v, e, 0] 2^26 + sums[v, e, 1]) 2^(e - 53)`
    (each value `m 2^e`, `frexp`, its 53-bit mantissa split into two integers: the sums
    stay exact integers in float64 for fewer than 2^26 values per row). Sums of disjoint
    sets of columns add up exactly (`rounded_sums`), in any order. Values below `2^TINY` in
    magnitude count as 0."""
    x = np.asarray(x)
    present = np.zeros(EXPONENTS, bool)
    for start in range(0, len(x), rows_per_chunk):                  # bounded memory
        exponent = np.frexp(np.asarray(x[start:start + rows_per_chunk], np.float64))[1]
        present |= np.bincount((np.maximum(exponent, TINY - 1) - (TINY - 1)).reshape(-1),
                               minlength=EXPONENTS) > 0
    present[0] = False                                              # the tiny ones
    column = np.cumsum(present) - 1
    exponents = np.flatnonzero(present) + TINY - 1
    sums = np.zeros((len(x), len(exponents), 2))
    for start in range(0, len(x), rows_per_chunk):
        mantissa, exponent = np.frexp(np.asarray(x[start:start + rows_per_chunk], np.float64))
        tiny = exponent < TINY
        value = np.where(tiny, 0, np.ldexp(mantissa, 53))         # integers below 2^53
        high = np.floor(value / 2.0 ** 26)
        low = value - high * 2.0 ** 26
        rows = len(value)
        key = (np.arange(rows)[:, None] * len(exponents)
               + np.where(tiny, 0, column[np.maximum(exponent, TINY - 1) - (TINY - 1)]))
        for half, part in enumerate((high, low)):
            sums[start:start + rows, :, half] = np.bincount(
                key.reshape(-1), part.reshape(-1), rows * len(exponents)).reshape(rows, -1)
    return exponents, sums


def rounded_sums(parts) -> np.ndarray:
    """`[V]` the total of `exact_sums` of disjoint sets of columns, correctly rounded."""
    exponents = np.unique(np.concatenate([e for e, _ in parts]))
    total = np.zeros((len(parts[0][1]), len(exponents), 2))
    for e, sums in parts:
        total[:, np.searchsorted(exponents, e)] += sums   # integers below 2^53: exact
    terms = np.concatenate([np.ldexp(total[..., 0], exponents - 27),
                            np.ldexp(total[..., 1], exponents - 53)], axis=1)
    return np.asarray([math.fsum(row) for row in terms.tolist()])


def exact_mean(x: np.ndarray) -> np.ndarray:
    """`[V]` row means of `x [V, n]`: the exact sums (`exact_sums`) correctly rounded, / n."""
    return rounded_sums([exact_sums(x)]) / np.shape(x)[1]


def _exchanged(share: Share) -> list[Share]:
    """Every process's `Share` (`distributed.gather_exact`): the best images and first
    detections as they are, the sums over the exponents any process has."""
    top = [distributed.gather_exact(x) for x in share.top]
    first = [distributed.gather_exact(x) for x in share.first]
    sums = []
    for exponents, values in share.sums:
        present = np.zeros(EXPONENTS, bool)
        present[exponents - (TINY - 1)] = True
        union = np.flatnonzero(distributed.gather_exact(present).any(axis=0)) + TINY - 1
        wide = np.zeros((len(values), len(union), 2))
        wide[:, np.searchsorted(union, exponents)] = values
        sums.append((union, distributed.gather_exact(wide)))
    processes = len(top[0])
    return [Share(Top(*(x[p] for x in top)), tuple((e, s[p]) for e, s in sums),
                  tuple(x[p] for x in first)) for p in range(processes)]
