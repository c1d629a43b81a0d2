"""Multi-shot part localisation: a part found from a few annotated objects by graph nodes,
and the baselines it is compared with (Zhang et al., AAAI 2018, "multi-shot part
localization"; the voting after the authors' `produceMap.m` in partGraphForCNN, as DATA.md
reads it).

A part model is a set of patterns (graph nodes; raw filters for the baseline), each with the
mean offset from where it is found to the part centre. `fit_part` picks them from the
annotated objects (the shots): the patterns that fire on every shot showing the part and keep
the most consistent offset to it. `predict` lets each picked pattern vote for the part centre
at its position plus its offset, a Gaussian of `sigma` px weighted by its score; the votes are
summed on an image-sized map whose argmax is the prediction. The defaults (all layers, 100
patterns, `min_score` 1) were chosen on synthetic validation objects; the vote's 70 px at 224
is the protocol's, and validation found 16-70 px alike.

Orientation: patterns are found, and offsets measured, in the frame in which the graph takes
each image (`LayerInference.flip`: its top layer tries the image and its mirror and keeps the
one its nodes explain better; the lower layers follow). Shot landmarks are mirrored into that
frame, and a prediction made in a mirrored image is mapped back (`w -> image_size - 1 - w`).
The filter baseline reads its maps in the same frames, so that the two differ only in their
patterns. Pixels are 0-based (h, w).

A `PartModel` is its own checkpoint (`save`, `load`: orbax via `egjax.checkpoint`), kept
beside its graph's (`runs/<name>/parts/<part>/` next to `runs/<name>/graph/`), not inside
it: the graph's directory belongs to the graph's checkpoint code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from egjax import checkpoint, evaluate, geometry
from egjax.config import GraphConfig

KIND = "part model"
SIGMA_AT_224 = 70.0   # px: the vote's Gaussian on a 224-px image (DATA.md)
NODES = 100           # patterns per part (chosen on synthetic validation objects)
MIN_SCORE = 1.0       # a pattern fires on a shot where its score is >= this
VOTE_BATCH = 16       # images whose vote maps are built at once (bounds memory)


class Patterns(NamedTuple):
    """Patterns of one layer in N images: `score [V, N]`, position `px [V, N, 2]` (h, w
    pixels) in the frame of `flip [N]` (True: found in the mirrored image)."""

    score: np.ndarray
    px: np.ndarray
    flip: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class PartModel:
    """A part as `J` voting patterns: pattern `index[j]` of graph layer `layer[j]` (a node
    `c*K + k`, or a filter `c`) votes at its position plus `offset[j]` (h, w px, in its frame)
    with a Gaussian of `sigma` px, on `image_size`-px images."""

    layer: np.ndarray
    index: np.ndarray
    offset: np.ndarray
    sigma: float
    image_size: int

    def __post_init__(self):
        layer, index = np.asarray(self.layer), np.asarray(self.index)
        offset = np.asarray(self.offset)
        j = layer.shape[0] if layer.ndim == 1 else -1
        if (j < 1 or index.shape != (j,) or offset.shape != (j, 2)
                or not np.issubdtype(layer.dtype, np.integer)
                or not np.issubdtype(index.dtype, np.integer)):
            raise ValueError(f"a PartModel needs integer layer [J] and index [J] and offset "
                             f"[J, 2] with J >= 1, got {layer.dtype}{layer.shape}, "
                             f"{index.dtype}{index.shape}, {offset.shape}")
        if layer.min() < 0 or index.min() < 0 or not np.all(np.isfinite(offset)):
            raise ValueError("a PartModel's layer and index must be >= 0 and its offsets finite")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {self.sigma!r}")
        if not (isinstance(self.image_size, (int, np.integer)) and self.image_size >= 1):
            raise ValueError(f"image_size must be an int >= 1, got {self.image_size!r}")
        object.__setattr__(self, "layer", layer.astype(np.int32))
        object.__setattr__(self, "index", index.astype(np.int32))
        object.__setattr__(self, "offset", offset.astype(np.float32))
        object.__setattr__(self, "sigma", float(self.sigma))
        object.__setattr__(self, "image_size", int(self.image_size))

    def save(self, path, *, overwrite: bool = False):
        """Write to the directory `path` (orbax, atomic, checksummed; `egjax.checkpoint`).
        Returns it."""
        arrays = {"layer": self.layer, "index": self.index, "offset": self.offset}
        meta = {"sigma": self.sigma, "image_size": self.image_size}
        return checkpoint.save(path, arrays, meta, kind=KIND, overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "PartModel":
        """Read a part model written by `save`; refuses another kind of checkpoint or a file
        that fails its checksum."""
        arrays, meta = checkpoint.load(path, kind=KIND)
        try:
            return cls(layer=arrays["layer"], index=arrays["index"], offset=arrays["offset"],
                       sigma=meta["sigma"], image_size=meta["image_size"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: incomplete part model: {error}") from error


def default_sigma(image_size: int) -> float:
    """The vote's Gaussian, 70 px at 224 px, scaled with the image."""
    return SIGMA_AT_224 * image_size / 224


# -- patterns -------------------------------------------------------------------------------

def node_patterns(graph, inference) -> list[Patterns]:
    """Each graph layer's nodes in the images of `inference` (`egjax.infer_graph`)."""
    if len(inference) != len(graph.layers):
        raise ValueError(f"inference must hold the graph's {len(graph.layers)} layers, "
                         f"got {len(inference)}")
    out = []
    for fitted, inferred in zip(graph.layers, inference):
        cfg = fitted.config
        nodes = fitted.num_nodes
        score, pos, flip = (np.asarray(a) for a in (inferred.score, inferred.pos, inferred.flip))
        if score.ndim != 2 or score.shape[0] != nodes or pos.shape != (*score.shape, 2):
            raise ValueError(f"inference of layer {cfg.tap or len(out)} must hold score "
                             f"[{nodes}, N] and pos [{nodes}, N, 2], got {score.shape} and "
                             f"{pos.shape}")
        out.append(Patterns(score, geometry.to_pixels(pos, cfg.stride, cfg.center),
                            flip.astype(bool)))
    return out


def filter_patterns(config: GraphConfig, maps: Sequence, flipped_maps: Sequence,
                    flip) -> list[Patterns]:
    """Raw-filter baseline: per graph layer, each filter's argmax cell (`evaluate.
    filter_detections`) and maximum, in the image or, where `flip [N]`, in its mirror.

    `maps`, `flipped_maps` one `[N, S, S, C]` array (or `QuantizedMaps`) per layer of
    `config`, bottom to top, as the graph's.
    """
    if not (len(maps) == len(flipped_maps) == len(config.layers)):
        raise ValueError(f"need maps and flipped_maps for each of the {len(config.layers)} "
                         f"graph layers, got {len(maps)} and {len(flipped_maps)}")
    flip = np.asarray(flip, bool)
    out = []
    for cfg, plain, mirrored in zip(config.layers, maps, flipped_maps):
        found = [evaluate.filter_detections(np.asarray(evaluate.decoded(m)), cfg.stride,
                                            cfg.center) for m in (plain, mirrored)]
        if found[0].score.shape[1] != flip.shape[0] or found[1].score.shape != found[0].score.shape:
            raise ValueError(f"maps, flipped_maps and flip must hold the same {flip.shape[0]} "
                             f"images")
        out.append(Patterns(np.where(flip, found[1].score, found[0].score),
                            np.where(flip[:, None], found[1].px, found[0].px), flip))
    return out


def to_frame(points, flip, image_size: int) -> np.ndarray:
    """Pixel points `[..., N, 2]` of N images between the image and its mirror where `flip [N]`
    (`geometry.mirror_points`: `w -> image_size - 1 - w`; its own inverse)."""
    points = np.asarray(points, np.float32)
    return geometry.mirror_points(points, np.asarray(flip, bool), image_size).astype(np.float32)


# -- fitting --------------------------------------------------------------------------------

def fit_part(graph, shot_inference, shot_landmarks, shot_visible, *, nodes: int = NODES,
             layers: Sequence[int] | None = None, min_score: float = MIN_SCORE,
             sigma: float | None = None) -> PartModel:
    """A part model from S annotated shots, with graph nodes as its patterns.

    `shot_inference`: `egjax.infer_graph(graph, maps, flipped_maps)` of the shot images
    (or those images' columns of a larger inference: scores are then relative to that
    inference's mean, 1); `shot_landmarks [S, 2]` the part centre (h, w px, in the image),
    `shot_visible [S]` whether the shot shows it (shots that do not are ignored). Keeps the
    `nodes` nodes of `layers` (graph layer indices; None: all) that fire on every shot showing
    the part (score >= `min_score`) and whose offset to it varies least over those shots (RMS
    distance to their mean offset; ties to the higher lowest score). `sigma`: the votes' px
    (None: `default_sigma`).
    """
    return fit_patterns(node_patterns(graph, shot_inference), shot_landmarks, shot_visible,
                        graph.config.image_size, nodes=nodes, layers=layers,
                        min_score=min_score, sigma=sigma)


def fit_patterns(patterns: Sequence[Patterns], shot_landmarks, shot_visible, image_size: int,
                 *, nodes: int = NODES, layers: Sequence[int] | None = None,
                 min_score: float = MIN_SCORE, sigma: float | None = None) -> PartModel:
    """`fit_part` on any patterns (`node_patterns`, `filter_patterns`) of the shot images."""
    if not (isinstance(nodes, (int, np.integer)) and nodes >= 1):
        raise ValueError(f"nodes must be an int >= 1, got {nodes!r}")
    if not math.isfinite(min_score):
        raise ValueError(f"min_score must be finite, got {min_score!r}")
    layers = _check_layers(layers, len(patterns))
    shots = patterns[0].score.shape[1]
    landmarks = np.asarray(shot_landmarks, np.float32)
    visible = np.asarray(shot_visible)
    if landmarks.shape != (shots, 2) or visible.shape != (shots,) or visible.dtype != bool:
        raise ValueError(f"shot_landmarks must be [{shots}, 2] px and shot_visible [{shots}] "
                         f"bool for the {shots} shot images, got {landmarks.shape} and "
                         f"{visible.dtype}{visible.shape}")
    if not visible.any():
        raise ValueError("no shot shows the part (shot_visible is all False)")
    if not np.all(np.isfinite(landmarks[visible])):
        raise ValueError("shot_landmarks of visible shots must be finite")
    score = np.concatenate([patterns[l].score for l in layers])
    px = np.concatenate([patterns[l].px for l in layers])
    frame = _common_frame([patterns[l] for l in layers])
    target = to_frame(landmarks, frame, image_size)
    order, offset, fires = (np.asarray(a) for a in _rank(
        jnp.asarray(score), jnp.asarray(px), jnp.asarray(target), jnp.asarray(visible),
        jnp.float32(min_score)))
    order = order[:nodes][fires[order[:nodes]]]
    offset = offset[order]
    if not order.size:
        raise ValueError(f"no pattern fires (score >= {min_score}) on every shot showing "
                         f"the part; lower min_score")
    sizes = np.cumsum([0] + [patterns[l].score.shape[0] for l in layers])
    which = np.searchsorted(sizes, order, side="right") - 1
    return PartModel(layer=np.asarray(layers)[which], index=order - sizes[which],
                     offset=offset, sigma=default_sigma(image_size) if sigma is None else sigma,
                     image_size=image_size)


@jax.jit
def _rank(score, px, target, visible, min_score):
    """Patterns (`[V, S]` scores, `[V, S, 2]` px) by how little their offset to `target
    [S, 2]` varies over the visible shots (RMS distance to the mean offset; ties: higher
    lowest score first): (order `[V]`, mean offsets `[V, 2]`, whether each fires on every
    visible shot `[V]`, those that do not ranked last)."""
    count = jnp.sum(visible)
    offset = target[None] - px                                          # [V, S, 2]
    mean = jnp.sum(jnp.where(visible[:, None], offset, 0), 1) / count
    squares = jnp.sum((offset - mean[:, None]) ** 2, -1)
    spread = jnp.sqrt(jnp.sum(jnp.where(visible, squares, 0), 1) / count)
    lowest = jnp.min(jnp.where(visible, score, jnp.inf), 1)
    fires = lowest >= min_score
    return jnp.lexsort((-lowest, jnp.where(fires, spread, jnp.inf))), mean, fires


# -- prediction -----------------------------------------------------------------------------

def predict(part: PartModel, graph, inference) -> np.ndarray:
    """Predicted part centre `[N, 2]` (h, w px, in the image) for each image of `inference`
    (`egjax.infer_graph(graph, maps, flipped_maps)`)."""
    if part.image_size != graph.config.image_size:
        raise ValueError(f"the part model is for {part.image_size}-px images, the graph for "
                         f"{graph.config.image_size}")
    return predict_patterns(part, node_patterns(graph, inference))


def predict_patterns(part: PartModel, patterns: Sequence[Patterns]) -> np.ndarray:
    """`predict` on any patterns (`node_patterns`, `filter_patterns`) of the images."""
    sizes = np.array([p.score.shape[0] for p in patterns] + [0])
    missing = sizes[np.minimum(part.layer, len(patterns))] <= part.index
    if missing.any():
        j = np.argmax(missing)
        raise ValueError(f"the part model votes with pattern {part.index[j]} of layer "
                         f"{part.layer[j]}, which these {len(patterns)} layers of patterns "
                         f"do not have")
    used = np.unique(part.layer)
    frame = _common_frame([patterns[l] for l in used])
    score = np.empty((len(part.index), frame.shape[0]), np.float32)
    px = np.empty((len(part.index), frame.shape[0], 2), np.float32)
    for layer in used:
        rows = part.layer == layer
        score[rows] = patterns[layer].score[part.index[rows]]
        px[rows] = patterns[layer].px[part.index[rows]]
    found = vote(jnp.asarray(score), jnp.asarray(px), jnp.asarray(part.offset),
                 jnp.float32(part.sigma), part.image_size)
    return to_frame(np.asarray(found), frame, part.image_size)


@functools.partial(jax.jit, static_argnames="image_size")
def vote(score: jax.Array, px: jax.Array, offset: jax.Array, sigma: jax.Array,
         image_size: int) -> jax.Array:
    """The argmax `[N, 2]` (h, w px) of each image's vote map: pattern j (`score [J, N]`,
    `px [J, N, 2]`) adds `w * exp(-|x - (px + offset[j])|^2 / (2 sigma^2))` at each pixel x
    of the `image_size`-px map, `w = max(score, 0) + 1e-6` (the floor: where no pattern
    fires, the votes count alike). The first maximum in row-major order wins."""
    grid = jnp.arange(image_size, dtype=jnp.float32)
    centre = jnp.swapaxes(px + offset[:, None], 0, 1)                  # [N, J, 2]

    def one_image(args):
        weight, at = args                                               # [J], [J, 2]
        rows = jnp.exp(-(grid - at[:, 0:1]) ** 2 / (2 * sigma ** 2))   # [J, H]
        cols = jnp.exp(-(grid - at[:, 1:2]) ** 2 / (2 * sigma ** 2))   # [J, W]
        votes = jnp.dot((rows * (jnp.maximum(weight, 0) + 1e-6)[:, None]).T, cols,
                        precision=jax.lax.Precision.HIGHEST)           # separable Gaussian
        best = jnp.argmax(votes)
        return jnp.stack([best // image_size, best % image_size]).astype(jnp.float32)

    return jax.lax.map(one_image, (score.T, centre), batch_size=VOTE_BATCH)


# -- baselines and the measure --------------------------------------------------------------

def prior(shot_landmarks, shot_visible, num_images: int) -> np.ndarray:
    """Baseline without images: the mean part centre of the shots showing it, `[N, 2]`."""
    landmarks, visible = _check_shots(shot_landmarks, shot_visible)
    return np.broadcast_to(landmarks[visible].mean(0), (num_images, 2)).copy()


def nearest(shot_features, shot_flipped_features, shot_landmarks, shot_visible, features,
            image_size: int) -> np.ndarray:
    """Baseline: each image takes the part centre of its most similar shot, `[N, 2]`.

    Similarity: cosine of pooled features (`features [N, D]` of the images;
    `shot_features [S, D]` of the shots and `shot_flipped_features` of their mirrors, whose
    centres are mirrored). Shots not showing the part are left out.
    """
    landmarks, visible = _check_shots(shot_landmarks, shot_visible)
    shots = np.concatenate([np.asarray(shot_features)[visible],
                            np.asarray(shot_flipped_features)[visible]])
    features = np.asarray(features)
    if shots.ndim != 2 or features.ndim != 2 or shots.shape[1] != features.shape[1]:
        raise ValueError(f"features must be [N, D] and shot features [S, D] alike, got "
                         f"{features.shape} and {np.shape(shot_features)}")
    candidates = np.concatenate([landmarks[visible],
                                 to_frame(landmarks[visible], True, image_size)])
    similarity = _unit(features) @ _unit(shots).T
    return candidates[np.argmax(similarity, axis=1)]


def normalized_distance(predicted, truth, visible, image_size: int) -> float:
    """Mean over images showing the part of `|predicted - truth| / (image_size sqrt 2)`
    (`step_getResult.m`). `predicted`, `truth [N, 2]` px, `visible [N]` bool."""
    predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    visible = np.asarray(visible)
    n = predicted.shape[0] if predicted.ndim == 2 else -1
    if predicted.shape != (n, 2) or truth.shape != (n, 2) or visible.shape != (n,):
        raise ValueError(f"predicted and truth must be [N, 2] and visible [N], got "
                         f"{predicted.shape}, {truth.shape}, {visible.shape}")
    if visible.dtype != bool or not visible.any():
        raise ValueError("visible must be bool with at least one image showing the part")
    if not (np.all(np.isfinite(predicted)) and np.all(np.isfinite(truth[visible]))):
        raise ValueError("predicted and the visible truth must be finite")
    distance = np.linalg.norm(predicted - truth, axis=1)[visible]
    return float(distance.mean() / evaluate.diagonal(image_size))


def _check_shots(shot_landmarks, shot_visible) -> tuple[np.ndarray, np.ndarray]:
    landmarks, visible = np.asarray(shot_landmarks, np.float32), np.asarray(shot_visible)
    if landmarks.ndim != 2 or landmarks.shape[1] != 2 or visible.shape != landmarks.shape[:1]:
        raise ValueError(f"shot_landmarks must be [S, 2] and shot_visible [S], got "
                         f"{landmarks.shape} and {visible.shape}")
    if visible.dtype != bool or not visible.any():
        raise ValueError("shot_visible must be bool with at least one shot showing the part")
    return landmarks, visible


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_layers(layers, count: int) -> list[int]:
    if layers is None:
        return list(range(count))
    layers = list(layers)
    if (not layers or len(set(layers)) != len(layers)
            or not all(isinstance(l, (int, np.integer)) and 0 <= l < count for l in layers)):
        raise ValueError(f"layers must be distinct graph layer indices in [0, {count}), "
                         f"got {layers!r}")
    return sorted(int(l) for l in layers)


def _common_frame(patterns: Sequence[Patterns]) -> np.ndarray:
    """The images' frame, which every layer must share (as `infer_graph` gives it)."""
    frame = np.asarray(patterns[0].flip, bool)
    for p in patterns:
        if p.flip.shape != frame.shape or p.score.shape[1] != frame.shape[0]:
            raise ValueError("every layer's patterns must hold the same images")
        if not np.array_equal(p.flip, frame):
            raise ValueError("the layers take some images in different orientations; "
                             "votes need one frame per image")
    return frame
