"""E-step of one graph layer in one image: spatial prior, evidence, competition, statistics.

Implements the per-image body of `learn_explanatoryGraph.m` (its parfor loop) with
`doE.m`, `getProb_local_mex.cpp` and `getOtherProb.cpp` (docs/algorithm.md, "E-step").
Written for one image; `vmap` gives the batch. Candidates are flat, w-major:
`j = iw * P + ih`. Node arrays are laid out `[..., K, C]` (filters last) so that the work
vectorises across the filters.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from egjax.em.competition import competition
from egjax.em.evidence import ORIGINAL_PI, evidence, evidence_in_order
from egjax.em.grid import round_half_away
from egjax.em.glibc_exp import exp_as_original
from egjax.em.ieee import divide, in_order_mean, rounded
from egjax.em.windows import Maps, window_values


class Nodes(NamedTuple):
    """Image-independent node quantities of one iteration.

    `coord [2,K,C]` prior positions (h, w); `half_range [K,C]` (int); `offsets [P,K,C]`
    candidate offsets per axis; `sigma [K,C]` the spatial prior's scale and
    `prior_axis [P,K,C]` the prior per axis, `N(d_i; 0, sigma)`; `weights` evidence weights:
    `[H+1, J, Q]` shared by half-range, or `[J, Q, K, C]` per node when they are summed in
    the original's order (`original`); `exact_offsets [P,K,C]` the offsets in float64 when
    the competition compares candidates as the original does (`competing_mass`), else None.
    """

    coord: jnp.ndarray
    half_range: jnp.ndarray
    offsets: jnp.ndarray
    sigma: jnp.ndarray
    prior_axis: jnp.ndarray
    weights: jnp.ndarray
    exact_offsets: jnp.ndarray | None = None


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


def gauss(d: jnp.ndarray, sigma: jnp.ndarray, original: bool = False) -> jnp.ndarray:
    """Normal density `N(d; 0, sigma)`; `original`: as `getGauss` rounds it."""
    if original:
        exponent = divide(-(d * d), 2 * (sigma * sigma))
        return divide(exp_as_original(exponent), math.sqrt(2 * ORIGINAL_PI) * sigma)
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


def infer(image: Maps, nodes: Nodes, shift: jnp.ndarray, scale: jnp.ndarray,
          original: bool) -> Inference:
    """Spatial prior and evidence of every candidate of every node in one image.

    `image` one image's maps, `shift [2,K,C]` (mu) and `scale [K,C]` (lambda) from the parents;
    `original` computes as the original: the centre shifted in its 1-based frame, the
    evidence summed in its order (`evidence_in_order`).
    """
    center = ((nodes.coord + 1) + shift) - 1 if original else nodes.coord + shift
    prior_h, prior_w = split_axes(nodes.prior_axis)
    spatial_prior = prior_w * prior_h * scale
    cells = round_half_away(center).astype(jnp.int32)
    max_window = (math.isqrt(nodes.weights.shape[1 if original else -1]) - 1) // 2
    values = window_values(image, cells, max_window)
    if original:
        f = evidence_in_order(values, nodes.weights)
    else:
        f = evidence(values, nodes.half_range, nodes.weights)
    return Inference(center, scale, spatial_prior, f)


def competition_positions(center: jnp.ndarray, offsets: jnp.ndarray) -> jnp.ndarray:
    """Candidate positions `[2, P, K, C]` as the original's competition compares them: in its
    1-based frame, `(centre + 1) + offset`.

    Only their order matters, but candidates of different nodes often tie exactly (integer
    centres in the first iteration), and which one wins a tie depends on this rounding.
    Computed once behind an optimisation barrier so every comparison sees the same values.
    """
    one_based = (center + 1)[:, None] + offsets[None]
    return jax.lax.optimization_barrier(one_based)


def lattice_positions(center: jnp.ndarray, half_range: jnp.ndarray, num: int) -> jnp.ndarray:
    """Candidate positions `[2, P, K, C]` times P, `P * centre + h (2i + 1 - P)`, as the
    fixed path's competition compares them (docs/algorithm.md, "Ties").

    The offsets `h (2i + 1 - P) / P` are multiples of 1/P, so for integer centres (every
    node in the first iteration) these are integers: box edges and midpoints between
    candidates compare exactly, and ties go by the stated rule, not by rounding.
    """
    steps = (2 * jnp.arange(num) + 1 - num).astype(center.dtype)
    offsets = half_range.astype(center.dtype)[None] * steps[:, None, None]
    return jax.lax.optimization_barrier(num * center[:, None] + offsets[None])


def competing_mass(inference: Inference, nodes: Nodes, filters: int | None = 128) -> jnp.ndarray:
    """`[J,K,C]` prior mass of the nodes competing for each candidate (`getOtherProb.cpp`).

    With `nodes.exact_offsets`, candidates are compared as the original compares them: by
    squared distance, in float64 whatever the compute dtype. Integer centres make many of
    those comparisons ties in exact arithmetic (a candidate on the edge of another node's
    box, or halfway between two of its candidates), and the original's float64 rounding
    decides them. float32 rounding decides some of them the other way (30 of the 1152
    competing masses of `small`'s top layer in its first iteration, off by up to 38 %),
    which sends the whole fit elsewhere. `filters` per group (`competition`).
    """
    if nodes.exact_offsets is None:
        positions = lattice_positions(inference.center, nodes.half_range, nodes.offsets.shape[0])
        return competition(positions, nodes.prior_axis, inference.scale, exact=False,
                           filters=filters)
    with jax.enable_x64(True):
        positions = competition_positions(inference.center.astype(jnp.float64),
                                          nodes.exact_offsets)
        return competition(positions, nodes.prior_axis, inference.scale, exact=True,
                           filters=filters)


def _index_position(index: jnp.ndarray, center: jnp.ndarray, offsets: jnp.ndarray,
                    original: bool = False) -> jnp.ndarray:
    """Position `[2,K,C]` of flat candidate `index [K,C]` (w-major) of nodes centred at
    `center`; `original`: added in the original's 1-based frame."""
    num = offsets.shape[0]
    offset_h = jnp.take_along_axis(offsets, (index % num)[None], 0)[0]
    offset_w = jnp.take_along_axis(offsets, (index // num)[None], 0)[0]
    offset = jnp.stack([offset_h, offset_w])
    return ((center + 1) + offset) - 1 if original else center + offset


def best_candidate(inference: Inference, nodes: Nodes) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Inferred position `[2,K,C]` and its `pi F` `[K,C]`: the candidate maximising `pi F`,
    the first in w-major order on ties."""
    def step(j, carry):
        best, index = carry
        joint = inference.spatial_prior[j] * inference.evidence[j]
        better = joint > best
        return jnp.where(better, joint, best), jnp.where(better, j, index)

    num = nodes.offsets.shape[0]
    start = (jnp.full_like(inference.scale, -jnp.inf), jnp.zeros(inference.scale.shape, jnp.int32))
    best, index = jax.lax.fori_loop(0, num * num, step, start, unroll=num)
    return _index_position(index, inference.center, nodes.offsets), best


class _Running(NamedTuple):
    """Accumulators of `statistics` over the candidates seen so far, `[K, C]` each."""

    mass: jnp.ndarray
    gradient_h: jnp.ndarray
    gradient_w: jnp.ndarray
    score: jnp.ndarray
    spread: jnp.ndarray
    best: jnp.ndarray
    index: jnp.ndarray


def statistics(inference: Inference, nodes: Nodes, competing: jnp.ndarray,
               tau_rate: float, original: bool = False) -> ImageStats:
    """Competition-normalised responsibilities and the sufficient statistics of one image.

    `r = pi / max(competing + tau, 1e-7)`, `tau = tau_rate * mean_v sum_cand pi`;
    `A = sum r F`, `G = sum r F delta / sigma^2`, `S = sum pi F`, `V = sum pi F spread`, and
    the inferred candidate (`best_candidate`). One pass over the candidates in order, with
    `[K, C]` accumulators, P candidates per loop step: XLA:CPU compiles reductions over the
    leading axis of `[J, K, C]` (and argmax) to scalar code, while this loop's updates
    vectorise across filters and stay in cache. `pi` is recomputed per candidate from its
    per-axis factors, as `infer` does. `original` rounds as the original does: every
    product before it is added, `tau` from the sums over candidates.
    """
    num = nodes.offsets.shape[0]
    prior, scale, f = nodes.prior_axis, inference.scale, inference.evidence
    keep = rounded if original else (lambda x: x)
    if original:   # mean over nodes in the original's order (c * K + k) of sum_cand pi
        per_node = functools.reduce(jnp.add, [keep(prior[j // num] * prior[j % num] * scale)
                                              for j in range(num * num)])
        tau = tau_rate * in_order_mean(per_node.T.reshape(-1))
        step = divide(nodes.offsets, nodes.sigma * nodes.sigma)
    else:   # sum_cand pi = lambda * (sum_i N(d_i))^2: the prior is separable.
        tau = tau_rate * jnp.mean(scale * jnp.sum(prior, axis=0) ** 2)
        step = nodes.offsets / (nodes.sigma * nodes.sigma)
    spread = spread_weights(num, f.dtype)

    def add(j, run):
        iw, ih = j // num, j % num
        pi = prior[iw] * prior[ih] * scale
        weighted = keep(pi / jnp.maximum(competing[j] + tau, 1e-7) * f[j])
        joint = keep(pi * f[j])
        better = joint > run.best
        return _Running(run.mass + weighted, run.gradient_h + keep(weighted * step[ih]),
                        run.gradient_w + keep(weighted * step[iw]), run.score + joint,
                        run.spread + keep(joint * spread[j]), jnp.where(better, joint, run.best),
                        jnp.where(better, j, run.index))

    zeros = jnp.zeros_like(scale)
    start = _Running(zeros, zeros, zeros, zeros, zeros, jnp.full_like(scale, -jnp.inf),
                     jnp.zeros(scale.shape, jnp.int32))
    run = jax.lax.fori_loop(0, num * num, add, start, unroll=num)
    return ImageStats(
        responsibility_mass=run.mass,
        gradient=jnp.stack([run.gradient_h, run.gradient_w]),
        score=run.score,
        spread=run.spread,
        pos=_index_position(run.index, inference.center, nodes.offsets, original),
        best=run.best,
    )
