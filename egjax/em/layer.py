"""One graph layer's EM: `init -> state`, `iteration(state, t) -> state`, and the records.

Implements the per-layer loop of `learn_explanatoryGraph.m` with its `updateModel` (M-step),
`doFlipConfigureation.m` (flips) and `getCurDistribution.m` (parents); docs/algorithm.md,
"One layer's fit" to "Records". Every function is pure; `fit.py` runs the loop inside one jit.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from egjax.config import LayerConfig
from egjax.em import parents as parents_lib
from egjax.em.batching import map_images, masked_sum, scan_chunks
from egjax.em.estep import Inference, Nodes, best_candidate
from egjax.em.grid import half_range, offset_table
from egjax.em.ieee import divide, rounded
from egjax.em.windows import Maps, pick
from egjax.em.reduce import Images, image_sum, narrow, real, wide, wide_psum
from egjax.em.schedule import CPU, Schedule
from egjax.graph import Records

if TYPE_CHECKING:   # egjax.em.rules imports this module
    from egjax.em.rules import Rules


@dataclasses.dataclass(frozen=True)
class Setup:
    """Static description of one layer fit (hashable: part of the jit cache key).

    `parent` is the config of the layer above (None for the top layer); `flips` whether
    mirrored maps are given; `rules` how the equations are computed (`egjax.em.rules`:
    `FIXED`, or `egjax.em.original.rules.ORIGINAL`, the released learner's); `num_images`
    counts the images on all devices; `slots` the candidate parents (M);
    `images` how they are sharded over devices (`reduce.Images`; None on one device);
    `chunk` images per batch of parent priors (one matrix product); `schedule` how the
    loops are shaped for the backend (`schedule.Schedule`).
    """

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
        """Upper-layer cells -> this layer's cells for the parent prior (`rules.scale_to_child`)."""
        return 1.0 if self.parent is None else self.rules.scale_to_child(self.cfg, self.parent)


class LayerData(NamedTuple):
    """The images of one layer fit.

    `maps` as given and `mirrored` those of the mirrored images (or None); `flip [N]` the
    orientation of each image (the mirrored maps where True), in lower layers the one the
    layer above chose, or None: the fit chooses it (top layer); `candidates`
    (`parents.Candidates`) the candidate parents (None in the top layer).
    """

    maps: Maps
    mirrored: Maps | None
    flip: jnp.ndarray | None
    candidates: parents_lib.Candidates | None


class LayerState(NamedTuple):
    """EM state between iterations, nodes laid out `[K, C]` (filters last; node `k * C + c`
    in flat arrays).

    `coord [2,K,C]`, `deform [K,C]` node parameters; `parents [K*C, T]` candidate slots
    (-1 before they are first selected); `unit [K,C]` cells per candidate-index step, fixed
    at the layer's start as the original fixes it; records of the latest E-step:
    `pos [N,2,K,C]`, `best [N,K,C]`, `score [N,K,C]` (unnormalised), `flip [N]`, and the
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
    """Sufficient statistics summed over images, per node `[K, C]` (A, S, V; G `[2, K, C]`)."""

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
    """Image-independent node quantities of an iteration (`estep.nodes`); `sigma [K,C]` the
    prior's scale."""
    return setup.rules.nodes(coord, deform, sigma, setup.cfg)


def prefers_mirrored(plain: Inference, mirrored: Inference, t) -> jnp.ndarray:
    """Top layer: use the mirrored maps if they explain the image better: if its nodes
    detect more strongly (sum over nodes of `pi F` at each node's inferred candidate), from
    iteration 2 on, once the nodes have adapted to the images as given, so that the
    majority orientation of the data set counts as unmirrored."""
    def total(inference):
        return jnp.sum(jnp.max(inference.spatial_prior * inference.evidence, axis=0))

    return (total(plain) < total(mirrored)) & (t >= 2)


class Prior(NamedTuple):
    """What the parents make of each node's spatial prior (docs/algorithm.md, "Parent
    prior"): its scale `sigma [K,C]`, the parents' `weights` (`parents.PriorWeights`; None
    in the top layer), and whether they are `active` (from iteration 2 on): before, sigma is
    `init_delta * S`, with no shift and unit scale."""

    sigma: jnp.ndarray
    weights: parents_lib.PriorWeights | None
    active: jnp.ndarray


def parent_prior(parents: jnp.ndarray | None, candidate_deform: jnp.ndarray | None, active,
                 shape: tuple[int, int], dtype, setup: Setup) -> Prior:
    """The `Prior` of nodes `[K, C]` (`shape`) whose `parents [K*C, T]` are candidate slots
    (-1: none yet) of candidates with `candidate_deform [M]`; `parents` None in the top
    layer. The one place the fit and inference build it."""
    sigma = jnp.full(shape, setup.cfg.init_delta * setup.cfg.map_size, dtype)
    if parents is None:
        return Prior(sigma, None, jnp.asarray(False))
    weights = setup.rules.prior_weights(jnp.maximum(parents, 0), candidate_deform,
                                        setup.scale_to_child)
    return Prior(jnp.where(active, weights.sigma.reshape(shape), sigma), weights,
                 jnp.asarray(active))


def _layer_prior(state: LayerState, data: LayerData, active, setup: Setup):
    """The fit's `parent_prior` (`active` or not), and the candidates' deviations in each
    image `[N, M, 2]` (None in the top layer)."""
    if data.candidates is None:
        return parent_prior(None, None, active, state.coord.shape[1:], state.coord.dtype,
                            setup), None
    prior = parent_prior(state.parents, data.candidates.deform, active, state.coord.shape[1:],
                         state.coord.dtype, setup)
    return prior, jnp.swapaxes(data.candidates.deviation, 0, 1)


def _chunk_priors(prior: Prior, deviation, n: int, setup: Setup):
    """Per image of a chunk of n: `(shift [n,2,K,C], scale [n,K,C])` from the candidates'
    `deviation [n, M, 2]` (zero shift and unit scale before the parents are active, and in
    the top layer)."""
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
    """`one_image(inference, flip)` in every image, `setup.chunk` images at a time
    (`scan_chunks`, whose `into` this takes); `add(outputs [n, ...], valid [n])` ->
    `(summed, recorded)` per chunk, `valid` False for images seen before and padding
    (default: nothing summed, all recorded).

    The inference (`rules.infer`) is taken under each image's prior from its parents
    (`deviation [N, M, 2]` the candidates' deviations in each image; None in the top
    layer) and in its orientation: the `mirrored` maps where `flip [N]`, or, if `flip` is
    None, where `rules.prefers_mirrored` them at iteration `t`; the plain maps when none
    are mirrored.
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
    """`updateModel` of the original: move each node along its responsibility-weighted
    gradient (`rules.move`, `move`) and re-estimate its deformation scale,
    `deform = clip(unit * sqrt(V / S), min, max)` (a node without evidence, V/S = 0/0,
    gets the minimum, as MATLAB's NaN-ignoring max gives).
    """
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
    """A chunk's images' statistics `[n, ...]` -> their float64 sum over the `valid` images
    (`reduce.wide`), and nothing kept per image (`image_sums`)."""
    with jax.enable_x64(True):
        return jax.tree.map(lambda x: masked_sum(wide(x), valid), summed), ()


def image_sums(sums: Sums, kept, images: Images | None) -> Sums:
    """The float64 sums over the chunks -> over all images (across devices)."""
    return jax.tree.map(lambda x: wide_psum(x, images), sums)


def score_mean(score: jnp.ndarray, num_images: int, images: Images | None) -> jnp.ndarray:
    """Mean of the scores `[N, K, C]` over nodes and images."""
    return image_sum(score, (0, 1, 2), images) / score[0].size / num_images


def records(state: LayerState, data: LayerData, setup: Setup) -> Records:
    """Records of the last iteration (`egjax.graph.Records` in the kernel's layout, `[N, K, C]`
    and `[N, 2, K, C]`), scores normalised to mean 1, and the other orientation (when
    mirrored maps are given) inferred with the same node parameters in each image's
    orientation not used (`alter` records of the original).

    The position is the other orientation's own best candidate (`rules.alt_pos`).
    """
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
    """Each image's node scores `sum_cand pi F` `[N,K,C]` (unnormalised), inferred positions
    `[N,2,K,C]` (`best_candidate`) and orientation `flip [N]`, with fixed node parameters
    under `prior` (`parent_prior`), the arguments as `over_images` takes them."""
    def one_image(inference, flip):
        return *best_candidate(inference, node_q)[:2], flip

    return over_images(one_image, maps, mirrored, flip, deviation, node_q, prior, t,
                       setup)[1]
