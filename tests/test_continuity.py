import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egjax import continuity, saliency
from protocol_models import GapCNN, random_params

KEY = jax.random.key(0)


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ------------------------------------------------------------------------------ distances


def test_distances_known_values():
    a = jnp.zeros((2, 2, 2, 1)).at[0, 0, 0, 0].set(3.0).at[0, 1, 1, 0].set(4.0)
    b = jnp.zeros((2, 2, 2, 1))
    np.testing.assert_allclose(continuity.l2_distance(a, b), [5.0, 0.0])
    np.testing.assert_allclose(continuity.gap_distance(a, b), [7.0 / 4, 0.0])
    x = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    y = jnp.array([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]])
    np.testing.assert_allclose(continuity.cosine_distance(x, y), [1.0, 0.0, 1.0], atol=1e-6)


def test_distance_registry():
    assert continuity.resolve_distance("cosine") is continuity.cosine_distance
    mine = lambda a, b: jnp.abs(a - b).sum(axis=1)                  # noqa: E731
    assert continuity.resolve_distance(mine) is mine
    with pytest.raises(ValueError, match="unknown distance 'l3'"):
        continuity.resolve_distance("l3")


def test_cam_masked_distance_compares_class_regions():
    # Class 0 reads channel 0, class 1 channel 1; each map's predicted class is its
    # stronger channel and its region the cells where that channel is >= 0.5 * its max.
    head = {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}
    a = jnp.zeros((1, 2, 2, 2)).at[0, 0, 0].set(jnp.array([4.0, 1.0]))   # background
    a = a.at[0, 1, 1].set(jnp.array([1.0, 7.0]))                    # a predicts class 1
    b = jnp.zeros((1, 2, 2, 2)).at[0, 1, 0].set(jnp.array([6.0, 3.0]))   # b: class 0
    distance = continuity.cam_masked_distance(head, frac=0.5)
    region_a = jnp.array([1.0, 7.0])                                # a's only high cell
    region_b = jnp.array([6.0, 3.0])                                # b's only high cell
    np.testing.assert_allclose(distance(a, b), [jnp.linalg.norm(region_a - region_b)],
                               rtol=1e-6)
    moved_background = a.at[0, 0, 1].set(jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(distance(a, moved_background), [0.0], atol=1e-6)
    with pytest.raises(ValueError, match="frac"):
        continuity.cam_masked_distance(head, frac=1.5)


def test_cam_mask_keeps_everything_when_the_class_map_is_never_positive():
    features = -jnp.ones((1, 3, 3, 2))
    mask = continuity.cam_mask(features, jnp.eye(2), jnp.array([0]), 0.2)
    assert bool(mask.all())


# ------------------------------------------------------------------------------------ PCA


def test_pca_merge_of_a_split_equals_the_whole():
    features = _normal(1, (10, 3, 3, 4)) * jnp.array([3.0, 1.0, 0.5, 0.1]) + 2.0
    whole = continuity.pca_update(continuity.pca_init(4), features)
    left = continuity.pca_update(continuity.pca_init(4), features[:3])
    right = continuity.pca_update(continuity.pca_update(continuity.pca_init(4), features[3:7]),
                                  features[7:])
    for merged in (continuity.pca_merge(left, right), continuity.pca_merge(right, left)):
        for got, want in zip(merged, whole):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    samples = np.asarray(features).reshape(-1, 4)
    np.testing.assert_allclose(whole.mean, samples.mean(0), rtol=1e-5)
    pca = continuity.pca_result(whole, 2)
    variances, vectors = np.linalg.eigh(np.cov(samples, rowvar=False))
    np.testing.assert_allclose(pca.variances, variances[::-1][:2], rtol=1e-4)
    np.testing.assert_allclose(np.abs(pca.components @ vectors[:, ::-1][:, :2]), np.eye(2),
                               atol=1e-4)


def test_pca_distance_with_all_components_is_l2_and_drops_null_directions():
    features = _normal(2, (12, 2, 2, 5))
    pca = continuity.pca_result(continuity.pca_update(continuity.pca_init(5), features), 5)
    a, b = features[:6], features[6:]
    np.testing.assert_allclose(continuity.pca_distance(pca)(a, b),
                               continuity.l2_distance(a, b), rtol=1e-5)
    planar = features.at[..., 2:].set(0.0)                          # data in a 2-d subspace
    top2 = continuity.pca_result(continuity.pca_update(continuity.pca_init(5), planar), 2)
    off_plane = planar[6:].at[..., 4].set(10.0)
    np.testing.assert_allclose(continuity.pca_distance(top2)(planar[:6], off_plane),
                               continuity.l2_distance(planar[:6], planar[6:]), rtol=1e-4)
    with pytest.raises(ValueError, match="k must be"):
        continuity.pca_result(continuity.pca_init(5), 6)
    with pytest.raises(ValueError, match="5 channels"):
        continuity.pca_update(continuity.pca_init(5), features[..., :4])


# ------------------------------------------------------------------------------- triplets


LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])                  # class 3: a single image


def test_sample_triplets_are_valid_uniform_and_keyed():
    triplets = np.asarray(continuity.sample_triplets(KEY, LABELS, 20000))
    anchor, positive, negative = triplets.T
    assert np.all(LABELS[anchor] == LABELS[positive]) and np.all(anchor != positive)
    assert np.all(LABELS[anchor] != LABELS[negative])
    assert not np.any(anchor == 9)                                  # it has no positive
    # Uniform within every choice (tolerances are about 4 standard errors).
    np.testing.assert_allclose(np.bincount(anchor, minlength=9) / 20000, 1 / 9, rtol=0.1)
    in_class_2 = np.isin(anchor, [5, 6, 7, 8])
    pairs = np.bincount(anchor[in_class_2] * 10 + positive[in_class_2], minlength=90)
    pairs = pairs.reshape(9, 10)[5:, 5:9][~np.eye(4, dtype=bool)]
    np.testing.assert_allclose(pairs / in_class_2.sum(), 1 / 12, rtol=0.15)
    in_class_1 = np.isin(anchor, [3, 4])
    negatives = np.bincount(negative[in_class_1], minlength=10)
    np.testing.assert_allclose(np.delete(negatives, [3, 4]) / in_class_1.sum(), 1 / 8, rtol=0.15)
    again = np.asarray(continuity.sample_triplets(KEY, LABELS, 20000))
    np.testing.assert_array_equal(triplets, again)
    other = np.asarray(continuity.sample_triplets(jax.random.key(1), LABELS, 20000))
    assert not np.array_equal(triplets, other)


def test_sample_triplets_rejects_bad_labels():
    with pytest.raises(ValueError, match="two classes"):
        continuity.sample_triplets(KEY, np.zeros(5, int), 10)
    with pytest.raises(ValueError, match="two classes"):
        continuity.sample_triplets(KEY, np.arange(5), 10)
    with pytest.raises(ValueError, match="integer"):
        continuity.sample_triplets(KEY, np.zeros((2, 3), int), 10)
    with pytest.raises(ValueError, match="num_triplets"):
        continuity.sample_triplets(KEY, LABELS, 0)


@jax.jit
def _one_hot_embed(images):
    """A perfect embedding: the label is stored in pixel [0, 0, 0]."""
    return {"one_hot": jax.nn.one_hot(images[:, 0, 0, 0].astype(int), 4),
            "constant": jnp.ones((len(images), 3))}


def test_triplet_consistency_perfect_and_constant_embeddings():
    images = jnp.zeros((10, 2, 2, 1)).at[:, 0, 0, 0].set(jnp.asarray(LABELS, jnp.float32))
    results = continuity.triplet_consistency(_one_hot_embed, images, LABELS, KEY,
                                             num_triplets=100, batch_size=16)
    perfect, constant = results["one_hot"], results["constant"]
    assert float(perfect.consistency) == 1.0 and float(perfect.ties) == 0.0
    assert int(perfect.count) == 100
    assert float(perfect.low) < 1.0 and float(perfect.high) == pytest.approx(1.0)
    assert float(constant.consistency) == 0.5 and float(constant.ties) == 1.0
    assert float(constant.low) < 0.5 < float(constant.high)
    only = continuity.triplet_consistency(_one_hot_embed, images, LABELS, KEY, num_triplets=100,
                                          distance={"one_hot": "cosine"})
    assert list(only) == ["one_hot"]
    with pytest.raises(ValueError, match="no 'conv5_3'"):
        continuity.triplet_consistency(_one_hot_embed, images, LABELS, KEY, num_triplets=100,
                                       distance={"conv5_3": "l2"})


def test_triplet_consistency_chunking_and_merging_agree():
    features = _normal(3, (10, 6))
    embed = jax.jit(lambda x: {"f": x})
    small = continuity.triplet_consistency(embed, features, LABELS, KEY, num_triplets=100,
                                           batch_size=7)
    large = continuity.triplet_consistency(embed, features, LABELS, KEY, num_triplets=100,
                                           batch_size=128)
    for got, want in zip(small["f"], large["f"]):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    triplets = continuity.sample_triplets(KEY, LABELS, 100)
    a, p, n = (features[triplets[:, i]] for i in range(3))
    d_ap, d_an = continuity.l2_distance(a, p), continuity.l2_distance(a, n)
    whole = continuity.triplet_update(continuity.triplet_init(), d_ap, d_an)
    halves = continuity.triplet_merge(
        continuity.triplet_update(continuity.triplet_init(), d_ap[:20], d_an[:20]),
        continuity.triplet_update(continuity.triplet_init(), d_ap[20:], d_an[20:]))
    assert halves == whole
    with pytest.raises(ValueError, match="both be"):
        continuity.triplet_update(whole, d_ap, d_an[:5])
    assert int(whole.wins) == int(np.sum(np.asarray(d_ap) < np.asarray(d_an)))
    np.testing.assert_allclose(continuity.triplet_result(whole).consistency,
                               small["f"].consistency)


def test_wilson_interval_known_values():
    low, high = continuity.wilson_interval(jnp.array(0.8), jnp.array(10.0))
    np.testing.assert_allclose([low, high], [0.4902, 0.9433], atol=1e-4)
    low, high = continuity.wilson_interval(jnp.array(0.0), jnp.array(10.0))
    np.testing.assert_allclose([low, high], [0.0, 0.2775], atol=1e-4)
    low99, high99 = continuity.wilson_interval(jnp.array(0.8), jnp.array(10.0), 0.99)
    assert low99 < 0.4902 and high99 > 0.9433


# ------------------------------------------------------------------ explanation continuity


def test_identical_inputs_have_zero_continuity_ratio():
    images = _normal(4, (5, 4, 4, 1))
    explainer = lambda x: jnp.tanh(x) ** 2                           # noqa: E731
    result, ratios = continuity.explanation_continuity(explainer, images, images)
    np.testing.assert_array_equal(ratios, 0.0)
    assert float(result.max) == 0.0 and int(result.count) == 5
    jumpy = continuity.continuity_ratios(jnp.ones((1, 2)), jnp.zeros((1, 2)),
                                         jnp.ones((1, 3)), jnp.ones((1, 3)))
    assert float(jumpy[0]) == np.inf


def test_linear_explainer_stays_under_its_bound_and_reaches_it_on_aligned_pairs():
    matrix = _normal(5, (6, 12))
    _, singular_values, right = np.linalg.svd(np.asarray(matrix))
    explainer = lambda x: x.reshape(len(x), -1) @ matrix.T           # noqa: E731
    images = _normal(6, (40, 2, 2, 3))
    noisy = continuity.add_noise(jax.random.key(7), images, 0.1)
    result, ratios = continuity.explanation_continuity(explainer, images, noisy,
                                                       explanation_ord=2, batch_size=16)
    assert float(result.max) <= singular_values[0] * (1 + 1e-5)
    aligned = images + 1e-2 * jnp.asarray(right[0]).reshape(1, 2, 2, 3)
    result, _ = continuity.explanation_continuity(explainer, images, aligned,
                                                  explanation_ord=2)
    np.testing.assert_allclose(result.max, singular_values[0], rtol=1e-3)


def test_l1_ratio_of_a_rank_one_explainer_reaches_its_exact_bound():
    # R(x) = u (w . x):  ||R(x) - R(x')||_1 <= ||u||_1 ||w||_2 ||x - x'||_2, equal along w.
    u, w = jnp.array([1.0, -2.0, 0.5]), _normal(8, (4,))
    explainer = lambda x: (x @ w)[:, None] * u                       # noqa: E731
    images = _normal(9, (8, 4))
    bound = float(jnp.abs(u).sum() * jnp.linalg.norm(w))
    _, ratios = continuity.explanation_continuity(explainer, images,
                                                  images + _normal(10, (8, 4)))
    assert float(ratios.max()) < bound
    _, ratios = continuity.explanation_continuity(explainer, images, images - 0.3 * w)
    np.testing.assert_allclose(ratios, bound, rtol=1e-4)


def test_continuity_accumulator_merge_and_chunking():
    explainer = lambda x, scale: jnp.sin(x) * scale[:, None]         # noqa: E731
    a, b = _normal(11, (11, 5)), _normal(12, (11, 5))
    scale = jnp.linspace(0.5, 2.0, 11)
    result, ratios = continuity.explanation_continuity(explainer, a, b, scale, batch_size=4)
    expected = (jnp.abs(explainer(a, scale) - explainer(b, scale)).sum(1)
                / jnp.linalg.norm(a - b, axis=1))
    np.testing.assert_allclose(ratios, expected, rtol=1e-5)
    np.testing.assert_allclose(result.mean, expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(result.max, expected.max(), rtol=1e-6)
    left = continuity.continuity_update(continuity.continuity_init(), expected[:3])
    right = continuity.continuity_update(continuity.continuity_init(), expected[3:])
    whole = continuity.continuity_update(continuity.continuity_init(), expected)
    merged = continuity.continuity_result(continuity.continuity_merge(left, right))
    for got, want in zip(merged, continuity.continuity_result(whole)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    empty = continuity.continuity_result(continuity.continuity_init())
    assert np.isnan(empty.mean) and np.isnan(empty.max) and int(empty.count) == 0


def test_saliency_methods_plug_in_as_explainers():
    model = GapCNN(3)
    params = random_params(model, (1, 16, 16, 3), seed=0)
    images = _normal(13, (3, 16, 16, 3))
    targets = jnp.array([0, 2, 1])
    explainer = functools.partial(saliency.grad_cam, model, params, tap="conv5_3")
    shifted = continuity.shift_images(images, (1.0, 0.0))
    result, ratios = continuity.explanation_continuity(explainer, images, shifted, targets,
                                                       batch_size=2)
    assert ratios.shape == (3,) and bool(jnp.all(ratios > 0))
    change = np.asarray(explainer(images, targets) - explainer(shifted, targets))
    step = np.asarray(images - shifted)
    expected = [np.abs(change[i]).sum() / np.sqrt(np.sum(step[i] ** 2)) for i in range(3)]
    np.testing.assert_allclose(ratios, expected, rtol=1e-4)


def test_tap_embedding_feeds_triplet_consistency():
    model = GapCNN(3)
    params = random_params(model, (1, 16, 16, 3), seed=0)
    images = _normal(15, (10, 16, 16, 3))
    embed = continuity.tap_embedding(model, params, taps=("relu5_3", "gap"))
    features = embed(images)
    np.testing.assert_allclose(features["gap"], np.asarray(features["relu5_3"]).mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)
    results = continuity.triplet_consistency(
        embed, images, LABELS, KEY, num_triplets=100, batch_size=10,
        distance={"relu5_3": continuity.cam_masked_distance(params["logits"]), "gap": "l2"})
    assert sorted(results) == ["gap", "relu5_3"]
    assert all(int(result.count) == 100 for result in results.values())


def test_explanation_continuity_rejects_bad_input():
    images = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="aligned"):
        continuity.explanation_continuity(lambda x: x, images, images[:3])
    with pytest.raises(ValueError, match="length 4"):
        continuity.explanation_continuity(lambda x, t: x, images, images, jnp.zeros(3))
    with pytest.raises(ValueError, match="explanation_ord"):
        continuity.explanation_continuity(lambda x: x, images, images, explanation_ord=3)
    with pytest.raises(ValueError, match="batch_size"):
        continuity.explanation_continuity(lambda x: x, images, images, batch_size=0)
    with pytest.raises(ValueError, match=r"return \[4, \.\.\.\]"):
        continuity.explanation_continuity(lambda x: x.sum(), images, images)
    with pytest.raises(ValueError, match="aligned"):
        continuity.continuity_ratios(images, images[:, :2], images, images)


# ---------------------------------------------------------------------------------- pairs


def test_shift_images():
    images = _normal(14, (2, 5, 6, 3))
    np.testing.assert_allclose(continuity.shift_images(images, (0.0, 0.0)), images, rtol=1e-6)
    shifted = continuity.shift_images(images, (1.0, -2.0))
    np.testing.assert_allclose(shifted[:, 1:, :4], images[:, :-1, 2:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shifted[:, 0, :4], images[:, 0, 2:], rtol=1e-5, atol=1e-6)
    half = continuity.shift_images(images, (0.0, 0.5))
    np.testing.assert_allclose(half[:, :, 1:], (images[:, :, 1:] + images[:, :, :-1]) / 2,
                               rtol=1e-5, atol=1e-6)


def test_add_noise_is_keyed():
    images = jnp.zeros((40, 2, 2, 3))                               # the shape used above
    noisy = continuity.add_noise(KEY, images, 0.5)
    np.testing.assert_array_equal(noisy, continuity.add_noise(KEY, images, 0.5))
    assert 0.4 < float(noisy.std()) < 0.6


def test_same_class_neighbours():
    points = jnp.array([[0.0], [10.0], [0.5], [9.0], [3.0], [10.2]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(continuity.same_class_neighbours(points, labels, batch_size=4),
                                  [2, 2, 0, 5, 3, 3])
    with pytest.raises(ValueError, match="single member"):
        continuity.same_class_neighbours(points, np.array([0, 0, 1, 1, 1, 2]))
