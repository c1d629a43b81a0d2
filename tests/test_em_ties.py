"""Exact ties in the default EM (`compat="fixed"`), decided by the rules of docs/algorithm.md,
"Ties". Integer node centres (every node in the first iteration starts on a cell) put
candidates exactly on the edge of other nodes' boxes and halfway between their candidates;
the expected values come from `reference_fixed.py` in exact rational arithmetic."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_fixed as ref
from test_em_fixed_reference import (kernel_data, kernel_iteration, kernel_start, make_layer,
                                     to_reference)
from egjax.config import LayerConfig
from egjax.em import layer as layer_lib
from egjax.em import parents as parents_lib
from egjax.em.estep import Inference, best_candidate, competing_mass, infer, statistics
from egjax.em.rules import FIXED
from egjax.em.windows import as_maps

CFG = LayerConfig(map_size=28, stride=8, center=3.5, density=0.05)     # half-ranges 0..4


def setup_for(cfg=CFG):
    return layer_lib.Setup(cfg=cfg, parent=None, flips=False, rules=FIXED, num_images=1)


def exact_ties(coord, half_ranges, cfg=CFG):
    """How many candidate coordinates lie exactly on the edge of another node's box, or
    halfway between two of its candidates (per axis, same filter), in exact arithmetic."""
    count = 0
    _, k, c = coord.shape
    for ch in range(c):
        grids = [[[Fraction(int(coord[a, v, ch])) + d
                   for d in ref.offsets(int(half_ranges[v, ch]), cfg, exact=True)]
                  for a in range(2)] for v in range(k)]
        for v in range(k):
            for u in range(k):
                if u == v:
                    continue
                for a in range(2):
                    g = grids[u][a]
                    for t in grids[v][a]:
                        count += t in (g[0], g[-1])
                        count += sum(2 * t == g[i] + g[i + 1] for i in range(len(g) - 1))
    return count


@pytest.mark.parametrize("dtype, seed", [("float64", 0), ("float32", 1)])
def test_competition_decides_exact_ties_by_the_stated_rule(dtype, seed, request):
    """A candidate on the edge of another node's box is inside it; one halfway between two
    of its candidates takes the lower index. The competing mass of every candidate equals
    the reference's, computed with exact positions; in float32 too (the default dtype)."""
    if dtype == "float64":
        request.getfixturevalue("x64")
    rng = np.random.default_rng(seed)
    k, c = 8, 2
    coord = rng.integers(4, 24, (2, k, c)).astype(dtype)
    deform = rng.choice([0.3, 0.5, 0.7, 1.0, 1.3, 4.2], (k, c)).astype(dtype)
    node_q = layer_lib.nodes(jnp.asarray(coord), jnp.asarray(deform),
                             jnp.full((k, c), 4.2, dtype), setup_for())
    scale = rng.uniform(0.5, 2, (k, c)).astype(dtype)
    got = jax.jit(competing_mass)(Inference(jnp.asarray(coord), jnp.asarray(scale), None, None),
                                  node_q)
    assert exact_ties(coord, np.asarray(node_q.half_range)) > 40
    prior = np.asarray(node_q.prior_axis, np.float64)                     # [P, K, C]
    num = CFG.candidates
    by_node = np.stack([[[prior[j // num, kk, cc] * prior[j % num, kk, cc] * scale[kk, cc]
                          for j in range(num * num)] for kk in range(k)] for cc in range(c)])
    positions = [[[(Fraction(int(coord[0, kk, cc])) + dh, Fraction(int(coord[1, kk, cc])) + dw)
                   for dw in ref.offsets(int(node_q.half_range[kk, cc]), CFG, exact=True)
                   for dh in ref.offsets(int(node_q.half_range[kk, cc]), CFG, exact=True)]
                  for kk in range(k)] for cc in range(c)]
    want = ref.competing(positions, by_node)                              # [C, K, J]
    np.testing.assert_allclose(np.asarray(got).transpose(2, 1, 0), want,
                               rtol=1e-12 if dtype == "float64" else 1e-5)


def test_inferred_candidate_is_the_first_of_equal_maxima_in_w_major_order(x64):
    """One positive cell at a node's (integer) centre: the four candidates next to it have
    equal pi F exactly; the inferred one is the first in w-major order (iw, then ih),
    offset (d_2, d_2) = (-h/6, -h/6) for P = 6."""
    cfg = LayerConfig(map_size=12, stride=8, center=3.5, density=1 / 144)   # K = 1
    maps = -np.ones((12, 12, 1))
    maps[5, 6, 0] = 2.0
    coord = jnp.array([[[5.0]], [[6.0]]])

    @jax.jit
    def e_step(image):
        node_q = layer_lib.nodes(coord, jnp.full((1, 1), 0.6), jnp.full((1, 1), 1.8),
                                 setup_for(cfg))
        inference = infer(image, node_q, jnp.zeros((2, 1, 1)), jnp.ones((1, 1)))
        stats = statistics(inference, node_q, competing_mass(inference, node_q), cfg.tau_rate)
        return (inference.spatial_prior * inference.evidence, best_candidate(inference, node_q),
                stats)

    joint, (score, pos, best), stats = e_step(as_maps(jnp.asarray(maps), jnp.float64))
    joint = np.asarray(joint)[:, 0, 0]
    tied = np.flatnonzero(joint == joint.max())
    np.testing.assert_array_equal(tied, [14, 15, 20, 21])                # (iw, ih) in {2, 3}^2
    offset = ref.offsets(2, cfg)[2]
    expected = np.array([5.0 + offset, 6.0 + offset])
    np.testing.assert_array_equal(np.asarray(pos)[:, 0, 0], expected)
    np.testing.assert_array_equal(np.asarray(stats.pos)[:, 0, 0], expected)
    assert float(best[0, 0]) == float(stats.best[0, 0]) == joint.max()
    assert float(score[0, 0]) == float(stats.score[0, 0]) == pytest.approx(joint.sum())


def test_parent_ties_go_to_the_better_scored_candidate():
    """Candidates with identical deviations have equal affinities to every child: the one
    in the lower slot (higher total score) is ranked first."""
    rng = np.random.default_rng(5)
    num, children = 6, 4
    upper = LayerConfig(map_size=6, stride=16, center=7.5, density=0.1)
    child = LayerConfig(map_size=12, stride=8, center=3.5, density=0.05, top_n=3, top_m=5)
    base = rng.normal(0, 1, (3, num, 2))
    deviation = np.stack([base[0], base[1], base[0], base[2], base[1]])       # 2 = 0, 4 = 1
    cands = parents_lib.Candidates(jnp.arange(5), jnp.ones(5, bool), jnp.asarray(deviation),
                                   jnp.ones(5))
    child_pos = rng.uniform(0, 11, (num, 2, children))
    best = rng.uniform(0.1, 1, (num, children))
    got = np.asarray(parents_lib.select(jnp.asarray(child_pos), jnp.asarray(best), cands, 5,
                                        child, upper, num, None))
    for row in got:
        assert list(row).index(0) < list(row).index(2) and list(row).index(1) < list(row).index(4)


def test_candidate_order_and_cuts_break_ties_by_index():
    """Equal total scores keep the lower node first; of equal variances the lower node is
    dropped first; a mean position exactly 0.1 S from the map's edge is kept."""
    upper = LayerConfig(map_size=10, stride=16, center=7.5, density=0.1)
    child = LayerConfig(map_size=20, stride=8, center=3.5, density=0.05)
    pattern = np.array([[0.5, 0.5], [1.0, -1.0], [-1.0, 1.0], [-0.5, -0.5]])   # [N, 2], mean 0
    means = [(5, 5), (4, 6), (6, 4), (5.25, 4.5), (0.5, 5), (5, 8.5), (0.49, 5), (5, 8.51)]
    spreads = [1, 1, 1, 2, 2, 2, 3, 3]          # equal variances: 0, 1, 2 and 3, 4, 5
    pos = np.stack([np.asarray(m) + s * pattern for m, s in zip(means, spreads)])   # [U, N, 2]
    score = np.ones((8, 4))
    score[3] = 2.0
    order, kept = parents_lib.survivors(jnp.asarray(score), jnp.asarray(pos), child, upper,
                                        FIXED, 4, None)
    np.testing.assert_array_equal(order, [3, 0, 1, 2, 4, 5, 6, 7])
    # The variance cut drops the 4 lowest: 0, 1, 2, then 3 (the first of 3, 4, 5). The edge
    # cut keeps 4 and 5 (exactly 1 cell = 0.1 S from an edge: 0.5 + 0.5 and 10 - 0.5 - 8.5)
    # and drops 6 and 7 (0.99 cells).
    np.testing.assert_array_equal(np.asarray(order)[np.asarray(kept)], [4, 5])
    want = ref.parent_candidates(ref.Parent(upper, score, pos, np.ones(8), np.zeros(4, bool)),
                                 child)
    np.testing.assert_array_equal(want.index, [4, 5])


def test_equal_orientations_keep_the_maps_as_given(x64):
    """Mirrored maps equal to the plain ones: every image keeps its maps as given."""
    layer, (coord, deform) = make_layer(1, False, True)
    layer = layer._replace(mirrored=layer.maps.copy())
    setup, data, state = kernel_start(layer, coord, deform)
    for t in (1, 2):
        state = kernel_iteration(state, jnp.float64(t), data, setup)
        np.testing.assert_array_equal(np.asarray(state.flip), False)


def test_orientation_goes_to_the_stronger_best_detections_not_to_more_evidence(x64):
    """Top layer, iteration 2: an image is mirrored when its nodes' best candidates (pi F at
    the inferred candidate, added over nodes) detect more strongly there, not when it holds
    more evidence in all (sum over candidates of pi F). Plain maps: weak evidence everywhere;
    mirrored: one strong cell per filter at its first node, of a strength that varies by
    image, so that the two rules disagree in some images. The reference decides."""
    layer, (coord, deform) = make_layer(1, False, True)
    n, s, _, c = layer.maps.shape
    layer = layer._replace(maps=np.full(layer.maps.shape, 0.4))
    setup, data, state = kernel_start(layer, coord, deform)
    state = kernel_iteration(state, jnp.float64(1), data, setup)      # never mirrors at t = 1
    before = to_reference(state)
    mirrored = np.full(layer.maps.shape, -1.0)
    cells = np.clip(np.round(before.coord[:, 0]).astype(int), 0, s - 1)          # [C, 2]
    for ch in range(c):
        mirrored[:, cells[ch, 0], cells[ch, 1], ch] = np.geomspace(0.5, 50, n)
    layer = layer._replace(mirrored=mirrored)
    data = kernel_data(layer, setup)
    want, _ = ref.iteration(before, 2, layer)
    prior = ref.priors(before, layer, None, False)
    by_best, by_total = [], []
    for i in range(n):
        mu, sigma, lam = prior[i]
        plain, other = (ref.e_step(x[i], before.coord, before.deform, sigma, mu, lam, layer.cfg)
                        for x in (layer.maps, mirrored))
        by_best.append(other.best.sum() > plain.best.sum())
        by_total.append(other.score.sum() > plain.score.sum())
    np.testing.assert_array_equal(want.flip, by_best)
    assert np.any(np.array(by_best) != np.array(by_total)), (by_best, by_total)
    state = kernel_iteration(state, jnp.float64(2), data, setup)
    np.testing.assert_array_equal(np.asarray(state.flip), want.flip)
