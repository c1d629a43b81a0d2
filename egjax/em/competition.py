"""Competition between the nodes of one filter (`getOtherProb.cpp` of the original).

For a candidate position `t` of node v, every node u of the same filter (v included) whose
candidate box (first to last candidate, inclusive) contains `t` adds its spatial prior at its
candidate nearest to `t`. The prior is separable per axis and u's candidates form a regular
grid, so the nearest candidate is found per axis in O(1), not by a search.
"""

from __future__ import annotations

import jax.numpy as jnp


def nearest_candidate(target: jnp.ndarray, grid: jnp.ndarray) -> jnp.ndarray:
    """Index of the grid point nearest to each target, the lower index on a tie.

    `target [..., T]`, `grid [..., G]` sorted ascending and evenly spaced (broadcastable
    leading axes) -> int `[..., T]`. The two neighbours are compared by their squared
    distances, as the original's search compares them.
    """
    num = grid.shape[-1]
    lead = jnp.broadcast_shapes(target.shape[:-1], grid.shape[:-1])
    target = jnp.broadcast_to(target, lead + target.shape[-1:])
    grid = jnp.broadcast_to(grid, lead + grid.shape[-1:])
    first, last = grid[..., :1], grid[..., -1:]
    spacing = (last - first) / (num - 1)
    safe = jnp.where(spacing > 0, spacing, 1)
    below = jnp.clip(jnp.floor((target - first) / safe), 0, num - 2).astype(jnp.int32)
    below = jnp.where(spacing > 0, below, 0)
    at_below = _pick(grid, below)
    at_above = _pick(grid, below + 1)
    closer_above = (target - at_above) ** 2 < (target - at_below) ** 2
    return below + closer_above.astype(jnp.int32)


def _pick(values: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """`values[..., index]` per element for `values [..., G]`, `index [..., T]` -> `[..., T]`,
    as a one-hot sum: a handful of selects beats a gather on CPU."""
    choice = index[..., None] == jnp.arange(values.shape[-1])
    return jnp.sum(jnp.where(choice, values[..., None, :], 0), axis=-1)


def axis_factor(target: jnp.ndarray, grid: jnp.ndarray, prior_axis: jnp.ndarray) -> jnp.ndarray:
    """u's per-axis prior factor at its candidate nearest to each of v's candidates.

    `target [C, V, P]` positions of v's candidates along one axis, `grid [C, U, P]` the same
    for u, `prior_axis [C, U, P]` u's prior factor per candidate index along that axis
    -> `[C, U, V, P]`, zero where the target lies outside u's candidate range.
    """
    t = target[:, None, :, :]
    g = grid[:, :, None, :]
    index = nearest_candidate(t, g)
    factor = _pick(prior_axis[:, :, None, :], index)
    inside = (t >= g[..., :1]) & (t <= g[..., -1:])
    return jnp.where(inside, factor, 0)


def competition(positions: jnp.ndarray, prior_axis: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """Competing prior mass `[C, K, P*P]` (w-major) at every candidate of every node.

    `positions [C, K, 2, P]` candidate positions per axis (h, w), `prior_axis [C, K, P]` the
    per-axis prior factor `N(d_i; 0, sigma)`, `scale [C, K]` the node's `lambda`: u's prior at
    candidate (ih, iw) is `lambda_u * prior_axis_u[iw] * prior_axis_u[ih]`.
    """
    along_h = axis_factor(positions[:, :, 0], positions[:, :, 0], prior_axis)  # [C,U,V,Ph]
    along_w = axis_factor(positions[:, :, 1], positions[:, :, 1], prior_axis)  # [C,U,V,Pw]
    terms = scale[:, :, None, None, None] * along_w[..., :, None] * along_h[..., None, :]
    c, _, v, p = along_h.shape
    return jnp.sum(terms, axis=1).reshape(c, v, p * p)
