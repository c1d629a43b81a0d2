"""Parents of a lower-layer node: candidates, selection and the prior they induce.

Implements `getCurDistribution.m` of the original learner (docs/algorithm.md, "Candidate
parents", "Parent selection", "Parent prior"). Candidate parents are fixed for a
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
from egjax.em.glibc_exp import exp_as_original
from egjax.em.ieee import divide, in_order_mean, in_order_sum, rounded
from egjax.em.reduce import Images, all_images, image_mean, image_sum, image_var, real

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
              original: bool, num_images: int, images: Images | None
              ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Upper nodes in descending order of total score, and which of them survive the cuts.

    Drops the half of the nodes with the lowest positional variance over images, and those
    whose mean position lies within `0.1 S` of the border: the parent's S on all four sides,
    or as the original, the child's S from the top/left side only (`original=True`; in
    float32 it also orders variances equal to float32 rounding by index, as the original's
    stable sort orders its exact ties).
    `score [U, N]`, `pos [U, N, 2]` -> `(order [U] int, kept [U] bool in that order)`.
    """
    num = score.shape[0]
    order = jnp.argsort(-image_sum(score, 1, images), stable=True)
    variance = jnp.sum(image_var(pos, 1, num_images, images), axis=-1)
    if original and variance.dtype == jnp.float32:
        variance = _tie_float32_noise(variance)
    lowest = jnp.argsort(variance, stable=True)[: math.ceil(num * LOW_VARIANCE_FRACTION)]
    dropped = jnp.zeros(num, bool).at[lowest].set(True)
    mean = image_mean(pos, 1, num_images, images)
    if original:
        size = child.map_size
        margin = jnp.min(size / 2 - jnp.abs(size / 2 - (mean + 1)), axis=-1)
    else:
        size = parent.map_size
        margin = jnp.min(jnp.minimum(mean + 0.5, size - 0.5 - mean), axis=-1)
    dropped = dropped | (margin < size * EDGE_FRACTION)
    return order, ~dropped[order]


def _tie_float32_noise(x: jnp.ndarray) -> jnp.ndarray:
    """`x` rounded to 16 significant bits, so that values equal in exact arithmetic,
    which float32 rounds apart, compare equal and the stable sort takes them in index order
    as the original's float64 sort does.

    For the variance cut: nodes whose positions form the same pattern up to a shift have
    equal variances; on `small` two of them sit on either side of the cut.
    """
    mantissa, exponent = jnp.frexp(x)
    return jnp.ldexp(jnp.round(mantissa * 2**16) / 2**16, exponent)


def candidates(score: jnp.ndarray, pos: jnp.ndarray, deform: jnp.ndarray, slots: int,
               child: LayerConfig, parent: LayerConfig, original: bool, num_images: int,
               images: Images | None) -> Candidates:
    """The first `slots` surviving upper nodes in descending order of total score.

    `score [U, N]`, `pos [U, N, 2]`, `deform [U]` of the fitted upper layer.
    """
    index, valid = _first_survivors(score, pos, slots, child, parent, original, num_images,
                                    images)
    if original:   # as the original: 1-based positions, their mean added image by image
        chosen = pos[index] + 1
        mean = in_order_mean(jnp.swapaxes(all_images(chosen, 1, images), 0, 1))
    else:
        chosen = pos[index]
        mean = image_mean(chosen, 1, num_images, images)
    deviation = chosen - mean[:, None]
    return Candidates(index, valid, deviation, deform[index])


def _first_survivors(score, pos, slots, child, parent, original, num_images, images):
    """`(index [slots], valid [slots])`: the first `slots` nodes of `survivors`' order that
    survive (then, if fewer survive, others, not `valid`)."""
    order, kept = survivors(score, pos, child, parent, original, num_images, images)
    first_kept = jnp.argsort(~kept, stable=True)[:slots]
    return order[first_kept], kept[first_kept]


def candidate_list(score: jnp.ndarray, pos: jnp.ndarray, slots: int, child: LayerConfig,
                   parent: LayerConfig, original: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The model's summary of the candidates (`LayerFit.candidates`, `candidate_mean`) from
    the records `score [U, N]`, `pos [U, N, 2]` of the upper layer (all images on one
    device): their indices `[M]` (-1 for an empty slot) and mean positions `[M, 2]`."""
    num = score.shape[1]
    index, valid = _first_survivors(score, pos, slots, child, parent, original, num, None)
    return jnp.where(valid, index, -1), image_mean(pos[index], 1, num, None)


def pixel_deviation(deviation: jnp.ndarray, cfg: LayerConfig, original: bool) -> jnp.ndarray:
    """Deviations in cells -> pixels. The original maps them as if they were 1-based cells
    (`center + (d - 1) * stride`, `x2p_.m`), which adds a per-layer constant; else `d * stride`."""
    if original:
        return (cfg.center + 1) + (deviation - 1) * cfg.stride
    return deviation * cfg.stride


def select(child_pos: jnp.ndarray, child_best: jnp.ndarray, cands: Candidates, top_n: int,
           child: LayerConfig, parent: LayerConfig, original: bool, num_images: int,
           images: Images | None, block: int | None = 256) -> jnp.ndarray:
    """Parents `[V, top_n]` (indices into the candidate slots) of every child node.

    `A_vu = sum_n best_v^n exp(-D_vu^n / (2 mean_{u,n} D_vu^n))`, `D` the squared pixel
    distance between the child's and the candidate's deviations; the top_n largest, ties to
    the better-scored candidate. `child_pos [N, 2, V]`, `child_best [N, V]` from the child's
    previous iteration, images first as the E-step records them. `A` is accumulated for
    `block` children at a time (None: all; `schedule.Schedule.children`), image by image,
    so that the block's affinities stay in cache and nothing of size `[N, V]` is built
    besides the inputs. `original` computes it as the original does (`_select_in_order`).
    """
    if original:
        deviation = all_images(cands.deviation, 1, images)
        return _select_in_order(all_images(child_pos, 0, images),
                                all_images(child_best, 0, images), deviation, cands.valid,
                                top_n, child, parent, block)
    num_nodes = child_pos.shape[-1]
    block = min(block or num_nodes, num_nodes)
    child_best = real(child_best, 0, images)
    child_mean = image_mean(child_pos, 0, num_images, images)            # [2, V]
    b = pixel_deviation(cands.deviation, parent, original)                  # [M, N, 2]
    weight = cands.valid.astype(b.dtype)
    count = jnp.sum(weight)
    b_mean = jnp.einsum("m,mnx->nx", weight, b) / count
    b_sq_mean = jnp.einsum("m,mn->n", weight, jnp.sum(b * b, -1)) / count
    # mean_u |a - b_u|^2 = |a - mean_u b_u|^2 + mean_u |b_u|^2 - |mean_u b_u|^2, summed over
    # images and axes in one pass over the positions.
    a = pixel_deviation(child_pos - child_mean, child, original)            # [N, 2, V]
    mean_sq = (image_mean((a - b_mean[..., None]) ** 2, (0, 1), num_images, images)
               + image_mean(b_sq_mean - jnp.sum(b_mean * b_mean, -1), 0, num_images,
                            images))                                      # [V]
    rate = -1 / (2 * mean_sq)
    b_h, b_w = b[..., 0].T, b[..., 1].T                                     # [N, M]

    def one_block(i, affinity):
        # The last block is moved back to end at V (it repeats some children's sums).
        start = jnp.minimum(i * block, num_nodes - block)
        pos = jax.lax.dynamic_slice_in_dim(child_pos, start, block, 2)
        dev = pixel_deviation(pos - jax.lax.dynamic_slice_in_dim(child_mean, start, block, 1),
                              child, original)                               # [N, 2, B]
        blk_rate = jax.lax.dynamic_slice_in_dim(rate, start, block)[:, None]

        def step(total, inputs):
            ah, aw, wn, bh, bw = inputs
            dh, dw = ah[:, None] - bh[None, :], aw[:, None] - bw[None, :]
            return total + wn[:, None] * jnp.exp((dh * dh + dw * dw) * blk_rate), None

        zeros = jnp.zeros((block, b.shape[0]), b.dtype)
        best = jax.lax.dynamic_slice_in_dim(child_best, start, block, 1)   # 0 in padding
        total = jax.lax.scan(step, zeros, (dev[:, 0], dev[:, 1], best, b_h, b_w))[0]
        return jax.lax.dynamic_update_slice_in_dim(affinity, total, start, 0)

    affinity = jax.lax.fori_loop(0, -(-num_nodes // block), one_block,
                                 jnp.zeros((num_nodes, b.shape[0]), b.dtype))
    if images is not None:
        affinity = jax.lax.psum(affinity, images.axis)
    affinity = jnp.where(cands.valid, affinity, -jnp.inf)
    return jax.lax.top_k(affinity, top_n)[1]


def _select_in_order(child_pos, child_best, deviation, valid, top_n: int, child: LayerConfig,
                     parent: LayerConfig, block: int) -> jnp.ndarray:
    """`select` as `getCurDistribution.m` computes it, operation by operation (`compat=
    "original"`): deviations from in-order means, `D` from pixel differences, its mean over
    all candidates and images added in MATLAB's column order, and the affinity added image by
    image with each product rounded, `exp` as glibc's in float64. These roundings decide
    near-ties: fed the original's own inputs of `medium`'s layer 3, second iteration, the
    mean summed in NumPy's pairwise order changes 45 of the 640 parent sets, NumPy's `exp`
    for glibc's 2. Images one at a time, every device taking all of them (the original's
    sums are sequential).
    """
    num_nodes = child_pos.shape[-1]
    block = min(block or num_nodes, num_nodes)
    pos = child_pos + 1                                                     # 1-based, [N, 2, V]
    a = pixel_deviation(pos - in_order_mean(pos), child, True)
    b = pixel_deviation(deviation, parent, True)                            # [M, N, 2]
    b_h, b_w = b[..., 0].T, b[..., 1].T                                     # [N, M]

    def one_block(i, affinity):
        start = jnp.minimum(i * block, num_nodes - block)
        dev = jax.lax.dynamic_slice_in_dim(a, start, block, 2)              # [N, 2, B]
        best = jax.lax.dynamic_slice_in_dim(child_best, start, block, 1)    # [N, B]
        d_h = rounded((dev[:, 0, None, :] - b_h[..., None]) ** 2)           # [N, M, B]
        d_w = rounded((dev[:, 1, None, :] - b_w[..., None]) ** 2)
        squared = d_h + d_w
        mean = in_order_mean(squared.reshape(-1, block))                    # [B]

        def add(total, inputs):
            sq, weight = inputs
            return total + rounded(exp_as_original(divide(-sq, 2 * mean)) * weight), None

        zeros = jnp.zeros(squared.shape[1:], squared.dtype)
        total = jax.lax.scan(add, zeros, (squared, best))[0]                 # [M, B]
        return jax.lax.dynamic_update_slice_in_dim(affinity, total.T, start, 0)

    affinity = jax.lax.fori_loop(0, -(-num_nodes // block), one_block,
                                 jnp.zeros((num_nodes, b.shape[0]), b.dtype))
    affinity = jnp.where(valid, affinity, -jnp.inf)
    return jax.lax.top_k(affinity, top_n)[1]


class PriorWeights(NamedTuple):
    """The parents of every child as dense weights: `weight [V, M]` holds `(1/T) / s_u^2` at
    each of child v's T parent slots (0 elsewhere); `total [V]` their sum, `sigma [V]`
    `= total^(-1/2)`, `log_scale [V]` `= log sigma - sum_u log s_u`; `parents [V, T]` the
    slots and `deform [V, T]` their `s_u`, in rank order."""

    weight: jnp.ndarray
    total: jnp.ndarray
    sigma: jnp.ndarray
    log_scale: jnp.ndarray
    parents: jnp.ndarray
    deform: jnp.ndarray


def prior_weights(parents: jnp.ndarray, deform: jnp.ndarray, slots: int,
                  scale_to_child: float, original: bool = False) -> PriorWeights:
    """Dense parent weights from `parents [V, T]` (candidate slots) and the candidates'
    `deform [M]`, times `scale_to_child` (upper-layer cells -> child cells). `original`
    adds the weights in rank order, as the original does."""
    top_n = parents.shape[-1]
    s = deform[parents] * scale_to_child                         # [V, T]
    w = (1 / top_n) / s**2
    dense = jnp.zeros((parents.shape[0], slots), w.dtype)
    dense = dense.at[jnp.arange(parents.shape[0])[:, None], parents].add(w)
    total = in_order_sum(w.T) if original else jnp.sum(w, axis=-1)
    sigma = jnp.sqrt(1 / total)
    return PriorWeights(dense, total, sigma, jnp.log(sigma) - jnp.sum(jnp.log(s), axis=-1),
                        parents, s)


def shift_and_scale(weights: PriorWeights, deviation: jnp.ndarray, scale_to_child: float,
                    original: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Each child's prior shift `mu [V, n, 2]` and scale `lambda [V, n]` in n images.

    `deviation [M, n, 2]` the candidates' deviations in these images. With the parents'
    weights `w_u = (1/T) / s_u^2`: `mu = sum_u w_u dev_u / sum_u w_u`, and
    `lambda = sigma * prod_u exp(-|mu - dev_u|^2 / (2 T s_u^2)) / s_u`, whose exponent is
    `-(sum_u w_u |dev_u|^2 - |mu|^2 sum_u w_u) / 2`. `original` computes them as the
    original does instead (`_shift_and_scale_in_order`).
    """
    if original:
        return _shift_and_scale_in_order(weights, deviation)
    dev = deviation * scale_to_child
    m, n, _ = dev.shape
    stacked = jnp.concatenate([dev, jnp.sum(dev * dev, -1, keepdims=True)], -1)  # [M, n, 3]
    sums = (weights.weight @ stacked.reshape(m, n * 3)).reshape(-1, n, 3)
    shift = sums[..., :2] / weights.total[:, None, None]
    spread = sums[..., 2] - jnp.sum(shift * shift, -1) * weights.total[:, None]
    return shift, jnp.exp(weights.log_scale[:, None] - spread / 2)


def _shift_and_scale_in_order(weights: PriorWeights, deviation: jnp.ndarray):
    """`shift_and_scale` as `getCurDistribution.m` computes it: parent by parent in rank
    order, each product rounded, `lambda` a running product of one `exp(.) / s_u` per parent
    (glibc's `exp` in float64)."""
    top_n = weights.parents.shape[-1]
    variance = weights.deform**2                                            # [V, T]
    weight = (1 / top_n) / variance
    dev = jnp.moveaxis(deviation[weights.parents], 1, 0)                    # [T, V, n, 2]

    def add_shift(total, inputs):
        dev_u, weight_u = inputs
        return total + rounded(dev_u * weight_u[:, None, None]), None

    shift = jax.lax.scan(add_shift, jnp.zeros_like(dev[0]), (dev, weight.T))[0]
    shift = divide(shift, weights.total[:, None, None])

    def multiply_scale(scale, inputs):
        dev_u, variance_u, deform_u = inputs
        apart = rounded((shift - dev_u) ** 2)
        exponent = divide(-(apart[..., 0] + apart[..., 1]), (2 * top_n) * variance_u[:, None])
        return divide(scale * exp_as_original(exponent), deform_u[:, None]), None

    scale = jax.lax.scan(multiply_scale, jnp.ones(shift.shape[:2], shift.dtype),
                         (dev, variance.T, weights.deform.T))[0]
    return shift, scale * weights.sigma[:, None]
