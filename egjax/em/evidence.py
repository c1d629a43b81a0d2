"""Evidence of each node at each of its candidate positions in one image.

Implements the evidence term of `getProb_local_mex.cpp` (which calls it `prior`;
docs/algorithm.md, "E-step"):
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


@functools.lru_cache(maxsize=None)
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


def evidence(values: jnp.ndarray, half_range: jnp.ndarray, table: jnp.ndarray) -> jnp.ndarray:
    """Evidence `[J, K, C]` of nodes whose candidate and window half-ranges are equal.

    `values [K, C, Q]` window values (`windows.window_values`), `half_range [K, C]`,
    `table [H+1, J, Q]` (the diagonal of `kernel_table`). One matrix product per half-range
    h that some node has, each node taking its own; a product reads only the `(2h+1)^2`
    cells of the window that weigh anything for h (the rest of the table's row is zero), so
    small windows cost little. Products are laid out `[J, V]` as the E-step uses them.
    """
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
