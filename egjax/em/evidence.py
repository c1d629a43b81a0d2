"""Evidence of each node at each of its candidate positions in one image.

Implements the evidence term of `getProb_local_mex.cpp` (which calls it `prior`):
`F = sum_{q in window} g(|p - q|) * max(x_q, 0)` over the window of cells around the node's
rounded centre, `g(r) = exp(-r^2 / (2 s^2)) / (sqrt(2 pi) s)` for `r < 3 s` and the
constant `g(3 s)` beyond; cells outside the map count 0. The weights depend on a node only
through its candidate half-range and its window half-range, so they come from a small table.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from egjax.config import LayerConfig
from egjax.em.grid import offset_table

# The original's value of pi. The normalising constant cancels in every normalised quantity;
# using the same digits keeps the weights, and so the original's exact ties, bit-identical.
ORIGINAL_PI = 3.1415926536


def kernel_table(cfg: LayerConfig) -> np.ndarray:
    """Weights `[H+1, H+1, P*P, (2H+1)^2]` (float64, host): entry `[hc, hw, j, q]` weighs window
    cell q for candidate j of a node with candidate half-range hc and window half-range hw.

    Candidates j run w-major (`iw * P + ih`), window cells q too (`jw` outer, `jh` inner),
    relative to the node's rounded centre; cells beyond hw weigh 0. Computed with the
    platform's `exp` in the original's order of operations.
    """
    big = cfg.max_half_range
    offsets = offset_table(cfg)
    delta = cfg.map_delta * cfg.map_size
    var1, var2 = 2 * delta * delta, math.sqrt(2 * ORIGINAL_PI) * delta
    too_far, too_small = (delta * 3.0) ** 2, math.exp(-(3.0**2) / 2.0) / var2
    num, side = cfg.candidates, 2 * big + 1
    table = np.zeros((big + 1, big + 1, num * num, side * side))
    for hc in range(big + 1):
        for hw in range(big + 1):
            for iw, ih in np.ndindex(num, num):
                p_w, p_h = offsets[hc, iw], offsets[hc, ih]
                for jw, jh in np.ndindex(side, side):
                    cw, ch = jw - big, jh - big
                    if abs(cw) > hw or abs(ch) > hw:
                        continue
                    sqdist = (p_w - cw) ** 2 + (p_h - ch) ** 2
                    weight = math.exp(-sqdist / var1) / var2 if sqdist < too_far else too_small
                    table[hc, hw, iw * num + ih, jw * side + jh] = weight
    return table


@functools.lru_cache(maxsize=None)
def cached_kernel_table(cfg: LayerConfig) -> np.ndarray:
    return kernel_table(cfg)


def window_values(x: jnp.ndarray, center: jnp.ndarray, max_window: int) -> jnp.ndarray:
    """`max(x, 0)` in the `(2H+1)^2` cells around each node's centre cell, w-major.

    `x [S, S, C]` one image, `center [C, K, 2]` integer cells (any, also off the map)
    -> `[C, K, (2H+1)^2]` (`jw` outer, `jh` inner), zero outside the map.
    """
    size = 2 * max_window + 1
    pad = size
    planes = jnp.pad(jnp.maximum(x, 0).transpose(2, 1, 0), ((0, 0), (pad, pad), (pad, pad)))
    s = x.shape[0]
    # A centre more than max_window + 1 cells off the map sees only padding; clamping keeps
    # it so and keeps the slice inside the padded planes.
    start = jnp.clip(center[..., ::-1], -(max_window + 1), s + max_window) - max_window + pad

    def one_filter(plane, starts):
        return jax.vmap(lambda st: jax.lax.dynamic_slice(plane, (st[0], st[1]), (size, size)))(
            starts)

    values = jax.vmap(one_filter)(planes, start)
    return values.reshape(values.shape[:2] + (size * size,))


def evidence(values: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """Evidence `[C, K, P*P]` from window values `[C, K, Q]` and node weights `[C, K, P*P, Q]`."""
    return jnp.einsum("ckjq,ckq->ckj", weights, values)


def evidence_in_order(values: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """The same sum, added term by term in the window's order with every product rounded
    before it is added, as the original's loop adds them.

    Exact ties between candidates (common: sparse maps, symmetric candidates) are decided by
    the last bit of these sums, so reproducing the original's tie-breaking takes its order.
    """
    products = jax.lax.optimization_barrier(weights * values[..., None, :])
    return functools.reduce(jnp.add, [products[..., q] for q in range(products.shape[-1])])
