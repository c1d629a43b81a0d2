"""`compat="fixed"` against `compat="original"`: equal to rounding where none of their
differences applies, and each difference listed in docs/algorithm.md ("compat="original":
every difference") shown on purpose, in its documented direction."""

import dataclasses
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
from egjax.em.original.rules import ORIGINAL
from egjax.em.rules import FIXED
from egjax.em.windows import as_maps
from test_em_fixed_reference import TOP, assert_positions, random_maps, random_start

CHILD = LayerConfig(map_size=20, stride=8, center=3.5, density=0.015, map_delta=0.035,
                    top_n=3, top_m=7)
PARENT = LayerConfig(map_size=10, stride=16, center=7.5, density=0.05, map_delta=0.07)


def setup_for(cfg, original, parent=None, num_images=1, flips=False):
    return layer_lib.Setup(cfg=cfg, parent=parent, flips=flips,
                           rules=ORIGINAL if original else FIXED,
                           num_images=num_images)


def test_fixed_equals_original_to_rounding_where_no_difference_applies(x64):
    """One filter (difference 1 is void), the top layer (3-7), no mirrored maps (2, 6),
    positions off the lattice (no exact ties): the two modes are the same equations, added in
    other orders, so 20 iterations agree to rounding."""
    rng = np.random.default_rng(7)
    cfg = dataclasses.replace(TOP, iterations=20)
    maps = random_maps(rng, cfg, num=12, channels=1)
    coord, deform = random_start(rng, cfg, channels=1)
    fits = [egjax.fit_layer(maps, cfg, key=jax.random.key(0), compat=compat,
                            init={"coord": coord, "deform": deform})
            for compat in ("fixed", "original")]
    fixed, original = fits
    assert np.abs(np.asarray(fixed.coord) - coord).max() > 0.5          # the nodes did move
    np.testing.assert_allclose(fixed.coord, original.coord, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fixed.deform, original.deform, rtol=1e-9)
    np.testing.assert_allclose(fixed.score, original.score, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fixed.pos, original.pos, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(fixed.flip, original.flip)


def windowed_evidence(x, centre, h_candidates, h_window, cfg):
    """`F [J]` with the candidate offsets of one half-range and the window of another."""
    s = cfg.map_delta * cfg.map_size
    ch, cw = (ref.round_half_away(v) for v in centre)
    d = ref.offsets(h_candidates, cfg)
    out = np.zeros(cfg.candidates ** 2)
    for j, ih, iw in ref.candidates(cfg):
        for qh in range(ch - h_window, ch + h_window + 1):
            for qw in range(cw - h_window, cw + h_window + 1):
                if 0 <= qh < cfg.map_size and 0 <= qw < cfg.map_size and x[qh, qw] > 0:
                    r2 = (ch + d[ih] - qh) ** 2 + (cw + d[iw] - qw) ** 2
                    out[j] += ref.smoothing(r2, s) * x[qh, qw]
    return out


@functools.partial(jax.jit, static_argnames=("setup",))
def prior_and_evidence(coord, deform, sigma, image, scale, setup):
    node_q = layer_lib.nodes(coord, deform, sigma, setup)
    inference = setup.rules.infer(image, node_q, jnp.zeros_like(coord), scale)
    return node_q.sigma, inference.spatial_prior, inference.evidence


def test_1_original_reads_window_and_sigma_of_filter_zero(x64):
    """Node (c, k): the original takes the evidence window's half-range and sigma of node
    (0, k), its own candidate offsets and lambda; fixed takes its own throughout."""
    rng = np.random.default_rng(1)
    cfg, k, c = CHILD, CHILD.nodes_per_filter, 2
    coord = rng.uniform(4, 15, (c, k, 2))
    deform = np.stack([np.full(k, 0.4), np.full(k, 1.0)])          # h = 1 and h = 3
    sigma = rng.uniform(1.0, 3.0, (c, k))
    scale = rng.uniform(0.5, 2.0, (c, k))
    x = random_maps(rng, cfg, num=1, channels=c)[0]
    out = {}
    for original in (False, True):
        out[original] = [np.asarray(a) for a in prior_and_evidence(
            jnp.asarray(coord.transpose(2, 1, 0)), jnp.asarray(deform.T), jnp.asarray(sigma.T),
            as_maps(jnp.asarray(x), jnp.float64), jnp.asarray(scale.T),
            setup_for(cfg, original))]
    h = [[ref.half_range(deform[cc, kk], cfg) for kk in range(k)] for cc in range(c)]
    for original, (node_sigma, prior, evidence) in out.items():
        for cc, kk in np.ndindex(c, k):
            source = (0 if original else cc), kk                       # whose window and sigma
            np.testing.assert_allclose(node_sigma[kk, cc], sigma[source], rtol=1e-15)
            d = ref.offsets(h[cc][kk], cfg)
            want_prior = [scale[cc, kk] * ref.normal(d[ih], sigma[source])
                          * ref.normal(d[iw], sigma[source]) for _, ih, iw in ref.candidates(cfg)]
            np.testing.assert_allclose(prior[:, kk, cc], want_prior, rtol=1e-10)   # pi's digits
            want_f = windowed_evidence(x[:, :, cc], coord[cc, kk], h[cc][kk], h[source[0]][kk],
                                       cfg)
            np.testing.assert_allclose(evidence[:, kk, cc], want_f, rtol=1e-10, atol=1e-15)
    assert not np.allclose(out[False][2][:, :, 1], out[True][2][:, :, 1])   # filter 1 differs
    np.testing.assert_allclose(out[False][2][:, :, 0], out[True][2][:, :, 0], rtol=1e-12)


@functools.partial(jax.jit, static_argnames=("setup",))
def two_iterations(state, data, setup):
    """Orientations in iterations 1 and 2, and the records."""
    def step(state, t):
        state = layer_lib.iteration(state, t, data, setup)
        return state, state.flip

    state, flips = jax.lax.scan(step, state, jnp.arange(1.0, 3.0))
    return flips[0], flips[1], layer_lib.records(state, data, setup)


@pytest.fixture(scope="module")
def mirrored_fits():
    """A top layer with mirrored maps, two iterations in each mode from one start. Images
    0-3 have strong evidence in their plain maps and weak evidence in their mirrored ones,
    images 4-7 the reverse."""
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(2)
        cfg = dataclasses.replace(TOP, iterations=2)
        k, c, n = cfg.nodes_per_filter, 2, 8
        strong = np.maximum(random_maps(rng, cfg, 4, c), 0) * 5
        weak = np.maximum(random_maps(rng, cfg, 4, c), 0) * 0.2
        maps, mirrored = [np.where(m > 0, m, -1.0) for m in (np.concatenate([strong, weak]),
                                                              np.concatenate([weak, strong]))]
        coord, deform = random_start(rng, cfg, channels=c)
        layer = ref.Layer(cfg, maps, mirrored, None)
        data = layer_lib.LayerData(as_maps(maps, jnp.float64), as_maps(mirrored, jnp.float64),
                                   None, None)
        out = {}
        for original in (False, True):
            setup = setup_for(cfg, original, num_images=n, flips=True)
            state = layer_lib.init(jnp.asarray(coord.transpose(2, 1, 0)),
                                   jnp.asarray(deform.T), n, setup)
            out[original] = jax.tree.map(np.asarray, two_iterations(state, data, setup))
        state = ref.init(coord, deform, n, cfg)
        for t in (1, 2):
            state, _ = ref.iteration(state, t, layer)
        out["reference"] = state, ref.records(state, layer, None)
        return out
    finally:
        jax.config.update("jax_enable_x64", False)


def test_2_orientation_original_prefers_less_evidence_from_the_first_iteration(mirrored_fits):
    """Fixed: the maps as given in iteration 1, then the maps with more evidence. Original:
    the larger `sum log(pi) F`, i.e. the maps with less evidence, from iteration 1."""
    more = np.array([False] * 4 + [True] * 4)
    np.testing.assert_array_equal(mirrored_fits[False][0], False)
    np.testing.assert_array_equal(mirrored_fits[False][1], more)
    np.testing.assert_array_equal(mirrored_fits[True][0], ~more)
    np.testing.assert_array_equal(mirrored_fits[True][1], ~more)
    np.testing.assert_array_equal(mirrored_fits["reference"][0].flip, more)


def test_6_original_alternative_position_is_the_main_one(mirrored_fits):
    """The original's `alt_pos` is `pos`; fixed infers the other orientation's own best
    candidate (the reference's), which differs."""
    original, fixed = mirrored_fits[True][2], mirrored_fits[False][2]
    np.testing.assert_array_equal(original.alt_pos, original.pos)
    assert np.abs(fixed.alt_pos - fixed.pos).max() > 0.5
    want = mirrored_fits["reference"][1]
    assert_positions(fixed.alt_pos.transpose(3, 2, 0, 1), want.alt_pos, want.alt_steps,
                     "alt_pos")


def test_3_original_uses_parent_cells_as_child_cells(x64):
    """With the stride ratio r = 2: fixed shifts by r times the original's shift, its sigma is
    r times the original's and its lambda r^(1 - T) times; fixed is the reference's prior."""
    rng = np.random.default_rng(3)
    fixed_setup = setup_for(CHILD, False, parent=PARENT)
    original_setup = setup_for(CHILD, True, parent=PARENT)
    assert fixed_setup.scale_to_child == 2.0 and original_setup.scale_to_child == 1.0
    slots, top_n, n, k, c = 7, CHILD.top_n, 4, 2, 3
    deviation = rng.normal(0, 1, (slots, n, 2))
    deform = rng.uniform(0.5, 2, slots)
    parents = np.stack([rng.permutation(slots)[:top_n] for _ in range(k * c)])   # [V, T]

    @functools.partial(jax.jit, static_argnums=(0,))
    def prior(setup, parents, deform, deviation):
        weights = setup.rules.prior_weights(parents, deform, setup.scale_to_child)
        shift, scale = setup.rules.shift_and_scale(weights, deviation, setup.scale_to_child)
        return shift, weights.sigma, scale

    out = {setup.rules is ORIGINAL: jax.tree.map(np.asarray, prior(setup, jnp.asarray(parents),
                                                          jnp.asarray(deform),
                                                          jnp.asarray(deviation)))
           for setup in (fixed_setup, original_setup)}
    (mu_f, sigma_f, lam_f), (mu_o, sigma_o, lam_o) = out[False], out[True]
    np.testing.assert_allclose(mu_f, 2 * mu_o, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma_f, 2 * sigma_o, rtol=1e-12)
    np.testing.assert_allclose(lam_f, lam_o * 2.0 ** (1 - top_n), rtol=1e-12)
    cands = ref.Candidates(np.arange(slots), deviation, deform)
    by_node = parents.reshape(k, c, top_n).transpose(1, 0, 2)            # node k*C + c
    for image in range(n):
        mu, sigma, lam = ref.parent_prior(by_node, cands, image, 2.0)
        np.testing.assert_allclose(mu_f[:, image].reshape(k, c, 2).transpose(1, 0, 2), mu,
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(sigma_f.reshape(k, c).T, sigma, rtol=1e-12)
        np.testing.assert_allclose(lam_f[:, image].reshape(k, c).T, lam, rtol=1e-12)


def test_4_original_edge_cut_uses_the_child_side_and_spares_bottom_and_right():
    """Parent map side 10, child 20. A node 0.7 cells from the top: the original drops it
    (`0.7 + 1 < 0.1 * 20`), fixed keeps it (1.2 cells from the edge >= 1); a node at 9.3 on
    the right: fixed drops it (0.2 < 1), the original keeps it."""
    stay = [(5.0, 5.0), (0.7, 5.0), (5.0, 9.3), (4.0, 6.0)]
    wobble = np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])    # mean 0
    pos = [np.asarray(m) + 2 * wobble for m in stay]                      # high variance
    pos += [np.asarray((5.0, 5.0)) + 0.01 * i * wobble for i in range(1, 5)]   # low: dropped
    pos = jnp.asarray(np.stack(pos))                                      # [U = 8, N = 4, 2]
    score = jnp.ones((8, 4))
    kept = {}
    for original in (False, True):
        order, survived = parents_lib.survivors(score, pos, CHILD, PARENT,
                                                ORIGINAL if original else FIXED, 4, None)
        kept[original] = set(np.asarray(order)[np.asarray(survived)])
    assert kept[False] == {0, 1, 3} and kept[True] == {0, 2, 3}


def test_5_fixed_caps_top_m_at_the_survivors():
    """top_m beyond the survivors: fixed leaves the extra slots empty and never selects them
    (the original refuses: tests/test_em_fit.py)."""
    rng = np.random.default_rng(5)
    u, n = 12, 6
    assert parents_lib.candidate_slots(u, 600) == 6                       # the variance cut
    noise = rng.normal(0, 1, (u, n, 2))
    noise -= noise.mean(axis=1, keepdims=True)
    means = np.concatenate([np.tile([0.2, 5.0], (3, 1)), rng.uniform(3, 6, (9, 2))])
    spread = np.array([1.0] * 6 + [0.01] * 6)         # 6-11 fall to the variance cut,
    pos = means[:, None] + spread[:, None, None] * noise   # 0-2 to the edge cut
    cands = parents_lib.candidates(jnp.ones((u, n)), jnp.asarray(pos), jnp.ones(u), 6, CHILD,
                                   PARENT, FIXED, n, None)
    valid = np.asarray(cands.valid)
    np.testing.assert_array_equal(valid, [True] * 3 + [False] * 3)
    np.testing.assert_array_equal(np.asarray(cands.index)[:3], [3, 4, 5])
    child_pos = rng.uniform(0, 19, (n, 2, 10))
    parents = parents_lib.select(jnp.asarray(child_pos), jnp.ones((n, 10)), cands, 3, CHILD,
                                 PARENT, n, None)
    assert np.all(valid[np.asarray(parents)])


def test_7_original_pixel_deviations_carry_a_constant_offset(x64):
    """Parent selection: the original compares `a - b` shifted by
    `(center - stride) - (center_p - stride_p)` pixels (12 here); fixed compares plain
    displacements. Each ranks as its formula, and they disagree."""
    rng = np.random.default_rng(8)
    upper = LayerConfig(map_size=5, stride=32, center=15.5, density=0.2)
    num, children, slots, top_n = 8, 12, 6, 3
    child_pos = rng.uniform(0, 19, (num, 2, children))
    best = rng.uniform(0.1, 1, (num, children))
    deviation = rng.normal(0, 0.5, (slots, num, 2))
    cands = parents_lib.Candidates(jnp.arange(slots), jnp.ones(slots, bool),
                                   jnp.asarray(deviation), jnp.ones(slots))

    def ranked(offset):
        a = (child_pos - child_pos.mean(0)) * CHILD.stride + offset          # [N, 2, V]
        b = deviation * upper.stride                                          # [M, N, 2]
        dist = np.sum((a.transpose(2, 0, 1)[:, None] - b[None]) ** 2, -1)    # [V, M, N]
        rate = 1 / (2 * dist.mean(axis=(1, 2)))
        affinity = np.einsum("nv,vmn->vm", best, np.exp(-dist * rate[:, None, None]))
        return np.argsort(-affinity, axis=1, kind="stable")[:, :top_n]

    offset = (CHILD.center - CHILD.stride) - (upper.center - upper.stride)
    assert offset == 12.0
    got = {original: np.asarray((ORIGINAL if original else FIXED).select(
        jnp.asarray(child_pos), jnp.asarray(best), cands, top_n, CHILD, upper, num,
        None)) for original in (False, True)}
    np.testing.assert_array_equal(got[False], ranked(0.0))
    np.testing.assert_array_equal(got[True], ranked(offset))
    assert np.any(got[False] != got[True])
