"""One graph layer's EM: `init -> state`, `iteration(state, t) -> state`, and the records.

Implements the per-layer loop of `learn_explanatoryGraph.m` with its `updateModel` (M-step),
`doFlipConfigureation.m` (flips) and `getCurDistribution.m` (parents). Every function is
pure; `fit.py` runs the loop inside one jit.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from egjax.config import LayerConfig
from egjax.em import parents as parents_lib
from egjax.em.batching import map_images
from egjax.em.estep import Inference, Nodes, best_candidate, infer, statistics
from egjax.em.evidence import cached_kernel_table
from egjax.em.grid import half_range, offset_table, spread_weights
from egjax.em.reduce import image_mean, image_sum


@dataclasses.dataclass(frozen=True)
class Setup:
    """Static description of one layer fit (hashable: part of the jit cache key).

    `parent` is the config of the layer above (None for the top layer); `flips` whether
    mirrored maps are given; `original` reproduces the released learner's quirks;
    `num_images` counts the images on all devices; `axis_name` names the mesh axis the
    images are sharded over (None on one device); `chunk` images per vectorised batch.
    """

    cfg: LayerConfig
    parent: LayerConfig | None
    flips: bool
    original: bool
    num_images: int
    axis_name: str | None = None
    chunk: int = 8

    @property
    def scale_to_child(self) -> float:
        """Upper-layer cells -> this layer's cells for the parent prior (1 in the original)."""
        if self.parent is None or self.original:
            return 1.0
        return self.parent.stride / self.cfg.stride


class LayerData(NamedTuple):
    """`maps [N,S,S,C]`; `flipped [N,S,S,C]` or None; `flip [N]` decided by the layer above
    (None for the top layer); `candidates` (`parents.Candidates`; None for the top layer)."""

    maps: jnp.ndarray
    flipped: jnp.ndarray | None
    flip: jnp.ndarray | None
    candidates: parents_lib.Candidates | None


class LayerState(NamedTuple):
    """EM state between iterations.

    `coord [C,K,2]`, `deform [C,K]` node parameters; `parents [C*K, T]` candidate slots
    (-1 before they are first selected); `unit [C,K]` cells per candidate-index step, fixed
    at the layer's start as the original fixes it; records of the latest E-step:
    `pos [N,C,K,2]`, `best [N,C,K]`, `score [N,C,K]` (unnormalised), `flip [N]`, and the
    node parameters it ran with, `last_coord`, `last_deform`.
    """

    coord: jnp.ndarray
    deform: jnp.ndarray
    parents: jnp.ndarray
    unit: jnp.ndarray
    pos: jnp.ndarray
    best: jnp.ndarray
    score: jnp.ndarray
    flip: jnp.ndarray
    last_coord: jnp.ndarray
    last_deform: jnp.ndarray


class Sums(NamedTuple):
    """Sufficient statistics summed over images, per node `[C, K, ...]` (A, G, S, V)."""

    responsibility_mass: jnp.ndarray
    gradient: jnp.ndarray
    score: jnp.ndarray
    spread: jnp.ndarray


def node_major(x: jnp.ndarray) -> jnp.ndarray:
    """`[N, C, K, ...]` -> `[C*K, N, ...]`."""
    n, c, k = x.shape[:3]
    return jnp.moveaxis(x, 0, 2).reshape((c * k, n) + x.shape[3:])


def init(coord: jnp.ndarray, deform: jnp.ndarray, data: LayerData, setup: Setup) -> LayerState:
    """State before iteration 1 from initial `coord [C,K,2]` and `deform [C,K]`."""
    c, k, _ = coord.shape
    n = data.maps.shape[0]
    dtype = coord.dtype
    return LayerState(
        coord=coord, deform=deform,
        parents=jnp.full((c * k, setup.cfg.top_n), -1, jnp.int32),
        unit=candidate_step(deform, setup.cfg),
        pos=jnp.zeros((n, c, k, 2), dtype), best=jnp.zeros((n, c, k), dtype),
        score=jnp.zeros((n, c, k), dtype), flip=jnp.zeros((n,), bool),
        last_coord=coord, last_deform=deform)


def candidate_step(deform: jnp.ndarray, cfg: LayerConfig) -> jnp.ndarray:
    """`[C,K]` distance between neighbouring candidates, `2h/P` cells."""
    offsets = jnp.asarray(offset_table(cfg), deform.dtype)[half_range(deform, cfg)]
    return offsets[..., 1] - offsets[..., 0]


def nodes(coord: jnp.ndarray, deform: jnp.ndarray, sigma: jnp.ndarray, setup: Setup) -> Nodes:
    """Image-independent node quantities of an iteration; `sigma [C,K]` the prior's scale.

    The original's E-step kernel reads the window half-range and sigma by the node's index
    within its filter, so every filter uses filter 0's (`original=True`).
    """
    cfg = setup.cfg
    h = half_range(deform, cfg)
    window = h
    if setup.original:
        window = jnp.broadcast_to(h[:1], h.shape)
        sigma = jnp.broadcast_to(sigma[:1], sigma.shape)
    offsets = jnp.asarray(offset_table(cfg), coord.dtype)[h]
    weights = jnp.asarray(cached_kernel_table(cfg), coord.dtype)[h, window]
    spread = spread_weights(cfg.candidates, coord.dtype).reshape(-1)
    return Nodes(coord, offsets, sigma, weights, spread)


def prior_sigma(state: LayerState, data: LayerData, active, setup: Setup) -> jnp.ndarray:
    """`[C,K]` scale of each node's spatial prior: from its parents once they are active,
    else `init_delta * S`."""
    c, k, _ = state.coord.shape
    start = jnp.full((c, k), setup.cfg.init_delta * setup.cfg.map_size, state.coord.dtype)
    if data.candidates is None:
        return start
    sigma = parents_lib.sigma(state.parents, data.candidates.deform, setup.scale_to_child)
    return jnp.where(active, sigma.reshape(c, k), start)


def _image_prior(state, data, active, setup, deviation):
    """`(shift [C,K,2], scale [C,K])` of one image (zero shift, unit scale without parents)."""
    c, k, _ = state.coord.shape
    if data.candidates is None:
        return jnp.zeros_like(state.coord), jnp.ones((c, k), state.coord.dtype)
    shift, scale = parents_lib.shift_and_scale(state.parents, deviation, data.candidates.deform,
                                               setup.scale_to_child)
    shift = jnp.where(active, shift.reshape(c, k, 2), 0)
    scale = jnp.where(active, scale.reshape(c, k), 1)
    return shift, scale


def _per_image_inputs(data: LayerData):
    inputs = {"maps": data.maps}
    if data.flipped is not None:
        inputs["flipped"] = data.flipped
    if data.flip is not None:
        inputs["flip"] = data.flip
    if data.candidates is not None:
        inputs["deviation"] = jnp.swapaxes(data.candidates.deviation, 0, 1)  # [N, M, 2]
    return inputs


def _choose_orientation(plain: Inference, mirrored: Inference, t, original: bool):
    """Top layer: use the mirrored maps if they explain the image better.

    The original compares `sum log(pi) F`, which prefers less evidence, from iteration 1,
    when the nodes still sit at random cells. Else the orientation whose nodes detect more
    strongly wins (sum over nodes of `pi F` at each node's inferred candidate), from
    iteration 2 on, once the nodes have adapted to the images as given, so that the
    majority orientation of the data set counts as unmirrored.
    """
    def total(inference):
        if original:
            return jnp.sum(jnp.log(inference.spatial_prior) * inference.evidence)
        return jnp.sum(jnp.max(inference.spatial_prior * inference.evidence, axis=-1))

    flip = total(plain) < total(mirrored)
    if not original:
        flip = flip & (t >= 2)
    return jax.tree.map(lambda a, b: jnp.where(flip, b, a), plain, mirrored), flip


def iteration(state: LayerState, t, data: LayerData, setup: Setup) -> LayerState:
    """One EM iteration `t` (1-based): parents, E-step over all images, M-step."""
    cfg = setup.cfg
    c, k, _ = state.coord.shape
    active = jnp.asarray(False)
    if data.candidates is not None:
        active = t >= 2
        parents = jax.lax.cond(
            active,
            lambda: parents_lib.select(
                node_major(state.pos), node_major(state.best), data.candidates,
                cfg.top_n, cfg, setup.parent, setup.original, setup.num_images,
                setup.axis_name).astype(jnp.int32),
            lambda: state.parents)
        state = state._replace(parents=parents)
    sigma = prior_sigma(state, data, active, setup)
    node_q = nodes(state.coord, state.deform, sigma, setup)

    def one_image(inputs):
        shift, scale = _image_prior(state, data, active, setup, inputs.get("deviation"))
        if data.flip is None and data.flipped is not None:
            inference, flip = _choose_orientation(
                infer(inputs["maps"], node_q, shift, scale, setup.original),
                infer(inputs["flipped"], node_q, shift, scale, setup.original), t,
                setup.original)
        elif data.flip is not None:
            maps = jnp.where(inputs["flip"], inputs["flipped"], inputs["maps"])
            inference, flip = infer(maps, node_q, shift, scale, setup.original), inputs["flip"]
        else:
            inference = infer(inputs["maps"], node_q, shift, scale, setup.original)
            flip = jnp.asarray(False)
        stats = statistics(inference, node_q, cfg.tau_rate)
        summed = Sums(stats.responsibility_mass, stats.gradient, stats.score, stats.spread)
        return summed, (stats.pos, stats.best, stats.score, flip)

    sums, (pos, best, score, flip) = map_images(one_image, _per_image_inputs(data), setup.chunk)
    if setup.axis_name is not None:
        sums = jax.lax.psum(sums, setup.axis_name)
    coord, deform = m_step(state, sums, sigma, t, setup)
    return state._replace(coord=coord, deform=deform, pos=pos, best=best, score=score,
                          flip=flip, last_coord=state.coord, last_deform=state.deform)


def m_step(state: LayerState, sums: Sums, sigma: jnp.ndarray, t, setup: Setup):
    """`updateModel` of the original: move each node along its responsibility-weighted
    gradient and re-estimate its deformation scale.

    `step = eta (min sigma / t^(1/4))^2`; `coord += step * G / max(A, 1e-8)`;
    `deform = clip(unit * sqrt(V / S), min, max)` (a node without evidence, V/S = 0/0,
    gets the minimum, as MATLAB's NaN-ignoring max gives).
    """
    cfg = setup.cfg
    step = cfg.eta * (jnp.min(sigma) / t**0.25) ** 2
    coord = state.coord + sums.gradient / jnp.maximum(sums.responsibility_mass, 1e-8)[..., None] * step
    spread = jnp.sqrt(sums.spread / sums.score) * state.unit
    deform = jnp.clip(spread, cfg.min_deform, cfg.max_deform)
    deform = jnp.where(jnp.isnan(spread), cfg.min_deform, deform)
    return coord, deform


class Records(NamedTuple):
    """What a fitted layer reports per node and image (`[N, C, K, ...]`): `score` normalised
    to mean 1, `pos`, `flip [N]`, and the other orientation's `alt_score`, `alt_pos`."""

    score: jnp.ndarray
    pos: jnp.ndarray
    flip: jnp.ndarray
    alt_score: jnp.ndarray
    alt_pos: jnp.ndarray


def records(state: LayerState, data: LayerData, setup: Setup) -> Records:
    """Normalised records of the last iteration, and the other orientation inferred with the
    same node parameters (`alter` records of the original).

    The original takes the other orientation's position at the candidate chosen in the main
    orientation, so it always equals `pos`; else its own best candidate.
    """
    c, k, _ = state.coord.shape
    norm = image_mean(jnp.mean(state.score, axis=(1, 2)), 0, setup.num_images, setup.axis_name)
    if data.flipped is None:
        return Records(state.score / norm, state.pos, state.flip, state.score / norm, state.pos)
    active = jnp.asarray(data.candidates is not None and setup.cfg.iterations >= 2)
    sigma = prior_sigma(state, data, active, setup)
    node_q = nodes(state.last_coord, state.last_deform, sigma, setup)
    last = state._replace(coord=state.last_coord)

    def one_image(inputs):
        shift, scale = _image_prior(last, data, active, setup, inputs.get("deviation"))
        maps = jnp.where(inputs["flip"], inputs["maps"], inputs["flipped"])
        inference = infer(maps, node_q, shift, scale, setup.original)
        pos, _ = best_candidate(inference, node_q)
        return (), (jnp.sum(inference.spatial_prior * inference.evidence, axis=-1), pos)

    inputs = _per_image_inputs(data)
    inputs["flip"] = state.flip
    _, (alt_score, alt_pos) = map_images(one_image, inputs, setup.chunk)
    if setup.original:
        alt_pos = state.pos
    return Records(state.score / norm, state.pos, state.flip, alt_score / norm, alt_pos)
