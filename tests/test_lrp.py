"""`saliency.lrp` and `saliency.sensitivity` on tiny networks, against answers that do not
come from the propagation under test: autodiff's gradient x input, the logits, and the rules
of Montavon et al. (2019) written out in NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egjax import saliency
from egjax.models import propagation
from egjax.models import VGG16
from egjax.models.resnet import ResNet50
from protocol_models import LinearClassifier, numpy_init, random_params
from vgg_weight_files import random_params as vgg_random_params

NUM_CLASSES = 3


class TinyCNN(nn.Module):
    """conv 3x3 -> ReLU -> max pool 2 -> conv 1x1 -> ReLU -> conv 1x1 -> ReLU -> mean -> dense;
    `residual`: the two 1x1 convs are the body of a residual block (then a ReLU)."""

    residual: bool = False

    @property
    def lrp_layers(self):
        s = propagation
        top = (s.Conv("c2"), s.ReLU(), s.Conv("c3"))
        middle = (s.Residual(top), s.ReLU()) if self.residual else (*top[:2], *top[2:], s.ReLU())
        return (s.Conv("c1", 1, 1), s.ReLU(), s.MaxPool(2, 2), *middle, s.GlobalMean(),
                s.Dense("dense"))

    @nn.compact
    def __call__(self, images, taps=("logits",)):
        x = nn.max_pool(nn.relu(nn.Conv(3, (3, 3), padding=1, name="c1")(images)), (2, 2), (2, 2))
        body = nn.Conv(4 if not self.residual else 3, (1, 1), name="c2")(x)
        body = nn.Conv(4 if not self.residual else 3, (1, 1), name="c3")(nn.relu(body))
        x = nn.relu(body + x if self.residual else body)
        return {"logits": nn.Dense(NUM_CLASSES, name="dense")(x.mean(axis=(1, 2)))}


class Norm(nn.Module):
    """Inference batch norm with its statistics among the params."""

    @nn.compact
    def __call__(self, x):
        p = {k: self.param(k, nn.initializers.ones, (3,)) for k in ("scale", "bias", "mean", "var")}
        return (x - p["mean"]) / jnp.sqrt(p["var"] + 1e-5) * p["scale"] + p["bias"]


class NormCNN(nn.Module):
    """conv 3x3 -> batch norm (inference: stored mean and var) -> ReLU -> mean -> dense."""

    @property
    def lrp_layers(self):
        return (propagation.Conv("conv", 1, 1, norm="bn"), propagation.ReLU(),
                propagation.GlobalMean(), propagation.Dense("dense"))

    @nn.compact
    def __call__(self, images, taps=("logits",)):
        x = Norm(name="bn")(nn.Conv(3, (3, 3), padding=1, name="conv")(images))
        return {"logits": nn.Dense(NUM_CLASSES, name="dense")(nn.relu(x).mean(axis=(1, 2)))}


class Folded(nn.Module):
    """NormCNN with its batch norm folded into the conv by hand."""

    lrp_layers = (propagation.Conv("conv", 1, 1), propagation.ReLU(), propagation.GlobalMean(),
                  propagation.Dense("dense"))

    @nn.compact
    def __call__(self, images, taps=("logits",)):
        x = nn.relu(nn.Conv(3, (3, 3), padding=1, name="conv")(images))
        return {"logits": nn.Dense(NUM_CLASSES, name="dense")(x.mean(axis=(1, 2)))}


def _images(seed, n, size=8, positive=False):
    rng, shape = np.random.default_rng(seed), (n, size, size, 2)
    values = rng.uniform(0, 1, shape) if positive else rng.normal(size=shape)
    return jnp.asarray(values, jnp.float32)


def _zero_biases(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if path[-1].key == "bias" else x, params)


def _logits(model, params, images):
    return np.asarray(model.apply({"params": params}, images, taps=("logits",))["logits"])


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "residual"])
def tiny(request):
    model = TinyCNN(residual=request.param)
    return model, random_params(model, (1, 8, 8, 2), seed=3)


def test_lrp0_is_gradient_x_input_and_conserves_without_biases(tiny):
    model, params = tiny
    params = _zero_biases(params)
    images, targets = _images(0, 3), np.array([0, 2, 1])
    lrp0 = np.asarray(saliency.lrp(model, params, images, targets, rule="0"))
    expected = np.asarray(saliency.gradient_x_input(model, params, images, targets))
    np.testing.assert_allclose(lrp0, expected, rtol=1e-4, atol=1e-6)
    logit = _logits(model, params, images)[np.arange(3), targets]
    np.testing.assert_allclose(lrp0.sum(axis=(1, 2)), logit, rtol=1e-5)
    # epsilon = 0 is LRP-0; a small epsilon absorbs little, a large one much.
    np.testing.assert_allclose(saliency.lrp(model, params, images, targets, rule="epsilon",
                                            epsilon=0.0), lrp0, rtol=1e-5, atol=1e-7)
    small = np.asarray(saliency.lrp(model, params, images, targets, rule="epsilon",
                                    epsilon=1e-3)).sum(axis=(1, 2))
    np.testing.assert_allclose(small, logit, rtol=1e-2)
    assert not np.allclose(small, logit, rtol=1e-6)


def test_epsilon_absorbs_exactly_its_share_on_one_dense_layer():
    model = LinearClassifier(NUM_CLASSES)
    model_layers = (propagation.Flatten(), propagation.Dense("dense"))
    object.__setattr__(model, "lrp_layers", model_layers)   # a Flax module is frozen
    params = _zero_biases(random_params(model, (1, 8, 8, 3), seed=4))
    images = jnp.asarray(np.random.default_rng(5).normal(size=(2, 8, 8, 3)), jnp.float32)
    targets = np.array([1, 2])
    logits = _logits(model, params, images)
    z = logits[np.arange(2), targets]
    stab = 1e-9 + 0.5 * np.sqrt((logits ** 2).mean(axis=1))
    relevance = saliency.lrp(model, params, images, targets, rule="epsilon", epsilon=0.5)
    np.testing.assert_allclose(np.asarray(relevance).sum(axis=(1, 2)),
                               z * z / (z + np.sign(z) * stab), rtol=1e-5)


def test_zplus_is_non_negative(tiny):
    model, params = tiny
    images = _images(1, 6, positive=True)
    logits = _logits(model, params, images)
    targets = np.argmax(logits, axis=1)
    assert (logits[np.arange(6), targets] > 0).all()
    relevance = np.asarray(saliency.lrp(model, params, images, targets, rule="zplus"))
    assert relevance.min() >= 0 and relevance.max() > 0
    gamma = np.asarray(saliency.lrp(model, params, images, targets, rule="gamma", gamma=0.5))
    assert gamma.min() < 0              # gamma keeps negative contributions, z+ does not


def _composite_by_hand(params, image, target):
    """The composite (z^B, gamma, epsilon, 0, 0) on TinyCNN(residual=False), in NumPy loops."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    x = np.asarray(image, np.float64)
    w1, b1 = p["c1"]["kernel"], p["c1"]["bias"]
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))

    def conv1(source, w, b):
        return sum(source[i:i + 8, j:j + 8] @ w[i, j] for i in range(3) for j in range(3)) + b

    a1 = np.maximum(conv1(padded, w1, b1), 0)                           # [8, 8, 3]
    windows = a1.reshape(4, 2, 4, 2, 3).transpose(0, 2, 4, 1, 3).reshape(4, 4, 3, 4)
    a2 = windows.max(axis=-1)                                           # [4, 4, 3]
    w2, b2 = p["c2"]["kernel"][0, 0], p["c2"]["bias"]
    a3 = np.maximum(a2 @ w2 + b2, 0)
    w3, b3 = p["c3"]["kernel"][0, 0], p["c3"]["bias"]
    z4 = a3 @ w3 + b3
    a4 = np.maximum(z4, 0)
    a5 = a4.mean(axis=(0, 1))
    wd, bd = p["dense"]["kernel"], p["dense"]["bias"]
    logit = a5 @ wd[:, target] + bd[target]
    r5 = a5 * wd[:, target] * logit / logit                             # LRP-0, dense
    r4 = a4 / 16 * np.divide(r5, a5, out=np.zeros(4), where=a5 > 0)    # LRP-0, mean
    stab = 0.25 * np.sqrt(np.mean(z4 ** 2))                             # epsilon, c3
    r3 = a3 * ((r4 / (z4 + np.where(z4 >= 0, stab, -stab))) @ w3.T)
    g2, gb2 = w2 + 0.25 * np.maximum(w2, 0), b2 + 0.25 * np.maximum(b2, 0)   # gamma, c2
    r2 = a2 * ((r3 / (a2 @ g2 + gb2)) @ g2.T)
    winner = windows.argmax(axis=-1)                                    # max pool
    r1 = np.zeros((4, 4, 3, 4))
    np.put_along_axis(r1, winner[..., None], r2[..., None], axis=-1)
    r1 = r1.reshape(4, 4, 3, 2, 2).transpose(0, 3, 1, 4, 2).reshape(8, 8, 3)
    low, high = x.min(axis=(0, 1)), x.max(axis=(0, 1))                  # z^B, c1
    lows, highs = np.pad(np.broadcast_to(low, x.shape), ((1, 1), (1, 1), (0, 0))), \
        np.pad(np.broadcast_to(high, x.shape), ((1, 1), (1, 1), (0, 0)))
    positive, negative = np.maximum(w1, 0), np.minimum(w1, 0)
    z1 = conv1(padded, w1, b1) - conv1(lows, positive, np.maximum(b1, 0)) \
        - conv1(highs, negative, np.minimum(b1, 0))
    s = r1 / z1
    relevance = np.zeros((10, 10, 2))
    for i in range(3):
        for j in range(3):
            relevance[i:i + 8, j:j + 8] += (padded[i:i + 8, j:j + 8] * (s @ w1[i, j].T)
                                            - lows[i:i + 8, j:j + 8] * (s @ positive[i, j].T)
                                            - highs[i:i + 8, j:j + 8] * (s @ negative[i, j].T))
    return relevance[1:9, 1:9].sum(axis=-1)


def test_composite_matches_the_rules_written_out_by_hand():
    model = TinyCNN()
    params = random_params(model, (1, 8, 8, 2), seed=6)
    images, targets = _images(2, 2), np.array([2, 0])
    relevance = np.asarray(saliency.lrp(model, params, images, targets))
    for n in range(2):
        expected = _composite_by_hand(params, images[n], targets[n])
        np.testing.assert_allclose(relevance[n], expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max())
    assert saliency._lrp_rules(model.lrp_layers, "composite") == (
        ((0,), "zB"), ((3,), "gamma"), ((5,), "epsilon"), ((7,), "0"), ((8,), "0"))


def test_batched_equals_per_image():
    model = TinyCNN(residual=True)
    params = random_params(model, (1, 8, 8, 2), seed=3)
    images, targets = _images(3, 5), np.array([0, 1, 2, 0, 1])
    whole = np.asarray(saliency.lrp(model, params, images, targets))
    alone = saliency.lrp(model, params, images, targets, batch_size=1)    # one image at a time
    np.testing.assert_allclose(alone, whole, rtol=1e-5, atol=1e-7)


def test_batch_norm_is_folded_into_its_conv():
    model = NormCNN()
    rng = np.random.default_rng(7)
    params = random_params(model, (1, 8, 8, 2), seed=7)
    params["bn"] = {"scale": rng.uniform(0.5, 2, 3), "bias": rng.normal(size=3),
                    "mean": rng.normal(size=3), "var": rng.uniform(0.5, 2, 3)}
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    bn = params["bn"]
    factor = np.asarray(bn["scale"]) / np.sqrt(np.asarray(bn["var"]) + 1e-5)
    folded = {"dense": params["dense"], "conv": {
        "kernel": np.asarray(params["conv"]["kernel"]) * factor,
        "bias": (np.asarray(params["conv"]["bias"]) - np.asarray(bn["mean"])) * factor
        + np.asarray(bn["bias"])}}
    images, targets = _images(8, 2), np.array([1, 0])
    np.testing.assert_allclose(_logits(model, params, images),
                               _logits(Folded(), folded, images), rtol=1e-5)
    for rule in ("composite", "zplus"):
        np.testing.assert_allclose(saliency.lrp(model, params, images, targets, rule=rule),
                                   saliency.lrp(Folded(), folded, images, targets, rule=rule),
                                   rtol=1e-4, atol=1e-6)


def test_vgg16_layer_list_is_the_network():
    for head, size in (("gap", 32), ("fc", 224)):
        model = VGG16(width=1 / 32, head=head, num_classes=NUM_CLASSES)
        params = vgg_random_params(model, seed=0)
        images = jnp.asarray(np.random.default_rng(9).normal(size=(1, size, size, 3)), jnp.float32)
        logits, _ = jax.jit(saliency._lrp_forward, static_argnums=0)(model.lrp_layers, params,
                                                                    images)
        np.testing.assert_allclose(logits, _logits(model, params, images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["v1.5", "v1"])
def test_resnet50_layer_list_is_the_network_and_lrp0_is_gradient_x_input(variant):
    """Both variants: the layer list reproduces the logits; with zero biases (a ReLU network
    with max pooling) LRP-0 equals gradient x input and sums to the target logit."""
    model = ResNet50(width=1 / 16, head="gap", num_classes=NUM_CLASSES, variant=variant)
    images = jnp.asarray(np.random.default_rng(4).normal(size=(2, 32, 32, 3)), jnp.float32)
    params = numpy_init(model, images[:1].shape, seed=1)["params"]
    params = jax.tree.map(lambda x: x * 4.0, params)     # keep the signal alive over 50 layers
    params = _zero_biases(params)
    logits, _ = jax.jit(saliency._lrp_forward, static_argnums=0)(model.lrp_layers, params,
                                                                images)
    expected_logits = _logits(model, params, images)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)
    targets = np.array([0, 2])
    lrp0 = np.asarray(saliency.lrp(model, params, images, targets, rule="0"))
    expected = np.asarray(saliency.gradient_x_input(model, params, images, targets))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(lrp0, expected, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(lrp0.sum(axis=(1, 2)), expected_logits[np.arange(2), targets],
                               rtol=1e-3)


def test_sensitivity_is_the_squared_gradient_summed_over_channels():
    model = LinearClassifier(NUM_CLASSES)
    params = random_params(model, (1, 8, 8, 3), seed=10)
    images, targets = jnp.asarray(np.random.default_rng(11).normal(size=(2, 8, 8, 3)),
                                  jnp.float32), np.array([2, 0])
    weights = np.asarray(params["dense"]["kernel"]).reshape(8, 8, 3, NUM_CLASSES)
    expected = (weights[..., targets] ** 2).sum(axis=2).transpose(2, 0, 1)
    np.testing.assert_allclose(saliency.sensitivity(model, params, images, targets), expected,
                               rtol=1e-5)


def test_bad_input_raises_before_work(tiny):
    model, params = tiny
    images, targets = _images(4, 2), np.array([0, 1])
    with pytest.raises(ValueError, match="rule must be one of"):
        saliency.lrp(model, params, images, targets, rule="alpha2beta1")
    with pytest.raises(ValueError, match="epsilon must be"):
        saliency.lrp(model, params, images, targets, epsilon=-1.0)
    with pytest.raises(ValueError, match="lrp_layers"):
        saliency.lrp(LinearClassifier(NUM_CLASSES), params, images, targets)
    with pytest.raises(ValueError, match="'c2'"):
        saliency.lrp(model, {k: v for k, v in params.items() if k != "c2"}, images, targets)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        saliency.lrp(model, params, images, np.array([0, 3]))
    with pytest.raises(ValueError, match="bounds"):
        saliency.lrp(model, params, images, targets, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="head='fc' or 'gap'"):
        VGG16(width=1 / 32, head=None).lrp_layers
