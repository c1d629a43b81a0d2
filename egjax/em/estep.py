"""E-step of one graph layer in one image: spatial prior, evidence, competition, statistics.

Implements the per-image body of `learn_explanatoryGraph.m` (its parfor loop) with
`doE.m`, `getProb_local_mex.cpp` and `getOtherProb.cpp`. Written for one image; `vmap`
gives the batch. Candidates are flat, w-major: `j = iw * P + ih`. Node arrays are laid out
`[..., K, C]` (filters last) so that the work vectorises across the filters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from egjax.em.competition import competition
from egjax.em.evidence import ORIGINAL_PI, evidence, evidence_in_order
from egjax.em.grid import round_half_away
from egjax.em.planes import Planes, window_values


class Nodes(NamedTuple):
    """Image-independent node quantities of one iteration.

    `coord [2,K,C]` prior positions (h, w); `half_range [K,C]` (int); `offsets [P,K,C]`
    candidate offsets per axis; `sigma [K,C]` the spatial prior's scale and
    `prior_axis [P,K,C]` the prior per axis, `N(d_i; 0, sigma)`; `weights` evidence weights:
    `[H+1, J, Q]` shared by half-range, or `[J, Q, K, C]` per node when they are summed in
    the original's order (`in_order`).
    """

    coord: jnp.ndarray
    half_range: jnp.ndarray
    offsets: jnp.ndarray
    sigma: jnp.ndarray
    prior_axis: jnp.ndarray
    weights: jnp.ndarray


class Inference(NamedTuple):
    """Per image and node: `center [2,K,C]` (coord + mu), `scale [K,C]` (lambda),
    `spatial_prior [J,K,C]` (pi), `evidence [J,K,C]` (F)."""

    center: jnp.ndarray
    scale: jnp.ndarray
    spatial_prior: jnp.ndarray
    evidence: jnp.ndarray


class ImageStats(NamedTuple):
    """Sufficient statistics and records of one image, per node (`[K, C]`, `[2, K, C]`).

    `responsibility_mass` (A = sum r F), `gradient [.., 2]` (G = sum r F delta / sigma^2),
    `score` (S = sum pi F), `spread` (V = sum pi F spread), `pos [.., 2]` inferred
    position, `best` (pi F at the inferred candidate).
    """

    responsibility_mass: jnp.ndarray
    gradient: jnp.ndarray
    score: jnp.ndarray
    spread: jnp.ndarray
    pos: jnp.ndarray
    best: jnp.ndarray


def gauss(d: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    """Normal density `N(d; 0, sigma)`."""
    return jnp.exp(-(d * d) / (2 * (sigma * sigma))) / (math.sqrt(2 * ORIGINAL_PI) * sigma)


def split_axes(values: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-axis values `[P, ...]` -> their value at every flat candidate along (h, w):
    `[J, ...]` each (`j = iw * P + ih`)."""
    num = values.shape[0]
    reps = (num,) + (1,) * (values.ndim - 1)
    return jnp.tile(values, reps), jnp.repeat(values, num, axis=0)


def spread_weights(num: int, dtype) -> jnp.ndarray:
    """`[J]` squared index distance of each candidate from the grid centre, `(ih-c)^2 + (iw-c)^2`."""
    d = (jnp.arange(num, dtype=dtype) - (num - 1) / 2) ** 2
    along_h, along_w = split_axes(d)
    return along_h + along_w


def infer(planes: Planes, nodes: Nodes, shift: jnp.ndarray, scale: jnp.ndarray,
          in_order: bool) -> Inference:
    """Spatial prior and evidence of every candidate of every node in one image.

    `planes` of one image, `shift [2,K,C]` (mu) and `scale [K,C]` (lambda) from the parents;
    `in_order` sums the evidence in the original's order (`evidence_in_order`).
    """
    center = nodes.coord + shift
    prior_h, prior_w = split_axes(nodes.prior_axis)
    spatial_prior = prior_w * prior_h * scale
    cells = round_half_away(center).astype(jnp.int32)
    max_window = (math.isqrt(nodes.weights.shape[1 if in_order else -1]) - 1) // 2
    values = window_values(planes, cells, math.isqrt(planes.values.shape[-1]), max_window)
    if in_order:
        f = evidence_in_order(values, nodes.weights)
    else:
        f = evidence(values, nodes.half_range, nodes.weights)
    return Inference(center, scale, spatial_prior, f)


def competition_positions(center: jnp.ndarray, offsets: jnp.ndarray) -> jnp.ndarray:
    """Candidate positions `[2, P, K, C]` as the competition compares them: in the original's
    1-based frame, `(centre + 1) + offset`.

    Only their order matters, but candidates of different nodes often tie exactly (integer
    centres in the first iteration), and which one wins a tie depends on this rounding.
    Computed once behind an optimisation barrier so every comparison sees the same values.
    """
    one_based = (center + 1)[:, None] + offsets[None]
    return jax.lax.optimization_barrier(one_based)


def competing_mass(inference: Inference, nodes: Nodes, exact: bool) -> jnp.ndarray:
    """`[J,K,C]` prior mass of the nodes competing for each candidate (`getOtherProb.cpp`)."""
    positions = competition_positions(inference.center, nodes.offsets)
    return competition(positions, nodes.prior_axis, inference.scale, exact)


def best_candidate(inference: Inference, nodes: Nodes) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Inferred position `[2,K,C]` and its `pi F` `[K,C]`: the candidate maximising `pi F`,
    the first in w-major order on ties."""
    num = nodes.offsets.shape[0]
    joint = inference.spatial_prior * inference.evidence
    index = jnp.argmax(joint, axis=0)
    offset_h = jnp.take_along_axis(nodes.offsets, (index % num)[None], 0)[0]
    offset_w = jnp.take_along_axis(nodes.offsets, (index // num)[None], 0)[0]
    pos = inference.center + jnp.stack([offset_h, offset_w])
    best = jnp.take_along_axis(joint, index[None], 0)[0]
    return pos, best


def statistics(inference: Inference, nodes: Nodes, competing: jnp.ndarray,
               tau_rate: float) -> ImageStats:
    """Competition-normalised responsibilities and the sufficient statistics of one image.

    `r = pi / max(competing + tau, 1e-7)`, `tau = tau_rate * mean_v sum_cand pi`;
    `A = sum r F`, `G = sum r F delta / sigma^2`, `S = sum pi F`, `V = sum pi F spread`.
    """
    pi, f = inference.spatial_prior, inference.evidence
    tau = tau_rate * jnp.mean(jnp.sum(pi, axis=0))
    weighted = pi / jnp.maximum(competing + tau, 1e-7) * f
    step_h, step_w = split_axes(nodes.offsets / (nodes.sigma * nodes.sigma))
    joint = pi * f
    spread = spread_weights(nodes.offsets.shape[0], pi.dtype)[:, None, None]
    pos, best = best_candidate(inference, nodes)
    return ImageStats(
        responsibility_mass=jnp.sum(weighted, axis=0),
        gradient=jnp.stack([jnp.sum(weighted * step_h, 0), jnp.sum(weighted * step_w, 0)]),
        score=jnp.sum(joint, axis=0),
        spread=jnp.sum(joint * spread, axis=0),
        pos=pos,
        best=best,
    )
