"""Known answers for each piece of the EM kernel, on inputs small enough to work out by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_fixed as ref
from egjax.config import LayerConfig
from egjax.em import layer as layer_lib
from egjax.em import parents as parents_lib
from egjax.em.schedule import masked_sum, scan_chunks
from egjax.em.competition import LATTICE, competition
from egjax.em.estep import Inference, infer, statistics
from egjax.em.evidence import ORIGINAL_PI, kernel_table
from egjax.em.grid import half_range, offset_table, round_half_away
from egjax.em.original.estep import EXACT, competition_positions, evidence_in_order
from egjax.em.original.rules import ORIGINAL
from egjax.em.rules import FIXED
from egjax.em import windows
from egjax.em.windows import as_maps
from egjax.maps import QuantizedMaps, dequantize, divide

CFG = LayerConfig(map_size=12, stride=8, center=3.5, density=0.05, top_n=2, top_m=4)


def setup_for(cfg=CFG, original=False):
    return layer_lib.Setup(cfg=cfg, parent=None, flips=False,
                           rules=ORIGINAL if original else FIXED, num_images=1)


def test_round_half_away_from_zero():
    values = jnp.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999])
    np.testing.assert_array_equal(round_half_away(values), [-3, -2, -1, 1, 2, 3, 2])


def test_offsets_are_linspace_midpoints_and_antisymmetric():
    table = offset_table(CFG)
    for h in range(CFG.max_half_range + 1):
        expected = -h + (2 * h / 6) * (np.arange(6) + 0.5)
        np.testing.assert_allclose(table[h], expected, atol=1e-15)
        np.testing.assert_array_equal(table[h], -table[h][::-1])


def test_half_range_is_capped_by_the_search_range():
    # min(0.3 * 12 / 2, 3 * deform), rounded half away: 1.8 -> 2, 0.45 * 3 = 1.35 -> 1
    np.testing.assert_array_equal(half_range(jnp.array([0.45, 0.5, 5.0]), CFG), [1, 2, 2])


def test_evidence_of_a_single_blob():
    """One positive cell: each candidate's evidence is g(distance to it) times its value."""
    s, c = CFG.map_size, 1
    maps = -np.ones((1, s, s, c), np.float32)
    maps[0, 5, 7, 0] = 3.0
    cfg = LayerConfig(map_size=s, stride=8, center=3.5, density=1 / 144)   # K = 1
    coord = jnp.array([[[5.0]], [[6.0]]])                                  # centre (5, 6)
    node_q = layer_lib.nodes(coord, jnp.full((1, 1), 1.8), jnp.full((1, 1), 2.0),
                             setup_for(cfg))
    image = as_maps(jnp.asarray(maps[0]), jnp.float32)
    inference = infer(image, node_q,
                      jnp.zeros((2, 1, 1)), jnp.ones((1, 1)))
    smoothing = cfg.map_delta * s
    offsets = offset_table(cfg)[2]
    for j, (iw, ih) in enumerate(np.ndindex(6, 6)):
        dist2 = (5 + offsets[ih] - 5) ** 2 + (6 + offsets[iw] - 7) ** 2
        g = (math.exp(-dist2 / (2 * smoothing**2)) if dist2 < 9 * smoothing**2
             else math.exp(-4.5)) / (math.sqrt(2 * ORIGINAL_PI) * smoothing)
        assert float(inference.evidence[j, 0, 0]) == pytest.approx(3.0 * g, rel=1e-5)


@pytest.mark.parametrize("quantized", [False, True])
def test_windows_read_the_cells_around_each_centre_and_zero_off_the_map(quantized):
    """`window_values` against a cell-by-cell loop: the cells within H of each centre,
    w-major, decoded and rectified, 0 off the map, also for centres far off it."""
    rng = np.random.default_rng(3)
    size, channels, nodes, big = 7, 5, 6, 2
    codes = rng.integers(0, 256, (1, size, size, channels)).astype(np.uint8)
    minimum = rng.uniform(-1, 0.5, (1, channels)).astype(np.float32)   # some positive
    spread = rng.uniform(0.5, 3, (1, channels)).astype(np.float32)
    values = rng.normal(size=(1, size, size, channels)).astype(np.float32)
    given = QuantizedMaps(codes, minimum, spread) if quantized else values
    image = jax.tree.map(lambda x: x[0], as_maps(given, jnp.float32))
    cells = rng.integers(-2 * big - 2, size + 2 * big + 2, (2, nodes, channels)).astype(np.int32)

    def cell(h, w, c):
        if not (0 <= h < size and 0 <= w < size):
            return 0.0
        if quantized:   # maps.dequantize's arithmetic, in float32
            x = np.float32(codes[0, h, w, c]) * spread[0, c] / np.float32(255) + minimum[0, c]
        else:
            x = values[0, h, w, c]
        return max(float(x), 0.0)

    got = jax.jit(windows.window_values, static_argnums=2)(image, jnp.asarray(cells), big)
    want = np.array([[[cell(cells[0, k, c] + jh, cells[1, k, c] + jw, c)
                       for jw in range(-big, big + 1) for jh in range(-big, big + 1)]
                      for c in range(channels)] for k in range(nodes)])
    np.testing.assert_array_equal(np.asarray(got), want)


def test_evidence_of_nodes_of_every_half_range_is_the_reference():
    """`infer`'s evidence, one matrix product per half-range over a shared window, against
    `reference_fixed.evidence` (cell by cell) for nodes of every half-range 0..H side by
    side in each filter, centres on, near and off the map, quantized maps."""
    size, channels = 28, 3
    cfg = LayerConfig(map_size=size, stride=8, center=3.5, density=0.05)
    big = cfg.max_half_range                                               # 4
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (1, size, size, channels)).astype(np.uint8)
    given = QuantizedMaps(codes, np.full((1, channels), -1.0, np.float32),
                          np.full((1, channels), 3.0, np.float32))
    h = np.tile(np.arange(big + 1), 2)[:, None].repeat(channels, 1)         # [K, C]
    coord = rng.uniform(-3, size + 2, (2, *h.shape))
    node_q = layer_lib.nodes(jnp.asarray(coord, jnp.float32), jnp.asarray((h + 0.1) / 3,
                             jnp.float32), jnp.ones(h.shape, jnp.float32), setup_for(cfg))
    np.testing.assert_array_equal(node_q.half_range, h)
    image = jax.tree.map(lambda x: x[0], as_maps(given, jnp.float32))
    got = jax.jit(infer)(image, node_q, jnp.zeros((2, *h.shape)), jnp.ones(h.shape)).evidence
    decoded = np.asarray(dequantize(given), np.float64)[0]
    for k, c in np.ndindex(*h.shape):
        want = ref.evidence(decoded[:, :, c], coord[:, k, c], int(h[k, c]), cfg)
        np.testing.assert_allclose(got[:, k, c], want, rtol=2e-5, atol=1e-6)


def test_float32_divide_is_the_ieee_quotient():
    """`divide` in float32 (taken in float64, rounded once) equals NumPy's float32 division
    bit for bit, where XLA's own division by a broadcast divisor is up to 1 ulp off."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((200, 1000)) * 10.0 ** rng.integers(-20, 20, (200, 1000)))
    d = rng.uniform(0.1, 300, 1000)
    x, d = x.astype(np.float32), d.astype(np.float32)
    np.testing.assert_array_equal(jax.jit(divide)(x, d), x / d)
    np.testing.assert_array_equal(jax.jit(lambda x: divide(x, 255))(x), x / np.float32(255))


def test_evidence_table_zero_outside_the_window_and_floor_far_away():
    table = kernel_table(CFG)                       # H = 2 for S = 12
    big = CFG.max_half_range
    window = table[2, 1].reshape(36, 2 * big + 1, 2 * big + 1)
    assert np.all(window[:, 0, :] == 0) and np.all(window[:, :, -1] == 0)   # |offset| 2 > 1
    smoothing = CFG.map_delta * CFG.map_size
    floor = math.exp(-4.5) / (math.sqrt(2 * ORIGINAL_PI) * smoothing)
    assert np.isclose(table[2, 2].min(), floor)     # cells beyond 3 s weigh the constant


def test_lone_node_competition_is_its_own_prior():
    """A node with no other node in reach competes only with itself: r = pi / (pi + tau)."""
    coord = jnp.array([[[3.0, 20.0]], [[3.0, 20.0]]])          # [2, K=1, C=2]: one per filter
    node_q = layer_lib.nodes(coord, jnp.full((1, 2), 1.0), jnp.full((1, 2), 0.8), setup_for())
    positions = competition_positions(coord, node_q.offsets)
    competing = competition(positions, node_q.prior_axis, jnp.ones((1, 2)), EXACT)
    along_h = jnp.tile(node_q.prior_axis, (6, 1, 1))
    along_w = jnp.repeat(node_q.prior_axis, 6, axis=0)
    np.testing.assert_allclose(competing, along_w * along_h, rtol=1e-6)


def brute_force_competition(positions, prior, scale):
    """`getOtherProb.cpp` by its definition: for each candidate t of each node v, every node
    u of the filter whose candidate box contains t adds its prior at its candidate nearest
    to t (squared distance; the first in w-major order on ties). `positions [2, P, K, C]`."""
    _, p, k, c = positions.shape
    expected = np.zeros((p * p, k, c), prior.dtype)
    for ch, v, iw, ih in np.ndindex(c, k, p, p):
        t = positions[0, ih, v, ch], positions[1, iw, v, ch]
        for u in range(k):
            gh, gw = positions[0, :, u, ch], positions[1, :, u, ch]
            if not (gh[0] <= t[0] <= gh[-1] and gw[0] <= t[1] <= gw[-1]):
                continue
            dist = (t[0] - gh[None, :]) ** 2 + (t[1] - gw[:, None]) ** 2      # [w, h]
            jw, jh = np.unravel_index(np.argmin(dist), dist.shape)          # first on ties
            expected[iw * p + ih, v, ch] += prior[jw, u, ch] * prior[jh, u, ch] * scale[u, ch]
    return expected


@pytest.mark.parametrize("filters", [128, 2])   # all filters at once; two groups of two
@pytest.mark.parametrize("exact", [True, False])
def test_competition_matches_a_brute_force_nearest_candidate_search(exact, filters):
    rng = np.random.default_rng(1)
    k, c = 5, 4
    coord = jnp.asarray(rng.uniform(2, 9, (2, k, c)))
    deform = jnp.asarray(rng.uniform(0.3, 1.5, (k, c)))
    node_q = layer_lib.nodes(coord, deform, jnp.asarray(rng.uniform(0.5, 2, (k, c))),
                             setup_for())
    scale = jnp.asarray(rng.uniform(0.5, 2, (k, c)))
    positions = np.asarray(competition_positions(coord, node_q.offsets))
    got = np.asarray(competition(jnp.asarray(positions), node_q.prior_axis, scale,
                                 EXACT if exact else LATTICE,
                                 filters=filters))
    expected = brute_force_competition(positions, np.asarray(node_q.prior_axis),
                                       np.asarray(scale))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_original_competition_decides_float32_ties_as_float64_does():
    """compat="original" in float32: integer centres put candidates exactly on the edge of
    other nodes' boxes and halfway between their candidates; the comparisons must go as
    the original's float64 ones go (brute force in float64 on the original's positions)."""
    rng = np.random.default_rng(3)
    cfg = LayerConfig(map_size=28, stride=8, center=3.5, density=0.05)
    k, c = 6, 8
    coord = jnp.asarray(rng.integers(4, 24, (2, k, c)), jnp.float32)
    deform = jnp.asarray(rng.choice([0.3, 0.5, 0.7, 1.0, 1.3], (k, c)), jnp.float32)
    node_q = layer_lib.nodes(coord, deform, jnp.full((k, c), 4.2, jnp.float32),
                             setup_for(cfg, original=True))
    scale = jnp.asarray(rng.uniform(0.5, 2, (k, c)), jnp.float32)
    got = np.asarray(jax.jit(ORIGINAL.competing_mass)(Inference(coord, scale, None, None),
                                                      node_q))
    offsets = np.moveaxis(offset_table(cfg)[np.asarray(node_q.half_range)], -1, 0)
    positions = (np.asarray(coord, np.float64) + 1)[:, None] + offsets
    expected = brute_force_competition(positions, np.asarray(node_q.prior_axis, np.float64),
                                       np.asarray(scale, np.float64))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_original_evidence_of_mirrored_candidates_ties_exactly_when_compiled():
    """The same products summed in opposite orders tie exactly, as in the original: the
    compiled sum rounds every product before adding it (no fused multiply-add)."""
    rng = np.random.default_rng(4)
    w = rng.uniform(0, 0.05, (2, 500)).astype(np.float32)
    weights = jnp.asarray(np.stack([w, w[::-1]])[:, :, None])          # [J=2, Q=2, K=1, C]
    values = jnp.asarray(np.repeat(rng.uniform(0, 3, (1, 500, 1)), 2, -1), jnp.float32)
    total = jax.jit(evidence_in_order)(values, weights)                  # [2, 1, 500]
    np.testing.assert_array_equal(total[0], total[1])


def test_original_variance_cut_keeps_float64_ties_in_index_order_in_float32():
    """Nodes whose positions form the same pattern up to a shift have equal variances; the
    original's stable float64 sort drops the lower index first. float32 rounds the two
    variances apart (here the second one lower); the cut must still drop the first."""
    pattern = np.array([0, 1, 1, 0, -2 / 3, 0, 1, 0, 0, 1 / 3])
    rows = [4 + pattern / 4, 3 + pattern + 4 / 7, 8 + 2 * pattern, 5 + pattern + 4 / 7]
    pos = jnp.asarray(np.stack([rows, rows], -1), jnp.float32)                # [U=4, N, 2]
    variance = np.asarray(jnp.sum(parents_lib.image_var(pos, 1, 10, None), -1))
    assert variance[3] < variance[1]                  # float32 alone would drop node 3
    score = jnp.ones((4, 10), jnp.float32)
    order, kept = parents_lib.survivors(score, pos, CFG, CFG, ORIGINAL, 10, None)
    np.testing.assert_array_equal(np.asarray(order), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.asarray(kept), [False, False, True, True])


def test_prior_from_a_single_parent_is_that_parent():
    """One parent: mu is its deviation, sigma its deformation, lambda 1."""
    deviation = jnp.array([[[1.5, -0.5]], [[0.25, 2.0]]])      # [M=2, n=1, 2]
    deform = jnp.array([0.7, 1.3])
    parents = jnp.array([[1], [0]])                             # V=2, T=1
    weights = parents_lib.prior_weights(parents, deform, 1.0)
    shift, scale = parents_lib.shift_and_scale(weights, deviation, 1.0)
    np.testing.assert_allclose(shift[:, 0], [[0.25, 2.0], [1.5, -0.5]], rtol=1e-6)
    np.testing.assert_allclose(weights.sigma, [1.3, 0.7], rtol=1e-6)
    np.testing.assert_allclose(scale, 1.0, rtol=1e-6)


def test_prior_of_several_parents_matches_its_definition():
    rng = np.random.default_rng(2)
    deviation = rng.normal(size=(6, 3, 2))
    deform = rng.uniform(0.5, 2, 6)
    parents = np.array([[0, 3, 5], [1, 2, 4]])
    weights = parents_lib.prior_weights(jnp.asarray(parents), jnp.asarray(deform), 2.0)
    shift, scale = parents_lib.shift_and_scale(weights, jnp.asarray(deviation), 2.0)
    for v in range(2):
        dev, s = deviation[parents[v]] * 2.0, deform[parents[v]] * 2.0      # [T, n, 2], [T]
        w = 1 / s**2
        mu = np.einsum("t,tnx->nx", w, dev) / w.sum()
        sigma = (np.sum(s**-2) / 3) ** -0.5
        lam = sigma * np.prod(np.exp(-np.sum((mu - dev) ** 2, -1) / (2 * 3 * s[:, None] ** 2))
                              / s[:, None], axis=0)
        np.testing.assert_allclose(shift[v], mu, rtol=1e-5)
        np.testing.assert_allclose(scale[v], lam, rtol=1e-4)


def test_parent_selection_matches_its_definition():
    """`A_vu = sum_n best_v^n exp(-D_vu^n / (2 mean_{u,n} D_vu^n))` over valid candidates,
    the top_n largest; 10 children in blocks of 4 (the last block overlaps the one before)."""
    rng = np.random.default_rng(3)
    num, children, slots, top_n = 6, 10, 5, 2
    upper = LayerConfig(map_size=6, stride=16, center=7.5, density=0.1)
    child_pos = rng.uniform(0, 12, (num, 2, children))
    best = rng.uniform(0.1, 1, (num, children))
    deviation = rng.normal(0, 1, (slots, num, 2))
    valid = np.array([True, True, False, True, True])
    cands = parents_lib.Candidates(jnp.arange(slots), jnp.asarray(valid),
                                   jnp.asarray(deviation), jnp.ones(slots))
    got = parents_lib.select(jnp.asarray(child_pos), jnp.asarray(best), cands, top_n, CFG,
                             upper, num, None, block=4)
    a = (child_pos - child_pos.mean(0)) * CFG.stride                     # [N, 2, V]
    b = deviation[valid] * upper.stride                                  # [U, N, 2]
    dist = np.sum((a.transpose(2, 0, 1)[:, None] - b[None]) ** 2, -1)   # [V, U, N]
    rate = 1 / (2 * dist.mean(axis=(1, 2)))
    affinity = np.einsum("nv,vun->vu", best, np.exp(-dist * rate[:, None, None]))
    expected = np.flatnonzero(valid)[np.argsort(-affinity, axis=1, kind="stable")[:, :top_n]]
    np.testing.assert_array_equal(got, expected)


def test_affinity_is_the_same_in_any_order_of_the_images():
    """The affinities are sums over 200 images, taken in float64 and rounded once
    (`reduce.wide`): the images in another order give them bit for bit (float32 sums of
    these terms in another order differ in the last bit), and they agree with the
    definition summed in float64."""
    rng = np.random.default_rng(4)
    num, children, slots = 200, 24, 7
    upper = LayerConfig(map_size=6, stride=16, center=7.5, density=0.1)
    child_pos = rng.uniform(0, 12, (num, 2, children)).astype(np.float32)
    best = rng.uniform(0.1, 1, (num, children)).astype(np.float32)
    deviation = rng.normal(0, 1, (slots, num, 2)).astype(np.float32)
    order = rng.permutation(num)

    def affinity(pos, best, deviation):
        cands = parents_lib.Candidates(jnp.arange(slots), jnp.ones(slots, bool),
                                       jnp.asarray(deviation), jnp.ones(slots, jnp.float32))
        return np.asarray(jax.jit(parents_lib.affinity, static_argnums=(3, 4, 5, 6, 7))(
            jnp.asarray(pos), jnp.asarray(best), cands, CFG, upper, num, None, 8))

    got = affinity(child_pos, best, deviation)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(affinity(child_pos[order], best[order], deviation[:, order]),
                                  got)
    a = (child_pos - child_pos.mean(0)) * CFG.stride                     # [N, 2, V]
    b = deviation * upper.stride                                         # [U, N, 2]
    dist = np.sum((a.transpose(2, 0, 1)[:, None] - b[None]) ** 2, -1, dtype=np.float64)
    rate = 1 / (2 * dist.mean(axis=(1, 2)))
    expected = np.einsum("nv,vun->vu", best, np.exp(-dist * rate[:, None, None]))
    np.testing.assert_allclose(got, expected, rtol=2e-5)


def _select_as_get_cur_distribution(child_pos, best, deviation, child, upper, top_n):
    """`getCurDistribution.m`'s parent selection, step by step as Octave computes it:
    1-based positions, means added image by image, pixel deviations, the squared distances'
    mean added in column order, glibc's exp, sums added image by image, a stable sort."""
    pos = child_pos + 1                                                  # [N, 2, V]
    total = np.zeros(pos.shape[1:])
    for image in pos:
        total = total + image
    a = (child.center + 1) + ((pos - total / len(pos)) - 1) * child.stride
    b = (upper.center + 1) + (deviation - 1) * upper.stride              # [M, N, 2]
    order = []
    for v in range(pos.shape[-1]):
        squared = (a[:, 0, v] - b[..., 0]) ** 2                          # [M, N]
        squared = squared + (a[:, 1, v] - b[..., 1]) ** 2
        mean = 0.0
        for value in squared.T.ravel():
            mean = mean + value
        mean = mean / squared.size
        terms = np.array([[math.exp(x) for x in row] for row in -squared / (2 * mean)])
        affinity = np.zeros(len(b))
        for n in range(len(pos)):
            affinity = affinity + terms[:, n] * best[n, v]
        order.append(np.argsort(-affinity, kind="stable")[:top_n])
    return np.array(order)


def test_original_parent_selection_rounds_as_the_original(x64):
    """compat="original": the whole ranking of the candidates is the one Octave computes
    from `getCurDistribution.m`, on lattice positions as the E-step produces them. (That
    its roundings decide the near-ties of real fits as the original's do is shown by the
    whole fit of `medium`, tests/test_em_reference.py.)"""
    rng = np.random.default_rng(4)
    num, children, slots = 7, 12, 9
    upper = LayerConfig(map_size=6, stride=16, center=7.5, density=0.1)
    child_pos = rng.integers(0, 36, (num, 2, children)) / 3
    base = rng.integers(-6, 7, (slots // 2, num, 2)) / 3
    deviation = np.concatenate([base, -base, rng.integers(-6, 7, (1, num, 2)) / 3])
    best = rng.integers(1, 4, (num, children)) / 4
    cands = parents_lib.Candidates(jnp.arange(slots), jnp.ones(slots, bool),
                                   jnp.asarray(deviation), jnp.ones(slots))
    got = ORIGINAL.select(jnp.asarray(child_pos), jnp.asarray(best), cands, slots, CFG,
                          upper, num, None, block=5)
    expected = _select_as_get_cur_distribution(child_pos, best, deviation, CFG, upper, slots)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("num, chunk", [(11, 4), (8, 4), (3, 8)])
def test_scan_chunks_counts_every_image_once_and_records_all(num, chunk):
    values = jnp.arange(1, num + 1, dtype=jnp.float32)
    total, recorded = scan_chunks(lambda x, valid: (masked_sum(x, valid), 10 * x), values,
                                  chunk, into=jnp.full(num, -1.0))
    assert float(total) == num * (num + 1) / 2
    np.testing.assert_array_equal(recorded, 10 * values)


def test_m_step_leaves_a_node_on_a_symmetric_blob_in_place():
    """Evidence symmetric about the node's centre: the gradient cancels, the node stays."""
    s = CFG.map_size
    maps = -np.ones((1, s, s, 1), np.float32)
    maps[0, 4:7, 4:7, 0] = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
    cfg = LayerConfig(map_size=s, stride=8, center=3.5, density=1 / 144)
    coord = jnp.array([[[5.0]], [[5.0]]])
    setup = setup_for(cfg)
    node_q = layer_lib.nodes(coord, jnp.full((1, 1), 1.8), jnp.full((1, 1), 1.8), setup)
    image = as_maps(jnp.asarray(maps[0]), jnp.float32)
    inference = infer(image, node_q, jnp.zeros((2, 1, 1)), jnp.ones((1, 1)))
    positions = competition_positions(inference.center, node_q.offsets)
    stats = statistics(inference, node_q,
                       competition(positions, node_q.prior_axis, jnp.ones((1, 1)), LATTICE),
                       0.1)
    np.testing.assert_allclose(stats.gradient, 0, atol=1e-6)
    # the inferred position is one of the four candidates next to the centre
    assert np.all(np.abs(np.asarray(stats.pos[:, 0, 0]) - 5) <= 1 / 3 + 1e-6)
