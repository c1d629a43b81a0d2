"""The explanatory graph as an explainer: mirrored images get the same node scores and
mirrored node positions, and bad settings are refused."""

import dataclasses

import jax
import numpy as np
import pytest

import egjax
from egjax import graph_explainer, train
from egjax.data.synthetic import negatives, sample
from egjax.features import extract_features, negative_statistics
from egjax.models import ModelMeta, preprocess

SIZE = 112
LAYER = egjax.LayerConfig(map_size=SIZE // 16, stride=16, center=7.5, density=0.1,
                          iterations=3, tap="relu5_3")


@pytest.fixture(scope="module")
def setup():
    meta = ModelMeta(source="synthetic", width=1 / 16, head="gap", num_classes=2,
                     preprocessing="torch")
    model = meta.model()
    params = train.he_normal_params(model, jax.random.key(0), (1, SIZE, SIZE, 3))
    stats = negative_statistics(model, params, meta, negatives(6, seed=0, image_size=SIZE),
                                ("relu5_3",), batch_size=6, quiet=True)
    sd = {"relu5_3": stats["relu5_3"].sd}
    images = sample("bird", 6, seed=0, image_size=SIZE).images
    features = extract_features(model, params, meta, images, ("relu5_3",), sd=sd,
                                batch_size=6, quiet=True)
    graph = egjax.fit_graph([features.maps["relu5_3"]], egjax.GraphConfig((LAYER,), SIZE),
                            key=jax.random.key(0), flipped_maps=[features.flipped["relu5_3"]])
    return model, params, graph, sd, preprocess(images, meta), features


def test_a_mirrored_image_gets_the_same_scores_and_mirrored_positions(setup):
    """The mirrored image's plain and mirrored maps are the image's mirrored and plain maps,
    so inference picks the same maps; positions map back to mirrored pixels."""
    model, params, graph, sd, inputs, _ = setup
    scores = graph_explainer.node_scores(model, params, graph, sd)
    positions = graph_explainer.node_positions(model, params, graph, sd)
    mirrored = inputs[:, :, ::-1]
    np.testing.assert_allclose(scores(mirrored), scores(inputs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.mean(scores(inputs), axis=1), 1.0, rtol=1e-5)
    pos, pos_mirrored = np.asarray(positions(inputs)), np.asarray(positions(mirrored))
    np.testing.assert_allclose(pos_mirrored[..., 0], pos[..., 0], atol=1e-4)
    np.testing.assert_allclose(pos_mirrored[..., 1], (SIZE - 1) - pos[..., 1], atol=1e-4)
    assert pos.shape == (6, graph.layers[0].score.shape[0], 2)


def test_scores_and_positions_are_those_of_the_graph_inferred_on_normalised_maps(setup):
    """Against `infer_graph` on the maps `extract_features` normalises with the same sd:
    each image's node scores over their mean, and the inferred cells in pixels,
    `center + cell * stride`, mirrored back (`w -> SIZE - 1 - w`) where the mirrored image
    was used."""
    model, params, graph, sd, inputs, features = setup
    (inferred,) = egjax.infer_graph(graph, [features.maps["relu5_3"]],
                                    [features.flipped["relu5_3"]])
    score = np.asarray(inferred.score).T                                   # [N, V]
    got = np.asarray(graph_explainer.node_scores(model, params, graph, sd)(inputs))
    np.testing.assert_allclose(got, score / score.mean(axis=1, keepdims=True), rtol=1e-4,
                               atol=1e-4)    # float32 convolutions computed another way
    flip = np.asarray(inferred.flip)
    assert flip.any() and not flip.all()                 # both orientations are checked
    pos = np.asarray(inferred.pos).transpose(1, 0, 2)                      # [N, V, 2] cells
    px = LAYER.center + pos * LAYER.stride
    px[flip, :, 1] = SIZE - 1 - px[flip, :, 1]
    got = np.asarray(graph_explainer.node_positions(model, params, graph, sd)(inputs))
    np.testing.assert_allclose(got, px, atol=1e-3)


def test_bad_settings_are_refused(setup):
    model, params, graph, sd, _, _ = setup
    with pytest.raises(ValueError, match="sd lacks"):
        graph_explainer.node_scores(model, params, graph, {})
    with pytest.raises(ValueError, match="layer must index"):
        graph_explainer.node_scores(model, params, graph, sd, layer=1)
    untapped = dataclasses.replace(graph, config=egjax.GraphConfig(
        (dataclasses.replace(LAYER, tap=None),), SIZE))
    with pytest.raises(ValueError, match="needs its tap"):
        graph_explainer.node_positions(model, params, untapped, sd)
