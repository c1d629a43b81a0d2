"""Continuity: do similar inputs get similar representations and similar explanations?

Three measurements, each with a streaming accumulator (a NamedTuple state with
`*_init`, `*_update`, `*_merge`, `*_result`; jit- and vmap-safe; `merge` is associative
and commutative, so shards of a data set can be measured apart and combined):

* Feature-map distances `(feats_a, feats_b) -> [N]` between aligned batches at any tap,
  by name from `DISTANCES` or any pure JAX callable of that signature;
  `cam_masked_distance` and `pca_distance` build distances that need fitted state.
* Triplet consistency: the fraction of (anchor, positive of the same class, negative of
  another class) triplets with `d(a, p) < d(a, n)`, ties counting one half, with a Wilson
  score interval.
* Explanation continuity (Montavon, Samek and Mueller, Digital Signal Processing 2018,
  sec. 7.1): over pairs of nearly equivalent inputs, the ratios
  `||R(x) - R(x')||_1 / ||x - x'||_2`; their maximum estimates the explainer's
  Lipschitz constant on the data. An explainer is any callable
  `(images, *per_image_args) -> [N, ...]`: a saliency method with its targets as the
  per-image argument, or a graph explainer returning one vector per image.

Intervals: a continuity score (the mean or max ratio over pairs) varies with the pairs and
with the network's training run; `pair_bootstrap` resamples the pairs, and `seed_interval`
turns the scores of several runs (seeds) and their pair noise into one interval.

Pairs of nearly equivalent inputs: `shift_images` (sub-pixel translation), `add_noise`, and
`same_class_neighbours` (nearest image of the same class in input or feature space):

    explainer = functools.partial(saliency.grad_cam, model, params, batch_size=16)
    shifted = continuity.shift_images(images, (1.0, 0.0))
    result, ratios = continuity.explanation_continuity(explainer, images, shifted, targets)
    partner = continuity.same_class_neighbours(images, labels)
    result, ratios = continuity.explanation_continuity(explainer, images, images[partner], labels)
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from egjax.saliency import LAST_CONV, class_activation_maps

Distance = Callable[[jax.Array, jax.Array], jax.Array]

# ------------------------------------------------------------------------------ distances


def tap_embedding(model, params, taps: tuple[str, ...] = (LAST_CONV,)) -> Callable:
    """`images [N, H, W, C] -> {tap: [N, ...]}` through the model protocol, jitted."""
    apply = jax.jit(model.apply, static_argnames="taps")
    return lambda images: apply({"params": params}, images, taps=tuple(taps))


def l2_distance(feats_a: jax.Array, feats_b: jax.Array) -> jax.Array:
    """Euclidean distance of whole maps: `[N, ...]` x2 -> `[N]`."""
    return jnp.linalg.norm((feats_a - feats_b).reshape(feats_a.shape[0], -1), axis=1)


def cosine_distance(feats_a: jax.Array, feats_b: jax.Array) -> jax.Array:
    """`1 - cos` of whole maps flattened: `[N, ...]` x2 -> `[N]` in [0, 2].

    A zero map has cosine similarity 0 with everything (distance 1).
    """
    a = feats_a.reshape(feats_a.shape[0], -1)
    b = feats_b.reshape(feats_b.shape[0], -1)
    norms = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
    return 1.0 - jnp.sum(a * b, axis=1) / jnp.where(norms > 0, norms, 1.0)


def gap_distance(feats_a: jax.Array, feats_b: jax.Array) -> jax.Array:
    """Euclidean distance of global-average-pooled maps: `[N, h, w, C]` x2 -> `[N]`."""
    return jnp.linalg.norm(feats_a.mean(axis=(1, 2)) - feats_b.mean(axis=(1, 2)), axis=1)


DISTANCES: dict[str, Distance] = {
    "l2": l2_distance,
    "cosine": cosine_distance,
    "gap": gap_distance,
}


def cam_mask(features: jax.Array, kernel: jax.Array, classes: jax.Array,
             frac: float) -> jax.Array:
    """Cells where the class map is high: `ReLU(CAM) >= frac * max ReLU(CAM)` per image.

    features `[N, h, w, C]`, kernel `[C, num_classes]`, classes int `[N]` -> bool
    `[N, h, w]`. `frac = 0.2` is Zhou et al.'s (2016) localisation threshold. An image
    whose class map is nowhere positive keeps every cell.
    """
    cams = jax.nn.relu(class_activation_maps(features, kernel, classes))
    return cams >= frac * cams.max(axis=(1, 2), keepdims=True)


def masked_mean(features: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean feature vector over the masked cells: `[N, h, w, C]`, bool `[N, h, w]` -> `[N, C]`."""
    weights = mask.astype(features.dtype)[..., None]
    return (features * weights).sum(axis=(1, 2)) / weights.sum(axis=(1, 2))


def cam_masked_distance(head: Mapping, frac: float = 0.2) -> Distance:
    """Distance of the class regions: each map is averaged over its own CAM mask.

    `head` holds the Dense parameters `{"kernel": [C, K], "bias": [K]}` of a head that is
    linear on the global average of these maps (use it at the tap the head pools, e.g.
    `relu5_3`). For each map, the class is the head's prediction on it (for the pooled
    tap, the network's own prediction), the mask is `cam_mask(..., frac)`, and the map is
    summarised by `masked_mean` over it; the distance is the Euclidean distance of these
    `[C]` vectors. Each image uses its own mask, so objects at different positions are
    compared region to region, not cell to cell. The result `(feats_a, feats_b) -> [N]`.
    """
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"frac must be in [0, 1], got {frac!r}")
    kernel, bias = jnp.asarray(head["kernel"]), jnp.asarray(head["bias"])

    def region_mean(features):
        if features.ndim != 4 or features.shape[-1] != kernel.shape[0]:
            raise ValueError(f"cam_masked_distance needs maps [N, h, w, {kernel.shape[0]}], "
                             f"got {features.shape}")
        classes = jnp.argmax(features.mean(axis=(1, 2)) @ kernel + bias, axis=1)
        return masked_mean(features, cam_mask(features, kernel, classes, frac))

    def distance(feats_a, feats_b):
        return jnp.linalg.norm(region_mean(feats_a) - region_mean(feats_b), axis=1)

    return distance


def resolve_distance(distance: str | Distance) -> Distance:
    """A distance by name from `DISTANCES`, or the given callable unchanged."""
    if callable(distance):
        return distance
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; known: {sorted(DISTANCES)} "
                         f"or a callable (feats_a, feats_b) -> [N]")
    return DISTANCES[distance]


# ------------------------------------------------------------------------ streaming PCA


class PCAState(NamedTuple):
    """Running moments of vectors `[C]`: count, mean `[C]`, scatter `sum (x-mean)(x-mean)^T`."""

    count: jax.Array
    mean: jax.Array
    scatter: jax.Array


class PCA(NamedTuple):
    """Top principal axes: mean `[C]`, components `[k, C]` (orthonormal rows), variances `[k]`."""

    mean: jax.Array
    components: jax.Array
    variances: jax.Array


def pca_init(dim: int) -> PCAState:
    """An empty PCA accumulator for `dim` channels."""
    return PCAState(jnp.zeros(()), jnp.zeros((dim,)), jnp.zeros((dim, dim)))


@jax.jit
def pca_update(state: PCAState, features: jax.Array) -> PCAState:
    """Adds every position of `features [..., C]` as a sample of the channel vector."""
    if features.shape[-1:] != state.mean.shape:
        raise ValueError(f"features must end in {state.mean.shape[0]} channels, "
                         f"got shape {features.shape}")
    samples = features.reshape(-1, features.shape[-1])
    mean = samples.mean(axis=0)
    centred = samples - mean
    batch = PCAState(jnp.asarray(samples.shape[0], jnp.float32), mean, centred.T @ centred)
    return pca_merge(state, batch)


def pca_merge(a: PCAState, b: PCAState) -> PCAState:
    """Combines two accumulators (Chan, Golub and LeVeque's pairwise update)."""
    count = a.count + b.count
    safe = jnp.where(count > 0, count, 1.0)
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / safe)
    scatter = a.scatter + b.scatter + jnp.outer(delta, delta) * (a.count * b.count / safe)
    return PCAState(count, mean, scatter)


def pca_result(state: PCAState, k: int) -> PCA:
    """The top-`k` axes of the sample covariance `scatter / (count - 1)`."""
    dim = state.mean.shape[0]
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, {dim}], got {k!r}")
    variances, vectors = jnp.linalg.eigh(state.scatter / jnp.maximum(state.count - 1.0, 1.0))
    return PCA(state.mean, vectors[:, ::-1][:, :k].T, variances[::-1][:k])


def pca_distance(pca: PCA) -> Distance:
    """Euclidean distance after projecting every position's channel vector on the PCA axes.

    `(feats_a, feats_b) -> [N]` for maps `[N, ..., C]`. The centring cancels in the
    difference; with all `C` axes the distance equals `l2_distance`.
    """
    def distance(feats_a, feats_b):
        return l2_distance((feats_a - pca.mean) @ pca.components.T,
                           (feats_b - pca.mean) @ pca.components.T)

    return distance


# ------------------------------------------------------------------- triplet consistency


class TripletCounts(NamedTuple):
    """Streaming triplet outcomes: `d(a,p) < d(a,n)` (wins), equal (ties), all (total)."""

    wins: jax.Array
    ties: jax.Array
    total: jax.Array


class TripletConsistency(NamedTuple):
    """`(wins + ties / 2) / total`, its Wilson score interval, the tie fraction, the count."""

    consistency: jax.Array
    low: jax.Array
    high: jax.Array
    ties: jax.Array
    count: jax.Array


def sample_triplets(key: jax.Array, labels, num_triplets: int) -> jax.Array:
    """Uniform (anchor, positive, negative) index triplets: labels `[N]` -> int `[T, 3]`.

    The anchor is uniform over images whose class has another member, the positive uniform
    over the anchor's class without the anchor, the negative uniform over all other classes.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer [N], got {labels.dtype} {labels.shape}")
    if not (isinstance(num_triplets, int) and num_triplets >= 1):
        raise ValueError(f"num_triplets must be an int >= 1, got {num_triplets!r}")
    order = np.argsort(labels, kind="stable")
    _, class_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(counts) < 2 or counts.max() < 2:
        raise ValueError("triplets need two classes and a class with two images; "
                         f"class sizes are {counts.tolist()}")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(labels)) - starts[class_of[order]]
    eligible = np.flatnonzero(counts[class_of] >= 2)
    return _draw_triplets(key, eligible, class_of, starts, counts, order, rank,
                          num_triplets=num_triplets)


@functools.partial(jax.jit, static_argnames="num_triplets")
def _draw_triplets(key, eligible, class_of, starts, counts, order, rank, *, num_triplets):
    """`sample_triplets` given images sorted by class: `order`, each image's class, its
    `rank` within the class, and each class's `starts`/`counts` in the sorted order."""
    key_anchor, key_positive, key_negative = jax.random.split(key, 3)
    anchor = eligible[jax.random.randint(key_anchor, (num_triplets,), 0, len(eligible))]
    start, count = starts[class_of[anchor]], counts[class_of[anchor]]
    offset = jax.random.randint(key_positive, (num_triplets,), 1, count)
    positive = order[start + (rank[anchor] + offset) % count]
    other = jax.random.randint(key_negative, (num_triplets,), 0, len(order) - count)
    negative = order[jnp.where(other < start, other, other + count)]
    return jnp.stack([anchor, positive, negative], axis=1)


def triplet_init() -> TripletCounts:
    """An empty triplet accumulator."""
    zero = jnp.zeros((), jnp.int32)
    return TripletCounts(zero, zero, zero)


def triplet_update(state: TripletCounts, d_ap: jax.Array, d_an: jax.Array,
                   valid: jax.Array | None = None) -> TripletCounts:
    """Adds triplets with distances `d_ap`, `d_an` `[N]`; `valid [N]` drops padding."""
    if d_ap.ndim != 1 or d_ap.shape != d_an.shape:
        raise ValueError(f"d_ap and d_an must both be [N], got {d_ap.shape} and {d_an.shape}")
    valid = jnp.ones(d_ap.shape, bool) if valid is None else valid
    return TripletCounts(state.wins + jnp.sum(valid & (d_ap < d_an)),
                         state.ties + jnp.sum(valid & (d_ap == d_an)),
                         state.total + jnp.sum(valid))


def triplet_merge(a: TripletCounts, b: TripletCounts) -> TripletCounts:
    """Combines two triplet accumulators."""
    return TripletCounts(a.wins + b.wins, a.ties + b.ties, a.total + b.total)


@functools.partial(jax.jit, static_argnames="confidence")
def triplet_result(state: TripletCounts, confidence: float = 0.95) -> TripletConsistency:
    """Consistency with ties as one half (a constant embedding scores 0.5, chance level).

    The interval is Wilson's score interval (Wilson, JASA 1927) with `wins + ties / 2`
    successes in `total` trials. It covers the sampling of triplets from this image set,
    treated as independent; it does not cover the choice of images, and triplets that
    share images make it somewhat narrow.
    """
    total = state.total.astype(jnp.float32)
    p = (state.wins + 0.5 * state.ties) / total
    low, high = wilson_interval(p, total, confidence)
    return TripletConsistency(p, low, high, state.ties / total, state.total)


def wilson_interval(p: jax.Array, n: jax.Array,
                    confidence: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """Wilson score interval (Wilson, JASA 1927) of a proportion `p` observed in `n` trials;
    exactly 0 below `p = 0` and 1 above `p = 1`, where rounding would leave a few ulps."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * jnp.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return jnp.where(p <= 0, 0.0, centre - half), jnp.where(p >= 1, 1.0, centre + half)


def triplet_consistency(embed: Callable, images, labels, key: jax.Array, *,
                        num_triplets: int = 1000,
                        distance: str | Distance | Mapping[str, str | Distance] = "l2",
                        batch_size: int = 32,
                        confidence: float = 0.95) -> dict[str, TripletConsistency]:
    """Triplet consistency of each tap, over `num_triplets` triplets drawn by `key`.

    `embed(images [B, ...]) -> {tap: [B, ...]}`, e.g. `tap_embedding(model, params)`;
    `images` is any array-like indexable by an integer array (only `3 * batch_size`
    images are gathered at a time). `distance` is one distance for every tap, or a
    mapping tap -> distance (only those taps are measured). Batches of triplets are padded
    to `batch_size` (or `num_triplets` if fewer), so `embed` sees one shape.
    """
    distances = ({tap: resolve_distance(d) for tap, d in distance.items()}
                 if isinstance(distance, Mapping) else None)
    shared = None if distances is not None else resolve_distance(distance)
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    _check_batch_size(batch_size)
    triplets = np.asarray(sample_triplets(key, labels, num_triplets))
    size = min(batch_size, num_triplets)
    states: dict[str, TripletCounts] = {}
    for start in range(0, num_triplets, size):
        chunk, valid = _padded(triplets, start, size)
        features = embed(images[chunk.T.reshape(-1)])
        measured = distances if distances is not None else {tap: shared for tap in features}
        for tap, measure in measured.items():
            if tap not in features:
                raise ValueError(f"embed returned no {tap!r}; it returned {sorted(features)}")
            if not bool(jnp.all(jnp.isfinite(features[tap]))):
                raise ValueError(f"embed returned NaN or Inf at {tap!r} for triplets "
                                 f"{start}..{min(start + size, num_triplets) - 1}; triplet "
                                 f"consistency needs finite features (are the images finite?)")
            states[tap] = _triplet_step(states.get(tap, triplet_init()), features[tap], valid,
                                        measure)
    return {tap: triplet_result(state, confidence) for tap, state in states.items()}


@functools.partial(jax.jit, static_argnames="distance")
def _triplet_step(state, features, valid, distance):
    """Adds a batch of embedded triplets: anchors, then positives, then negatives."""
    anchor, positive, negative = jnp.split(features, 3)
    return triplet_update(state, distance(anchor, positive), distance(anchor, negative), valid)


# ----------------------------------------------------------------- explanation continuity


class ContinuityStats(NamedTuple):
    """Streaming count, sum and maximum of continuity ratios."""

    count: jax.Array
    total: jax.Array
    maximum: jax.Array


class ContinuityResult(NamedTuple):
    """Mean and max of the ratios (NaN when there are none) and their count."""

    mean: jax.Array
    max: jax.Array
    count: jax.Array


def continuity_ratios(explanations_a: jax.Array, explanations_b: jax.Array,
                      inputs_a: jax.Array, inputs_b: jax.Array, *,
                      explanation_ord: int = 1) -> jax.Array:
    """`||R(x) - R(x')||_p / ||x - x'||_2` per pair (Montavon et al. 2018, sec. 7.1): -> `[N]`.

    explanations `[N, ...]`, inputs `[N, ...]`. `p = explanation_ord` is 1 as in the paper
    (2 compares with spectral norms). Identical inputs give 0 if their explanations agree
    and inf otherwise; a pair with a NaN or infinity in its inputs or explanations gives NaN
    (`explanation_continuity` refuses such pairs).
    """
    if explanation_ord not in (1, 2):
        raise ValueError(f"explanation_ord must be 1 or 2, got {explanation_ord!r}")
    n = explanations_a.shape[0]
    if (explanations_a.shape != explanations_b.shape or inputs_a.shape != inputs_b.shape
            or inputs_a.shape[:1] != (n,)):
        raise ValueError(f"pairs must be aligned: explanations {explanations_a.shape} and "
                         f"{explanations_b.shape}, inputs {inputs_a.shape} and {inputs_b.shape}")
    change = jnp.linalg.norm((explanations_a - explanations_b).reshape(n, -1),
                             ord=explanation_ord, axis=1)
    step = jnp.linalg.norm((inputs_a - inputs_b).reshape(n, -1), axis=1)
    ratio = jnp.where(step > 0, change / jnp.where(step > 0, step, 1.0),
                      jnp.where(change > 0, jnp.inf, 0.0))
    return jnp.where(jnp.isfinite(change) & jnp.isfinite(step), ratio, jnp.nan)


def continuity_init() -> ContinuityStats:
    """An empty ratio accumulator."""
    return ContinuityStats(jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.full((), -jnp.inf))


def continuity_update(state: ContinuityStats, ratios: jax.Array,
                      valid: jax.Array | None = None) -> ContinuityStats:
    """Adds ratios `[N]`; `valid [N]` drops padding."""
    valid = jnp.ones(ratios.shape, bool) if valid is None else valid
    return ContinuityStats(state.count + jnp.sum(valid),
                           state.total + jnp.sum(jnp.where(valid, ratios, 0.0)),
                           jnp.maximum(state.maximum, jnp.max(jnp.where(valid, ratios, -jnp.inf),
                                                              initial=-jnp.inf)))


def continuity_merge(a: ContinuityStats, b: ContinuityStats) -> ContinuityStats:
    """Combines two ratio accumulators."""
    return ContinuityStats(a.count + b.count, a.total + b.total, jnp.maximum(a.maximum, b.maximum))


@jax.jit
def continuity_result(state: ContinuityStats) -> ContinuityResult:
    """Mean and maximum ratio; the maximum is the empirical Lipschitz constant."""
    some = state.count > 0
    return ContinuityResult(jnp.where(some, state.total / jnp.maximum(state.count, 1), jnp.nan),
                            jnp.where(some, state.maximum, jnp.nan), state.count)


def explanation_continuity(explainer: Callable, images_a, images_b, *per_image_args,
                           explanation_ord: int = 1,
                           batch_size: int = 32) -> tuple[ContinuityResult, jax.Array]:
    """Explanation continuity over aligned pairs `(images_a[i], images_b[i])`.

    Calls `explainer(images, *args)` on both sides, where `args` are `per_image_args`
    (arrays `[N, ...]`, e.g. targets) sliced alike, so both images of a pair are explained
    for the same target. Returns the result and the raw ratios `[N]`. Batches are padded
    to `batch_size` (or `N` if smaller), so the explainer sees one shape. Images or
    explanations with a NaN or an infinity are refused (ValueError naming the first pair).
    """
    if jnp.shape(images_a) != jnp.shape(images_b) or jnp.ndim(images_a) < 2:
        raise ValueError(f"images_a and images_b must be aligned [N, ...] batches, got "
                         f"{jnp.shape(images_a)} and {jnp.shape(images_b)}")
    for name, images in (("images_a", images_a), ("images_b", images_b)):
        _check_finite(name, images, "continuity needs finite inputs")
    n = len(images_a)
    for arg in per_image_args:
        if len(arg) != n:
            raise ValueError(f"per-image arguments must have length {n}, got {len(arg)}")
    _check_batch_size(batch_size)
    if explanation_ord not in (1, 2):
        raise ValueError(f"explanation_ord must be 1 or 2, got {explanation_ord!r}")
    state, ratios, size = continuity_init(), [], min(batch_size, n)
    for start in range(0, n, size):
        index, valid = _padded(np.arange(n), start, size)
        a, b = jnp.asarray(images_a[index]), jnp.asarray(images_b[index])
        args = [arg[index] for arg in per_image_args]
        explanations_a, explanations_b = explainer(a, *args), explainer(b, *args)
        if jnp.shape(explanations_a)[:1] != (len(index),):
            raise ValueError(f"explainer must return [{len(index)}, ...] for {len(index)} "
                             f"images, got {jnp.shape(explanations_a)}")
        for name, explanations in (("images_a", explanations_a), ("images_b", explanations_b)):
            _check_finite(f"the explainer's output for {name}", explanations[:n - start],
                          "its continuity is undefined", first=start)
        state, batch = _continuity_step(state, explanations_a, explanations_b, a, b, valid,
                                        explanation_ord)
        ratios.append(np.asarray(batch)[np.asarray(valid)])
    return continuity_result(state), jnp.asarray(np.concatenate(ratios))


@functools.partial(jax.jit, static_argnames="explanation_ord")
def _continuity_step(state, explanations_a, explanations_b, inputs_a, inputs_b, valid,
                     explanation_ord):
    ratios = continuity_ratios(explanations_a, explanations_b, inputs_a, inputs_b,
                               explanation_ord=explanation_ord)
    return continuity_update(state, ratios, valid), ratios


def explain_all(explainer: Callable, images, *per_image_args, batch_size: int = 32) -> jax.Array:
    """`explainer(images, *args)` over `images [N, ...]` in padded batches (one shape for
    the explainer): -> `[N, ...]`. ValueError naming the first image whose explanation has
    a NaN or an infinity. Explain the originals once and their partners of every kind with
    this, then take `continuity_ratios`."""
    _check_batch_size(batch_size)
    _check_finite("images", images, "continuity needs finite inputs")
    n, size, out = len(images), min(batch_size, len(images)), []
    for start in range(0, n, size):
        index, _ = _padded(np.arange(n), start, size)
        explanations = np.asarray(explainer(jnp.asarray(images[index]),
                                            *[arg[index] for arg in per_image_args]))
        out.append(explanations[:min(size, n - start)])
    explanations = np.concatenate(out)
    _check_finite("the explainer's output", explanations, "its continuity is undefined")
    return jnp.asarray(explanations)


# ------------------------------------------------------------------- intervals over pairs
# A continuity score (the mean or the max of the ratios over pairs) varies with the pairs
# drawn and with the network's training run. `pair_bootstrap` measures the first within one
# run; `seed_interval` combines runs (seeds) into one interval.

STATISTICS = ("mean", "max")


class Interval(NamedTuple):
    """An estimate with its two-sided interval: estimate, low, high (each `[...]`)."""

    estimate: jax.Array
    low: jax.Array
    high: jax.Array


def pair_bootstrap(key: jax.Array, ratios: jax.Array, *, statistic: str = "mean",
                   resamples: int = 2000) -> jax.Array:
    """The statistic of `ratios [..., P]` over `P` pairs drawn with replacement, `resamples`
    times: -> `[resamples, ...]` (Efron's bootstrap). Every leading index is resampled with
    the same pairs, so scores of two explainers or two networks on the same pairs stay
    paired. The bootstrap of the max never exceeds the observed max: it describes the
    sample's maximum, not the explainer's supremum."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if not (isinstance(resamples, int) and resamples >= 2):
        raise ValueError(f"resamples must be an int >= 2, got {resamples!r}")
    ratios = jnp.asarray(ratios)
    if ratios.ndim < 1 or ratios.shape[-1] < 2:
        raise ValueError(f"ratios must be [..., P] with P >= 2 pairs, got {ratios.shape}")
    return _pair_bootstrap(key, ratios, statistic, resamples)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _pair_bootstrap(key, ratios, statistic, resamples):
    pairs = ratios.shape[-1]
    index = jax.random.randint(key, (resamples, pairs), 0, pairs)
    reduce = jnp.mean if statistic == "mean" else jnp.max
    return jax.lax.map(lambda i: reduce(ratios[..., i], axis=-1), index, batch_size=64)


def seed_interval(estimates, pair_se, *, confidence: float = 0.95) -> Interval:
    """Interval of the mean over `K` training runs of a score, from each run's estimate
    `estimates [K, ...]` and its standard error over pairs `pair_se [K, ...]` (the sd of its
    `pair_bootstrap`).

    The runs' mean has variance `(s_between^2) / K`, where the sample variance over runs
    already holds each run's pair noise; with few runs that sample variance is itself noisy,
    so it is bounded below by the pair noise it must contain, `mean(pair_se^2)`:
    `mean +- t_{K-1} sqrt(max(s^2, mean(pair_se^2)) / K)` (Student's t). With one run, the
    interval is the pairs' alone, `estimate +- z pair_se`.
    """
    estimates, pair_se = np.asarray(estimates, np.float64), np.asarray(pair_se, np.float64)
    if estimates.shape != pair_se.shape or estimates.ndim < 1 or not len(estimates):
        raise ValueError(f"estimates and pair_se must both be [K, ...] with K >= 1, got "
                         f"{estimates.shape} and {pair_se.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    k = len(estimates)
    mean = estimates.mean(axis=0)
    pair_variance = (pair_se ** 2).mean(axis=0)
    if k == 1:
        quantile, variance = statistics.NormalDist().inv_cdf(0.5 + confidence / 2), pair_variance
    else:
        quantile = _t_quantile(0.5 + confidence / 2, k - 1)
        variance = np.maximum(estimates.var(axis=0, ddof=1), pair_variance)
    half = quantile * np.sqrt(variance / k)
    return Interval(mean, mean - half, mean + half)


@functools.lru_cache(maxsize=64)
def _t_quantile(p: float, df: int) -> float:
    """Student's t quantile, by bisection on the regularised incomplete beta function
    (`jax.scipy.special.betainc`): no SciPy needed."""
    def cdf(t):
        x = df / (df + t * t)
        tail = 0.5 * float(jax.scipy.special.betainc(df / 2, 0.5, x))
        return 1 - tail if t > 0 else tail

    low, high = -1e3, 1e3
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


# --------------------------------------------------------------------------------- pairs


@jax.jit
def shift_images(images: jax.Array, shift: tuple[float, float]) -> jax.Array:
    """Translates images `[N, H, W, C]` by `(dy, dx)` pixels (fractions allowed).

    `out[i, j] = in[i - dy, j - dx]`, bilinear between pixels, borders replicated.
    """
    if jnp.ndim(images) != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {jnp.shape(images)}")
    dy, dx = shift
    rows, cols = jnp.meshgrid(jnp.arange(images.shape[1]) - dy,
                              jnp.arange(images.shape[2]) - dx, indexing="ij")

    def one_channel(channel):
        return jax.scipy.ndimage.map_coordinates(channel, [rows, cols], order=1, mode="nearest")

    per_image = jax.vmap(one_channel, in_axes=-1, out_axes=-1)
    return jax.vmap(per_image)(images)


def add_noise(key: jax.Array, images: jax.Array, sigma: float) -> jax.Array:
    """`images + sigma * N(0, 1)`, independent per pixel."""
    return images + sigma * jax.random.normal(key, jnp.shape(images), jnp.result_type(images))


def same_class_neighbours(vectors: jax.Array, labels, *, batch_size: int = 256) -> jax.Array:
    """For each item, the index of its Euclidean-nearest other item of the same class.

    vectors `[N, ...]` (images for input space, features for feature space), labels int
    `[N]` -> int `[N]`. Exact duplicates are nearest. Every class needs two members.
    Memory: `batch_size x N` distances at a time.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(vectors):
        raise ValueError(f"labels must be [N] = [{len(vectors)}], got shape {labels.shape}")
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"classes {classes[counts < 2].tolist()} have a single member")
    _check_batch_size(batch_size)
    flat = jnp.reshape(vectors, (len(labels), -1))
    squared = jnp.sum(flat * flat, axis=1)
    labels = jnp.asarray(labels)

    def nearest(args):
        vector, label, index = args
        distances = squared - 2 * flat @ vector
        same = (labels == label) & (jnp.arange(len(labels)) != index)
        return jnp.argmin(jnp.where(same, distances, jnp.inf))

    return jax.lax.map(nearest, (flat, labels, jnp.arange(len(labels))), batch_size=batch_size)


def _padded(items: np.ndarray, start: int, size: int) -> tuple[np.ndarray, jax.Array]:
    """`items[start:start + size]`, padded to `size` by repeating its first row, and a mask."""
    chunk = items[start:start + size]
    padding = np.repeat(chunk[:1], size - len(chunk), axis=0)
    return np.concatenate([chunk, padding]), jnp.asarray(np.arange(size) < len(chunk))


def _check_finite(name: str, values, consequence: str, first: int = 0) -> None:
    """ValueError naming the first pair of `values [N, ...]` with a NaN or an infinity."""
    finite = np.isfinite(np.asarray(values)).reshape(len(values), -1).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} holds NaN or Inf (first at pair {first + np.argmin(finite)});"
                         f" {consequence}")


def _check_batch_size(batch_size):
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
