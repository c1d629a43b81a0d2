"""The default EM (`compat="fixed"`) against an independent reference, iteration by iteration
and quantity by quantity.

`reference_fixed.py` computes one layer's EM from docs/algorithm.md with plain loops in
float64. Here the kernel runs in float64 from the same start; before each of its iterations
the reference is given the kernel's state, so every iteration is checked on its own (a
difference cannot hide behind another), and for one iteration every intermediate quantity
(parent candidates, parents, prior, centres, pi, F, competing mass, statistics, inferred
candidates) is compared through the kernel's public pieces. Positions are random and not on
the integer lattice, so no exact ties arise; ties have their own tests below, with integer
centres.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import egjax
import reference_fixed as ref
from egjax.config import LayerConfig
from egjax.em import layer as layer_lib
from egjax.em import parents as parents_lib
from egjax.em.estep import competing_mass, infer, statistics
from egjax.em.rules import FIXED
from egjax.em.windows import as_maps

# K = 4 and 5 nodes per filter, half-ranges up to 2 and 3; evidence smoothing 0.7 cells, as
# VGG-16's conv4 (a narrower one makes mirrored candidates tie exactly: see "Ties").
TOP = LayerConfig(map_size=10, stride=16, center=7.5, density=0.04, map_delta=0.07,
                  iterations=3)
LOW = LayerConfig(map_size=20, stride=8, center=3.5, density=0.0125, map_delta=0.035,
                  iterations=3, top_n=3, top_m=5)
FILTERS, IMAGES = 3, 9
TIGHT = dict(rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------ inputs

def random_maps(rng, cfg, num=IMAGES, channels=FILTERS):
    """Normalised-looking maps: -1, or a gamma-distributed value in ~30 % of the cells."""
    values = rng.gamma(1.5, 1.0, (num, cfg.map_size, cfg.map_size, channels))
    return np.where(rng.random(values.shape) < 0.3, values, -1.0)


def random_start(rng, cfg, channels=FILTERS):
    """Off-lattice node positions and deformations that give every half-range."""
    k = cfg.nodes_per_filter
    coord = rng.uniform(0.6, cfg.map_size - 1.6, (channels, k, 2))
    deform = rng.uniform(cfg.min_deform, cfg.max_deform, (channels, k))
    return coord, deform


def random_parent(rng, cfg, flips, num=IMAGES, channels=FILTERS):
    """Records of a fitted layer above: node means spread over the map (some near its
    edges), scattered over the images; normalised scores; random orientations."""
    nodes = channels * cfg.nodes_per_filter
    mean = rng.uniform(0.2, cfg.map_size - 1.2, (nodes, 1, 2))
    pos = mean + rng.normal(0, 1, (nodes, 1, 1)) * rng.normal(0, 0.8, (nodes, num, 2))
    score = rng.gamma(1.0, 1.0, (nodes, num))
    score /= score.mean()
    deform = rng.uniform(cfg.min_deform, cfg.max_deform, nodes)
    flip = rng.random(num) < 0.4 if flips else np.zeros(num, bool)
    return ref.Parent(cfg, score, pos, deform, flip)


def make_layer(seed, lower, mirrored, dead=False):
    """A layer's inputs and start; `dead`: the last filter never fires (its nodes see no
    evidence: `0 / 0` in the M-step)."""
    rng = np.random.default_rng(seed)
    cfg = LOW if lower else TOP
    maps = random_maps(rng, cfg)
    if dead:
        maps[..., -1] = -1.0
    flipped = random_maps(rng, cfg) if mirrored else None
    parent = random_parent(rng, TOP, mirrored) if lower else None
    return ref.Layer(cfg, maps, flipped, parent), random_start(rng, cfg)


# -------------------------------------------------------------- kernel <-> reference layout

def to_reference(state: layer_lib.LayerState) -> ref.State:
    """The kernel's state (nodes `[K, C]`, node k*C + c) in the reference's layout."""
    a = lambda x: np.asarray(x)                                           # noqa: E731
    k, c = state.deform.shape
    parents = a(state.parents)
    parents = None if np.all(parents < 0) else parents.reshape(k, c, -1).transpose(1, 0, 2)
    return ref.State(a(state.coord).transpose(2, 1, 0), a(state.deform).T, a(state.unit).T,
                     parents, a(state.pos).transpose(3, 2, 0, 1),
                     a(state.best).transpose(2, 1, 0), a(state.score).transpose(2, 1, 0),
                     a(state.flip), (a(state.last_coord).transpose(2, 1, 0),
                                     a(state.last_deform).T))


def kernel_setup(layer: ref.Layer, slots=0) -> layer_lib.Setup:
    """Chunks of 4 of the 9 images: the last chunk overlaps the one before."""
    parent = None if layer.parent is None else layer.parent.cfg
    return layer_lib.Setup(cfg=layer.cfg, parent=parent, flips=layer.mirrored is not None,
                           rules=FIXED, num_images=layer.maps.shape[0], slots=slots, chunk=4)


def kernel_data(layer: ref.Layer, setup) -> layer_lib.LayerData:
    cands, flip = None, None
    if layer.parent is not None:
        p = layer.parent
        cands = jax.jit(parents_lib.candidates, static_argnums=range(3, 9))(
            jnp.asarray(p.score), jnp.asarray(p.pos), jnp.asarray(p.deform), setup.slots,
            layer.cfg, p.cfg, FIXED, layer.maps.shape[0], None)
        flip = jnp.asarray(p.flip)
    mirrored = None if layer.mirrored is None else as_maps(layer.mirrored, jnp.float64)
    return layer_lib.LayerData(as_maps(layer.maps, jnp.float64), mirrored, flip, cands)


@functools.partial(jax.jit, static_argnames="setup")
def kernel_iteration(state, t, data, setup):
    return layer_lib.iteration(state, t, data, setup)


@functools.partial(jax.jit, static_argnames="setup")
def kernel_records(state, data, setup):
    return layer_lib.records(state, data, setup)


def assert_positions(got: np.ndarray, want: np.ndarray, e_steps: list, where: str) -> int:
    """Inferred positions `[C, K, N, 2]`: the reference's (the first candidate maximising
    pi F), or where that maximum is tied within rounding, one of the tied candidates (see
    docs/algorithm.md, "Ties": evidence sums are not ordered). Returns the number of ties."""
    ties = 0
    for c, k, n in zip(*np.nonzero(np.any(~np.isclose(got, want, **TIGHT), axis=-1))):
        e = e_steps[n]
        joint = e.prior[c, k] * e.evidence[c, k]
        tied = [j for j in range(joint.size) if joint[j] >= joint.max() * (1 - 1e-12)]
        assert len(tied) > 1 and any(np.allclose(got[c, k, n], e.positions[c, k, j], **TIGHT)
                                     for j in tied), \
            f"{where}: node ({c}, {k}) in image {n} at {got[c, k, n]}, not {want[c, k, n]}"
        ties += 1
    return ties


def assert_state(got: ref.State, want: ref.State, step: ref.Iteration, t) -> int:
    for name in ("coord", "deform", "best", "score"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), **TIGHT,
                                   err_msg=f"iteration {t}: {name}")
    ties = assert_positions(got.pos, want.pos, step.e_steps, f"iteration {t}")
    np.testing.assert_array_equal(got.flip, want.flip, err_msg=f"iteration {t}: flip")
    if want.parents is not None:
        np.testing.assert_array_equal(got.parents, want.parents, err_msg=f"iteration {t}")
    return ties


# ------------------------------------------------------------------ pieces of one iteration

def assert_candidates(data: layer_lib.LayerData, cands: ref.Candidates):
    valid = np.asarray(data.candidates.valid)
    m = len(cands.index)
    assert valid[:m].all() and not valid[m:].any(), "survivors first, then empty slots"
    np.testing.assert_array_equal(np.asarray(data.candidates.index)[:m], cands.index)
    np.testing.assert_allclose(np.asarray(data.candidates.deviation)[:m], cands.deviation,
                               **TIGHT)
    np.testing.assert_allclose(np.asarray(data.candidates.deform)[:m], cands.deform, **TIGHT)


@functools.partial(jax.jit, static_argnames="setup")
def kernel_prior(slots, cands, setup):
    """The kernel's parent prior (`parents.prior_weights`, `parents.shift_and_scale`)."""
    weights = parents_lib.prior_weights(slots, cands.deform, setup.scale_to_child)
    return (weights,) + parents_lib.shift_and_scale(weights, cands.deviation,
                                                    setup.scale_to_child)


@functools.partial(jax.jit, static_argnames="tau_rate")
def kernel_e_step(image, node_q, shift, scale, tau_rate):
    """The kernel's E-step in one image, piece by piece (`estep`)."""
    inference = infer(image, node_q, shift, scale)
    rivals = competing_mass(inference, node_q)
    return inference, rivals, statistics(inference, node_q, rivals, tau_rate)


def assert_pieces(kstate: layer_lib.LayerState, layer: ref.Layer, setup, data,
                  step: ref.Iteration, flips: np.ndarray):
    """Each quantity of one iteration through the kernel's public pieces, from the state the
    iteration started with (`kstate`), the parents the reference selected and each image in
    the orientation the reference chose (`flips`)."""
    k, c = kstate.deform.shape
    cfg = layer.cfg
    sigma = jnp.full((k, c), cfg.init_delta * cfg.map_size)
    weights = None
    if step.parents is not None:
        slots = jnp.asarray(step.parents.transpose(1, 0, 2).reshape(k * c, -1))
        weights, shift, scale = kernel_prior(slots, data.candidates, setup)  # [V, N, 2], [V, N]
        sigma = weights.sigma.reshape(k, c)
    node_q = jax.jit(layer_lib.nodes, static_argnums=3)(kstate.coord, kstate.deform, sigma,
                                                         setup)
    by_node = lambda x: np.moveaxis(np.asarray(x), 0, -1).transpose(1, 0, 2)   # noqa: E731
    for n, e in enumerate(step.e_steps):
        mu, sig, lam = step.priors[n]
        np.testing.assert_allclose(np.asarray(sigma).T, sig, **TIGHT, err_msg="sigma")
        if weights is None:
            mu_k, lam_k = jnp.zeros((2, k, c)), jnp.ones((k, c))
        else:
            mu_k = jnp.transpose(shift[:, n].reshape(k, c, 2), (2, 0, 1))
            lam_k = scale[:, n].reshape(k, c)
        maps = layer.mirrored if flips[n] else layer.maps
        inference, rivals, stats = kernel_e_step(as_maps(jnp.asarray(maps[n]), jnp.float64),
                                                 node_q, mu_k, lam_k, cfg.tau_rate)
        pairs = {"lambda": (np.asarray(lam_k).T, lam),
                 "centre": (by_node(inference.center), e.center),
                 "pi": (by_node(inference.spatial_prior), e.prior),
                 "F": (by_node(inference.evidence), e.evidence),
                 "competing mass": (by_node(rivals), e.competing),
                 "A": (np.asarray(stats.responsibility_mass).T, e.mass),
                 "G": (by_node(stats.gradient), e.gradient),
                 "S": (np.asarray(stats.score).T, e.score),
                 "V": (np.asarray(stats.spread).T, e.spread),
                 "best": (np.asarray(stats.best).T, e.best)}
        for name, (got, want) in pairs.items():
            np.testing.assert_allclose(got, want, **TIGHT, err_msg=f"image {n}: {name}")
        assert_positions(by_node(stats.pos)[:, :, None], e.pos[:, :, None], [e], f"image {n}")
        if weights is not None:
            np.testing.assert_allclose(by_node(mu_k), mu, **TIGHT, err_msg=f"image {n}: mu")


# ------------------------------------------------------------------- whole iterations

CASES = [pytest.param(1, False, True, id="top-mirrored"),
         pytest.param(3, True, True, id="lower-mirrored")]   # without: the public fit below


def kernel_start(layer, coord, deform):
    cfg = layer.cfg
    slots = 0
    if layer.parent is not None:
        slots = parents_lib.candidate_slots(len(layer.parent.score), cfg.top_m)
    setup = kernel_setup(layer, slots)
    data = kernel_data(layer, setup)
    state = layer_lib.init(jnp.asarray(coord.transpose(2, 1, 0)), jnp.asarray(deform.T),
                           layer.maps.shape[0], setup)
    return setup, data, state


@pytest.mark.parametrize("seed, lower, mirrored", CASES)
def test_every_iteration_and_quantity_matches_the_reference(x64, seed, lower, mirrored):
    """Each iteration from the kernel's previous state: node parameters, parents, records
    and orientations; then the records. In iteration 2 of a lower layer with mirrored maps
    (parents, priors, orientations all at work) every intermediate quantity."""
    layer, (coord, deform) = make_layer(seed, lower, mirrored)
    cfg = layer.cfg
    setup, data, kstate = kernel_start(layer, coord, deform)
    cands = None
    if lower:
        cands = ref.parent_candidates(layer.parent, cfg)
        assert_candidates(data, cands)
    np.testing.assert_allclose(to_reference(kstate).unit,
                               ref.init(coord, deform, IMAGES, cfg).unit, **TIGHT)
    ties = 0
    for t in range(1, cfg.iterations + 1):
        want, step = ref.iteration(to_reference(kstate), t, layer, cands)
        if t == 2 and lower and mirrored:
            assert_pieces(kstate, layer, setup, data, step, want.flip)
        kstate = kernel_iteration(kstate, jnp.float64(t), data, setup)
        ties += assert_state(to_reference(kstate), want, step, t)
    if mirrored and not lower:
        assert 0 < want.flip.sum() < IMAGES          # both orientations are exercised
    got = kernel_records(kstate, data, setup)
    want = ref.records(to_reference(kstate), layer, cands)
    np.testing.assert_allclose(np.asarray(got.score).transpose(2, 1, 0), want.score, **TIGHT)
    np.testing.assert_allclose(np.asarray(got.alt_score).transpose(2, 1, 0), want.alt_score,
                               **TIGHT)
    ties += assert_positions(np.asarray(got.alt_pos).transpose(3, 2, 0, 1), want.alt_pos,
                             want.alt_steps or step.e_steps, "records")
    np.testing.assert_array_equal(np.asarray(got.flip), want.flip)
    assert ties <= 3, f"{ties} tied inferred positions: the test no longer tests positions"


def test_public_fit_runs_the_reference_em(x64):
    """`fit_layer` from a given start, free-running (no state handed over): a top layer
    without mirrored maps, one of its filters without any evidence, public node order."""
    layer, (coord, deform) = make_layer(0, False, False, dead=True)
    fit = egjax.fit_layer(layer.maps, layer.cfg, key=jax.random.key(0),
                          init={"coord": coord, "deform": deform})
    states, steps, want = ref.fit(layer, coord, deform)
    last = states[-1]
    np.testing.assert_allclose(fit.coord, last.coord, **TIGHT)
    np.testing.assert_allclose(fit.deform, last.deform, **TIGHT)
    np.testing.assert_allclose(last.deform[-1], layer.cfg.min_deform)      # 0 / 0
    v = FILTERS * layer.cfg.nodes_per_filter
    np.testing.assert_allclose(fit.score, want.score.reshape(v, -1), **TIGHT)
    assert_positions(np.asarray(fit.pos).reshape(want.pos.shape), want.pos, steps[-1].e_steps,
                     "records")
    np.testing.assert_array_equal(fit.alt_score, fit.score)
    np.testing.assert_array_equal(fit.flip, False)
    assert fit.parents.shape == (v, 0)
