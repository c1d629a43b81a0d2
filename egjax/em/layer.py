"""One graph layer's EM, `init -> state`, `iteration(state, t) -> state`, `records`: the layer
loop of `learn_explanatoryGraph.m` with `updateModel` and `doFlipConfigureation.m`
(docs/algorithm.md, "One layer's fit" to "Records"). `fit.py` runs the loop in one jit.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from egjax.config import LayerConfig
from egjax.em import parents as parents_lib
from egjax.em.estep import Inference, Nodes, best_candidate
from egjax.em.grid import half_range, offset_table
from egjax.em.ieee import divide, rounded
from egjax.em.windows import Maps, pick
from egjax.em.reduce import Images, image_sum, narrow, real, wide, wide_psum
from egjax.em.schedule import CPU, Schedule, map_images, masked_sum, scan_chunks
from egjax.graph import Records

if TYPE_CHECKING:   # egjax.em.rules imports this module
    from egjax.em.rules import Rules


@dataclasses.dataclass(frozen=True)
class Setup:
    """Static description of one layer fit (hashable): `parent` the upper layer's config
    (None: top); `flips` whether mirrored maps are given; `rules` (`egjax.em.rules`);
    `num_images` on all devices; `slots` (M); `images` their split over devices
    (`reduce.Images`; None: one device); `chunk` images per batch of parent priors;
    `schedule` the loops' shapes for the backend (`schedule.Schedule`)."""

    cfg: LayerConfig
    parent: LayerConfig | None
    flips: bool
    rules: Rules
    num_images: int
    slots: int = 0
    images: Images | None = None
    chunk: int = 8
    schedule: Schedule = CPU

    @property
    def scale_to_child(self) -> float:
        """Upper-layer cells -> this layer's cells (`rules.scale_to_child`)."""
        return 1.0 if self.parent is None else self.rules.scale_to_child(self.cfg, self.parent)


class LayerData(NamedTuple):
    """The images of one layer fit: `maps`, `mirrored` (or None); `flip [N]` each image's
    orientation, as the layer above chose it (None: the top layer chooses); `candidates`
    (`parents.Candidates`; None in the top layer)."""

    maps: Maps
    mirrored: Maps | None
    flip: jnp.ndarray | None
    candidates: parents_lib.Candidates | None


class LayerState(NamedTuple):
    """EM state between iterations (nodes `[K, C]`): `coord [2,K,C]`, `deform`; `parents
    [K*C, T]` candidate slots (-1: none yet); `unit` (`candidate_step` at the start); the
    latest E-step's records `pos [N,2,K,C]`, `best`, `score [N,K,C]` (unnormalised), `flip
    [N]`, and the parameters it ran with, `last_coord`, `last_deform`."""

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
    """Sufficient statistics summed over images: A, S, V `[K, C]`; G `[2, K, C]`."""

    responsibility_mass: jnp.ndarray
    gradient: jnp.ndarray
    score: jnp.ndarray
    spread: jnp.ndarray


def candidate_step(deform: jnp.ndarray, cfg: LayerConfig) -> jnp.ndarray:
    """Distance between neighbouring candidates, `2h/P` cells (shape of `deform`)."""
    offsets = jnp.asarray(offset_table(cfg), deform.dtype)[half_range(deform, cfg)]
    return offsets[..., 1] - offsets[..., 0]


def init(coord: jnp.ndarray, deform: jnp.ndarray, num_images: int, setup: Setup) -> LayerState:
    """State before iteration 1 from initial `coord [2,K,C]` and `deform [K,C]`."""
    _, k, c = coord.shape
    n, dtype = num_images, coord.dtype
    return LayerState(
        coord=coord, deform=deform,
        parents=jnp.full((k * c, setup.cfg.top_n), -1, jnp.int32),
        unit=candidate_step(deform, setup.cfg),
        pos=jnp.zeros((n, 2, k, c), dtype), best=jnp.zeros((n, k, c), dtype),
        score=jnp.zeros((n, k, c), dtype), flip=jnp.zeros((n,), bool),
        last_coord=coord, last_deform=deform)


def nodes(coord: jnp.ndarray, deform: jnp.ndarray, sigma: jnp.ndarray, setup: Setup) -> Nodes:
    """`rules.nodes` (`estep.nodes`); `sigma [K,C]` the prior's scale."""
    return setup.rules.nodes(coord, deform, sigma, setup.cfg)


def prefers_mirrored(plain: Inference, mirrored: Inference, t) -> jnp.ndarray:
    """Mirrored maps if their `sum_v best_v` is larger, from iteration 2
    (docs/algorithm.md, "Orientation")."""
    def total(inference):
        return jnp.sum(jnp.max(inference.spatial_prior * inference.evidence, axis=0))

    return (total(plain) < total(mirrored)) & (t >= 2)


class Prior(NamedTuple):
    """The parents' part of each node's prior (docs/algorithm.md, "Parent prior"): `sigma
    [K,C]`, `weights` (`parents.PriorWeights`; None in the top layer), and whether they are
    `active` (iteration >= 2; before, `sigma_0`, no shift, unit scale)."""

    sigma: jnp.ndarray
    weights: parents_lib.PriorWeights | None
    active: jnp.ndarray


def parent_prior(parents: jnp.ndarray | None, candidate_deform: jnp.ndarray | None, active,
                 shape: tuple[int, int], dtype, setup: Setup) -> Prior:
    """The `Prior` (fit's and inference's) of nodes `[K, C]` (`shape`) with `parents [K*C, T]`
    (slots, -1: none yet; None: top) of candidates with `candidate_deform [M]`."""
    sigma = jnp.full(shape, setup.cfg.init_delta * setup.cfg.map_size, dtype)
    if parents is None:
        return Prior(sigma, None, jnp.asarray(False))
    weights = setup.rules.prior_weights(jnp.maximum(parents, 0), candidate_deform,
                                        setup.scale_to_child)
    return Prior(jnp.where(active, weights.sigma.reshape(shape), sigma), weights,
                 jnp.asarray(active))


def _layer_prior(state: LayerState, data: LayerData, active, setup: Setup):
    """The fit's `parent_prior`, and the candidates' deviations `[N, M, 2]` (None: top)."""
    if data.candidates is None:
        return parent_prior(None, None, active, state.coord.shape[1:], state.coord.dtype,
                            setup), None
    prior = parent_prior(state.parents, data.candidates.deform, active, state.coord.shape[1:],
                         state.coord.dtype, setup)
    return prior, jnp.swapaxes(data.candidates.deviation, 0, 1)


def _chunk_priors(prior: Prior, deviation, n: int, setup: Setup):
    """`(shift [n,2,K,C], scale [n,K,C])` in n images from the candidates' `deviation
    [n, M, 2]` (0 and 1 while the parents are not active)."""
    (k, c), dtype = prior.sigma.shape, prior.sigma.dtype
    if prior.weights is None:
        return jnp.zeros((n, 2, k, c), dtype), jnp.ones((n, k, c), dtype)
    shift, scale = setup.rules.shift_and_scale(prior.weights, jnp.swapaxes(deviation, 0, 1),
                                               setup.scale_to_child, setup.schedule.children)
    shift = jnp.where(prior.active, jnp.transpose(shift.reshape(k, c, n, 2), (2, 3, 0, 1)), 0)
    scale = jnp.where(prior.active, jnp.transpose(scale.reshape(k, c, n), (2, 0, 1)), 1)
    return shift, scale


def over_images(one_image, maps: Maps, mirrored: Maps | None, flip: jnp.ndarray | None,
                deviation: jnp.ndarray | None, node_q: Nodes, prior: Prior, t, setup: Setup,
                add=lambda outputs, valid: ((), outputs), into=None):
    """`one_image(inference, flip)` in every image, `setup.chunk` at a time (`scan_chunks`,
    whose `into` this takes); `add(outputs [n, ...], valid [n]) -> (summed, recorded)` per
    chunk (default: nothing summed). Each image's inference (`rules.infer`) is under its
    parents' prior (`deviation [N, M, 2]`; None: top layer) and in its orientation: the
    `mirrored` maps where `flip [N]`, or where `rules.prefers_mirrored` them if `flip` is None.
    """
    rules, choose = setup.rules, flip is None

    def per_image(image, other, flip, shift, scale):
        if other is not None and not choose:
            image = pick(flip, image, other)
        inference = rules.infer(image, node_q, shift, scale)
        if other is not None and choose:
            alternative = rules.infer(other, node_q, shift, scale)
            flip = rules.prefers_mirrored(inference, alternative, t)
            inference = jax.tree.map(lambda a, b: jnp.where(flip, b, a), inference, alternative)
        return one_image(inference, flip)

    def one_chunk(inputs, valid):
        n = valid.shape[0]
        shift, scale = _chunk_priors(prior, inputs.get("deviation"), n, setup)
        outputs = map_images(per_image, inputs["maps"], inputs.get("mirrored"),
                             inputs.get("flip", jnp.zeros((n,), bool)), shift, scale,
                             batch=setup.schedule.images)
        return add(outputs, valid & inputs.get("real", True))

    given = dict(maps=maps, mirrored=mirrored, flip=flip, deviation=deviation)
    if setup.images is not None:   # padding images (several devices) count for nothing
        given["real"] = real(jnp.ones(maps.values.shape[0], bool), 0, setup.images)
    return scan_chunks(one_chunk, {name: x for name, x in given.items() if x is not None},
                       setup.chunk, into)


def iteration(state: LayerState, t, data: LayerData, setup: Setup) -> LayerState:
    """One EM iteration `t` (1-based): parents, E-step over all images, M-step."""
    cfg, rules = setup.cfg, setup.rules
    _, k, c = state.coord.shape
    n = state.pos.shape[0]
    top = data.candidates is None
    active = jnp.asarray(False) if top else t >= 2
    if not top:
        parents = jax.lax.cond(
            active,
            lambda: rules.select(
                state.pos.reshape(n, 2, k * c), state.best.reshape(n, k * c), data.candidates,
                cfg.top_n, cfg, setup.parent, setup.num_images, setup.images,
                setup.schedule.children).astype(jnp.int32),
            lambda: state.parents)
        state = state._replace(parents=parents)
    prior, deviation = _layer_prior(state, data, active, setup)
    node_q = nodes(state.coord, state.deform, prior.sigma, setup)
    if top:   # the prior is the same in every image, and so is the competition
        fixed = Inference(state.coord, jnp.ones((k, c), state.coord.dtype), None, None)
        competing = rules.competing_mass(fixed, node_q, setup.schedule.filters)

    def one_image(inference, flip):
        rivals = competing if top else rules.competing_mass(inference, node_q,
                                                            setup.schedule.filters)
        stats = rules.statistics(inference, node_q, rivals, cfg.tau_rate)
        summed = Sums(stats.responsibility_mass, stats.gradient, stats.score, stats.spread)
        return summed, (stats.pos, stats.best, stats.score, flip)

    def add(outputs, valid):
        summed, recorded = outputs
        chunk_sum, kept = rules.per_chunk(summed, valid)
        return chunk_sum, (recorded, kept)

    # The new records overwrite the previous ones, which the parent selection has read.
    into = ((state.pos, state.best, state.score, state.flip), rules.kept_into(state))
    sums, (records, kept) = over_images(one_image, data.maps, data.mirrored, data.flip,
                                        deviation, node_q, prior, t, setup, add, into)
    sums = jax.tree.map(lambda x: narrow(x, state.coord.dtype),
                        rules.image_sums(sums, kept, setup.images))
    pos, best, score, flip = records
    coord, deform = m_step(state, sums, prior.sigma, t, setup)
    return state._replace(coord=coord, deform=deform, pos=pos, best=best, score=score,
                          flip=flip, last_coord=state.coord, last_deform=state.deform)


def m_step(state: LayerState, sums: Sums, sigma: jnp.ndarray, t, setup: Setup):
    """`updateModel`: `rules.move` (`move`), and `deform = clip(unit sqrt(V / S), min, max)`
    (V/S = 0/0: the minimum, as MATLAB's NaN-ignoring max gives)."""
    cfg = setup.cfg
    coord = setup.rules.move(state.coord, sums, sigma, t, cfg)
    spread = jnp.sqrt(sums.spread / sums.score) * state.unit
    deform = jnp.clip(spread, cfg.min_deform, cfg.max_deform)
    deform = jnp.where(jnp.isnan(spread), cfg.min_deform, deform)
    return coord, deform


def move(coord: jnp.ndarray, sums: Sums, sigma: jnp.ndarray, t, cfg: LayerConfig) -> jnp.ndarray:
    """`coord + step * G / max(A, 1e-8)`, `step = eta (min sigma / t^(1/4))^2`."""
    step = cfg.eta * (jnp.min(sigma) / t**0.25) ** 2
    return coord + rounded(sums.gradient / jnp.maximum(sums.responsibility_mass, 1e-8) * step)


def per_chunk(summed: Sums, valid: jnp.ndarray) -> tuple[Sums, tuple]:
    """A chunk's statistics `[n, ...]` -> their float64 sum over the `valid` images."""
    with jax.enable_x64(True):
        return jax.tree.map(lambda x: masked_sum(wide(x), valid), summed), ()


def image_sums(sums: Sums, kept, images: Images | None) -> Sums:
    """The float64 sums over the chunks -> over all images (across devices)."""
    return jax.tree.map(lambda x: wide_psum(x, images), sums)


def score_mean(score: jnp.ndarray, num_images: int, images: Images | None) -> jnp.ndarray:
    """Mean of the scores `[N, K, C]` over nodes and images."""
    return image_sum(score, (0, 1, 2), images) / score[0].size / num_images


def records(state: LayerState, data: LayerData, setup: Setup) -> Records:
    """The last iteration's `Records`, scores normalised; with mirrored maps, the orientation
    not used, inferred with the same parameters (`alter`; position by `rules.alt_pos`)."""
    rules, iterations = setup.rules, setup.cfg.iterations
    norm = rules.score_mean(state.score, setup.num_images, setup.images)
    alt_score, alt_pos = state.score, state.pos
    if data.mirrored is not None:
        prior, deviation = _layer_prior(state, data, iterations >= 2, setup)
        node_q = nodes(state.last_coord, state.last_deform, prior.sigma, setup)
        alt_score, alt_pos, _ = infer_images(data.maps, data.mirrored, ~state.flip, deviation,
                                             node_q, prior, iterations, setup)
        alt_pos = rules.alt_pos(alt_pos, state.pos)
    return Records(divide(state.score, norm), state.pos, state.flip, divide(alt_score, norm),
                   alt_pos)


def infer_images(maps: Maps, mirrored: Maps | None, flip: jnp.ndarray | None,
                 deviation: jnp.ndarray | None, node_q: Nodes, prior: Prior, t,
                 setup: Setup) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Scores `sum_j pi F` `[N,K,C]` (unnormalised), positions `[N,2,K,C]` (`best_candidate`),
    `flip [N]`, node parameters fixed; arguments as `over_images` takes them."""
    def one_image(inference, flip):
        return *best_candidate(inference, node_q)[:2], flip

    return over_images(one_image, maps, mirrored, flip, deviation, node_q, prior, t,
                       setup)[1]
