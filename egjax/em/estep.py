"""E-step of one graph layer in one image: spatial prior, evidence, competition, statistics.

Implements the per-image body of `learn_explanatoryGraph.m` (its parfor loop) with
`doE.m`, `getProb_local_mex.cpp` and `getOtherProb.cpp`. Written for one image; `vmap`
gives the batch. Candidates are flat, w-major: `j = iw * P + ih`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from egjax.em.competition import competition
from egjax.em.evidence import ORIGINAL_PI, evidence, evidence_in_order, window_values
from egjax.em.grid import round_half_away


class Nodes(NamedTuple):
    """Image-independent node quantities of one iteration.

    `coord [C,K,2]` prior positions, `offsets [C,K,P]` candidate offsets per axis,
    `sigma [C,K]` the spatial prior's scale, `weights [C,K,P*P,Q]` evidence weights of the
    window cells, `spread [P*P]` squared index distance of each candidate from the grid centre.
    """

    coord: jnp.ndarray
    offsets: jnp.ndarray
    sigma: jnp.ndarray
    weights: jnp.ndarray
    spread: jnp.ndarray


class Inference(NamedTuple):
    """Per image and node: `center [C,K,2]` (coord + mu), `scale [C,K]` (lambda),
    `spatial_prior [C,K,J]` (pi), `evidence [C,K,J]` (F)."""

    center: jnp.ndarray
    scale: jnp.ndarray
    spatial_prior: jnp.ndarray
    evidence: jnp.ndarray


class ImageStats(NamedTuple):
    """Sufficient statistics and records of one image, per node `[C, K, ...]`.

    `responsibility_mass` (A = sum r F), `gradient [.., 2]` (G), `score` (S = sum pi F),
    `spread` (V), `pos [.., 2]` inferred position, `best` (pi F at the inferred candidate).
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
    """Per-axis values `[..., P]` -> their value at every flat candidate along (h, w): `[..., J]` each."""
    num = values.shape[-1]
    along_h = jnp.tile(values, num)
    along_w = jnp.repeat(values, num, axis=-1)
    return along_h, along_w


def infer(x: jnp.ndarray, nodes: Nodes, shift: jnp.ndarray, scale: jnp.ndarray,
          in_order: bool = False) -> Inference:
    """Spatial prior and evidence of every candidate of every node in one image `x [S,S,C]`.

    `shift [C,K,2]` (mu) and `scale [C,K]` (lambda) come from the parents; `in_order` sums
    the evidence in the original's order (`evidence_in_order`).
    """
    center = nodes.coord + shift
    per_axis = gauss(nodes.offsets, nodes.sigma[..., None])            # [C, K, P]
    prior_h, prior_w = split_axes(per_axis)
    spatial_prior = prior_w * prior_h * scale[..., None]
    cells = round_half_away(center).astype(jnp.int32)
    max_window = (math.isqrt(nodes.weights.shape[-1]) - 1) // 2
    values = window_values(x, cells, max_window)
    f = evidence_in_order(values, nodes.weights) if in_order else evidence(values, nodes.weights)
    return Inference(center, scale, spatial_prior, f)


def competition_positions(inference: Inference, nodes: Nodes) -> jnp.ndarray:
    """Candidate positions `[C, K, 2, P]` as the competition compares them: in the original's
    1-based frame, `(centre + 1) + offset`.

    Only their order matters, but candidates of different nodes often tie exactly (integer
    centres in the first iteration), and which one wins a tie depends on this rounding.
    Computed once behind an optimisation barrier so every comparison sees the same values.
    """
    one_based = (inference.center + 1)[..., :, None] + nodes.offsets[..., None, :]
    return jax.lax.optimization_barrier(one_based)


def best_candidate(inference: Inference, nodes: Nodes) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Inferred position `[C,K,2]` and its `pi F` `[C,K]`: the candidate maximising `pi F`,
    the first in w-major order on ties."""
    num = nodes.offsets.shape[-1]
    joint = inference.spatial_prior * inference.evidence
    index = jnp.argmax(joint, axis=-1)
    offset_h = jnp.take_along_axis(nodes.offsets, (index % num)[..., None], -1)[..., 0]
    offset_w = jnp.take_along_axis(nodes.offsets, (index // num)[..., None], -1)[..., 0]
    pos = inference.center + jnp.stack([offset_h, offset_w], -1)
    best = jnp.take_along_axis(joint, index[..., None], -1)[..., 0]
    return pos, best


def statistics(inference: Inference, nodes: Nodes, tau_rate: float) -> ImageStats:
    """Competition-normalised responsibilities and the sufficient statistics of one image.

    `r = pi / max(sum_u pi_u(nearest) + tau, 1e-7)`, `tau = tau_rate * mean_v sum_cand pi`;
    `A = sum r F`, `G = sum r F delta / sigma^2`, `S = sum pi F`, `V = sum pi F spread`.
    """
    pi, f = inference.spatial_prior, inference.evidence
    per_axis = gauss(nodes.offsets, nodes.sigma[..., None])
    competing = competition(competition_positions(inference, nodes), per_axis, inference.scale)
    tau = tau_rate * jnp.mean(jnp.sum(pi, axis=-1))
    weighted = pi / jnp.maximum(competing + tau, 1e-7) * f
    step_h, step_w = split_axes(nodes.offsets / (nodes.sigma * nodes.sigma)[..., None])
    joint = pi * f
    pos, best = best_candidate(inference, nodes)
    return ImageStats(
        responsibility_mass=jnp.sum(weighted, axis=-1),
        gradient=jnp.stack([jnp.sum(weighted * step_h, -1), jnp.sum(weighted * step_w, -1)], -1),
        score=jnp.sum(joint, axis=-1),
        spread=jnp.sum(joint * nodes.spread, axis=-1),
        pos=pos,
        best=best,
    )
