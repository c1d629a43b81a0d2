"""Competition between the nodes of one filter (`getOtherProb.cpp`; docs/algorithm.md,
"E-step", "Ties"): the prior is separable, so each axis's factor of u's prior at its candidate
nearest to v's is found once per (u, v, candidate index), by comparisons with u's grid."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Comparison(NamedTuple):
    """`closer(t, g)`: `[P - 1]` masks, whether u's candidate i + 1 (`g [U, 1, P, C]`) is
    nearer to `t [1, B, P, C]` than its candidate i; `keep(term)` each term before adding."""

    closer: Callable
    keep: Callable


def _between_midpoints(t: jnp.ndarray, g: jnp.ndarray) -> list[jnp.ndarray]:
    """`2 (P - 1) (t - first) > (2i + 1) span`: exact on the lattice, ties to the lower index."""
    num = g.shape[2]
    first, last = g[:, :, :1], g[:, :, -1:]
    along = 2 * (num - 1) * (t - first)
    return [along > (2 * i + 1) * (last - first) for i in range(num - 1)]


LATTICE = Comparison(_between_midpoints, lambda term: term)


def _axis_factor(target: jnp.ndarray, grid: jnp.ndarray, prior: jnp.ndarray,
                 compare: Comparison) -> jnp.ndarray:
    """`[U, B, P, C]`: u's factor `prior [U, P, C]` at its candidate (`grid [U, P, C]`) nearest
    to each of B nodes' `target [B, P, C]` along one axis; 0 outside u's range."""
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
    """Competing prior mass `Q [J, K, C]` at every candidate of every node, from
    `positions [2, P, K, C]` (h, w), `prior_axis [P, K, C]` and `scale [K, C]` (`lambda`):
    u's prior `(N_u(iw) N_u(ih)) lambda_u`, added over u in order. `filters` at a time (None:
    all), `block` target nodes at a time (divisors, nothing padded), `unroll` terms a pass."""
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
