"""Per-node location instability, and the layer metric as its mean over the top nodes."""

import numpy as np

from egjax import evaluate


def direct(score, px, landmarks, visible, top_images):
    """The metric for one pattern, written out as the original's loops."""
    images = np.argsort(-score, kind="stable")[:top_images]
    spreads = []
    for part in range(landmarks.shape[1]):
        seen = images[visible[images, part]]
        d = np.linalg.norm(landmarks[seen, part] - px[seen], axis=-1)
        if d.size:
            spreads.append(np.std(d, ddof=1) if d.size > 1 else 0.0)
    return np.mean(spreads) if spreads else np.nan


def test_node_instability_is_the_per_pattern_metric():
    rng = np.random.default_rng(0)
    num, images, parts = 40, 12, 4
    det = evaluate.Detections(rng.gamma(1.0, 1.0, (num, images)),
                              rng.uniform(0, 224, (num, images, 2)))
    landmarks = rng.uniform(0, 224, (images, parts, 2))
    visible = rng.random((images, parts)) < [0.9, 0.4, 0.0, 0.1]
    visible[:, 1] = False
    visible[7, 1] = True                              # a part seen in one image at most
    visible[:6] = False                               # images 0-5 show no landmark ...
    det.score[0, :6] += 10                            # ... and pattern 0 fires most there
    got = evaluate.node_instability(det, landmarks, visible, top_images=5)
    want = [direct(det.score[v], det.px[v], landmarks, visible, 5) for v in range(num)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(got).any() and not np.isnan(got).all()
    top = evaluate.ranked(det, 5)[:10]
    np.testing.assert_allclose(evaluate.instability(det, landmarks, visible, 10, 5),
                               np.nanmean(np.asarray(want)[top]), rtol=1e-12)
    np.testing.assert_allclose(
        evaluate.node_instability(det, landmarks, visible, 5, patterns=top[:3]),
        np.asarray(want)[top[:3]], rtol=1e-12)


def test_node_instability_known_answer():
    """Pattern 0's best 3 images are 0, 1, 2. Landmark A, seen in all three, lies 5, 10 and
    5 px away: std (N-1) 5 / sqrt(3). Landmark B is seen in one of them only: 0. Landmark C
    is never seen there: left out. Pattern 1 sees no landmark in its best images: NaN."""
    score = np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 3.0, 2.0, 1.0]])
    px = np.zeros((2, 6, 2))
    px[0, :3] = [[3.0, 4.0], [6.0, 8.0], [0.0, 5.0]]
    landmarks = np.zeros((6, 3, 2))
    landmarks[:, 1] = [40.0, 40.0]
    visible = np.zeros((6, 3), bool)
    visible[:3, 0] = True                           # A in images 0-2
    visible[1, 1] = True                            # B in image 1 only
    got = evaluate.node_instability(evaluate.Detections(score, px), landmarks, visible,
                                    top_images=3)
    np.testing.assert_allclose(got[0], (5 / np.sqrt(3) + 0) / 2, rtol=1e-12)
    assert np.isnan(got[1])


def test_filter_detections_known_answer():
    """Each filter at the first maximum of its map in w-major order (w, then h), mapped to
    pixels as `center + cell * stride` in (h, w) order."""
    maps = -np.ones((2, 4, 4, 2), np.float32)
    maps[0, 1, 3, 0] = 5.0                          # image 0, filter 0: cell (h 1, w 3)
    maps[1, 2, 0, 0] = 4.0                          # image 1, filter 0: cell (2, 0)
    maps[0, 0, 2, 1] = maps[0, 3, 1, 1] = 2.0       # a tie: (3, 1) comes first (w 1 < w 2)
    maps[1, :, :, 1] = 0.5                          # all equal: cell (0, 0)
    det = evaluate.filter_detections(maps, stride=8.0, center=3.5)
    np.testing.assert_array_equal(det.score, [[5.0, 4.0], [2.0, 0.5]])
    np.testing.assert_array_equal(det.px, [[[11.5, 27.5], [19.5, 3.5]],
                                           [[27.5, 11.5], [3.5, 3.5]]])


def test_compare_known_answer():
    """One layer (S 4, stride 16, centre 7.5; image 64 px, diagonal 64 sqrt 2), one
    landmark at (7.5, 7.5). Node 0 sits at cells (0, 0), (1, 0), (2, 0): 0, 16, 32 px from
    it, std 16 (its third position was found in the mirrored image, at w 3, and maps back);
    node 1 stays at (1, 1): std 0. Filter 0 peaks at (n, 3) in image n: distances
    sqrt((16 n)^2 + 48^2)."""
    from egjax.config import GraphConfig, LayerConfig
    from egjax.graph import ExplanatoryGraph, LayerFit

    cfg = LayerConfig(map_size=4, stride=16, center=7.5, density=2 / 16, tap="conv")
    pos = np.array([[[0, 0], [1, 0], [2, 3]], [[1, 1], [1, 1], [1, 2]]], float)   # [V, N, 2]
    flip = np.array([False, False, True])
    score = np.ones((2, 3))
    fit = LayerFit(coord=np.zeros((1, 2, 2)), deform=np.ones((1, 2)),
                   parents=np.zeros((2, 0), int), score=score, pos=pos, flip=flip,
                   alt_score=score / 2, alt_pos=pos, config=cfg)
    graph = ExplanatoryGraph(layers=(fit,), config=GraphConfig((cfg,), image_size=64))
    maps = -np.ones((3, 4, 4, 1), np.float32)
    for n in range(3):
        maps[n, n, 3, 0] = 1.0
    landmarks = np.full((3, 1, 2), 7.5)
    visible = np.ones((3, 1), bool)
    metrics = evaluate.compare(graph, [maps], landmarks, visible)
    diagonal = 64 * np.sqrt(2)
    nodes = (16 + 0) / 2 / diagonal
    filters = np.std([48.0, np.hypot(16, 48), np.hypot(32, 48)], ddof=1) / diagonal
    (row,) = metrics["layers"]
    assert row["tap"] == "conv"
    np.testing.assert_allclose([row["nodes"], row["filters"], row["ratio"]],
                               [nodes, filters, nodes / filters], rtol=1e-12)
    np.testing.assert_allclose([metrics["nodes"], metrics["filters"], metrics["ratio"]],
                               [nodes, filters, nodes / filters], rtol=1e-12)


def test_best_images_merge_across_shares_bit_for_bit():
    """The best images of each pattern among every other image (as two processes hold
    them), merged, are those of all images, ties included (lower image first); the metric
    from them equals the metric of all images bit for bit."""
    rng = np.random.default_rng(1)
    num, images, parts = 30, 25, 3
    det = evaluate.Detections(rng.integers(0, 4, (num, images)).astype(float),   # many ties
                              rng.uniform(0, 224, (num, images, 2)))
    landmarks = rng.uniform(0, 224, (images, parts, 2))
    visible = rng.random((images, parts)) < 0.7
    whole = evaluate.best_images(det, landmarks, visible, top_images=20)
    shares = [evaluate.best_images(evaluate.Detections(det.score[:, p::2], det.px[:, p::2]),
                                   landmarks[p::2], visible[p::2], 20,
                                   np.arange(p, images, 2)) for p in range(2)]
    shares[1] = evaluate.Best(*(np.pad(x, [(0, 0), (0, 1)] + [(0, 0)] * (x.ndim - 2),
                                       constant_values=fill)   # as padded for the exchange
                                for x, fill in zip(shares[1], (-np.inf, images, 0, False))))
    merged = evaluate.merged(evaluate.Best(*map(np.stack, zip(*shares))), 20)
    for got, want in zip(merged, whole):
        np.testing.assert_array_equal(got, want)
    assert (evaluate._instability(merged, 10)
            == evaluate.instability(det, landmarks, visible, top_nodes=10, top_images=20))
