"""The E-step as the original computes it (`getProb_local_mex.cpp`, `getOtherProb.cpp`,
`doE.m`): filter 0's window and sigma, `getGauss`'s roundings, sums in its order with every
product rounded, its 1-based frame, candidates compared in float64."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from egjax.config import LayerConfig
from egjax.em.competition import Comparison, competition
from egjax.em.estep import Inference, Nodes, accumulate, infer_at
from egjax.em.evidence import ORIGINAL_PI, kernel_table
from egjax.em.grid import half_range, offset_table
from egjax.em.ieee import divide, rounded
from egjax.em.original.arithmetic import exp_as_original, in_order_mean
from egjax.em import windows
from egjax.em.windows import Maps


def shifted(x: jnp.ndarray, shift: jnp.ndarray) -> jnp.ndarray:
    """`x + shift` added in the original's 1-based frame."""
    return ((x + 1) + shift) - 1


def gauss(d: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    """`N(d; 0, sigma)` as `getGauss` rounds it."""
    exponent = divide(-(d * d), 2 * (sigma * sigma))
    return divide(exp_as_original(exponent), math.sqrt(2 * ORIGINAL_PI) * sigma)


def nodes(coord: jnp.ndarray, deform: jnp.ndarray, sigma: jnp.ndarray,
          cfg: LayerConfig) -> Nodes:
    """`estep.nodes` as the original reads them, by the node's index within its filter:
    filter 0's window and sigma; weights per node `[J, Q, K, C]`; offsets also in float64."""
    h = half_range(deform, cfg)
    table = jnp.asarray(kernel_table(cfg), coord.dtype)
    window = jnp.broadcast_to(h[:, :1], h.shape)
    sigma = jnp.broadcast_to(sigma[:, :1], sigma.shape)
    weights = jnp.transpose(table[h, window], (2, 3, 0, 1))
    grid = offset_table(cfg)
    offsets = jnp.moveaxis(jnp.asarray(grid, coord.dtype)[h], -1, 0)
    with jax.enable_x64(True):
        exact_offsets = jnp.moveaxis(jnp.asarray(grid, jnp.float64)[h], -1, 0)
    return Nodes(coord, h, offsets, sigma, gauss(offsets, sigma), weights, exact_offsets)


def infer(image: Maps, nodes: Nodes, shift: jnp.ndarray, scale: jnp.ndarray) -> Inference:
    """`estep.infer`, the centre shifted in the 1-based frame, `evidence_in_order`."""
    return infer_at(image, nodes, shifted(nodes.coord, shift), scale, _evidence)


def _evidence(image: Maps, cells: jnp.ndarray, nodes: Nodes) -> jnp.ndarray:
    big = (math.isqrt(nodes.weights.shape[1]) - 1) // 2
    return evidence_in_order(windows.window_values(image, cells, big), nodes.weights)


def evidence_in_order(values: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """`F [J, K, C]` from window values `[K, C, Q]` and weights `[J, Q, K, C]`, added in the
    window's order, each product rounded, as the original's loop: the last bit decides
    exact ties between candidates (mirrored candidates sum the same products reversed)."""
    cells = jnp.moveaxis(values, -1, 0)[None]
    products = rounded(weights * cells)
    return functools.reduce(jnp.add, [products[:, q] for q in range(products.shape[1])])


def competition_positions(center: jnp.ndarray, offsets: jnp.ndarray) -> jnp.ndarray:
    """Candidate positions `[2, P, K, C]` as the original compares them, `(centre + 1) + offset`
    (their rounding decides ties; sums only, so every fusion gets the same values)."""
    return (center + 1)[:, None] + offsets[None]


def competing_mass(inference: Inference, nodes: Nodes, filters: int | None = 128) -> jnp.ndarray:
    """`estep.competing_mass` comparing squared distances in float64, as the original: its
    rounding decides the many exact ties (float32 decides 30 of the 1152 masses of `small`'s
    top layer in iteration 1 otherwise, off by up to 38 %)."""
    with jax.enable_x64(True):
        positions = competition_positions(inference.center.astype(jnp.float64),
                                          nodes.exact_offsets)
        return competition(positions, nodes.prior_axis, inference.scale, EXACT, filters=filters)


def _by_distance(t: jnp.ndarray, g: jnp.ndarray) -> list[jnp.ndarray]:
    """Squared distances to neighbouring candidates compared per axis (the original sums both
    axes first, which can round away a one-ulp difference; no reference run hangs on it)."""
    return [(t - g[:, :, i + 1:i + 2]) ** 2 < (t - g[:, :, i:i + 1]) ** 2
            for i in range(g.shape[2] - 1)]


# The original's comparisons, each term rounded before it is added (no fused multiply-add).
EXACT = Comparison(_by_distance, rounded)


def statistics(inference: Inference, nodes: Nodes, competing: jnp.ndarray, tau_rate: float):
    """`estep.statistics` rounded as the original: every product, `tau` summed over the
    candidates and averaged over nodes in its order (`c * K + k`), 1-based positions."""
    num = nodes.offsets.shape[0]
    prior, scale = nodes.prior_axis, inference.scale
    per_node = functools.reduce(jnp.add, [rounded(prior[j // num] * prior[j % num] * scale)
                                          for j in range(num * num)])
    tau = tau_rate * in_order_mean(per_node.T.reshape(-1))
    step = divide(nodes.offsets, nodes.sigma * nodes.sigma)
    return accumulate(inference, nodes, competing, tau, step, rounded, shifted)
