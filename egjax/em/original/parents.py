"""Parents as `getCurDistribution.m` computes them: its edge cut, 1-based frame and pixel
deviations, its sums in order, rounded products and glibc's `exp`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from egjax.config import LayerConfig
from egjax.em import parents
from egjax.em.schedule import row_blocks
from egjax.em.ieee import divide, rounded
from egjax.em.original.arithmetic import exp_as_original, in_order_mean, in_order_sum
from egjax.em.reduce import Images, all_images


def variance(x: jnp.ndarray) -> jnp.ndarray:
    """The variances as the cut orders them: in float32 rounded to 16 bits, so that values
    equal in exact arithmetic (the same pattern of positions, shifted) stay equal and go in
    index order, as in the original's float64 sort (on `small` two straddle the cut)."""
    if x.dtype != jnp.float32:
        return x
    mantissa, exponent = jnp.frexp(x)
    return jnp.ldexp(jnp.round(mantissa * 2**16) / 2**16, exponent)


def near_edge(mean: jnp.ndarray, child: LayerConfig, parent: LayerConfig) -> jnp.ndarray:
    """`parents.near_edge` with the child's S, 1-based: only the top and left edges count."""
    size = child.map_size
    margin = jnp.min(size / 2 - jnp.abs(size / 2 - (mean + 1)), axis=-1)
    return margin < size * parents.EDGE_FRACTION


def deviation(pos: jnp.ndarray, num_images: int, images: Images | None) -> jnp.ndarray:
    """`parents.deviation` of 1-based positions, the mean added image by image."""
    chosen = pos + 1
    mean = in_order_mean(jnp.swapaxes(all_images(chosen, 1, images), 0, 1))
    return chosen - mean[:, None]


def pixel_deviation(deviation: jnp.ndarray, cfg: LayerConfig) -> jnp.ndarray:
    """Cells -> pixels as if 1-based cells (`x2p_.m`): adds a per-layer constant."""
    return (cfg.center + 1) + (deviation - 1) * cfg.stride


def select(child_pos, child_best, cands: parents.Candidates, top_n: int, child: LayerConfig,
           parent: LayerConfig, num_images: int, images: Images | None,
           block: int | None = 256) -> jnp.ndarray:
    """`parents.select` operation by operation as the original: in-order means, `D`'s mean in
    MATLAB's column order, the affinity added image by image, products rounded, glibc's
    `exp` (on `medium`'s layer 3, iteration 2, pairwise sums change 45 of 640 parent sets,
    NumPy's `exp` 2). Every device takes all images."""
    child_best = all_images(child_best, 0, images)
    pos = all_images(child_pos, 0, images) + 1                              # 1-based, [N, 2, V]
    num_nodes = pos.shape[-1]
    a = pixel_deviation(pos - in_order_mean(pos), child)
    b = pixel_deviation(all_images(cands.deviation, 1, images), parent)     # [M, N, 2]
    b_h, b_w = b[..., 0].T, b[..., 1].T                                     # [N, M]

    def one_block(start, size):
        dev = jax.lax.dynamic_slice_in_dim(a, start, size, 2)               # [N, 2, B]
        best = jax.lax.dynamic_slice_in_dim(child_best, start, size, 1)     # [N, B]
        d_h = rounded((dev[:, 0, None, :] - b_h[..., None]) ** 2)           # [N, M, B]
        d_w = rounded((dev[:, 1, None, :] - b_w[..., None]) ** 2)
        squared = d_h + d_w
        mean = in_order_mean(squared.reshape(-1, size))                     # [B]

        def add(total, inputs):
            sq, weight = inputs
            return total + rounded(exp_as_original(divide(-sq, 2 * mean)) * weight), None

        zeros = jnp.zeros(squared.shape[1:], squared.dtype)
        return jax.lax.scan(add, zeros, (squared, best))[0].T               # [B, M]

    affinity = row_blocks(one_block, num_nodes, block,
                          jnp.zeros((num_nodes, b.shape[0]), b.dtype))
    affinity = jnp.where(cands.valid, affinity, -jnp.inf)
    return jax.lax.top_k(affinity, top_n)[1]


# `parents.prior_weights` with each child's weights added in rank order.
prior_weights = functools.partial(parents.prior_weights, add=lambda w: in_order_sum(w.T))


def shift_and_scale(weights: parents.PriorWeights, deviation: jnp.ndarray,
                    scale_to_child: float, block: int | None = None):
    """`parents.shift_and_scale` as the original: parent by parent in rank order, products
    rounded, `lambda` a running product of `exp(.) / s_u` (glibc's); `block` unused."""
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
