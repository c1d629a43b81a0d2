"""No silent NaN: maps without evidence and NaN inputs to the continuity measures are refused
with a named error before any work; settings are validated however they are given; the
messages name the layer, the layout and what to change."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import egjax
import toy_graph
from egjax import GraphConfig, LayerConfig, continuity
from egjax.em import fit as fit_lib
from egjax.maps import QuantizedMaps

CONFIG = GraphConfig(layers=tuple(dataclasses.replace(layer, iterations=2)
                                  for layer in toy_graph.CONFIG.layers), image_size=96)


@pytest.fixture(scope="module")
def maps():
    plain = toy_graph.maps()
    return plain, [np.ascontiguousarray(m[:, :, ::-1]) for m in plain]


@pytest.fixture
def no_work(monkeypatch):
    """Makes any layer fit fail: a refusal must come before the first one."""
    def started(*args, **kwargs):
        raise AssertionError("a layer fit started")

    monkeypatch.setattr(fit_lib, "layer_call", started)


@pytest.mark.parametrize("fill", [0.0, -1.0])
def test_a_layer_without_evidence_is_refused_before_any_work(maps, no_work, fill):
    plain, flipped = maps
    empty = np.full_like(plain[0], fill)
    with pytest.raises(ValueError, match=r"layer 0 \(low\): maps and flipped_maps hold no "
                                         r"positive value \(no evidence\)"):
        egjax.fit_graph([empty, plain[1]], CONFIG, key=jax.random.key(0),
                        flipped_maps=[empty, flipped[1]])


def test_quantized_maps_without_evidence_are_refused(maps, no_work):
    def quantized(maps, top):       # every cell decodes to `top` (codes 255, range `top`)
        n, _, _, c = maps.shape
        return QuantizedMaps(np.full(maps.shape, 255, np.uint8), np.zeros((n, c), np.float32),
                             np.full((n, c), top, np.float32))

    plain, _ = maps
    with pytest.raises(ValueError, match=r"layer 1 \(top\): maps hold no positive value"):
        egjax.fit_graph([quantized(plain[0], 1.0), quantized(plain[1], 0.0)], CONFIG,
                        key=jax.random.key(0))


def test_inference_on_maps_without_evidence_is_refused(maps):
    plain, flipped = maps
    graph = toy_graph.graph()
    with pytest.raises(ValueError, match=r"layer 0 maps and flipped_maps hold no positive value"):
        egjax.infer_graph(graph, [np.zeros_like(plain[0]), plain[1]],
                          [np.zeros_like(flipped[0]), flipped[1]])


def test_one_blank_image_and_one_dead_filter_give_finite_scores(maps):
    """Evidence missing only in part of a layer is no degenerate input: finite scores."""
    plain, flipped = (m[1].copy() for m in maps)
    plain[2] = flipped[2] = 0.0                   # image 2 has no evidence
    plain[..., 1] = flipped[..., 1] = -1.0        # filter 1 never fires
    fit = egjax.fit_layer(plain, CONFIG.layers[1], key=jax.random.key(0), flipped_maps=flipped)
    for field in ("score", "pos", "alt_score", "alt_pos", "coord", "deform"):
        assert np.isfinite(np.asarray(getattr(fit, field))).all(), field
    assert np.all(np.asarray(fit.score)[:, 2] == 0)


def test_vgg16_overrides_are_validated_like_any_setting():
    with pytest.raises(ValueError, match=r"layer conv4_2: density must be in \(0, 1\], got -1"):
        GraphConfig.vgg16(density=-1)
    with pytest.raises(ValueError, match=r"unknown LayerConfig settings \['colour'\]"):
        GraphConfig.vgg16(colour=1)
    with pytest.raises(ValueError, match=r"layer conv4_2: top_m must be an int >= top_n"):
        GraphConfig.vgg16(top_n=20, top_m=10)
    cfg = GraphConfig.vgg16(iterations=5, density=0.1)
    assert {(l.iterations, l.density) for l in cfg.layers} == {(5, 0.1)}
    assert [l.map_size for l in cfg.layers] == [28, 28, 14, 14]


def test_shape_errors_give_the_expected_layout(maps):
    plain, _ = maps
    channels_first = np.ascontiguousarray(plain[1].transpose(0, 3, 1, 2))     # [N, C, S, S]
    with pytest.raises(ValueError) as error:
        egjax.fit_layer(channels_first, toy_graph.TOP, key=jax.random.key(0))
    message = str(error.value)
    assert "[N, S, S, C] (channels last)" in message and "map_size 6" in message
    assert "maps maps" not in message and str(channels_first.shape) in message
    with pytest.raises(ValueError, match=r"must be \[N, S, S, C\] \(channels last\) = "
                                         r"\[N, 6, 6, 2\]"):
        egjax.infer_layer(toy_graph.graph().layers[1], channels_first)


def test_too_few_candidate_parents_names_the_layer_and_what_to_change(maps):
    """The top layer has 2 filters x 4 nodes; the variance cut leaves at most 4 of them as
    candidate parents, fewer than top_n=5."""
    plain, flipped = maps
    low = dataclasses.replace(CONFIG.layers[0], top_n=5, top_m=8)
    cfg = GraphConfig(layers=(low, CONFIG.layers[1]), image_size=96)
    with pytest.raises(ValueError) as error:
        egjax.fit_graph(plain, cfg, key=jax.random.key(0), flipped_maps=flipped, quiet=True)
    message = str(error.value)
    assert message.startswith("layer 0 (low): only ")
    assert "of the 8 nodes of top survive as candidate parents of low" in message
    assert "fewer than top_n=5: lower top_n of low, or give top more nodes" in message


# ---------------------------------------------------------------------------- continuity

def mean_explainer(images, targets):
    return jnp.mean(images, axis=-1)


def test_continuity_refuses_nan_images():
    images = np.random.default_rng(0).random((6, 8, 8, 3)).astype(np.float32)
    shifted = images + 0.01
    shifted[4, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"images_b holds NaN or Inf \(first at pair 4\)"):
        continuity.explanation_continuity(mean_explainer, images, shifted, np.zeros(6))


def test_continuity_refuses_an_explainer_that_returns_nan():
    images = np.random.default_rng(0).random((6, 8, 8, 3)).astype(np.float32)

    images[5, 0, 0, 0] = 7.0            # the explainer fails on this image only

    def broken(batch, targets):
        return jnp.where(batch[:, :1, :1, 0] == 7.0, jnp.nan, jnp.mean(batch, axis=-1))

    with pytest.raises(ValueError, match=r"the explainer's output for images_a holds NaN or "
                                         r"Inf \(first at pair 5\)"):
        continuity.explanation_continuity(broken, images, images + 0.01, np.zeros(6),
                                          batch_size=4)


def test_continuity_ratios_of_nan_pairs_are_nan_not_zero_or_inf():
    explanations = jnp.asarray([[1.0, 2.0], [1.0, 2.0], [jnp.nan, 0.0], [1.0, 1.0]])
    inputs = jnp.asarray([[0.0, jnp.nan], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    ratios = continuity.continuity_ratios(explanations, explanations + jnp.asarray([1.0, 0.0]),
                                          inputs, jnp.zeros((4, 2)))
    # pair 0: NaN input (was inf); pair 1: equal inputs, different explanations (inf);
    # pair 2: NaN explanation; pair 3: |1| / 5
    np.testing.assert_array_equal(np.isnan(ratios), [True, False, True, False])
    assert ratios[1] == np.inf and ratios[3] == pytest.approx(0.2)


def test_triplet_consistency_refuses_nan_features():
    images = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    images[3, 0] = np.nan
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="embed returned NaN or Inf at 'x'"):
        continuity.triplet_consistency(lambda x: {"x": jnp.asarray(x)}, images, labels,
                                       jax.random.key(0), num_triplets=64)
