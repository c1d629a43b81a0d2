"""Evidence `F` of each node at each of its candidates in one image (`getProb_local_mex.cpp`,
its `prior`; docs/algorithm.md, "E-step"), weighted from a table by the node's half-ranges."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from egjax.config import LayerConfig
from egjax.em.grid import offset_table

# The original's pi: its digits keep the weights, and so its exact ties, bit-identical.
ORIGINAL_PI = 3.1415926536


@functools.lru_cache(maxsize=None)
def kernel_table(cfg: LayerConfig) -> np.ndarray:
    """`g [H+1, H+1, J, Q]` (float64, host): `[hc, hw, j, q]` weighs window cell q (w-major,
    around the rounded centre; 0 beyond hw) for candidate j of a node with candidate
    half-range hc and window half-range hw; in the original's order of operations."""
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


def evidence(values: jnp.ndarray, half_range: jnp.ndarray, table: jnp.ndarray) -> jnp.ndarray:
    """`F [J, K, C]` from window `values [K, C, Q]`, `half_range [K, C]` and `table [H+1, J, Q]`
    (`kernel_table`'s diagonal): a matrix product per half-range, over its cells only."""
    k, c, q = values.shape
    side = math.isqrt(q)
    big = (side - 1) // 2
    cells = values.reshape(k * c, side, side)
    sizes = half_range.reshape(-1)
    num = table.shape[1]
    out = jnp.zeros((num, k * c), table.dtype)
    for size in range(big + 1):
        inner = slice(big - size, big + size + 1)

        def take(out, size=size, inner=inner):
            window = cells[:, inner, inner].reshape(k * c, -1)
            weights = table[size].reshape(num, side, side)[:, inner, inner].reshape(num, -1)
            product = jax.lax.dot_general(weights, window, (((1,), (1,)), ((), ())))
            return jnp.where(sizes == size, product, out)
        out = jax.lax.cond(jnp.any(sizes == size), take, lambda out: out, out)
    return out.reshape(-1, k, c)
