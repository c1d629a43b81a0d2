"""E-step of one graph layer in one image: spatial prior, evidence, competition, statistics.

Implements the per-image body of `learn_explanatoryGraph.m` (its parfor loop) with
`doE.m`, `getProb_local_mex.cpp` and `getOtherProb.cpp` (docs/algorithm.md, "E-step").
Written for one image; `vmap` gives the batch. Candidates are flat, w-major:
`j = iw * P + ih`. Node arrays are laid out `[..., K, C]` (filters last) so that the work
vectorises across the filters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from egjax.config import LayerConfig
from egjax.em.competition import LATTICE, competition
from egjax.em.evidence import ORIGINAL_PI, evidence, kernel_table
from egjax.em.grid import half_range, offset_table, round_half_away
from egjax.em.ieee import rounded
from egjax.em import windows
from egjax.em.windows import Maps


class Nodes(NamedTuple):
    """Image-independent node quantities of one iteration.

    `coord [2,K,C]` prior positions (h, w); `half_range [K,C]` (int); `offsets [P,K,C]`
    candidate offsets per axis; `sigma [K,C]` the spatial prior's scale and
    `prior_axis [P,K,C]` the prior per axis, `N(d_i; 0, sigma)`; `weights` evidence weights:
    `[H+1, J, Q]` shared by half-range (`egjax.em.original` keeps them per node); and
    `exact_offsets`, None here (`egjax.em.original`: the offsets in float64).
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


def gauss(d: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    """Normal density `N(d; 0, sigma)`."""
    return jnp.exp(-(d * d) / (2 * (sigma * sigma))) / (math.sqrt(2 * ORIGINAL_PI) * sigma)


def nodes(coord: jnp.ndarray, deform: jnp.ndarray, sigma: jnp.ndarray,
          cfg: LayerConfig) -> Nodes:
    """Image-independent node quantities of an iteration: half-range `h`, candidate offsets
    `d_i`, the prior per axis `N(d_i; 0, sigma)` (`sigma [K,C]` the prior's scale) and the
    evidence weights of each half-range."""
    h = half_range(deform, cfg)
    table = jnp.asarray(kernel_table(cfg), coord.dtype)
    weights = table[jnp.arange(table.shape[0]), jnp.arange(table.shape[0])]
    offsets = jnp.moveaxis(jnp.asarray(offset_table(cfg), coord.dtype)[h], -1, 0)
    return Nodes(coord, h, offsets, sigma, gauss(offsets, sigma), weights)


def split_axes(values: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-axis values `[P, ...]` -> their value at every flat candidate along (h, w):
    `[J, ...]` each (`j = iw * P + ih`)."""
    num = values.shape[0]
    reps = (num,) + (1,) * (values.ndim - 1)
    return jnp.tile(values, reps), jnp.repeat(values, num, axis=0)


def spread_weights(num: int, dtype) -> jnp.ndarray:
    """`[J]` squared index distance of each candidate from the grid centre,
    `(ih-c)^2 + (iw-c)^2`."""
    d = (jnp.arange(num, dtype=dtype) - (num - 1) / 2) ** 2
    along_h, along_w = split_axes(d)
    return along_h + along_w


def infer(image: Maps, nodes: Nodes, shift: jnp.ndarray, scale: jnp.ndarray) -> Inference:
    """Spatial prior and evidence of every candidate of every node in one image.

    `image` one image's maps, `shift [2,K,C]` (mu) and `scale [K,C]` (lambda) from the
    parents: centre `m = coord + mu`, `pi = lambda N(d_i) N(d_j)`, `F` (`evidence`).
    """
    return infer_at(image, nodes, nodes.coord + shift, scale, _window_evidence)


def _window_evidence(image: Maps, cells: jnp.ndarray, nodes: Nodes) -> jnp.ndarray:
    values = windows.window_values(image, cells, nodes.weights.shape[0] - 1)
    return evidence(values, nodes.half_range, nodes.weights)


def infer_at(image: Maps, nodes: Nodes, center: jnp.ndarray, scale: jnp.ndarray,
             evidence_of) -> Inference:
    """`infer` around `center [2,K,C]`, the evidence by `evidence_of(image, cells, nodes)`."""
    prior_h, prior_w = split_axes(nodes.prior_axis)
    spatial_prior = prior_w * prior_h * scale
    cells = round_half_away(center).astype(jnp.int32)
    return Inference(center, scale, spatial_prior, evidence_of(image, cells, nodes))


def lattice_positions(center: jnp.ndarray, half_range: jnp.ndarray, num: int) -> jnp.ndarray:
    """Candidate positions `[2, P, K, C]` times P, `P * centre + h (2i + 1 - P)`, as the
    fixed path's competition compares them (docs/algorithm.md, "Ties").

    The offsets `h (2i + 1 - P) / P` are multiples of 1/P, so for integer centres (every
    node in the first iteration) these are integers: box edges and midpoints between
    candidates compare exactly, and ties go by the stated rule, not by rounding.
    `P * centre` is rounded before the offset is added (`ieee.rounded`): XLA may compute
    these positions again in each fusion that reads them (an optimisation barrier does not
    stop it) and fuse the product and the sum into one multiply-add in some of them; a
    node's own first candidate would then lie one ulp outside its own box, and its own
    prior drop out of its competition (`tests/test_em_schedule.py`).
    """
    steps = (2 * jnp.arange(num) + 1 - num).astype(center.dtype)
    offsets = half_range.astype(center.dtype)[None] * steps[:, None, None]
    return rounded(num * center[:, None]) + offsets[None]


def competing_mass(inference: Inference, nodes: Nodes, filters: int | None = 128) -> jnp.ndarray:
    """`[J,K,C]` prior mass of the nodes competing for each candidate (`getOtherProb.cpp`),
    candidates compared on the lattice of `lattice_positions`; `filters` per group
    (`competition`)."""
    positions = lattice_positions(inference.center, nodes.half_range, nodes.offsets.shape[0])
    return competition(positions, nodes.prior_axis, inference.scale, LATTICE, filters=filters)


def index_position(index: jnp.ndarray, center: jnp.ndarray, offsets: jnp.ndarray,
                   shifted=jnp.add) -> jnp.ndarray:
    """Position `[2,K,C]` of flat candidate `index [K,C]` (w-major) of nodes centred at
    `center`: `shifted(center, offset)`."""
    num = offsets.shape[0]
    offset_h = jnp.take_along_axis(offsets, (index % num)[None], 0)[0]
    offset_w = jnp.take_along_axis(offsets, (index // num)[None], 0)[0]
    return shifted(center, jnp.stack([offset_h, offset_w]))


def best_candidate(inference: Inference, nodes: Nodes
                   ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Each node's score `S = sum_cand pi F` `[K,C]`, its inferred position `[2,K,C]`, the
    candidate maximising `pi F` (the first in w-major order on ties), and that `pi F`
    `[K,C]`: one pass over the candidates in w-major order, as `statistics` takes them
    (XLA:CPU compiles a reduction over the leading axis of `[J, K, C]` to scalar code)."""
    def step(j, carry):
        score, best, index = carry
        joint = inference.spatial_prior[j] * inference.evidence[j]
        better = joint > best
        return score + joint, jnp.where(better, joint, best), jnp.where(better, j, index)

    num = nodes.offsets.shape[0]
    start = (jnp.zeros_like(inference.scale), jnp.full_like(inference.scale, -jnp.inf),
             jnp.zeros(inference.scale.shape, jnp.int32))
    score, best, index = jax.lax.fori_loop(0, num * num, step, start, unroll=num)
    return score, index_position(index, inference.center, nodes.offsets), best


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
               tau_rate: float) -> ImageStats:
    """Competition-normalised responsibilities and the sufficient statistics of one image.

    `r = pi / max(competing + tau, 1e-7)`, `tau = tau_rate * mean_v sum_cand pi`, where
    `sum_cand pi = lambda (sum_i N(d_i))^2` (the prior is separable); `A = sum r F`,
    `G = sum r F delta / sigma^2`, `S = sum pi F`, `V = sum pi F spread`, and the inferred
    candidate (`best_candidate`); `accumulate` adds them.
    """
    tau = tau_rate * jnp.mean(inference.scale * jnp.sum(nodes.prior_axis, axis=0) ** 2)
    step = nodes.offsets / (nodes.sigma * nodes.sigma)
    return accumulate(inference, nodes, competing, tau, step)


def accumulate(inference: Inference, nodes: Nodes, competing: jnp.ndarray, tau, step,
               keep=lambda x: x, shifted=jnp.add) -> ImageStats:
    """`statistics` given `tau` and `step [P,K,C]` (`d_i / sigma^2`). One pass over the
    candidates in order, with `[K, C]` accumulators, P candidates per loop step: XLA:CPU
    compiles reductions over the leading axis of `[J, K, C]` (and argmax) to scalar code,
    while this loop's updates vectorise across filters and stay in cache. `pi` is
    recomputed per candidate from its per-axis factors, as `infer` does. Each product
    passes through `keep` before it is added; the position is `shifted(centre, offset)`."""
    num = nodes.offsets.shape[0]
    prior, scale, f = nodes.prior_axis, inference.scale, inference.evidence
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
        pos=index_position(run.index, inference.center, nodes.offsets, shifted),
        best=run.best,
    )
