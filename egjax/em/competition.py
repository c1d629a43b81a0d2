"""Competition between the nodes of one filter (`getOtherProb.cpp` of the original;
docs/algorithm.md, "E-step" and "Ties").

For a candidate position `t` of node v, every node u of the same filter (v included) whose
candidate box (first to last candidate, inclusive) contains `t` adds its spatial prior at its
candidate nearest to `t`. The prior is separable per axis, so the sum over u of
`lambda_u * N_u(iw*) * N_u(ih*)` needs each axis's factor once per (u, v, candidate index),
and u's candidates form a regular grid, so the nearest one is found by comparisons with
the grid, not by a search. Arrays are laid out filter-last so that the work vectorises
across filters.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Comparison(NamedTuple):
    """How `competition` compares and adds: `closer(t, g)` -> `[P - 1]` masks, whether u's
    candidate i + 1 is nearer to target `t [1, B, P, C]` than its candidate i (`g [U, 1, P, C]`
    u's candidates); `keep(term)` each term before it is added."""

    closer: Callable
    keep: Callable


def _between_midpoints(t: jnp.ndarray, g: jnp.ndarray) -> list[jnp.ndarray]:
    """The target compared with the midpoints of u's grid as
    `2 (P - 1) (t - first) > (2i + 1) span`, which is exact for positions on the integer
    lattice of `estep.lattice_positions`, so that exact ties go to the lower index."""
    num = g.shape[2]
    first, last = g[:, :, :1], g[:, :, -1:]
    along = 2 * (num - 1) * (t - first)
    return [along > (2 * i + 1) * (last - first) for i in range(num - 1)]


LATTICE = Comparison(_between_midpoints, lambda term: term)


def _axis_factor(target: jnp.ndarray, grid: jnp.ndarray, prior: jnp.ndarray,
                 compare: Comparison) -> jnp.ndarray:
    """`[U, B, P, C]`: u's prior factor along one axis at its candidate nearest to each of
    B nodes' candidates, zero where the target lies outside u's candidate range.

    `target [B, P, C]` candidate positions of B target nodes, `grid [U, P, C]` those of the
    competing nodes, `prior [U, P, C]` their per-axis prior factor per candidate. Nearest
    (`compare.closer`): the lower index on a tie.
    """
    t = target[None]                                  # [1, B, P, C]
    g = grid[:, None]                                 # [U, 1, P, C]
    first, last = g[:, :, :1], g[:, :, -1:]
    steps = compare.closer(t, g)
    factor = jnp.broadcast_to(prior[:, None, 0:1], (g.shape[0],) + t.shape[1:])
    for i, closer in enumerate(steps):
        factor = jnp.where(closer, prior[:, None, i + 1:i + 2], factor)
    return jnp.where((t >= first) & (t <= last), factor, 0)


def competition(positions: jnp.ndarray, prior_axis: jnp.ndarray, scale: jnp.ndarray,
                compare: Comparison, block: int = 8, unroll: int = 4,
                filters: int | None = 128) -> jnp.ndarray:
    """Competing prior mass `[J, K, C]` (J = P*P w-major) at every candidate of every node.

    `positions [2, P, K, C]` candidate positions per axis (h, w), `prior_axis [P, K, C]` the
    per-axis prior factor `N(d_i; 0, sigma)`, `scale [K, C]` the node's `lambda`: u's prior at
    candidate (ih, iw) is `(prior_axis_u[iw] * prior_axis_u[ih]) * lambda_u`, added over u in
    order, as the original computes and adds it. Filters are independent and taken at most
    `filters` at a time (None: all; `schedule.Schedule.filters`), target nodes at most
    `block` at a time (divisors of C and K, so nothing is padded), so that the intermediates
    stay in cache; the loop over u adds `unroll` terms per pass over the accumulator.
    """
    c = positions.shape[-1]
    filters = _divisor_at_most(c, filters or c)
    if filters == c:
        return _competition(positions, prior_axis, scale, compare, block, unroll)
    groups = c // filters

    def split(x):   # [..., C] -> [G, ..., F]
        return jnp.moveaxis(x.reshape(x.shape[:-1] + (groups, filters)), -2, 0)

    out = jax.lax.map(lambda args: _competition(*args, compare, block, unroll),
                      (split(positions), split(prior_axis), split(scale)))    # [G, J, K, F]
    return jnp.moveaxis(out, 0, -2).reshape(out.shape[1:3] + (c,))


def _divisor_at_most(n: int, limit: int) -> int:
    return max(size for size in range(1, min(limit, n) + 1) if n % size == 0)


def _competition(positions, prior_axis, scale, compare, block, unroll):
    """`competition` of all the filters given at once."""
    _, p, k, c = positions.shape
    block = _divisor_at_most(k, block)
    pos = jnp.transpose(positions, (2, 0, 1, 3))                  # [K, 2, P, C]
    prior = jnp.transpose(prior_axis, (1, 0, 2))                  # [K, P, C]
    targets = pos.reshape(k // block, block, 2, p, c)

    def one_block(target):                                       # [B, 2, P, C]
        along_h = _axis_factor(target[:, 0], pos[:, 0], prior, compare)    # [U, B, Ph, C]
        along_w = _axis_factor(target[:, 1], pos[:, 1], prior, compare)    # [U, B, Pw, C]

        def add(u, total):   # u's prior at its nearest candidate, (N_w N_h) lambda, in order
            term = along_w[u][:, :, None, :] * along_h[u][:, None, :, :] * scale[u]
            return total + compare.keep(term)

        zeros = jnp.zeros((block, p, p, c), prior.dtype)
        return jax.lax.fori_loop(0, k, add, zeros, unroll=math.gcd(unroll, k))

    total = jax.lax.map(one_block, targets).reshape(k, p, p, c)
    return jnp.transpose(total, (1, 2, 0, 3)).reshape(p * p, k, c)
