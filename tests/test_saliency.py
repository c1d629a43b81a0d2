import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egjax import saliency
from egjax.models import VGG16
from protocol_models import TRACES, GapCNN, LinearClassifier, random_params
from vgg_weight_files import random_params as vgg_random_params

H = W = 8
NUM_CLASSES = 3


def _images(seed, n, size=H, channels=3):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, channels)),
                       jnp.float32)


@pytest.fixture(scope="module")
def linear():
    model = LinearClassifier(NUM_CLASSES)
    params = random_params(model, (1, H, W, 3), seed=0)
    return model, params


@pytest.fixture(scope="module")
def cnn():
    model = GapCNN(NUM_CLASSES)
    params = random_params(model, (1, 16, 16, 3), seed=1)
    return model, params


def _kernel(params):
    """The linear model's weights as `[H, W, C, num_classes]`."""
    return np.asarray(params["dense"]["kernel"]).reshape(H, W, 3, NUM_CLASSES)


def _apply(model, params, images, tap):
    return np.asarray(jax.jit(model.apply, static_argnames="taps")(
        {"params": params}, images, taps=(tap,))[tap])


def _upsample(maps, factor):
    """Bilinear upsampling with half-pixel centres and clamped edges, by hand: `[N, h, w]`."""
    def along(x, axis):
        size = x.shape[axis]
        source = (np.arange(size * factor) + 0.5) / factor - 0.5
        low = np.floor(source).astype(int)
        frac = source - low
        pick = lambda i: np.take(x, np.clip(i, 0, size - 1), axis=axis)   # noqa: E731
        shape = [1] * x.ndim
        shape[axis] = -1
        return pick(low) * (1 - frac.reshape(shape)) + pick(low + 1) * frac.reshape(shape)
    return along(along(maps, 1), 2)


def test_gradient_of_linear_model_is_its_weights(linear):
    model, params = linear
    images, targets = _images(1, 4), np.array([0, 2, 1, 2])
    weights = _kernel(params)[..., targets].transpose(3, 0, 1, 2)        # [N, H, W, C]
    signed = saliency.gradient(model, params, images, targets, channel_reduce="sum")
    np.testing.assert_allclose(signed, weights.sum(-1), rtol=1e-5, atol=1e-6)
    norm = saliency.gradient(model, params, images, targets, channel_reduce="l2")
    np.testing.assert_allclose(norm, np.linalg.norm(weights, axis=-1), rtol=1e-5)
    simonyan = saliency.gradient(model, params, images, targets)
    np.testing.assert_allclose(simonyan, np.abs(weights).max(-1), rtol=1e-5)


def test_gradient_x_input_of_linear_model(linear):
    model, params = linear
    images, targets = _images(2, 3), np.array([1, 1, 0])
    weights = _kernel(params)[..., targets].transpose(3, 0, 1, 2)
    maps = saliency.gradient_x_input(model, params, images, targets)
    np.testing.assert_allclose(maps, (np.asarray(images) * weights).sum(-1), rtol=1e-5, atol=1e-6)
    logits = _apply(model, params, images, "logits")
    target_logit = logits[np.arange(3), targets] - np.asarray(params["dense"]["bias"])[targets]
    np.testing.assert_allclose(np.sum(maps, axis=(1, 2)), target_logit, rtol=1e-4, atol=1e-5)


def test_gradient_methods_of_linear_model_from_one_pass(linear):
    model, params = linear
    images, targets = _images(3, 3), np.array([2, 0, 1])
    weights = _kernel(params)[..., targets].transpose(3, 0, 1, 2)        # [N, H, W, C]
    maps = saliency.gradient_methods(model, params, images, targets, batch_size=2)
    assert list(maps) == ["gradient", "gradient_x_input", "sensitivity"]
    np.testing.assert_allclose(maps["gradient"], np.abs(weights).max(-1), rtol=1e-5)
    np.testing.assert_allclose(maps["gradient_x_input"], (np.asarray(images) * weights).sum(-1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps["sensitivity"], (weights ** 2).sum(-1), rtol=1e-5)


def test_batched_equals_per_image_even_if_the_model_couples_the_batch():
    model = LinearClassifier(NUM_CLASSES, coupled=True)
    params = random_params(model, (1, H, W, 3), seed=3)
    images, targets = _images(4, 3), np.array([2, 0, 1])
    batched = saliency.gradient(model, params, images, targets, channel_reduce="sum")
    alone = [saliency.gradient(model, params, images[i:i + 1], targets[i:i + 1],
                               channel_reduce="sum")[0] for i in range(3)]
    np.testing.assert_allclose(batched, np.stack(alone), rtol=1e-6)
    # On its own, the coupled model scales image i's logits by 1.5.
    weights = _kernel(params)[..., targets].transpose(3, 0, 1, 2)
    np.testing.assert_allclose(batched, 1.5 * weights.sum(-1), rtol=1e-5, atol=1e-6)


def test_cam_equals_grad_cam_times_map_area_before_relu(cnn):
    model, params = cnn
    images, targets = _images(5, 3, 16), np.array([0, 1, 2])
    cam = saliency.cam(model, params, images, targets, relu=False)
    grad_cam = saliency.grad_cam(model, params, images, targets, relu=False)  # at relu5_3
    area = 8 * 8                                               # relu5_3 is 8 x 8 here
    np.testing.assert_allclose(grad_cam * area, cam, rtol=1e-4, atol=1e-5)
    assert np.abs(cam).max() > 0
    cam_max = saliency.cam(model, params, images, targets, normalize="max")
    grad_cam_max = saliency.grad_cam(model, params, images, targets, tap="relu5_3",
                                     normalize="max")
    np.testing.assert_allclose(grad_cam_max, cam_max, atol=1e-5)


def test_grad_cam_on_vgg16_is_cam_up_to_a_positive_scale_per_image():
    model = VGG16(width=1 / 16, head="gap", num_classes=NUM_CLASSES)
    params = vgg_random_params(model, seed=0)
    images, targets = _images(16, 3, 64), np.array([0, 1, 2])
    cam = np.asarray(saliency.cam(model, params, images, targets))
    grad_cam = np.asarray(saliency.grad_cam(model, params, images, targets))
    assert cam.shape == grad_cam.shape == (3, 64, 64)
    assert (cam.max(axis=(1, 2)) > 0).all()
    scale = (cam * grad_cam).sum(axis=(1, 2)) / (grad_cam * grad_cam).sum(axis=(1, 2))
    assert (scale > 0).all()
    np.testing.assert_allclose(grad_cam * scale[:, None, None], cam, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scale, 4 * 4, rtol=1e-4)        # relu5_3 is 4 x 4 at 64 px


def test_cam_is_the_class_weighted_map_upsampled(cnn):
    model, params = cnn
    images, targets = _images(6, 2, 16), np.array([1, 2])
    features = _apply(model, params, images, "relu5_3")                 # [2, 8, 8, 4]
    kernel = np.asarray(params["logits"]["kernel"])
    signed = np.einsum("nhwk,kn->nhw", features, kernel[:, targets])
    assert signed.max() > 0 > signed.min()
    np.testing.assert_allclose(saliency.cam(model, params, images, targets, relu=False),
                               _upsample(signed, 2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(saliency.cam(model, params, images, targets),
                               _upsample(np.maximum(signed, 0), 2), rtol=1e-5, atol=1e-5)
    flipped = {"kernel": -kernel}                              # an explicit head is used
    np.testing.assert_allclose(
        saliency.cam(model, params, images, targets, head=flipped, relu=False),
        -saliency.cam(model, params, images, targets, relu=False), rtol=1e-5, atol=1e-6)


def test_grad_cam_at_an_early_tap_matches_a_hand_written_backward_pass(cnn):
    model, params = cnn
    images, targets = _images(7, 2, 16), jnp.array([1, 2])
    features = _apply(model, params, images, "relu1_1")

    def rest_of_network(a, target):                            # relu1_1 -> logit, by hand
        x = nn.max_pool(a[None], (2, 2), (2, 2))
        x = nn.Conv(4, (3, 3)).apply({"params": params["block5_conv3"]}, x)
        gap = jax.nn.relu(x).mean(axis=(1, 2))
        return (gap @ params["logits"]["kernel"] + params["logits"]["bias"])[0, target]

    grads = np.asarray(jax.jit(jax.vmap(jax.grad(rest_of_network)))(features, targets))
    expected = np.einsum("nhwk,nk->nhw", features, grads.mean(axis=(1, 2)))
    assert expected.max() > 0 > expected.min()
    np.testing.assert_allclose(
        saliency.grad_cam(model, params, images, targets, tap="relu1_1", relu=False),
        expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["gradient", "cam", "grad_cam"])
def test_chunked_equals_unchunked(cnn, method):
    model, params = cnn
    images, targets = _images(8, 5, 16), np.array([0, 1, 2, 0, 1])
    explain = getattr(saliency, method)
    kwargs = {"tap": "conv5_3"} if method == "grad_cam" else {}
    whole = explain(model, params, images, targets, **kwargs)
    chunked = explain(model, params, images, targets, batch_size=2, **kwargs)
    assert whole.shape == (5, 16, 16)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_compiles_once_per_shape(cnn):
    model, params = cnn                                        # 12 px: a size no other test uses
    targets = jnp.array([0, 1, 2])
    saliency.grad_cam(model, params, _images(9, 3, 12), targets, tap="conv5_3")
    traces = len(TRACES)
    saliency.grad_cam(model, params, _images(10, 3, 12), targets + 0, tap="conv5_3")
    saliency.grad_cam(model, params, _images(11, 3, 12), targets, tap="conv5_3")
    assert len(TRACES) == traces
    saliency.grad_cam(model, params, _images(12, 2, 12), targets[:2], tap="conv5_3")
    assert len(TRACES) > traces                                # a new shape traces again


@pytest.mark.parametrize("normalize", ["max", "minmax"])
def test_normalisation_ranges(cnn, normalize):
    model, params = cnn
    images, targets = _images(13, 3, 16), np.array([0, 1, 2])
    raw = np.asarray(saliency.cam(model, params, images, targets, relu=False))
    maps = np.asarray(saliency.cam(model, params, images, targets, relu=False,
                                   normalize=normalize))
    if normalize == "max":
        expected = raw / np.abs(raw).max(axis=(1, 2), keepdims=True)
    else:
        low = raw.min(axis=(1, 2), keepdims=True)
        expected = (raw - low) / (raw.max(axis=(1, 2), keepdims=True) - low)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(maps).max() == pytest.approx(1.0)


def test_constant_map_normalises_to_zero(cnn):
    model, params = cnn
    zero_head = {"kernel": jnp.zeros_like(params["logits"]["kernel"])}
    for normalize in ("max", "minmax"):
        maps = saliency.cam(model, params, _images(14, 2, 16), jnp.array([0, 1]),
                            head=zero_head, normalize=normalize)
        np.testing.assert_array_equal(maps, 0.0)


def test_bad_input_raises_before_work(cnn, linear):
    model, params = cnn
    images, targets = _images(15, 2, 16), jnp.array([0, 1])
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        saliency.gradient(model, params, images[0], targets)
    with pytest.raises(ValueError, match="one class per image"):
        saliency.gradient(model, params, images, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        saliency.gradient(model, params, images, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        saliency.gradient(model, params, images, jnp.array([0, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        saliency.cam(model, params, images, jnp.array([-1, 0]))
    with pytest.raises(ValueError, match="unknown taps"):
        saliency.grad_cam(model, params, images, targets, tap="conv9_9")
    with pytest.raises(ValueError, match="conv map"):
        saliency.grad_cam(model, params, images, targets, tap="gap")
    with pytest.raises(ValueError, match="normalize"):
        saliency.cam(model, params, images, targets, normalize="softmax")
    with pytest.raises(ValueError, match="channel_reduce"):
        saliency.gradient(model, params, images, targets, channel_reduce="mean")
    with pytest.raises(ValueError, match="batch_size"):
        saliency.cam(model, params, images, targets, batch_size=0)
    with pytest.raises(ValueError, match="NaN"):
        saliency.cam(model, params, images.at[0, 0, 0, 0].set(jnp.nan), targets)
    with pytest.raises(ValueError, match="kernel"):
        saliency.cam(model, params, images, targets, tap="relu1_1",
                     head={"kernel": jnp.zeros((5, 3))})
    linear_model, linear_params = linear
    with pytest.raises(ValueError, match="params\\['logits'\\]"):
        saliency.cam(linear_model, linear_params, _images(0, 2), targets)
    plain = GapCNN(NUM_CLASSES, perturbable=False)
    with pytest.raises(ValueError, match=r"self\.perturb"):
        saliency.grad_cam(plain, params, images, targets, tap="conv5_3")
