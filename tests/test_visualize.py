"""Node pictures: patches are the image crops at the detections, heat maps peak where the
node's filter fires inside its window, the graph figure's offsets and node choice."""

import dataclasses

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import toy_graph
from egjax import evaluate
from egjax.config import GraphConfig
from egjax.visualize import figures, graph_figure, heatmaps, patches, raster


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
    assert titled.shape[0] == 33 + 4 + 2 * 24 + 4                     # two title lines


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
    title = heatmaps.TITLE_HEIGHT + 4
    assert grid.shape == (title + 2 * 40 + 4, 86 + 3 * 42 + 2 + heatmaps.BAR_BLOCK, 3)
    assert grid[title:, 88:].std() > 10


def test_edge_offsets_are_mean_parent_minus_child_positions(graph):
    low, top = graph.layers
    offsets = graph_figure.edge_offsets(low, top)
    parents = np.asarray(low.parents)
    v, slot = np.argwhere(parents >= 0)[0]
    child = low.config.center + np.asarray(low.pos)[v] * low.config.stride
    parent = top.config.center + np.asarray(top.pos)[parents[v, slot]] * top.config.stride
    np.testing.assert_allclose(offsets[v, slot], (parent - child).mean(axis=0), rtol=1e-5)
    assert np.all(np.isnan(offsets[parents < 0]))


def test_graph_figure_draws_children_of_the_drawn_parents(graph):
    chosen, via = graph_figure.figure_nodes(graph, 3, 5)
    parents = np.asarray(graph.layers[0].parents)
    assert 0 < len(chosen[1]) <= 3 and 0 < len(chosen[0]) <= 5
    for v, p in zip(chosen[0], via[0]):
        assert p in chosen[1] and p in parents[v]
    assert all(np.isin(chosen[1], parents[chosen[0]]).tolist())     # every root has a child


@pytest.fixture(scope="module")
def planted():
    return toy_graph.planted()


def test_graph_figure_picks_a_connected_piece_of_the_planted_graph(planted):
    """Roots: the strongest top nodes with a live child (top node 2, the strongest, has
    none); children taken in rounds, 1 then 6: 10, 3, then 12 (low node 17, the strongest,
    has no parent; 20 is dead), drawn in the order of the parents that took them."""
    chosen, via = graph_figure.figure_nodes(planted.graph, roots=3, per_layer=8)
    assert [c.tolist() for c in chosen] == [[10, 12, 3], [1, 6]]
    assert [v.tolist() for v in via] == [[1, 1, 6], [-1, -1]]
    chosen, _ = graph_figure.figure_nodes(planted.graph, roots=1, per_layer=1)
    assert [c.tolist() for c in chosen] == [[10], [1]]


def test_graph_figure_draws_nodes_and_edges_where_the_layout_says(planted, tmp_path):
    graph_figure.graph_figure(planted.graph, tmp_path / "graph.png")
    with Image.open(tmp_path / "graph.png") as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    left, slot, title, row = (graph_figure.LABEL_WIDTH, graph_figure.SLOT,
                              graph_figure.TITLE_HEIGHT, graph_figure.ROW)
    assert pixels.shape == (title + 2 * row, left + 3 * slot, 3)
    # by hand: 2 top nodes centred over 3 low ones
    top_y, low_y = title + row / 2, title + 3 * row / 2
    at = {("top", 1): (left + slot, top_y), ("top", 6): (left + 2 * slot, top_y),
          ("low", 10): (left + slot / 2, low_y), ("low", 12): (left + 3 * slot / 2, low_y),
          ("low", 3): (left + 5 * slot / 2, low_y)}
    colours = {"low": (0xe4, 0x1a, 0x1c), "top": (0x37, 0x7e, 0xb8)}
    for (layer, _), (x, y) in at.items():
        for dx, dy in ((0, 0), (-9, 0), (9, 0), (0, -9), (0, 9)):
            assert tuple(pixels[int(y + dy), int(x + dx)]) == colours[layer]
    for layer, count in (("low", 3), ("top", 2)):           # no other disc in those colours
        discs, found = ndimage.label(np.all(pixels[:, left:] == colours[layer], axis=-1))
        sizes = np.bincount(discs.ravel())[1:]
        assert np.sum(sizes > 100) == count

    def along(a, b, spans):
        """The darkest value within 1 px across the segment a-b at points along `spans`."""
        (x0, y0), (x1, y1) = at[a], at[b]
        return np.array([pixels[int(y0 + t * (y1 - y0)), int(x0 + t * (x1 - x0)) - 1:
                                int(x0 + t * (x1 - x0)) + 2].min()
                         for lo, hi in spans for t in np.linspace(lo, hi, 12)])

    outside_label = ((0.12, 0.25), (0.5, 0.88))              # labels sit at 0.35 from the child
    for child, parent in ((("low", 10), ("top", 1)), (("low", 12), ("top", 1)),
                          (("low", 3), ("top", 6))):            # the edges that took them: dark
        assert np.all(along(child, parent, outside_label) < 120)
    light = along(("low", 12), ("top", 6), ((0.12, 0.25), (0.5, 0.75)))   # a second parent
    assert np.all((light > 150) & (light < 240))
    for child, parent in ((("low", 10), ("top", 6)), (("low", 3), ("top", 1))):  # no edge
        assert np.all(along(child, parent, ((0.12, 0.3), (0.7, 0.88))) == 255)


def test_edge_offsets_of_the_planted_node_are_known(planted):
    """Image 0 alone: child (low node 10) at cell (5, 6) of the low layer (px 43.5, 51.5),
    its parent (top node 1) at cell (2, 3) of the top layer (px 39.5, 55.5): (-4, +4)."""
    one = [dataclasses.replace(fit, pos=np.asarray(fit.pos)[:, :1]) for fit in planted.graph.layers]
    assert graph_figure.edge_offsets(*one)[10, 0].tolist() == [-4.0, 4.0]


def test_detection_rings_sit_where_the_nodes_are_and_stay_in_their_thumbnail(planted):
    """Thumbnails of 144 px for 96-px images: image pixel p at (p + 1/2) 1.5 - 1/2. Image 0
    of the low row: node 10 at (43.5, 51.5) px, so (65.5, 77.5); its ring's radius is 3 + 5
    x its score there (4.0) / its best score (8.88, mirrored in image 11), 2 px wide inwards;
    node 17 at (1.5, 51.5) px, so (2.5, 77.5): its ring is cut by the thumbnail's top edge.
    Image 1: node 17 lies outside the image; image 2: it scores 0 there: no ring."""
    cell, n_shown = 144, 3
    grid = figures.detections_grid(planted.images, planted.graph, images_shown=n_shown,
                                   nodes_per_layer=2, cell=cell)
    label, title = figures.LABEL_WIDTH, figures.TITLE_HEIGHT
    assert grid.shape == (title + 4 + cell + 4 + cell, label + n_shown * (cell + 2), 3)
    low_top = title + 4 + cell + 4                               # rows: top layer, then low
    tile = grid[low_top:low_top + cell, label + 2:label + 2 + cell]
    first, second = figures.NODE_COLOURS[:2]                     # strongest: 17, then 10
    radius = 3 + 5 * 4.0 / (2 * 4.0 * 1.11)
    rows, cols = np.nonzero(np.all(tile == second, axis=-1))
    distance = np.hypot(rows - 65.5, cols - 77.5)
    assert len(rows) > 20 and np.all((distance > radius - 2.5) & (distance < radius + 1))
    rows, cols = np.nonzero(np.all(tile == first, axis=-1))
    assert len(rows) > 8 and rows.min() == 0 and np.all(np.abs(cols - 77.5) < 9)
    gap = grid[low_top - 4:low_top, label + 2:label + 2 + cell]
    assert np.all(gap == 255)                                # nothing spills over the edge
    beside = grid[low_top:low_top + cell, label + 2 + cell:label + 4 + cell]
    assert np.all(beside == 255)
    for n in (1, 2):
        other = grid[low_top:low_top + cell, label + 2 + n * (cell + 2):label + 2 + n * (cell + 2)
                     + cell]
        assert not np.any(np.all(other == first, axis=-1)), n
        assert np.any(np.all(other == second, axis=-1)), n
    unmarked = ~np.any(np.abs(tile.astype(int) - raster.resized(planted.images[0], cell)) > 0,
                       axis=-1)
    assert unmarked.mean() > 0.95


def test_detections_show_the_stablest_nodes_above_the_minimum_score(planted, monkeypatch):
    """With landmarks: the lowest instability among nodes scoring >= 1 (by a plain
    reference); without: the strongest live nodes."""
    fit = planted.graph.layers[0]
    plain = {v: toy_graph.plain_instability(fit, v, planted.landmarks, planted.visible, 96)
             for v in range(24) if toy_graph.plain_strength(fit, v, 96) >= 1}
    expected = sorted(plain, key=lambda v: (plain[v], v))[:3]
    shown = []
    monkeypatch.setattr(figures, "_rings", lambda image, det, nodes, n, cell: (
        shown.append(nodes.tolist()), raster.resized(image, cell))[1])
    figures.detections_grid(planted.images, planted.graph, landmarks=planted.landmarks,
                            visible=planted.visible, images_shown=1, nodes_per_layer=3)
    assert shown[1] == expected                                       # rows: top, then low
    assert set(expected) <= {17, 10, 3, 12, 4, 5}
    shown.clear()
    figures.detections_grid(planted.images, planted.graph, images_shown=1, nodes_per_layer=3)
    assert shown == [[2, 1, 6], [17, 10, 3]]


def test_heat_map_colour_bars_span_each_rows_maximum(planted):
    """One positive cell per layer, at a node's detection in image 0: low 4.0 at cell (5, 6),
    px (43.5, 51.5); top 2.0 at cell (2, 3), px (39.5, 55.5). Upsampled, the nearest pixels
    are 1/16 cell (low) and 1/32 cell (top) away on each axis, so the rows' maxima are
    4 (15/16)^2 = 3.52 and 2 (31/32)^2 = 1.88: the bars' top labels."""
    cell, shown = 96, 2
    grid = heatmaps.heatmap_grid(planted.images, planted.graph, planted.maps,
                                 images_shown=shown, cell=cell)
    title, label = heatmaps.TITLE_HEIGHT, heatmaps.LABEL_WIDTH
    block, width, margin = heatmaps.BAR_BLOCK, heatmaps.BAR_WIDTH, heatmaps.BAR_MARGIN
    assert grid.shape == (title + 4 + 2 * cell + 4, label + shown * (cell + 2) + 2 + block, 3)
    value = np.linspace(1, 0, cell - 2 * margin)[:, None]
    ramp = np.clip(3 * value - np.array([0, 1, 2]), 0, 1)        # black, red, yellow, white
    bar = np.round(128 * (1 - 0.8 * value) + 255 * ramp * 0.8 * value)
    x0 = label + 2 + shown * (cell + 2)
    for top, text in ((title + 4, "1.88"), (title + 4 + cell + 4, "3.52")):
        drawn = grid[top + margin:top + cell - margin, x0 + margin:x0 + margin + width]
        np.testing.assert_array_equal(drawn, np.repeat(bar[:, None, :], width, axis=1))
        np.testing.assert_array_equal(
            grid[top + margin - 4:top + margin + 14, x0 + margin + width:x0 + block],
            raster.text_block([text], block - margin - width, 18))
    low = grid[title + 4 + cell + 4:title + 4 + 2 * cell + 4, label + 2:label + 2 + cell]
    white = np.round(planted.images[0, 43, 51] * 0.2 + 255 * 0.8)   # value 1 at the maximum
    np.testing.assert_array_equal(low[43, 51], white)
