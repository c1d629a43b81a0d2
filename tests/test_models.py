"""The Flax VGG-16: topology, taps and their semantics, early stopping, input checks,
preprocessing conventions, the Winograd convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egjax.models import VGG16, ModelMeta, param_shapes, preprocess, trunk_layers, winograd
from vgg_weight_files import random_params

NARROW = VGG16(width=0.125, head="gap", num_classes=6)


@pytest.fixture(scope="module")
def narrow_params():
    return random_params(NARROW, seed=0)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(0, 1, (2, 32, 40, 3)).astype(np.float32)


def test_topology_is_vgg16_configuration_d():
    layers = trunk_layers()
    convs = [layer for layer in layers if layer.kind == "conv"]
    pools = [layer for layer in layers if layer.kind == "pool"]
    assert [c.features for c in convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert all((c.kernel, c.stride, c.padding) == (3, 1, 1) for c in convs)
    assert [p.name for p in pools] == ["pool1", "pool2", "pool3", "pool4", "pool5"]
    assert all((p.kernel, p.stride, p.padding) == (2, 2, 0) for p in pools)
    shapes = param_shapes(VGG16())
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == 138_357_544
    assert shapes["fc6"]["kernel"].shape == (7 * 7 * 512, 4096)


def test_width_scales_channels_and_keeps_at_least_one():
    assert [l.features for l in trunk_layers(0.5) if l.kind == "conv"][:3] == [32, 32, 64]
    assert all(l.features == 1 for l in trunk_layers(1e-3) if l.kind == "conv")
    shapes = param_shapes(VGG16(width=0.25, head="fc", num_classes=3))
    assert shapes["fc6"]["kernel"].shape == (7 * 7 * 128, 1024)
    assert shapes["logits"]["kernel"].shape == (1024, 3)


def test_taps_have_their_meaning(narrow_params, images):
    taps = NARROW.apply({"params": narrow_params}, images, taps=NARROW.tap_names)
    assert list(taps) == list(NARROW.tap_names)
    assert taps["conv1_1"].shape == (2, 32, 40, 8)
    assert taps["conv5_3"].shape == (2, 2, 2, 64) and taps["pool5"].shape == (2, 1, 1, 64)
    kernel, bias = narrow_params["conv1_1"]["kernel"], narrow_params["conv1_1"]["bias"]
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = sum(padded[:, i:i + 32, j:j + 40] @ kernel[i, j] for i in range(3) for j in range(3))
    np.testing.assert_allclose(taps["conv1_1"], conv + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(taps["relu4_2"], np.maximum(taps["conv4_2"], 0))
    relu = np.asarray(taps["relu3_3"])
    pooled = relu.reshape(2, 4, 2, 5, 2, 32).max(axis=(2, 4))
    np.testing.assert_array_equal(taps["pool3"], pooled)
    gap = np.asarray(taps["relu5_3"]).mean(axis=(1, 2))
    np.testing.assert_allclose(taps["gap"], gap, rtol=1e-6, atol=1e-7)
    logits = gap @ narrow_params["logits"]["kernel"] + narrow_params["logits"]["bias"]
    np.testing.assert_allclose(taps["logits"], logits, rtol=1e-5, atol=1e-6)


def test_default_tap_is_the_top(narrow_params, images):
    assert list(NARROW.apply({"params": narrow_params}, images)) == ["logits"]
    no_head = VGG16(width=0.125, head=None)
    params = {k: v for k, v in narrow_params.items() if k != "logits"}
    assert list(no_head.apply({"params": params}, images)) == ["pool5"]


def test_layers_above_the_highest_tap_do_not_run(narrow_params, images):
    lower = {k: narrow_params[k] for k in ("conv1_1", "conv1_2", "conv2_1")}
    taps = NARROW.apply({"params": lower}, images, taps=("conv1_2", "relu2_1"))
    assert set(taps) == {"conv1_2", "relu2_1"}
    with pytest.raises(Exception, match="conv2_2"):
        NARROW.apply({"params": lower}, images, taps=("conv2_2",))


def test_unknown_taps_list_the_valid_ones(narrow_params, images):
    with pytest.raises(ValueError, match="valid taps: conv1_1, relu1_1"):
        NARROW.apply({"params": narrow_params}, images, taps=("conv4_4",))
    with pytest.raises(ValueError, match="fc6"):
        NARROW.apply({"params": narrow_params}, images, taps=("fc6",))


@pytest.mark.parametrize("shape, dtype, match", [
    ((32, 32, 3), np.float32, "shape"),
    ((1, 32, 32, 1), np.float32, "shape"),
    ((1, 3, 32, 32), np.float32, "shape"),
    ((1, 32, 32, 3), np.uint8, "preprocess"),
])
def test_bad_images_are_refused(narrow_params, shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        NARROW.apply({"params": narrow_params}, np.zeros(shape, dtype), taps=("conv1_1",))


def test_fc_head_needs_224_px_but_conv_taps_do_not():
    model = VGG16(width=0.125, head="fc", num_classes=4)
    params = random_params(model, seed=1)
    small = np.zeros((1, 64, 64, 3), np.float32)
    maps = model.apply({"params": params}, small, taps=("conv5_3",))["conv5_3"]
    assert maps.shape == (1, 4, 4, 64)
    with pytest.raises(ValueError, match="224"):
        model.apply({"params": params}, small, taps=("fc6",))


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": float("nan")}, {"head": "avg"},
                                    {"num_classes": 0}])
def test_bad_model_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        VGG16(**kwargs)


def test_apply_jits_with_static_taps(narrow_params, images):
    apply = jax.jit(NARROW.apply, static_argnames="taps")
    out = apply({"params": narrow_params}, images, taps=("conv4_2",))
    eager = NARROW.apply({"params": narrow_params}, images, taps=("conv4_2",))
    np.testing.assert_allclose(out["conv4_2"], eager["conv4_2"], rtol=1e-5, atol=1e-6)


def test_preprocess_conventions_by_hand():
    pixel = np.array([[[[10, 20, 30]]]], np.uint8)
    caffe = ModelMeta(source="x", preprocessing="caffe")
    np.testing.assert_allclose(preprocess(pixel, caffe)[0, 0, 0],
                               [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
    torch = ModelMeta(source="x", preprocessing="torch")
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(preprocess(pixel, torch)[0, 0, 0], expected, rtol=1e-6)
    assert preprocess(pixel, torch).dtype == jnp.float32
    with pytest.raises(ValueError, match="uint8"):
        preprocess(pixel.astype(np.float32), torch)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(pixel[0], torch)


def test_meta_round_trip_and_validation():
    meta = ModelMeta(source="keras", width=0.5, head="gap", num_classes=3, preprocessing="torch")
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    assert meta.model() == VGG16(width=0.5, head="gap", num_classes=3)
    with pytest.raises(ValueError, match="preprocessing"):
        ModelMeta(source="x", preprocessing="tf")
    with pytest.raises(ValueError, match="colour"):
        ModelMeta.from_dict({"source": "x", "colour": "bgr"})
    named = ModelMeta(source="synthetic", head="gap", num_classes=2, classes=["none", "bird"])
    assert named.classes == ("none", "bird") and ModelMeta.from_dict(named.to_dict()) == named
    with pytest.raises(ValueError, match="num_classes"):
        ModelMeta(source="x", num_classes=3, classes=("a", "b"))
    with pytest.raises(ValueError, match="classes"):
        ModelMeta(source="x", num_classes=1, classes="a")


@pytest.mark.parametrize("shape, features", [((2, 7, 9, 5), 6), ((1, 14, 14, 32), 8),
                                             ((3, 1, 2, 4), 3)])
def test_winograd_equals_the_direct_convolution(shape, features):
    rng = np.random.default_rng(0)
    images = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(3, 3, shape[-1], features)).astype(np.float32)
    direct = jax.lax.conv_general_dilated(images, kernel, (1, 1), ((1, 1), (1, 1)),
                                          dimension_numbers=winograd.NHWC_HWIO,
                                          precision=jax.lax.Precision.HIGHEST)
    fast = winograd.conv3x3(images, kernel)
    assert fast.shape == direct.shape
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-5 * np.abs(direct).max())


def test_conv_hook_takes_winograd_only_where_it_applies():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(1, 6, 6, 4)).astype(np.float32)
    numbers = jax.lax.conv_dimension_numbers(images.shape, (3, 3, 4, 1), winograd.NHWC_HWIO)

    def both(kernel, strides=(1, 1), padding=((1, 1), (1, 1))):
        hook = winograd.conv_general_dilated(images, kernel, strides, padding,
                                             dimension_numbers=numbers)
        lax = jax.lax.conv_general_dilated(images, kernel, strides, padding,
                                           dimension_numbers=numbers)
        return np.asarray(hook), np.asarray(lax)

    wide = rng.normal(size=(3, 3, 4, winograd.MIN_FEATURES)).astype(np.float32)
    hook, _ = both(wide)
    np.testing.assert_array_equal(hook, winograd.conv3x3(images, wide))
    narrow = wide[..., :8]
    for case in (both(narrow), both(wide, strides=(2, 2)), both(wide[:1, :1], padding="SAME")):
        np.testing.assert_array_equal(*case)
