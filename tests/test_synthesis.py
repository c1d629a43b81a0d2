"""Tests of pattern-based image synthesis (egjax.synthesis): inversion, masks, shares."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import egjax
from egjax import geometry, synthesis
from egjax.models import ModelMeta, preprocess


def _conv_net(key, size=12, channels=8):
    """A tiny random two-conv network `image [size, size, 3] -> pre-ReLU maps [size / 2,
    size / 2, channels]`."""
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (3, 3, 3, channels)) / 3.0
    w2 = jax.random.normal(k2, (3, 3, channels, channels)) / (3.0 * channels ** 0.5)

    def conv(x, w, stride):
        return jax.lax.conv_general_dilated(x[None], w, (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]

    return lambda image: conv(jax.nn.relu(conv(image, w1, 1)), w2, 2)


def test_inverting_a_linear_network_recovers_its_input():
    """forward = an orthogonal linear map (plus an offset that keeps every output positive,
    so the rectified maps are the maps): without priors, the inversion finds the input."""
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (108, 108)))

    def forward(image):
        return (q @ image.reshape(-1) + 10.0).reshape(3, 3, 12)

    truth = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
    targets = jax.vmap(forward)(truth)
    settings = synthesis.Settings(steps=400, learning_rate=0.05, tv_weight=0.0, norm_weight=0.0)
    init = 0.1 * jax.random.normal(jax.random.key(2), truth.shape)
    found, _ = synthesis.invert(forward, targets, init, settings, quiet=True)
    np.testing.assert_allclose(found, truth, atol=2e-2)


def test_the_objective_decreases():
    forward = _conv_net(jax.random.key(0))
    truth = jax.random.normal(jax.random.key(1), (2, 12, 12, 3))
    targets = jax.nn.relu(jax.vmap(forward)(truth))
    init = 0.1 * jax.random.normal(jax.random.key(2), truth.shape)
    found, losses = synthesis.invert(forward, targets, init, synthesis.Settings(steps=40),
                                     quiet=True)
    assert losses.shape == (40, 2)
    assert np.all(losses[-1] < 0.5 * losses[0]), (losses[0], losses[-1])
    # the feature term falls too (not only the priors)
    before = jnp.sum((jax.nn.relu(jax.vmap(forward)(init)) - targets) ** 2)
    after = jnp.sum((jax.nn.relu(jax.vmap(forward)(found)) - targets) ** 2)
    assert after < 0.5 * before, (before, after)


def test_a_batch_gives_each_image_what_it_gets_alone():
    forward = _conv_net(jax.random.key(3))
    truth = jax.random.normal(jax.random.key(4), (3, 12, 12, 3))
    targets = jax.nn.relu(jax.vmap(forward)(truth))
    init = 0.1 * jax.random.normal(jax.random.key(5), truth.shape)
    settings = synthesis.Settings(steps=15)
    batch, batch_losses = synthesis.invert(forward, targets, init, settings, quiet=True)
    for i in range(3):
        alone, losses = synthesis.invert(forward, targets[i:i + 1], init[i:i + 1], settings,
                                         quiet=True)
        np.testing.assert_allclose(alone[0], batch[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(losses[:, 0], batch_losses[:, i], rtol=1e-4)


def test_kept_nodes_are_each_images_top_fraction():
    score = jnp.array([[3.0, 1.0, 2.0, 0.0, 5.0],
                       [0.0, 4.0, 1.0, 3.0, 2.0]])
    np.testing.assert_array_equal(synthesis.kept_nodes(score, 0.4),   # round(0.4 * 5) = 2
                                  [[True, False, False, False, True],
                                   [False, True, False, True, False]])
    assert synthesis.kept_nodes(score, 0.01).sum(axis=1).tolist() == [1, 1]   # at least one
    assert synthesis.kept_nodes(score, 1.0).all()


def test_pattern_masks_keep_exactly_the_cells_around_kept_nodes():
    """5 x 5 maps, cells centred at 1.5 + 4 * cell px, fields 9 px wide (4.5 px each side);
    2 filters of 2 nodes. Filter 0: its kept node at (5.5, 9.5) px, the centre of cell (1, 2):
    rows 0-2 (4 px away at most), columns 1-3. Filter 1: its kept node at (16, 0) px: rows 3, 4
    (|13.5 - 16| = 2.5, |17.5 - 16| = 1.5; 9.5 is 6.5 away), column 0 (5.5 is 5.5 away).
    The nodes not kept (one at a cell of filter 0's window, one elsewhere) add nothing."""
    field = geometry.ReceptiveField(stride=4.0, center=1.5, size=9.0)
    kept = jnp.array([[True, False, True, False]])
    pixels = jnp.array([[[5.5, 9.5], [17.5, 17.5], [16.0, 0.0], [1.5, 1.5]]])
    masks = np.asarray(synthesis.pattern_masks(kept, pixels, 2, 5, field))
    expected = np.zeros((1, 5, 5, 2), bool)
    expected[0, 0:3, 1:4, 0] = True
    expected[0, 3:5, 0:1, 1] = True
    np.testing.assert_array_equal(masks, expected)

    drawn = np.asarray(synthesis.random_masks(jax.random.key(0), jnp.asarray(expected)))
    np.testing.assert_array_equal(drawn.sum(axis=(1, 2)), expected.sum(axis=(1, 2)))
    others = [np.asarray(synthesis.random_masks(jax.random.key(k), jnp.asarray(expected)))
              for k in range(1, 6)]
    assert any(not np.array_equal(o, drawn) for o in others)   # random, not fixed


def test_foreground_share_by_hand():
    """One vertical step edge between columns 1 and 2 of a 4 x 4 image: the energy (255^2 per
    row and channel) sits on column 1 (forward differences)."""
    image = np.zeros((1, 4, 4, 3), np.uint8)
    image[:, :, 2:] = 255
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, 1] = True                 # half of column 1
    np.testing.assert_allclose(synthesis.foreground_share(image, mask), [0.5])
    assert synthesis.foreground_share(image, ~mask)[0] == pytest.approx(0.5)
    assert synthesis.foreground_share(np.zeros_like(image), mask)[0] == 0.0


@pytest.mark.parametrize("convention", ["torch", "caffe"])
def test_to_pixels_inverts_preprocess(convention):
    meta = ModelMeta(source="test", width=0.25, head="gap", num_classes=2,
                     preprocessing=convention)
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(synthesis.to_pixels(preprocess(images, meta), meta), images)


@pytest.mark.parametrize("keep, layer, match", [
    (0.0, "conv4_2", "keep must be a fraction in \\(0, 1\\]"),
    (1.5, "conv4_2", "keep must be a fraction"),
    (True, "conv4_2", "keep must be a fraction"),
    (0.1, "conv9_9", "unknown layer 'conv9_9'; the graph's layers are conv4_2"),
])
def test_bad_input_raises_before_any_work(keep, layer, match):
    """Refused before the network, the graph's records or the images are touched (all None
    or stubs here)."""
    layer_cfg = egjax.LayerConfig(map_size=28, stride=8, center=3.5, density=0.05,
                                  tap="conv4_2")
    graph = types.SimpleNamespace(config=egjax.GraphConfig(layers=(layer_cfg,)))
    with pytest.raises(ValueError, match=match):
        synthesis.synthesize(None, None, None, graph, {}, None, layer=layer,
                             key=jax.random.key(0), keep=keep)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        synthesis.synthesize(None, None, None, graph, {}, None, layer="conv4_2",
                             key=jax.random.key(0), settings=synthesis.Settings(steps=0))
