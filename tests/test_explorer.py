"""The graph explorer: the files it writes hold the graph's numbers, and the page, driven in
headless Chromium from file://, loads cleanly, shows the layers, and shows a clicked node's
patches, heat maps and parents. Saves test-artifacts/explorer.png."""

import base64
import json
import math
import pathlib

import numpy as np
import pytest
from PIL import Image

import toy_graph
from browser import Browser, find_chromium
from egjax import evaluate
from egjax.visualize import explorer, heatmaps, patches, raster

ARTIFACTS = pathlib.Path(__file__).resolve().parents[1] / "test-artifacts"


def read(path: pathlib.Path):
    """The data a `EGX.receive(name, data);` file hands over."""
    text = path.read_text()
    assert text.startswith("EGX.receive(") and text.endswith(");\n")
    name, _, body = text[len("EGX.receive("):-3].partition(",")
    return json.loads(name), json.loads(body)


@pytest.fixture(scope="module")
def graph():
    return toy_graph.graph()


@pytest.fixture(scope="module")
def page(graph, tmp_path_factory):
    landmarks, visible = toy_graph.landmarks()
    return explorer.write(tmp_path_factory.mktemp("run") / "explorer", graph, toy_graph.images(),
                          toy_graph.maps(), landmarks, visible, title="toy graph")


def test_writes_a_self_contained_page(page, graph):
    assets = page / "assets"
    for path in (page / "index.html", assets / "explorer.js", assets / "explorer.css"):
        text = path.read_text()
        assert "http:" not in text and "https:" not in text and "fetch(" not in text
    assert len(list((assets / "images").glob("*.jpg"))) == toy_graph.IMAGES
    name, meta = read(assets / "data" / "meta.js")
    assert name == "meta" and meta["title"] == "toy graph" and meta["instability"]
    assert [layer["tap"] for layer in meta["layers"]] == ["low", "top"]
    for index, layer in enumerate(meta["layers"]):
        chunks = sorted((assets / "data").glob(f"layer{index}-*.js"))
        assert len(chunks) == math.ceil(layer["nodes"] / explorer.CHUNK)
    assert not list(page.parent.glob(".*tmp*"))                    # nothing half-written left


def test_files_hold_the_graphs_numbers(page, graph):
    fit, size = graph.layers[0], 96
    det = evaluate.node_detections(fit, size)
    landmarks, visible = toy_graph.landmarks()
    _, summary = read(page / "assets" / "data" / "layer0.js")
    expected = evaluate.node_instability(det, landmarks, visible) / evaluate.diagonal(size)
    np.testing.assert_allclose(np.array(summary["instability"], float), expected, atol=1e-4)
    top = -np.sort(-det.score, axis=1)[:, :evaluate.TOP_IMAGES].mean(axis=1)
    np.testing.assert_allclose(summary["score"], top, atol=1e-3)
    _, chunk = read(page / "assets" / "data" / "layer0-0.js")
    v = 5
    node = chunk["nodes"][v - chunk["start"]]
    assert [p[0] for p in node["parents"]] == [p for p in np.asarray(fit.parents)[v] if p >= 0]
    best = patches.best_images(det.score[v], explorer.PATCH_IMAGES)
    assert [t[0] for t in node["top"]] == best.tolist()
    np.testing.assert_allclose([t[1:3] for t in node["top"]], det.px[v, best], atol=0.05)
    n, h0, w0, rows, cols, codes = node["heat"][0]
    window = np.frombuffer(base64.b64decode(codes), np.uint8).reshape(rows, cols)
    full = heatmaps.node_heatmaps(toy_graph.maps()[0], fit, v, size)[n]
    assert np.all(np.delete(np.delete(full, range(h0, h0 + rows), 0), range(w0, w0 + cols), 1) == 0)
    if full.max() > 0:
        assert np.unravel_index(np.argmax(window), window.shape) == tuple(
            np.array(np.unravel_index(np.argmax(full), full.shape)) - [h0, w0])
    _, top_chunk = read(page / "assets" / "data" / "layer1-0.js")
    children = {c for node in top_chunk["nodes"] for c, _, _ in node["children"]}
    assert children == set(np.flatnonzero((np.asarray(fit.parents) >= 0).any(axis=1)).tolist())


def test_refuses_inputs_that_do_not_match_the_graph(graph, tmp_path):
    images, maps = toy_graph.images(), toy_graph.maps()
    with pytest.raises(ValueError, match="images must be"):
        explorer.write(tmp_path / "a", graph, images[:-1], maps)
    with pytest.raises(ValueError, match=r"maps\[1\]"):
        explorer.write(tmp_path / "b", graph, images, [maps[0], maps[0]])
    with pytest.raises(ValueError, match="both landmarks and visible"):
        explorer.write(tmp_path / "c", graph, images, maps, toy_graph.landmarks()[0])
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (install Debian's chromium, e.g. `make test` does so "
                    "where apt-get is available, or set EGJAX_CHROMIUM to a Chromium binary)")
    opened = Browser(executable)
    yield opened
    opened.close()


def test_page_shows_layers_and_a_clicked_nodes_patches_and_parents(page, graph, browser):
    browser.navigate((page / "index.html").as_uri())
    browser.wait_for("document.body.dataset.ready === 'true'")
    assert browser.evaluate("[...document.querySelectorAll('.column h2')].map(e => e.textContent)"
                            ) == ["low", "top"]
    assert browser.evaluate("document.querySelectorAll('.column .row').length") > 10
    det = evaluate.node_detections(graph.layers[0], 96)
    _, summary = read(page / "assets" / "data" / "layer0.js")
    best = int(np.argmax(summary["score"]))                   # ties: the lower index first
    assert browser.evaluate("+document.querySelector(\".column[data-layer='0'] .row\")"
                            ".dataset.node") == best

    browser.click(".column[data-layer='0'] .row")
    browser.wait_for("document.querySelectorAll('#detail .patches canvas').length > 0")
    assert browser.evaluate("document.querySelector('#detail h3').textContent") == \
        f"low · filter {best // toy_graph.LOW.nodes_per_filter} · node " \
        f"{best % toy_graph.LOW.nodes_per_filter}"
    assert browser.evaluate("document.querySelectorAll('#detail .patches canvas').length") == \
        min(explorer.PATCH_IMAGES, toy_graph.IMAGES)
    assert browser.evaluate("document.querySelectorAll('#detail .heats canvas').length") == \
        explorer.HEAT_IMAGES
    parents = [int(p) for p in np.asarray(graph.layers[0].parents)[best] if p >= 0]
    assert parents and browser.evaluate(
        "document.querySelectorAll('#detail .links a').length") == len(parents)
    assert browser.evaluate("Promise.all(Object.values(images)).then(() => new Promise("
                            "done => requestAnimationFrame(() => done(true))))")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "explorer.png")

    # the first patch on the page is the image crop at the node's best detection
    box = browser.evaluate("(() => { const r = document.querySelector('#detail .patches canvas')"
                           ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()")
    with Image.open(ARTIFACTS / "explorer.png") as shot:
        shown = np.asarray(shot.convert("RGB").crop(
            (round(box[0]), round(box[1]), round(box[0] + box[2]), round(box[1] + box[3]))))
    crop = patches.node_patches(toy_graph.images(), det, best, 1,
                                patches.patch_side(toy_graph.LOW))[0]
    expected = raster.resized(crop, shown.shape[0]).astype(float)
    assert np.abs(shown - expected).mean() < 12, "the page's patch is not the image crop"

    browser.click("#detail .links a")                                   # the first parent
    browser.wait_for("document.querySelector('#detail h3').textContent.startsWith('top')")
    assert browser.evaluate("+document.querySelector('.column[data-layer=\"1\"] .row.selected')"
                            ".dataset.node") == parents[0]
    browser.click("#sort-stability")
    _, top_summary = read(page / "assets" / "data" / "layer1.js")
    unstable = np.array(top_summary["instability"], float)
    assert browser.evaluate("+document.querySelector(\".column[data-layer='1'] .row\")"
                            ".dataset.node") == int(np.nanargmin(unstable))
    assert browser.errors() == []
