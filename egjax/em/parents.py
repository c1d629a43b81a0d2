"""Parents of a lower-layer node: candidates, selection and the prior they induce.

Implements `getCurDistribution.m` of the original learner. Candidate parents are fixed for a
layer (they depend only on the fitted layer above); parents are re-selected at the start of
every iteration >= 2 from the child's previous positions; the parents' deviations from their
mean positions shift and scale each child's spatial prior in every image.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from egjax.config import LayerConfig
from egjax.em.reduce import image_mean, image_sum, image_var

LOW_VARIANCE_FRACTION = 0.5
EDGE_FRACTION = 0.1


class Candidates(NamedTuple):
    """Upper-layer nodes a child may take as parents, best total score first.

    `index [M]` flat indices into the upper layer, `valid [M]` whether slot m holds a
    candidate (fewer than M survive the cuts), `deviation [M, N, 2]` their positions minus
    their mean over images (upper-layer cells), `deform [M]` their deformation scales.
    """

    index: jnp.ndarray
    valid: jnp.ndarray
    deviation: jnp.ndarray
    deform: jnp.ndarray


def candidate_slots(upper_nodes: int, top_m: int) -> int:
    """Static number of candidate slots: top_m, but never more than survive the variance cut."""
    return min(top_m, upper_nodes - math.ceil(upper_nodes * LOW_VARIANCE_FRACTION))


def survivors(score: jnp.ndarray, pos: jnp.ndarray, child: LayerConfig, parent: LayerConfig,
              original: bool, num_images: int, axis_name: str | None
              ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Upper nodes in descending order of total score, and which of them survive the cuts.

    Drops the half of the nodes with the lowest positional variance over images, and those
    whose mean position lies within `0.1 S` of the border: the parent's S on all four sides,
    or as the original, the child's S from the top/left side only (`original=True`).
    `score [U, N]`, `pos [U, N, 2]` -> `(order [U] int, kept [U] bool in that order)`.
    """
    num = score.shape[0]
    order = jnp.argsort(-image_sum(score, 1, axis_name), stable=True)
    variance = jnp.sum(image_var(pos, 1, num_images, axis_name), axis=-1)
    lowest = jnp.argsort(variance, stable=True)[: math.ceil(num * LOW_VARIANCE_FRACTION)]
    dropped = jnp.zeros(num, bool).at[lowest].set(True)
    mean = image_mean(pos, 1, num_images, axis_name)
    if original:
        size = child.map_size
        margin = jnp.min(size / 2 - jnp.abs(size / 2 - (mean + 1)), axis=-1)
    else:
        size = parent.map_size
        margin = jnp.min(jnp.minimum(mean + 0.5, size - 0.5 - mean), axis=-1)
    dropped = dropped | (margin < size * EDGE_FRACTION)
    return order, ~dropped[order]


def candidates(score: jnp.ndarray, pos: jnp.ndarray, deform: jnp.ndarray, slots: int,
               child: LayerConfig, parent: LayerConfig, original: bool, num_images: int,
               axis_name: str | None) -> Candidates:
    """The first `slots` surviving upper nodes in descending order of total score.

    `score [U, N]`, `pos [U, N, 2]`, `deform [U]` of the fitted upper layer.
    """
    order, kept = survivors(score, pos, child, parent, original, num_images, axis_name)
    first_kept = jnp.argsort(~kept, stable=True)[:slots]
    index = order[first_kept]
    mean = image_mean(pos[index], 1, num_images, axis_name)
    deviation = pos[index] - mean[:, None]
    return Candidates(index, kept[first_kept], deviation, deform[index])


def pixel_deviation(deviation: jnp.ndarray, cfg: LayerConfig, original: bool) -> jnp.ndarray:
    """Deviations in cells -> pixels. The original maps them as if they were 1-based cells
    (`center + (d - 1) * stride`, `x2p_.m`), which adds a per-layer constant; else `d * stride`."""
    if original:
        return (cfg.center + 1) + (deviation - 1) * cfg.stride
    return deviation * cfg.stride


def select(child_pos: jnp.ndarray, child_best: jnp.ndarray, cands: Candidates, top_n: int,
           child: LayerConfig, parent: LayerConfig, original: bool, num_images: int,
           axis_name: str | None) -> jnp.ndarray:
    """Parents `[V, top_n]` (indices into the candidate slots) of every child node.

    `A_vu = sum_n best_v^n exp(-D_vu^n / (2 mean_{u,n} D_vu^n))`, `D` the squared pixel
    distance between the child's and the candidate's deviations; the top_n largest, ties to
    the better-scored candidate. `child_pos [V, N, 2]`, `child_best [V, N]` from the child's
    previous iteration.
    """
    child_dev = child_pos - image_mean(child_pos, 1, num_images, axis_name)[:, None]
    a = pixel_deviation(child_dev, child, original)              # [V, N, 2]
    b = pixel_deviation(cands.deviation, parent, original)       # [M, N, 2]
    weight = cands.valid.astype(a.dtype)
    count = jnp.sum(weight)
    b_mean = jnp.einsum("m,mnx->nx", weight, b) / count
    b_sq_mean = jnp.einsum("m,mn->n", weight, jnp.sum(b * b, -1)) / count
    mean_sq = image_mean(jnp.sum(a * a, -1) - 2 * jnp.einsum("vnx,nx->vn", a, b_mean)
                         + b_sq_mean, 1, num_images, axis_name)  # [V]

    def affinity(a_v, best_v, mean_v):
        sq = jnp.sum((a_v[None] - b) ** 2, axis=-1)               # [M, N]
        return jnp.sum(best_v * jnp.exp(-sq / (2 * mean_v)), axis=1)

    score = jax.lax.map(lambda args: affinity(*args), (a, child_best, mean_sq), batch_size=64)
    if axis_name is not None:
        score = jax.lax.psum(score, axis_name)
    score = jnp.where(cands.valid, score, -jnp.inf)
    return jax.lax.top_k(score, top_n)[1]


def sigma(parents: jnp.ndarray, deform: jnp.ndarray, scale_to_child: float) -> jnp.ndarray:
    """`[V]` scale of each child's spatial prior: `(sum_u s_u^-2 / T)^(-1/2)` over its T parents.

    `parents [V, T]` candidate slots, `deform [M]` the candidates' deformation scales, times
    `scale_to_child` (upper-layer cells -> child cells).
    """
    s = deform[parents] * scale_to_child
    return jnp.sqrt(1 / jnp.sum((1 / parents.shape[-1]) / s**2, axis=-1))


def shift_and_scale(parents: jnp.ndarray, deviation: jnp.ndarray, deform: jnp.ndarray,
                    scale_to_child: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Each child's prior shift `mu [V, 2]` and scale `lambda [V]` in one image.

    `deviation [M, 2]` the candidates' deviations in this image; `mu = sum_u dev_u / s_u^2 /
    sum_u 1/s_u^2`, `lambda = sigma * prod_u exp(-|mu - dev_u|^2 / (2 T s_u^2)) / s_u`.
    """
    top_n = parents.shape[-1]
    dev = deviation[parents] * scale_to_child                   # [V, T, 2]
    s = deform[parents] * scale_to_child                         # [V, T]
    weight = (1 / top_n) / s**2
    total = jnp.sum(weight, axis=-1)
    shift = jnp.sum(dev * weight[..., None], axis=-2) / total[..., None]
    sq = jnp.sum((shift[..., None, :] - dev) ** 2, axis=-1)
    scale = jnp.sqrt(1 / total) * jnp.prod(jnp.exp(-sq / ((2 * top_n) * s**2)) / s, axis=-1)
    return shift, scale
