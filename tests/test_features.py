"""Feature pipeline: normalisation and MATLAB uint8 quantisation by hand, streaming negative
statistics, extraction with flips against the model itself, one compile, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egjax import features as F
from egjax import maps as M
from egjax.models import VGG16, ModelMeta, preprocess
from vgg_weight_files import random_params

MODEL = VGG16(width=0.125, head=None)
META = ModelMeta(source="test", width=0.125, head=None, preprocessing="caffe")
TAPS = ("conv4_2", "conv5_3")
DEAD = 3  # conv4_2 channel with a zero kernel: constant over images, sd exactly 0


@pytest.fixture(scope="module")
def params():
    params = random_params(MODEL, seed=0)
    params["conv4_2"]["kernel"][..., DEAD] = 0.0
    return params


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (10, 48, 48, 3), dtype=np.uint8)


def test_normalize_by_hand():
    maps = np.array([[[[-1.0, 0.0, 0.5, 2.0, 3.0]]]], np.float32)
    sd = np.array([[[1.0, 2.0, 0.5, 0.0, 4.0]]], np.float32)
    np.testing.assert_array_equal(F.normalize(maps, sd), [[[[-1, -1, 1, -1, 0.75]]]])


def test_normalize_divides_exactly():
    rng = np.random.default_rng(2)
    maps = rng.uniform(0.1, 10, (3, 5, 5, 7)).astype(np.float32)
    sd = rng.uniform(0.1, 3, (5, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(jax.jit(F.normalize)(maps, sd), maps / sd)


def test_to_uint8_is_matlab_uint8():
    values = np.array([-3.7, -0.5, 0.49999997, 0.5, 1.5, 2.5, 3.5, 254.5, 255.4, 300.0,
                       np.inf, -np.inf, np.nan], np.float32)
    expected = [0, 0, 0, 1, 2, 3, 4, 255, 255, 255, 255, 0, 0]
    np.testing.assert_array_equal(M.to_uint8(values), expected)


def test_quantize_by_hand():
    # channel 0: min 1, range 255 -> (x - min) * 1 = 0, 0.5, 2.5, 255: half away from zero
    # channel 1: constant -> range 0 -> q = 0, dequantised to the constant
    maps = np.zeros((1, 2, 2, 2), np.float32)
    maps[0, :, :, 0] = [[1.0, 1.5], [3.5, 256.0]]
    maps[0, :, :, 1] = -1.0
    q = M.quantize(maps)
    np.testing.assert_array_equal(q.data[0, :, :, 0], [[0, 1], [3, 255]])
    np.testing.assert_array_equal(q.data[0, :, :, 1], 0)
    np.testing.assert_array_equal(q.minimum, [[1.0, -1.0]])
    np.testing.assert_array_equal(q.range, [[255.0, 0.0]])
    np.testing.assert_array_equal(M.dequantize(q)[0, :, :, 0], [[1.0, 2.0], [4.0, 256.0]])
    np.testing.assert_array_equal(M.dequantize(q)[0, :, :, 1], -1.0)


def test_quantize_matches_matlab_arithmetic_bit_for_bit():
    """float32 `uint8((x - min) .* (255 ./ range))`, `single(q) .* range ./ 255 + min`."""
    maps = np.random.default_rng(1).normal(0, 3, (4, 7, 7, 5)).astype(np.float32)
    maps[maps <= 0] = -1.0
    minimum = maps.min(axis=(1, 2))
    shifted = maps - minimum[:, None, None]
    extent = shifted.max(axis=(1, 2))
    scaled = shifted * (np.float32(255) / extent)[:, None, None]
    expected = np.floor(scaled.astype(np.float64) + 0.5).clip(0, 255).astype(np.uint8)
    restored = (expected.astype(np.float32) * extent[:, None, None]) / np.float32(255)
    restored = restored + minimum[:, None, None]
    q = jax.jit(M.quantize)(maps)
    np.testing.assert_array_equal(q.data, expected)
    np.testing.assert_array_equal(jax.jit(M.dequantize)(q), restored)
    assert q.data.dtype == jnp.uint8 and q.minimum.dtype == q.range.dtype == jnp.float32


def direct_maps(params, images, flip=False):
    x = preprocess(images[:, :, ::-1] if flip else images, META)
    return MODEL.apply({"params": params}, x, taps=TAPS)


def test_negative_statistics_stream_exactly(params, images):
    def batches():  # an iterable source, batches of uneven sizes
        yield images[:3]
        yield images[3:10]

    stats = F.negative_statistics(MODEL, params, META, batches(), TAPS, batch_size=4, quiet=True)
    raw = direct_maps(params, images)
    for tap in TAPS:
        x = np.asarray(raw[tap], np.float64)
        assert stats[tap].count == 10
        # float32 maps carry rounding relative to their own size, not to the mean's, which
        # cancels for some cells: bound the mean's error by the mean magnitude of its terms.
        scale = np.abs(x).mean(0)
        assert np.all(np.abs(stats[tap].mean - x.mean(0)) <= 1e-5 * scale + 1e-6)
        np.testing.assert_allclose(stats[tap].sd, x.std(0), rtol=1e-4, atol=1e-6)
    assert np.all(stats["conv4_2"].sd[..., DEAD] == 0)
    assert np.all(stats["conv4_2"].sd[..., DEAD + 1] > 0)


def test_extraction_normalises_flips_and_quantises(params, images):
    stats = F.negative_statistics(MODEL, params, META, images[5:], TAPS, batch_size=4, quiet=True)
    sd = {t: stats[t].sd for t in TAPS}
    out = F.extract_features(MODEL, params, META, images, TAPS, sd=sd, batch_size=4, quiet=True)
    quantized = F.extract_features(MODEL, params, META, images, TAPS, sd=sd, quantized=True,
                                   batch_size=4, quiet=True)
    for flip, maps, q in ((False, out.maps, quantized.maps),
                          (True, out.flipped, quantized.flipped)):
        raw = direct_maps(params, images, flip=flip)
        for tap in TAPS:
            expected = np.asarray(F.normalize(raw[tap], sd[tap]))
            # float32 conv rounding is relative to the map's magnitude, not to each cell
            atol = 1e-5 * np.abs(expected).max()
            np.testing.assert_allclose(maps[tap], expected, rtol=1e-5, atol=atol)
            np.testing.assert_array_equal(q[tap].data, M.quantize(maps[tap]).data)
            assert q[tap].data.shape == maps[tap].shape and q[tap].data.dtype == np.uint8
        assert np.all(maps["conv4_2"][..., DEAD] == -1)


def test_one_compile_for_all_batches(params, images):
    function = F._map_function(MODEL, META, TAPS, True, False, False)
    before = function._cache_size()
    for batch_size in (3, 3):  # 10 images: batches of 3, 3, 3 and a padded 1, twice
        F.extract_features(MODEL, params, META, images, TAPS, batch_size=batch_size, quiet=True)
    assert function._cache_size() - before == 1


def test_iter_features_streams_batches(params, images):
    starts = [(start, f.maps["conv5_3"].shape[0]) for start, f in F.iter_features(
        MODEL, params, META, iter([images[:7], images[7:]]), TAPS, flip=False, batch_size=4,
        quiet=True)]
    assert starts == [(0, 4), (4, 3), (7, 3)]


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 48, 48), np.uint8), "shape"),
    (np.zeros((2, 48, 48, 4), np.uint8), "shape"),
    (np.zeros((0, 48, 48, 3), np.uint8), "N >= 1"),
    (np.zeros((2, 48, 48, 3), np.float32), "uint8"),
])
def test_bad_images_are_refused_before_any_work(params, bad, match):
    with pytest.raises(ValueError, match=match):
        F.extract_features(MODEL, params, META, bad, TAPS, quiet=True)


def test_bad_settings_are_refused(params, images):
    with pytest.raises(ValueError, match="valid taps"):
        F.extract_features(MODEL, params, META, images, ("conv6_1",), quiet=True)
    with pytest.raises(ValueError, match="batch_size"):
        F.extract_features(MODEL, params, META, images, TAPS, batch_size=0, quiet=True)
    sd = {"conv4_2": np.ones((5, 5, 64), np.float32), "conv5_3": np.ones((3, 3, 64), np.float32)}
    with pytest.raises(ValueError, match="conv4_2"):
        F.extract_features(MODEL, params, META, images, TAPS, sd=sd, quiet=True)


def test_progress_ends_with_a_summary_line_quiet_or_not(params, images, capsys):
    for quiet in (True, False):      # stderr is no terminal here: no bar either way
        F.extract_features(MODEL, params, META, images[:2], TAPS, quiet=quiet)
        err = capsys.readouterr().err
        assert err.startswith("features: 2 images in ") and err.count("\n") == 1
        assert "images/s" in err or "s per image" in err


def test_winograd_kernels_are_kept_for_the_same_params_only(images, monkeypatch):
    """Repeated runs on the same (jax) params transform their kernels once; other params get
    their own, and every run equals the model applied directly."""
    model = VGG16(width=0.5, head=None)          # conv4_x, conv5_x: 256 outputs, by Winograd
    meta = ModelMeta(source="test", width=0.5, head=None, preprocessing="caffe")
    first, second = (jax.device_put(random_params(model, seed=s)) for s in (1, 2))
    transforms = []
    monkeypatch.setattr(F, "_prepare", lambda m, p: transforms.append(p) or
                        jax.jit(F.prepare, static_argnums=0)(m, p))
    for params in (first, first, second, first):
        got = F.extract_features(model, params, meta, images[:2], ("conv5_3",), flip=False,
                                 batch_size=1, quiet=True).maps["conv5_3"]
        want = model.apply({"params": params}, preprocess(images[:2], meta),
                           taps=("conv5_3",))["conv5_3"]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert [p is first for p in transforms] == [True, False, True]
