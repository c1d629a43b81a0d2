"""Pattern-based image synthesis: what a network sees through the graph's strongest patterns.

The explanatory graph paper (Zhang et al., AAAI 2018, "pattern-based image synthesis") keeps
the strongest 10% of the graph's patterns in an image and synthesises the image from them; its
code does not publish how. This module is a transparent version of it:

1. The graph is inferred on the images (`em.infer_graph` via `graph_explainer`); in each
   image the `keep` fraction of one layer's nodes with the highest scores are kept.
2. Each filter's map is masked to the cells whose centres lie inside the receptive field
   (`geometry.receptive_field`, a square of side `size` px) of one of its kept nodes'
   inferred positions; every other cell becomes 0 (`pattern_masks`).
3. An image is found whose rectified maps at that layer match the masked maps, by
   optimisation-based inversion (Mahendran & Vedaldi, CVPR 2015, eq. 1-3; `invert`):

       min_x  ||relu(phi(x)) - m * relu(phi(x0))||^2 / ||m * relu(phi(x0))||^2
              + norm_weight * mean(x^6) + tv_weight * mean((dx_h)^2 + (dx_w)^2)

   (phi: the tap's maps before rectification; the feature term is taken as the distance of
   phi(x) from the maps whose rectification is the target, see `objective`), in
   network-input units (x = 0 is the preprocessing's mean colour), with optax Adam from
   small noise, one jitted step per iteration over the whole batch (vmapped per image).
   The defaults (`Settings`) were tuned by eye on two images for a 60-step CPU budget.

The same call inverts the full maps (m = 1) and a random mask with the same number of cells
per filter and image as the pattern mask (`random_masks`), for comparison.
`foreground_share` measures how much of a reconstruction's detail (gradient energy) lies on
the object.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from egjax import geometry, graph_explainer
from egjax.graph import ExplanatoryGraph
from egjax.models import ModelMeta, preprocess
from egjax.progress import Step

VARIANTS = ("all", "patterns", "random")


class Settings(NamedTuple):
    """The inversion's optimisation: Adam `steps` at `learning_rate` (network-input units per
    step), the priors' weights and the sd of the initial noise."""

    steps: int = 60
    learning_rate: float = 0.1
    tv_weight: float = 2.0
    norm_weight: float = 0.05
    init_sd: float = 0.1


class Synthesis(NamedTuple):
    """Reconstructions uint8 `[N, H, W, 3]` per variant ("all", "patterns", "random"), the
    map masks bool `[N, S, S, C]` they were made from, the kept nodes bool `[N, V]`, and the
    mean objective per step `[steps]` per variant."""

    images: dict
    masks: dict
    kept: np.ndarray
    losses: dict


def _check_settings(keep, settings: Settings) -> None:
    if not (isinstance(keep, (int, float)) and not isinstance(keep, bool) and 0 < keep <= 1):
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    if not (isinstance(settings.steps, int) and settings.steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {settings.steps!r}")
    for name in ("learning_rate", "init_sd"):
        if not getattr(settings, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(settings, name)!r}")
    for name in ("tv_weight", "norm_weight"):
        if not getattr(settings, name) >= 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(settings, name)!r}")


def kept_nodes(score: jax.Array, keep: float) -> jax.Array:
    """bool `[N, V]`: in each image, the `max(1, round(keep * V))` nodes of highest score
    (`score [N, V]`; ties: the lower index)."""
    count = max(1, round(keep * score.shape[1]))
    _, top = jax.lax.top_k(score, count)
    return jnp.zeros(score.shape, bool).at[jnp.arange(score.shape[0])[:, None], top].set(True)


def pattern_masks(kept: jax.Array, pixels: jax.Array, filters: int, map_size: int,
                  field: geometry.ReceptiveField) -> jax.Array:
    """bool `[N, S, S, C]`: cell (i, j) of filter c is kept when its centre (`field.center +
    cell * field.stride` px) lies within `field.size / 2` px, along both axes, of the inferred
    position of one of c's kept nodes. `kept [N, V]`, `pixels [N, V, 2]` (h, w) px, node
    v = c * K + k."""
    n, v = kept.shape
    centres = geometry.to_pixels(jnp.arange(map_size), field.stride, field.center)
    pixels = pixels.reshape(n, filters, v // filters, 2)
    near = jnp.abs(centres - pixels[..., None]) <= field.size / 2    # [N, C, K, 2, S]
    weight = kept.reshape(n, filters, v // filters).astype(jnp.float32)
    hits = jnp.einsum("nck,ncki,nckj->nijc", weight, near[..., 0, :].astype(jnp.float32),
                      near[..., 1, :].astype(jnp.float32))
    return hits > 0


def random_masks(key: jax.Array, masks: jax.Array) -> jax.Array:
    """bool like `masks [N, S, S, C]`: per image and filter, as many cells as `masks` keeps,
    drawn uniformly without replacement."""
    n, s, _, c = masks.shape
    count = jnp.sum(masks, axis=(1, 2))                                  # [N, C]
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (n, s * s, c)), axis=1), axis=1)
    return (rank < count[:, None]).reshape(n, s, s, c)


def objective(image: jax.Array, target: jax.Array, forward: Callable, settings: Settings):
    """Mahendran & Vedaldi's objective for one image `[H, W, 3]` (network input) and its
    target rectified maps `[S, S, C]` (>= 0): normalised L2 feature loss + norm (alpha = 6)
    and total-variation (beta = 2) priors, the priors as means over the pixels.

    `forward(image)` gives the maps before rectification, z; the feature loss is the squared
    distance from z to the maps whose rectification is the target: `(z - t)^2` where t > 0,
    `max(z, 0)^2` where t = 0. It equals `(relu(z) - t)^2` except where t > 0 > z, where
    that has no gradient (an image whose units start dead would never move)."""
    maps = forward(image)
    scale = jnp.maximum(jnp.sum(target * target), 1e-12)
    loss = jnp.sum(jnp.where(target > 0, maps - target, jnp.maximum(maps, 0.0)) ** 2) / scale
    tv = (jnp.mean((image[1:] - image[:-1]) ** 2) + jnp.mean((image[:, 1:] - image[:, :-1]) ** 2))
    return loss + settings.norm_weight * jnp.mean(image ** 6) + settings.tv_weight * tv


def invert(forward: Callable, targets: jax.Array, init: jax.Array, settings: Settings = Settings(),
           *, quiet: bool = False, desc: str = "inversion") -> tuple[jax.Array, jax.Array]:
    """(images `[N, H, W, 3]`, objective per step `[steps, N]`): each image of `init`
    optimised with optax Adam so that `relu(forward(image)) [S, S, C]` matches its `targets
    [N, S, S, C]` (`objective`). One jitted step per iteration (compiled once per `forward`,
    `settings` and shape), vmapped over the images: each image's objective is its own and
    Adam is elementwise, so a batch gives every image the result it would get alone. A
    progress bar counts the steps."""
    if targets.shape[0] != init.shape[0]:
        raise ValueError(f"targets and init must hold the same images, got {targets.shape[0]} "
                         f"and {init.shape[0]}")
    images, state = init, optax.adam(settings.learning_rate).init(init)
    losses = []
    with Step(settings.steps, desc, "steps", quiet=quiet) as bar:
        for _ in range(settings.steps):
            images, state, values = _step(images, state, targets, forward, settings)
            losses.append(values)
            bar.update()
        losses = jnp.stack(losses)
        bar.describe(note=f"objective {float(jnp.mean(losses[0])):.3g} -> "
                          f"{float(jnp.mean(losses[-1])):.3g}")
    return images, losses


@functools.partial(jax.jit, static_argnames=("forward", "settings"))
def _step(images, state, targets, forward: Callable, settings: Settings):
    """One Adam step of every image's `objective` (vmapped): (images, state, objectives [N])."""
    values, grads = jax.vmap(jax.value_and_grad(
        lambda image, target: objective(image, target, forward, settings)))(images, targets)
    updates, state = optax.adam(settings.learning_rate).update(grads, state, images)
    return optax.apply_updates(images, updates), state, values


def _pixel_affine(meta: ModelMeta) -> tuple[np.ndarray, np.ndarray]:
    """(A [3, 3], b [3]) with network input = A @ rgb + b (`preprocess` is affine per pixel)."""
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    inputs = np.asarray(preprocess(colours.reshape(4, 1, 1, 3), meta)).reshape(4, 3)
    return ((inputs[1:] - inputs[0]) / 255.0).T, inputs[0]


def to_pixels(inputs: jax.Array, meta: ModelMeta) -> np.ndarray:
    """Network inputs `[N, H, W, 3]` -> uint8 RGB images (the inverse of `preprocess`,
    rounded and clipped)."""
    a, b = _pixel_affine(meta)
    rgb = (np.asarray(inputs, np.float64) - b) @ np.linalg.inv(a).T
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def foreground_share(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """`[N]`: the fraction of each image's gradient energy inside its object mask. Energy of
    pixel (i, j): the squared forward differences to (i + 1, j) and (i, j + 1), summed over
    channels (0 past the last row / column). `images [N, H, W, 3]`, `masks` bool `[N, H, W]`."""
    x = np.asarray(images, np.float64)
    energy = np.zeros(x.shape[:3])
    energy[:, :-1] += np.sum((x[:, 1:] - x[:, :-1]) ** 2, axis=-1)
    energy[:, :, :-1] += np.sum((x[:, :, 1:] - x[:, :, :-1]) ** 2, axis=-1)
    total = energy.sum(axis=(1, 2))
    return np.sum(energy * masks, axis=(1, 2)) / np.where(total > 0, total, 1.0)


def synthesize(model, params, meta: ModelMeta, graph: ExplanatoryGraph,
               sd: Mapping[str, jax.Array], images: np.ndarray, *, layer: str, key: jax.Array,
               keep: float = 0.1, settings: Settings = Settings(),
               quiet: bool = False) -> Synthesis:
    """Each uint8 image `[N, H, W, 3]` reconstructed from `layer`'s (a graph tap) rectified
    maps: whole ("all"), masked to its `keep` strongest patterns ("patterns",
    `pattern_masks`), and masked at random to as many cells per filter ("random"). `sd`
    `{tap: [S, S, C]}` the negative statistics the graph was fitted with. All 3N inversions
    run as one batch from the same noise per image."""
    _check_settings(keep, settings)
    taps = [cfg.tap for cfg in graph.config.layers]
    if layer not in taps:
        raise ValueError(f"unknown layer {layer!r}; the graph's layers are {', '.join(taps)}")
    index = taps.index(layer)
    cfg = graph.config.layers[index]
    inputs = preprocess(images, meta)
    inferred = graph_explainer.graph_inference(model, params, graph, sd, index)(inputs)
    pixels = geometry.cells_to_pixels(jnp.swapaxes(inferred.pos, 0, 1), cfg,
                                      inferred.flip[:, None], images.shape[2])
    filters = graph.layers[index].deform.shape[0]
    kept = kept_nodes(inferred.score.T, keep)
    mask_key, noise_key = jax.random.split(key)
    patterns = pattern_masks(kept, pixels, filters, cfg.map_size,
                             geometry.receptive_field(model, layer))
    masks = {"all": jnp.ones_like(patterns), "patterns": patterns,
             "random": random_masks(mask_key, patterns)}

    def forward(image):
        return model.apply({"params": params}, image[None], taps=(layer,))[layer][0]

    maps = jax.nn.relu(jax.jit(jax.vmap(forward))(inputs))
    targets = jnp.concatenate([maps * masks[v] for v in VARIANTS])
    noise = settings.init_sd * jax.random.normal(noise_key, inputs.shape)
    out, losses = invert(forward, targets, jnp.concatenate([noise] * len(VARIANTS)), settings,
                         quiet=quiet, desc=f"inversion from {layer}")
    n = images.shape[0]
    return Synthesis(
        images={v: to_pixels(out[i * n:(i + 1) * n], meta) for i, v in enumerate(VARIANTS)},
        masks={v: np.asarray(m) for v, m in masks.items()}, kept=np.asarray(kept),
        losses={v: np.asarray(jnp.mean(losses[:, i * n:(i + 1) * n], axis=1))
                for i, v in enumerate(VARIANTS)})
