"""`ORIGINAL`, the `Rules` of `compat="original"` (`learn_explanatoryGraph.m`), and its
layer-level pieces: the flip rule, the M-step, sums over images in order, `top_m`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from egjax.em.layer import LayerState, Sums
from egjax.em.original import estep, parents
from egjax.em.ieee import divide, rounded
from egjax.em.original.arithmetic import in_order_mean, in_order_sum
from egjax.em.reduce import Images, all_images
from egjax.em.rules import Rules
from egjax.em.sharding import whole_records


def prefers_mirrored(plain, mirrored, t) -> jnp.ndarray:
    """Mirrored if `sum log(pi) F` is larger (less evidence wins), from iteration 1."""
    def total(inference):
        return jnp.sum(jnp.log(inference.spatial_prior) * inference.evidence)

    return total(plain) < total(mirrored)


def move(coord, sums: Sums, sigma, t, cfg) -> jnp.ndarray:
    """`layer.move` as the original: `t^(1/4)` from the C library, 1-based frame."""
    quarter = jnp.asarray([i**0.25 for i in range(1, cfg.iterations + 1)], sigma.dtype)
    step = cfg.eta * (jnp.min(sigma) / quarter[t.astype(jnp.int32) - 1]) ** 2
    move = divide(sums.gradient, jnp.maximum(sums.responsibility_mass, 1e-8))
    return estep.shifted(coord, rounded(move * step))


def per_chunk(summed: Sums, valid) -> tuple[tuple, Sums]:
    """Each image's statistics kept, to be added in image order (`image_sums`)."""
    return (), summed


def kept_into(state: LayerState) -> Sums:
    zeros = jnp.zeros_like(state.score)
    return Sums(zeros, jnp.zeros_like(state.pos), zeros, zeros)


def image_sums(sums, kept: Sums, images: Images | None) -> Sums:
    """The images' statistics added one after another, in image order."""
    return jax.tree.map(lambda x: in_order_sum(all_images(x, 0, images)), kept)


def score_mean(score, num_images: int, images: Images | None) -> jnp.ndarray:
    """`mean(mean(totalProb, 2), 1)`: over images, then nodes (`c * K + k`), in order."""
    per_node = in_order_mean(all_images(score, 0, images))
    return in_order_mean(per_node.T.reshape(-1))


def check_top_m(top_m: int, available: int, message: str) -> None:
    """The original takes `top_m` candidates whatever survives: it crashes with fewer."""
    if top_m > available:
        raise ValueError(message)


ORIGINAL = Rules(
    nodes=estep.nodes, infer=estep.infer, competing_mass=estep.competing_mass,
    statistics=estep.statistics, per_chunk=per_chunk, kept_into=kept_into,
    image_sums=image_sums, move=move, score_mean=score_mean,
    prior_weights=parents.prior_weights, shift_and_scale=parents.shift_and_scale,
    select=parents.select, deviation=parents.deviation,
    scale_to_child=lambda child, parent: 1.0, variance=parents.variance,
    near_edge=parents.near_edge, prefers_mirrored=prefers_mirrored,
    alt_pos=lambda alt_pos, pos: pos, check_top_m=check_top_m,
    parent_records=whole_records)   # sums over the images as one device adds them
