"""Node pictures: patches are the image crops at the detections, heat maps peak where the
node's filter fires inside its window, the graph figure's offsets and node choice."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

import toy_graph
from egjax import evaluate
from egjax.config import GraphConfig
from egjax.visualize import graph_figure, heatmaps, patches, raster


@pytest.fixture(scope="module")
def graph():
    return toy_graph.graph()


@pytest.fixture(scope="module")
def images():
    return toy_graph.images()


def test_patch_side_is_the_papers_70_px_at_stride_8():
    vgg = GraphConfig.vgg16()
    assert [patches.patch_side(layer) for layer in vgg.layers] == [70, 70, 140, 140]


def test_crop_pads_outside_the_image_with_grey(images):
    patch = patches.crop(images[0], (0.0, 0.0), 10)       # rows and columns -4 .. 5
    assert patch.shape == (10, 10, 3)
    np.testing.assert_array_equal(patch[4:, 4:], images[0, :6, :6])
    assert np.all(patch[:4] == patches.PADDING) and np.all(patch[:, :4] == patches.PADDING)


def test_patches_are_the_image_crops_at_the_detections(graph, images):
    fit = graph.layers[0]
    det = evaluate.node_detections(fit, 96)
    node, side = 5, 20
    got = patches.node_patches(images, det, node, 4, side)
    best = np.argsort(-det.score[node], kind="stable")[:4]
    assert got.shape == (4, side, side, 3)
    for patch, n in zip(got, best):
        h, w = det.px[node, n]
        top, left = (int(np.floor(c - (side - 1) / 2 + 0.5)) for c in (h, w))
        assert 0 <= top and top + side <= 96 and 0 <= left and left + side <= 96
        np.testing.assert_array_equal(patch, images[n, top:top + side, left:left + side])


def test_mirrored_detections_cut_the_mirrored_patch(graph, images):
    """A node found in the mirrored image shows, in the stored image, the mirror of the patch
    at its position in the mirrored image."""
    fit = dataclasses.replace(graph.layers[0], flip=np.ones(toy_graph.IMAGES, bool),
                              alt_score=np.zeros_like(graph.layers[0].score))
    det = evaluate.node_detections(fit, 96)
    node, side = 3, 20
    got = patches.node_patches(images, det, node, toy_graph.IMAGES, side)
    best = np.argsort(-det.score[node], kind="stable")
    cfg = fit.config
    for patch, n in zip(got, best):
        in_mirror = cfg.center + np.asarray(fit.pos)[node, n] * cfg.stride
        expected = patches.crop(images[n][:, ::-1], in_mirror, side)[:, ::-1]
        np.testing.assert_array_equal(patch, expected)


def test_patch_grid_has_a_row_per_node_and_shows_the_patches(graph, images):
    grid = patches.patch_grid(images, graph.layers[0], 96, [0, 5, 7], count=4, cell=32)
    assert grid.shape == (3 * 32 + 2 * 4, 106 + 4 * (32 + 2), 3) and grid.dtype == np.uint8
    det = evaluate.node_detections(graph.layers[0], 96)
    first = patches.node_patches(images, det, 5, 1, patches.patch_side(graph.layers[0].config))
    np.testing.assert_array_equal(grid[36:68, 108:140], raster.resized(first[0], 32))
    titled = patches.layer_patch_grid(images, graph, 1, nodes=2, count=3, cell=24)
    assert titled.shape[0] == 18 + 4 + 2 * 24 + 4


def one_blob_map(size, cell, height=3.0):
    grid = np.arange(size)
    return height * np.exp(-((grid[:, None] - cell[0]) ** 2 + (grid[None, :] - cell[1]) ** 2)
                           / 2.0) - 0.5


def test_heat_map_peaks_at_the_detection_and_stays_in_the_window():
    size = 12
    values = one_blob_map(size, (5, 7)) + one_blob_map(size, (1, 1), height=9.0)
    heat = heatmaps.evidence(values[None], np.array([[5.2, 6.8]]), np.array([1.5]),
                             np.array([2]))[0]
    assert np.unravel_index(np.argmax(heat), heat.shape) == (5, 7)
    inside = np.zeros((size, size), bool)
    inside[3:8, 5:10] = True
    assert np.all(heat[~inside] == 0) and heat[1, 1] == 0 < values[1, 1]
    assert np.all(heat >= 0)
    weight = np.exp(-((4 - 5.2) ** 2 + (6 - 6.8) ** 2) / (2 * 1.5 ** 2))
    np.testing.assert_allclose(heat[4, 6], max(values[4, 6], 0) * weight, rtol=1e-6)


def test_node_heat_maps_follow_the_node_into_each_image(graph):
    """On maps with one blob of the node's filter at its detection, each image's heat map
    peaks at the detection, also where the detection was made in the mirrored image."""
    fit, size = graph.layers[0], 96
    node = 7
    cells = heatmaps.detected_cells(fit, size)[node]
    filters = np.shape(fit.deform)[0]
    maps = np.full((toy_graph.IMAGES, 12, 12, filters), -1.0, np.float32)
    for n, cell in enumerate(np.round(cells)):
        maps[n, :, :, node // fit.config.nodes_per_filter] = one_blob_map(12, cell)
    heat = heatmaps.node_heatmaps(maps, fit, node, size)
    for n in range(toy_graph.IMAGES):
        assert np.unravel_index(np.argmax(heat[n]), (12, 12)) == tuple(np.round(cells[n]))
    up = heatmaps.upsample(heat, fit.config, size)
    assert up.shape == (toy_graph.IMAGES, 96, 96)
    det = evaluate.node_detections(fit, size)
    for n in range(toy_graph.IMAGES):
        peak = np.unravel_index(np.argmax(up[n]), (96, 96))
        expected = fit.config.center + np.round(cells[n]) * fit.config.stride
        assert np.all(np.abs(np.array(peak) - expected) <= 1)
        assert np.all(np.abs(np.array(peak) - det.px[node, n]) <= fit.config.stride)


def test_layer_heat_map_is_the_maximum_over_its_nodes(graph):
    maps = toy_graph.maps()[0]
    fit = graph.layers[0]
    both = heatmaps.layer_heatmaps(maps, fit, [2, 9], 96)
    np.testing.assert_array_equal(both, np.maximum(heatmaps.node_heatmaps(maps, fit, 2, 96),
                                                   heatmaps.node_heatmaps(maps, fit, 9, 96)))


def test_upsampling_places_cells_at_their_pixel_centres():
    cfg = toy_graph.LOW
    ramp = np.broadcast_to(np.arange(12.0)[:, None], (12, 12))
    up = heatmaps.upsample(ramp, cfg, 96)
    expected = np.clip((np.arange(96) - cfg.center) / cfg.stride, 0, 11)
    np.testing.assert_allclose(up[:, 40], expected)


def test_search_half_range_is_the_ems_rule():
    cfg = toy_graph.LOW                                   # limit 0.3 * 12 / 2 = 1.8 cells
    assert heatmaps.search_half_range(np.array([0.1, 0.2, 0.5, 3.0]), cfg).tolist() == [0, 1, 2, 2]


def test_overlay_colours_only_where_there_is_heat(images):
    heat = np.zeros((96, 96))
    heat[40:50, 40:50] = 1.0
    out = heatmaps.overlay(images[0], heat)
    np.testing.assert_array_equal(out[heat == 0], images[0][heat == 0])
    expected = np.round(images[0][45, 45] * (1 - heatmaps.OPACITY) + 255 * heatmaps.OPACITY)
    np.testing.assert_array_equal(out[45, 45], expected)      # white at full heat


def test_heatmap_grid_has_a_row_per_layer(graph, images):
    grid = heatmaps.heatmap_grid(images, graph, toy_graph.maps(), images_shown=3, cell=40)
    assert grid.shape == (2 * 40 + 4, 86 + 3 * 42, 3)
    assert grid[:, 88:].std() > 10


def test_edge_offsets_are_mean_parent_minus_child_positions(graph):
    low, top = graph.layers
    offsets = graph_figure.edge_offsets(low, top)
    parents = np.asarray(low.parents)
    v, slot = np.argwhere(parents >= 0)[0]
    child = low.config.center + np.asarray(low.pos)[v] * low.config.stride
    parent = top.config.center + np.asarray(top.pos)[parents[v, slot]] * top.config.stride
    np.testing.assert_allclose(offsets[v, slot], (parent - child).mean(axis=0), rtol=1e-5)
    assert np.all(np.isnan(offsets[parents < 0]))


def test_graph_figure_draws_children_of_the_drawn_parents(graph, tmp_path):
    chosen = graph_figure.figure_nodes(graph, 3)
    top_order = evaluate.ranked(evaluate.node_detections(graph.layers[1], 96))
    np.testing.assert_array_equal(chosen[1], top_order[:3])
    linked = np.isin(np.asarray(graph.layers[0].parents), chosen[1]).any(axis=1)
    assert linked[chosen[0]].all()
    graph_figure.graph_figure(graph, tmp_path / "graph.png", per_layer=3)
    with Image.open(tmp_path / "graph.png") as picture:
        assert picture.size[0] > 300 and picture.size[1] > 200
