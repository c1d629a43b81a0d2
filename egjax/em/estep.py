"""E-step of one graph layer in one image (`doE.m`, `getProb_local_mex.cpp`; docs/algorithm.md,
"E-step"); `vmap` gives the batch. Candidates flat, w-major (`j = iw * P + ih`); nodes
`[..., K, C]` (`layout`)."""

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
    """Image-independent node quantities of one iteration: `coord [2,K,C]` (h, w);
    `half_range [K,C]` (int); `offsets [P,K,C]` per axis; `sigma [K,C]`; `prior_axis [P,K,C]`
    `N(d_i; 0, sigma)`; evidence `weights [H+1, J, Q]` by half-range (`egjax.em.original`:
    per node); `exact_offsets` (`egjax.em.original`: the offsets in float64)."""

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
    """One image's statistics and records per node `[K, C]` (docs/algorithm.md, "E-step"):
    A, G `[2, K, C]`, S, V; `pos [2, K, C]`, `best`."""

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
    """`Nodes`: half-range, offsets `d_i`, prior per axis, evidence weights per half-range."""
    h = half_range(deform, cfg)
    table = jnp.asarray(kernel_table(cfg), coord.dtype)
    weights = table[jnp.arange(table.shape[0]), jnp.arange(table.shape[0])]
    offsets = jnp.moveaxis(jnp.asarray(offset_table(cfg), coord.dtype)[h], -1, 0)
    return Nodes(coord, h, offsets, sigma, gauss(offsets, sigma), weights)


def split_axes(values: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-axis values `[P, ...]` -> their value at every flat candidate, along h and w."""
    num = values.shape[0]
    reps = (num,) + (1,) * (values.ndim - 1)
    return jnp.tile(values, reps), jnp.repeat(values, num, axis=0)


def spread_weights(num: int, dtype) -> jnp.ndarray:
    """`[J]` `rho_j = (ih - c)^2 + (iw - c)^2`, c the grid's centre."""
    d = (jnp.arange(num, dtype=dtype) - (num - 1) / 2) ** 2
    along_h, along_w = split_axes(d)
    return along_h + along_w


def infer(image: Maps, nodes: Nodes, shift: jnp.ndarray, scale: jnp.ndarray) -> Inference:
    """`pi` and `F` of every candidate of every node in one image, centred at `coord + shift`
    (`mu [2,K,C]`), `scale [K,C]` (`lambda`) from the parents."""
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
    """Candidate positions `[2, P, K, C]` times P, `P m + h (2i + 1 - P)`, integers for integer
    centres; `P m` rounded before the offset is added (docs/algorithm.md, "Ties")."""
    steps = (2 * jnp.arange(num) + 1 - num).astype(center.dtype)
    offsets = half_range.astype(center.dtype)[None] * steps[:, None, None]
    return rounded(num * center[:, None]) + offsets[None]


def competing_mass(inference: Inference, nodes: Nodes, filters: int | None = 128) -> jnp.ndarray:
    """`[J,K,C]` competing prior mass `Q` (`getOtherProb.cpp`), on `lattice_positions`."""
    positions = lattice_positions(inference.center, nodes.half_range, nodes.offsets.shape[0])
    return competition(positions, nodes.prior_axis, inference.scale, LATTICE, filters=filters)


def index_position(index: jnp.ndarray, center: jnp.ndarray, offsets: jnp.ndarray,
                   shifted=jnp.add) -> jnp.ndarray:
    """Position `[2,K,C]` of candidate `index [K,C]`: `shifted(center, offset)`."""
    num = offsets.shape[0]
    offset_h = jnp.take_along_axis(offsets, (index % num)[None], 0)[0]
    offset_w = jnp.take_along_axis(offsets, (index // num)[None], 0)[0]
    return shifted(center, jnp.stack([offset_h, offset_w]))


def best_candidate(inference: Inference, nodes: Nodes
                   ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Score `S = sum_j pi F` `[K,C]`, position `[2,K,C]` of the first candidate maximising
    `pi F`, and that `pi F`: one pass over the candidates, as `accumulate`."""
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
    """One image's `ImageStats` with `r = pi / max(Q + tau, 1e-7)`,
    `tau = tau_rate mean_v lambda (sum_i N(d_i))^2` (docs/algorithm.md, "E-step")."""
    tau = tau_rate * jnp.mean(inference.scale * jnp.sum(nodes.prior_axis, axis=0) ** 2)
    step = nodes.offsets / (nodes.sigma * nodes.sigma)
    return accumulate(inference, nodes, competing, tau, step)


def accumulate(inference: Inference, nodes: Nodes, competing: jnp.ndarray, tau, step,
               keep=lambda x: x, shifted=jnp.add) -> ImageStats:
    """`statistics` given `tau` and `step [P,K,C]` (`d_i / sigma^2`): one pass over the
    candidates (docs/algorithm.md, "Loop shapes"), each product through `keep` before it is
    added."""
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
