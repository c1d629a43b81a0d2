"""Inference of a fitted graph on new images: it reproduces the fit's own records, treats
each image on its own, and refuses maps that do not fit the graph."""

import dataclasses

import jax
import numpy as np
import pytest

import egjax
from egjax.maps import QuantizedMaps
from tests.test_em_fit import GRAPH, data, graph  # noqa: F401 (pytest fixtures)

ITERATIONS = 3


def fit_stopping_early(data):
    """The fit with ITERATIONS iterations, and each layer's node parameters one iteration
    earlier (the same fit stopped after ITERATIONS - 1 M-steps, under the same layer above)."""
    maps, flipped = data
    final, earlier, parent = [None, None], [None, None], None
    for index in (1, 0):
        key = jax.random.key(index)
        cfg = GRAPH.layers[index]
        final[index] = egjax.fit_layer(maps[index], cfg, key=key, flipped_maps=flipped[index],
                                       parent=parent)
        earlier[index] = egjax.fit_layer(
            maps[index], dataclasses.replace(cfg, iterations=ITERATIONS - 1), key=key,
            flipped_maps=flipped[index], parent=parent)
        parent = final[index]
    return final, earlier


def test_inference_on_the_training_maps_reproduces_the_fits_records(data):
    """The records of a fit come from its last E-step, which ran with the node parameters
    before the last M-step; the graph stores those after it (and the layer below was fitted
    under these final ones). So each layer is inferred with the parameters of the same fit
    stopped one iteration earlier (and its final parents, which the last E-step used), the
    lower layer under the final layer above with that layer's recorded positions: positions
    and orientations are then the fit's exactly. Scores agree to float rounding: the fit sums
    `pi F` candidate by candidate in a loop, inference with one reduction."""
    maps, flipped = data
    final, earlier = fit_stopping_early(data)
    low, top = (dataclasses.replace(f, coord=e.coord, deform=e.deform)
                for f, e in zip(final, earlier))
    inferred_top = egjax.infer_layer(top, maps[1], flipped[1])
    recorded_top = egjax.LayerInference(final[1].score, final[1].pos, final[1].flip)
    inferred_low = egjax.infer_layer(low, maps[0], flipped[0], upper=final[1], above=recorded_top)
    assert np.asarray(final[1].flip).any()            # some images are taken mirrored
    for fitted, result in ((final[1], inferred_top), (final[0], inferred_low)):
        np.testing.assert_array_equal(result.flip, fitted.flip)
        np.testing.assert_array_equal(result.pos, fitted.pos)
        np.testing.assert_allclose(result.score, fitted.score, rtol=1e-5, atol=1e-6)


def test_the_stored_parameters_stay_close_to_the_records_on_the_training_maps(data, graph):
    """With the graph's own (post-M-step) parameters, the last M-step's moves shift the
    inferred positions by a fraction of a cell (measured: median 0.22 and 0.14 cells);
    orientations are kept and scores stay correlated (measured 0.97 and 0.78)."""
    maps, flipped = data
    inferred = egjax.infer_graph(graph, maps, flipped)
    for fitted, result in zip(graph.layers, inferred):
        moved = np.linalg.norm(np.asarray(result.pos) - np.asarray(fitted.pos), axis=-1)
        assert np.median(moved) < 0.5
        np.testing.assert_array_equal(result.flip, fitted.flip)
        assert np.corrcoef(np.ravel(result.score), np.ravel(fitted.score))[0, 1] > 0.7


def test_an_images_positions_do_not_depend_on_the_other_images(data, graph):
    maps, flipped = data
    whole = egjax.infer_graph(graph, maps, flipped)
    part = egjax.infer_graph(graph, [m[2:5] for m in maps], [m[2:5] for m in flipped])
    for a, b in zip(whole, part):
        np.testing.assert_array_equal(b.pos, np.asarray(a.pos)[:, 2:5])
        np.testing.assert_array_equal(b.flip, np.asarray(a.flip)[2:5])
        np.testing.assert_allclose(np.mean(b.score), 1.0, rtol=1e-5)
        same_images = np.asarray(a.score)[:, 2:5]     # the same up to one normaliser
        np.testing.assert_allclose(np.asarray(b.score) * same_images.mean(), same_images,
                                   rtol=1e-4, atol=1e-6)


def test_bad_maps_are_refused(data, graph):
    maps, flipped = data
    with pytest.raises(ValueError, match="one entry per graph layer"):
        egjax.infer_graph(graph, maps[:1])
    with pytest.raises(ValueError, match="fitted on"):
        egjax.infer_graph(graph, [maps[0][:, :10, :10], maps[1]])
    with pytest.raises(ValueError, match="fitted on"):
        egjax.infer_graph(graph, [maps[0][..., :3], maps[1]])
    with pytest.raises(ValueError, match="same images"):
        egjax.infer_graph(graph, [maps[0][:3], maps[1]])
    with pytest.raises(ValueError, match="NaN"):
        bad = maps[1].copy()
        bad[0, 0, 0, 0] = np.nan
        egjax.infer_graph(graph, [maps[0], bad])
    low, top = graph.layers
    with pytest.raises(ValueError, match="needs both upper"):
        egjax.infer_layer(low, maps[0], flipped[0], upper=top)
    above = egjax.infer_layer(top, maps[1][:3], flipped[1][:3])
    with pytest.raises(ValueError, match="above must hold"):
        egjax.infer_layer(low, maps[0], flipped[0], upper=top, above=above)
    with pytest.raises(ValueError, match="chunk"):
        egjax.infer_layer(top, maps[1], chunk=0)
    n, c = maps[1].shape[0], maps[1].shape[-1]      # checked as the fit checks them
    codes = QuantizedMaps(maps[1].astype(np.uint16), np.zeros((n, c)), np.ones((n, c)))
    with pytest.raises(ValueError, match="QuantizedMaps data must be uint8"):
        egjax.infer_layer(top, codes)
    with pytest.raises(ValueError, match="flipped_maps must have the shape of maps"):
        egjax.infer_layer(top, maps[1], flipped[1][:5])



def test_inference_needs_only_the_model(data, graph, tmp_path):
    """A graph saved without its records (the model: node parameters, parents, candidate
    parents and their mean positions) infers new images exactly as the full graph; what
    needs the records says so."""
    maps, flipped = data
    new = [m[:5] for m in maps], [f[:5] for f in flipped]
    model = egjax.ExplanatoryGraph.load(graph.save(tmp_path / "model", records=False))
    assert not model.has_records and model.layers[0].score is None
    for a, b in zip(egjax.infer_graph(graph, *new), egjax.infer_graph(model, *new)):
        for field in ("score", "pos", "flip"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    with pytest.raises(ValueError, match="saved without"):
        egjax.evaluate.compare(model, maps, np.zeros((8, 1, 2)), np.ones((8, 1), bool))
