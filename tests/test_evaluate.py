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
