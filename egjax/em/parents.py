"""Parents of a lower-layer node: candidates (once per layer), selection (each iteration >= 2)
and the prior they induce (`getCurDistribution.m`; docs/algorithm.md, "Candidate parents" on).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from egjax.config import LayerConfig
from egjax.em.schedule import row_blocks
from egjax.em.ieee import divide, rounded, squared_length
from egjax.em.reduce import (Images, image_mean, image_sum, image_var, narrow, real, wide,
                             wide_psum, wide_sum)

LOW_VARIANCE_FRACTION = 0.5
EDGE_FRACTION = 0.1


class Candidates(NamedTuple):
    """Upper-layer nodes a child may take as parents, best total score first: `index [M]`
    into the upper layer, `valid [M]` (fewer than M may survive), `deviation [M, N, 2]` from
    their mean positions (upper-layer cells), `deform [M]`."""

    index: jnp.ndarray
    valid: jnp.ndarray
    deviation: jnp.ndarray
    deform: jnp.ndarray


def candidate_slots(upper_nodes: int, top_m: int) -> int:
    """Candidate slots: top_m, at most as many as survive the variance cut."""
    return min(top_m, upper_nodes - math.ceil(upper_nodes * LOW_VARIANCE_FRACTION))


def survivors(score: jnp.ndarray, pos: jnp.ndarray, child: LayerConfig, parent: LayerConfig,
              rules, num_images: int, images: Images | None
              ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`score [U, N]`, `pos [U, N, 2]` -> `(order [U], kept [U])`: nodes by total score, and
    whether each survives the variance cut (`rules.variance`) and `rules.near_edge`."""
    num = score.shape[0]
    order = jnp.argsort(-image_sum(score, 1, images), stable=True)
    variance = rules.variance(jnp.sum(image_var(pos, 1, num_images, images), axis=-1))
    lowest = jnp.argsort(variance, stable=True)[: math.ceil(num * LOW_VARIANCE_FRACTION)]
    dropped = jnp.zeros(num, bool).at[lowest].set(True)
    mean = image_mean(pos, 1, num_images, images)
    dropped = dropped | rules.near_edge(mean, child, parent)
    return order, ~dropped[order]


def near_edge(mean: jnp.ndarray, child: LayerConfig, parent: LayerConfig) -> jnp.ndarray:
    """`[U]` whether a mean position `[U, 2]` lies within `0.1 S_p` of an edge."""
    size = parent.map_size
    margin = jnp.min(jnp.minimum(mean + 0.5, size - 0.5 - mean), axis=-1)
    return margin < size * EDGE_FRACTION


def candidates(score: jnp.ndarray, pos: jnp.ndarray, deform: jnp.ndarray, slots: int,
               child: LayerConfig, parent: LayerConfig, rules, num_images: int,
               images: Images | None) -> Candidates:
    """`Candidates`: the first `slots` survivors from the upper layer's `score [U, N]`,
    `pos [U, N, 2]`, `deform [U]`; deviations by `rules.deviation`."""
    index, valid = _first_survivors(score, pos, slots, child, parent, rules, num_images,
                                    images)
    return Candidates(index, valid, rules.deviation(pos[index], num_images, images),
                      deform[index])


def deviation(pos: jnp.ndarray, num_images: int, images: Images | None) -> jnp.ndarray:
    """Positions `[M, N, 2]` minus their mean over images."""
    return pos - image_mean(pos, 1, num_images, images)[:, None]


def _first_survivors(score, pos, slots, child, parent, rules, num_images, images):
    """`(index [slots], valid [slots])`: the first survivors in order, then others, not valid."""
    order, kept = survivors(score, pos, child, parent, rules, num_images, images)
    first_kept = jnp.argsort(~kept, stable=True)[:slots]
    return order[first_kept], kept[first_kept]


@functools.partial(jax.jit, static_argnames=("slots", "child", "rules"))
def candidate_list(upper, slots: int, child: LayerConfig, rules
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`LayerFit.candidates [M]` (-1: empty) and `candidate_mean [M, 2]` from `upper`'s records."""
    score, pos, num = upper.score, upper.pos, upper.num_images
    index, valid = _first_survivors(score, pos, slots, child, upper.config, rules, num, None)
    return jnp.where(valid, index, -1), image_mean(pos[index], 1, num, None)


def select(child_pos: jnp.ndarray, child_best: jnp.ndarray, cands: Candidates, top_n: int,
           child: LayerConfig, parent: LayerConfig, num_images: int, images: Images | None,
           block: int | None = 256) -> jnp.ndarray:
    """Parents `[V, top_n]` (candidate slots): the largest `affinity`, ties to the lower slot."""
    return jax.lax.top_k(affinity(child_pos, child_best, cands, child, parent, num_images,
                                  images, block), top_n)[1]


def affinity(child_pos: jnp.ndarray, child_best: jnp.ndarray, cands: Candidates,
             child: LayerConfig, parent: LayerConfig, num_images: int, images: Images | None,
             block: int | None = 256) -> jnp.ndarray:
    """`A [V, M]` (-inf at empty slots; docs/algorithm.md, "Parent selection") from the
    child's last `child_pos [N, 2, V]`, `child_best [N, V]`; in float64, `block` children at a
    time, image by image."""
    num_nodes = child_pos.shape[-1]
    child_best = real(child_best, 0, images)
    child_mean = image_mean(child_pos, 0, num_images, images)            # [2, V]
    b = cands.deviation * parent.stride                                # [M, N, 2]
    b_sq = squared_length(b[..., 0], b[..., 1])                        # [M, N]
    count = jnp.sum(cands.valid)
    b_mean = divide(wide_sum(jnp.where(cands.valid[:, None, None], b, 0), 0), count)   # [N, 2]
    b_sq_mean = divide(wide_sum(jnp.where(cands.valid[:, None], b_sq, 0), 0), count)   # [N]
    # mean_u |a - b_u|^2 = |a - mean_u b_u|^2 + mean_u |b_u|^2 - |mean_u b_u|^2, summed over
    # images and axes in one pass over the positions.
    a = (child_pos - child_mean) * child.stride                            # [N, 2, V]
    mean_sq = (image_mean((a - b_mean[..., None]) ** 2, (0, 1), num_images, images)
               + image_mean(b_sq_mean - squared_length(b_mean[:, 0], b_mean[:, 1]), 0,
                            num_images, images))                          # [V]
    rate = -1 / (2 * mean_sq)
    b_h, b_w = b[..., 0].T, b[..., 1].T                                     # [N, M]

    def one_block(start, size):
        pos = jax.lax.dynamic_slice_in_dim(child_pos, start, size, 2)
        dev = (pos - jax.lax.dynamic_slice_in_dim(child_mean, start, size, 1)) * child.stride
        blk_rate = jax.lax.dynamic_slice_in_dim(rate, start, size)[:, None]

        def step(summed, inputs):
            ah, aw, wn, bh, bw = inputs
            d2 = squared_length(ah[:, None] - bh[None, :], aw[:, None] - bw[None, :])
            return summed + wide(wn[:, None] * jnp.exp(d2 * blk_rate)), None

        best = jax.lax.dynamic_slice_in_dim(child_best, start, size, 1)    # 0 in padding
        zeros = jnp.zeros((size, b.shape[0]), jnp.float64)
        return jax.lax.scan(step, zeros, (dev[:, 0], dev[:, 1], best, b_h, b_w))[0]

    with jax.enable_x64(True):
        total = row_blocks(one_block, num_nodes, block,
                           jnp.zeros((num_nodes, b.shape[0]), jnp.float64))
    total = narrow(wide_psum(total, images), b.dtype)
    return jnp.where(cands.valid, total, -jnp.inf)


class PriorWeights(NamedTuple):
    """Each child's `parents [V, T]` (slots, rank order), their `deform` `s_u` and `weight`
    `w_u`; `total [V]` `sum_u w_u`, `sigma`, `log_scale` `log sigma - sum_u log s_u`."""

    weight: jnp.ndarray
    total: jnp.ndarray
    sigma: jnp.ndarray
    log_scale: jnp.ndarray
    parents: jnp.ndarray
    deform: jnp.ndarray


def prior_weights(parents: jnp.ndarray, deform: jnp.ndarray, scale_to_child: float,
                  add=lambda w: wide_sum(w, -1)) -> PriorWeights:
    """`PriorWeights` of `parents [V, T]` (slots) from the candidates' `deform [M]`, in child
    cells (`scale_to_child`); `add` sums over the parents."""
    top_n = parents.shape[-1]
    s = deform[parents] * scale_to_child                         # [V, T]
    w = (1 / top_n) / s**2
    total = add(w)
    sigma = jnp.sqrt(1 / total)
    return PriorWeights(w, total, sigma, jnp.log(sigma) - add(jnp.log(s)), parents, s)


def shift_and_scale(weights: PriorWeights, deviation: jnp.ndarray, scale_to_child: float,
                    block: int | None = 256) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Each child's shift `mu [V, n, 2]` and scale `lambda [V, n]` from the candidates'
    `deviation [M, n, 2]` in n images; the exponent of `lambda` as
    `-(sum_u w_u |dev_u|^2 - |mu|^2 sum_u w_u) / 2`. Sums over the parents in float64, products
    rounded (docs/algorithm.md, "Sums over images"); `block` children at a time."""
    dev = deviation * scale_to_child                                         # [M, n, 2]
    stacked = jnp.concatenate([dev, squared_length(dev[..., 0], dev[..., 1])[..., None]], -1)

    def one_block(start, size):
        # Parent by parent: XLA:CPU fuses the T gathers and adds (docs/algorithm.md, "Loop shapes").
        parents = jax.lax.dynamic_slice_in_dim(weights.parents, start, size)
        weight = jax.lax.dynamic_slice_in_dim(weights.weight, start, size)
        return narrow(functools.reduce(jnp.add, [
            wide(rounded(weight[:, u, None, None] * stacked[parents[:, u]]))
            for u in range(parents.shape[-1])]), deviation.dtype)

    sums = row_blocks(one_block, weights.parents.shape[0], block,
                      jnp.zeros((weights.parents.shape[0],) + stacked.shape[1:],
                                deviation.dtype))                           # [V, n, 3]
    total = weights.total[:, None]
    shift = divide(sums[..., :2], total[..., None])
    spread = sums[..., 2] - rounded(squared_length(shift[..., 0], shift[..., 1]) * total)
    # exp image by image: an element's bits must not depend on the chunk's length.
    scale = jax.lax.map(lambda spread: jnp.exp(weights.log_scale - spread / 2), spread.T)
    return shift, scale.T
