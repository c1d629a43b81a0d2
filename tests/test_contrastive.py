import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from egjax import continuity
from egjax import contrastive

LABELS = np.array([0, 0, 1, 1])
triplet_loss = jax.jit(contrastive.triplet_loss, static_argnames=("margin", "mining"))


def _chord(u, v):
    u, v = np.asarray(u) / np.linalg.norm(u), np.asarray(v) / np.linalg.norm(v)
    return np.linalg.norm(u - v)


def test_batch_hard_loss_by_hand():
    angles = np.array([0.0, 0.5, 0.8, 2.0])                         # points on a circle
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.array([[1], [3], [2], [5]])
    expected = []
    for anchor, (positive, negatives) in enumerate([(1, (2, 3)), (0, (2, 3)),
                                                    (3, (0, 1)), (2, (0, 1))]):
        d_ap = _chord(points[anchor], points[positive])
        d_an = min(_chord(points[anchor], points[n]) for n in negatives)
        expected.append(max(0.0, d_ap - d_an + 0.3))
    got = triplet_loss(points.astype(np.float32), LABELS, margin=0.3)
    np.testing.assert_allclose(got, np.mean(expected), rtol=1e-5)
    assert float(got) > 0


def test_separated_classes_have_zero_loss_and_scale_does_not_matter():
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], np.float32)
    assert float(triplet_loss(features, LABELS, margin=0.5)) == 0.0
    features = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]], np.float32)
    assert float(triplet_loss(features, LABELS)) > 0.0
    np.testing.assert_allclose(triplet_loss(7.0 * features, LABELS), triplet_loss(features, LABELS),
                               rtol=1e-5)


def test_random_mining_is_keyed_and_averages_to_the_uniform_triplet_loss():
    features = np.random.default_rng(0).normal(size=(6, 3, 3, 2)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    losses = jax.jit(jax.vmap(lambda key: contrastive.triplet_loss(features, labels,
                                                                    mining="random", key=key)))
    keys = jax.random.split(jax.random.key(4), 4000)
    random = np.asarray(losses(keys))
    np.testing.assert_array_equal(random, losses(keys))
    assert len(np.unique(random)) > 10
    flat = features.reshape(6, -1)
    every = [max(0.0, _chord(flat[a], flat[a ^ 1]) - _chord(flat[a], flat[n]) + 0.2)
             for a in range(6) for n in range(6) if n // 2 != a // 2]
    np.testing.assert_allclose(random.mean(), np.mean(every), rtol=0.03)
    assert float(triplet_loss(features, labels)) >= random.max() - 1e-6   # hard >= random


def test_degenerate_batches_give_zero_and_finite_gradients():
    same_class = np.ones((4, 2), np.float32)
    assert float(triplet_loss(same_class, np.zeros(4, int))) == 0.0
    singletons = np.eye(4, 2, dtype=np.float32)
    assert float(triplet_loss(singletons, np.arange(4))) == 0.0
    duplicates = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [3.0, -1.0]], np.float32)
    grads = jax.jit(jax.grad(contrastive.triplet_loss))(duplicates, LABELS)
    assert np.all(np.isfinite(grads)) and np.any(grads != 0)


def test_bad_arguments():
    features = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(features, LABELS, mining="semi-hard")
    with pytest.raises(ValueError, match="needs a key"):
        triplet_loss(features, LABELS, mining="random")
    with pytest.raises(ValueError, match="needs a key"):
        triplet_loss(features, LABELS, key=jax.random.key(0))
    with pytest.raises(ValueError, match="labels"):
        triplet_loss(features, LABELS[:3])


def test_added_to_cross_entropy_it_trains_triplet_consistency():
    # A linear "network" on 8-d inputs whose classes differ only in a low-variance
    # direction: cross-entropy plus the triplet loss on the 4-d features separates them.
    rng = np.random.default_rng(1)
    labels = jnp.asarray(np.repeat(np.arange(3), 8))
    inputs = rng.normal(size=(24, 8)) * np.r_[np.full(4, 3.0), np.full(4, 0.3)]
    inputs[:, 4:7] += 0.6 * np.eye(3)[labels]
    inputs = jnp.asarray(inputs, jnp.float32)
    params = {"features": jnp.asarray(rng.normal(size=(8, 4)) * 0.3, jnp.float32),
              "logits": jnp.asarray(rng.normal(size=(4, 3)) * 0.3, jnp.float32)}
    optimizer = optax.adam(0.05)

    def loss_fn(params):
        features = inputs @ params["features"]
        ce = optax.softmax_cross_entropy_with_integer_labels(features @ params["logits"], labels)
        return ce.mean() + 1.0 * triplet_loss(features, labels)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state

    def consistency(params):
        embed = jax.jit(lambda x: {"f": x @ params["features"]})
        return float(continuity.triplet_consistency(
            embed, inputs, labels, jax.random.key(0), num_triplets=300, distance="cosine",
            batch_size=300)["f"].consistency)

    before = consistency(params)
    state = optimizer.init(params)
    for _ in range(150):
        params, state = step(params, state)
    assert consistency(params) > max(before + 0.15, 0.9)


def test_cam_masked_loss_compares_the_class_regions_only():
    """Two classes; the head's kernel makes channel 0 class 0's evidence and channel 1 class
    1's. Each map's CAM region is its own blob: values outside it do not change the loss,
    and the loss equals the triplet loss of the region means."""
    rng = np.random.default_rng(0)
    features = rng.uniform(0.0, 0.05, (4, 4, 4, 3)).astype(np.float32)
    for n, (label, (h, w)) in enumerate(zip(LABELS, [(0, 0), (1, 1), (2, 2), (3, 3)])):
        features[n, h, w, label] = 5.0
        features[n, h, w, 2] = rng.uniform(4.0, 8.0)
    kernel = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    loss = contrastive.cam_masked_triplet_loss(features, LABELS, kernel, margin=1.0)
    regions = np.stack([features[n, n, n] for n in range(4)])
    np.testing.assert_allclose(loss, triplet_loss(regions, LABELS, margin=1.0), rtol=1e-5)
    assert float(loss) > 0
    outside = features.copy()
    outside[:, 0, 3, 2] += 3.0    # outside every region; channel 2 does not move the CAM
    np.testing.assert_allclose(contrastive.cam_masked_triplet_loss(outside, LABELS, kernel,
                                                                   margin=1.0), loss, rtol=1e-6)
    assert not np.isclose(float(triplet_loss(outside, LABELS, margin=1.0)),
                          float(triplet_loss(features, LABELS, margin=1.0)))
    with pytest.raises(ValueError, match="kernel"):
        contrastive.cam_masked_triplet_loss(features, LABELS, kernel[:2])
