"""The graph explorer: the files it writes hold the graph's numbers (against plain
references), and the page, driven in headless Chromium from file://, loads cleanly, lists
the layers with dead nodes marked, counted and last, sorts by stability only above its
shown threshold, refuses a filter that is not one, fits from 800 px wide, and shows a
clicked node's patches (to the pixel), heat maps and parents. Saves
test-artifacts/explorer.png."""

import base64
import json
import math
import pathlib

import numpy as np
import pytest
from PIL import Image

import toy_graph
from browser import Browser, find_chromium
from egjax.visualize import explorer, heatmaps

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
    """Scores, instabilities, best images and positions against the plain references of
    `toy_graph` (image by image, no egjax.evaluate)."""
    fit, size = graph.layers[0], 96
    landmarks, visible = toy_graph.landmarks()
    _, summary = read(page / "assets" / "data" / "layer0.js")
    nodes = range(np.shape(fit.score)[0])
    expected = [toy_graph.plain_instability(fit, v, landmarks, visible, size) for v in nodes]
    np.testing.assert_allclose(np.array(summary["instability"], float), expected, atol=6e-5)
    np.testing.assert_allclose(summary["score"], [toy_graph.plain_strength(fit, v, size)
                                                  for v in nodes], atol=6e-4)
    _, chunk = read(page / "assets" / "data" / "layer0-0.js")
    for v in (5, 11):
        node = chunk["nodes"][v - chunk["start"]]
        assert [p[0] for p in node["parents"]] == [p for p in np.asarray(fit.parents)[v] if p >= 0]
        best = toy_graph.plain_best_images(fit, v, explorer.PATCH_IMAGES, size)
        assert [t[0] for t in node["top"]] == best
        np.testing.assert_allclose([t[1:3] for t in node["top"]],
                                   [toy_graph.plain_detection(fit, v, n, size)[1] for n in best],
                                   atol=0.05)
        n, h0, w0, rows, cols, codes = node["heat"][0]
        assert n == best[0]
        window = np.frombuffer(base64.b64decode(codes), np.uint8).reshape(rows, cols)
        full = heatmaps.node_heatmaps(toy_graph.maps()[0], fit, v, size)[n]
        assert np.all(np.delete(np.delete(full, range(h0, h0 + rows), 0),
                                range(w0, w0 + cols), 1) == 0)
        if full.max() > 0:
            assert np.unravel_index(np.argmax(window), window.shape) == tuple(
                np.array(np.unravel_index(np.argmax(full), full.shape)) - [h0, w0])
    _, top_chunk = read(page / "assets" / "data" / "layer1-0.js")
    children = {c for node in top_chunk["nodes"] for c, _, _ in node["children"]}
    assert children == set(np.flatnonzero((np.asarray(fit.parents) >= 0).any(axis=1)).tolist())


@pytest.fixture(scope="module")
def planted():
    return toy_graph.planted()


@pytest.fixture(scope="module")
def planted_page(planted, tmp_path_factory):
    return explorer.write(tmp_path_factory.mktemp("planted") / "explorer", planted.graph,
                          planted.images, planted.maps, planted.landmarks, planted.visible,
                          title="planted graph")


def test_files_mark_dead_nodes_and_carry_the_counts(planted_page):
    _, meta = read(planted_page / "assets" / "data" / "meta.js")
    assert [layer["dead"] for layer in meta["layers"]] == [7, 4]
    assert meta["min_score"] == 1 and meta["patch_images"] == 10 and meta["images"] == 12
    _, summary = read(planted_page / "assets" / "data" / "layer0.js")
    assert summary["dead"] == list(toy_graph.PLANTED["low"]["dead"])
    assert all(summary["instability"][v] is None for v in summary["dead"])
    assert all(summary["instability"][v] is not None for v in (3, 4, 10, 17))
    _, chunk = read(planted_page / "assets" / "data" / "layer0-0.js")
    assert chunk["nodes"][20] == {"coord": chunk["nodes"][20]["coord"],
                                  "deform": chunk["nodes"][20]["deform"], "dead": True}
    assert [t[0] for t in chunk["nodes"][10]["top"]] == [11, 10, 9, 8, 7, 6, 5, 4, 3, 2]
    assert [t[0] for t in chunk["nodes"][4]["top"]] == [11, 10, 9, 8, 7, 5, 6, 4, 3, 2]  # tie
    _, top_chunk = read(planted_page / "assets" / "data" / "layer1-0.js")
    assert [c[0] for c in top_chunk["nodes"][1]["children"]] == [10, 12]      # not dead 20
    assert top_chunk["nodes"][1]["children_total"] == 2


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


def open_page(browser, page, fragment: str = "", width: int = 1440) -> int:
    """Load the explorer at `width` x 900 px; the event count before (for `errors`)."""
    browser.resize(width, 900)
    since = len(browser.events)
    browser.navigate((page / "index.html").as_uri() + fragment)
    browser.wait_for("document.body.dataset.ready === 'true'")
    return since


def column_rows(browser, layer: int) -> list[tuple[int, str]]:
    """(node, class) of the rows shown in a layer's column, top to bottom."""
    return [tuple(r) for r in browser.evaluate(
        f"[...document.querySelectorAll(\".column[data-layer='{layer}'] .row\")]"
        ".sort((a, b) => a.offsetTop - b.offsetTop).map(r => [+r.dataset.node, r.className])")]


def plain_orders(planted, layer: int):
    """Expected row orders by score and by stability, from the plain references."""
    fit = planted.graph.layers[layer]
    nodes = range(np.shape(fit.score)[0])
    strength = {v: toy_graph.plain_strength(fit, v, 96) for v in nodes}
    dead = [v for v in nodes if all(toy_graph.plain_detection(fit, v, n, 96)[0] <= 0
                                    for n in range(toy_graph.PLANTED_IMAGES))]
    live = [v for v in nodes if v not in dead]
    by_score = sorted(live, key=lambda v: (-strength[v], v)) + dead
    unstable = {v: toy_graph.plain_instability(fit, v, planted.landmarks, planted.visible, 96)
                for v in live}
    ranked = [v for v in live if strength[v] >= 1 and not math.isnan(unstable[v])]
    weak = [v for v in by_score if v in live and v not in ranked]
    return by_score, sorted(ranked, key=lambda v: (unstable[v], v)) + weak + dead, dead


def test_page_lists_dead_nodes_last_marked_and_counted(planted_page, planted, browser):
    since = open_page(browser, planted_page)
    assert browser.evaluate("[...document.querySelectorAll('.column h2')].map(e => e.textContent)"
                            ) == ["low", "top"]
    assert browser.evaluate("[...document.querySelectorAll('.column .dead-count')]"
                            ".map(e => e.textContent)") == ["7 dead", "4 dead"]
    for layer in (0, 1):
        by_score, _, dead = plain_orders(planted, layer)
        rows = column_rows(browser, layer)
        assert [v for v, _ in rows] == by_score
        assert [v for v, kind in rows if "dead" in kind.split()] == dead
    assert browser.evaluate("[...document.querySelectorAll(\".column[data-layer='0'] .row.dead "
                            ".tag\")].every(e => e.textContent === 'dead')")
    browser.click(".column[data-layer='0'] .row.dead")
    browser.wait_for("document.querySelector('#detail h3 .tag') !== null")
    assert browser.evaluate("document.querySelector('#detail h3').textContent") == \
        "low · filter 0 · node 0 dead"
    assert browser.evaluate("document.querySelectorAll('#detail canvas, #detail .links a')"
                            ".length") == 0
    assert browser.errors(since) == []


def test_stability_sort_ranks_only_nodes_above_the_shown_threshold(planted_page, planted,
                                                                  browser):
    since = open_page(browser, planted_page)
    assert browser.evaluate("document.getElementById('threshold').textContent") == \
        "stability ranks score ≥ 1"
    browser.click("#sort-stability")
    for layer in (0, 1):
        _, by_stability, _ = plain_orders(planted, layer)
        rows = column_rows(browser, layer)
        assert [v for v, _ in rows] == by_stability
        weak = [v for v, kind in rows if "weak" in kind.split()]
        fit = planted.graph.layers[layer]
        assert weak and all(toy_graph.plain_strength(fit, v, 96) < 1 for v in weak)
    assert browser.errors(since) == []


def test_filter_box_refuses_what_is_not_a_filter(planted_page, browser):
    since = open_page(browser, planted_page)
    shown = "[...document.querySelectorAll('.column')].map(c => c.querySelectorAll('.row').length)"
    for text in ("-3", "3", "1.5", "2e"):                 # filters are 0..2 (low: 3, top: 2)
        browser.type("#filter", text)
        assert browser.evaluate("document.getElementById('filter').classList.contains('invalid')"
                                ), text
        assert browser.evaluate("document.getElementById('filter-error').textContent") == \
            "filter: a whole number from 0 to 2", text
        assert browser.evaluate(shown) == [24, 8], text          # everything still listed
    browser.type("#filter", "2")
    assert not browser.evaluate("document.getElementById('filter').classList.contains('invalid')")
    assert browser.evaluate("document.getElementById('filter-error').textContent") == ""
    assert browser.evaluate(shown) == [8, 0]
    assert sorted(v for v, _ in column_rows(browser, 0)) == list(range(16, 24))
    browser.type("#filter", "")
    assert browser.evaluate(shown) == [24, 8]
    assert browser.errors(since) == []


def crop(image: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """The side x side square of `image` from (top, left), grey (128) outside it."""
    out = np.full((side, side, 3), 128, np.uint8)
    for r in range(side):
        for c in range(side):
            if 0 <= top + r < image.shape[0] and 0 <= left + c < image.shape[1]:
                out[r, c] = image[top + r, left + c]
    return out


def test_clicked_node_shows_its_patches_to_the_pixel(planted_page, browser):
    """Low node 10 (70-px patches): in image 11 at (35.5, 53.5) px, so rows 1..70 and
    columns 19..88; in image 10 at (23.5, 77.5) px (found in the mirror), so rows -11..58
    and columns 43..112, grey beyond the image. On the page, each patch matches its crop of
    the stored JPEG better than the crop moved by up to 3 px either way, by a factor 2."""
    since = open_page(browser, planted_page, "#0:10")
    browser.wait_for("document.querySelectorAll('#detail .patches canvas').length > 0")
    assert browser.evaluate("document.querySelector('#detail h3').textContent") == \
        "low · filter 1 · node 2"
    assert browser.evaluate("document.querySelectorAll('#detail .patches canvas').length") == 10
    assert browser.evaluate("document.querySelectorAll('#detail .heats canvas').length") == \
        explorer.HEAT_IMAGES
    assert browser.evaluate("[...document.querySelectorAll('#detail .patches figcaption')]"
                            ".slice(0, 2).map(e => e.firstChild.textContent)") == \
        ["img 11", "img 10"]
    assert browser.evaluate("[...document.querySelectorAll('#detail .links a')]"
                            ".map(a => a.firstChild.textContent)") == ["top f0·1"]
    assert browser.evaluate("Promise.all(Object.values(images)).then(() => new Promise("
                            "done => requestAnimationFrame(() => done(true))))")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "explorer.png")
    boxes = browser.evaluate("[...document.querySelectorAll('#detail .patches canvas')]"
                             ".slice(0, 2).map(c => { const r = c.getBoundingClientRect(); "
                             "return [r.x, r.y, r.width, r.height]; })")
    for (n, top, left), box in zip(((11, 1, 19), (10, -11, 43)), boxes):
        with Image.open(planted_page / "assets" / "images" / f"{n:04d}.jpg") as stored:
            source = np.asarray(stored.convert("RGB"))           # what the page draws from
        inner = [math.ceil(box[0]) + 1, math.ceil(box[1]) + 1]          # whole pixels inside
        inner += [math.floor(box[0] + box[2]) - 1 - inner[0], math.floor(box[1] + box[3]) - 1
                  - inner[1]]
        browser.screenshot(ARTIFACTS / "patch.png", clip=inner)
        with Image.open(ARTIFACTS / "patch.png") as shot:
            shown = np.asarray(shot.convert("RGB"), float)

        def error(dy, dx):
            """Mean difference from the crop moved by (dy, dx), drawn as the page draws it:
            onto the 124-px canvas, then shown at the canvas's size on the page."""
            full = Image.fromarray(crop(source, top + dy, left + dx, 70)).resize(
                (124, 124), Image.BILINEAR).resize((round(box[2]), round(box[3])),
                                                   Image.BILINEAR)
            x0, y0 = round((inner[0] - box[0])), round((inner[1] - box[1]))
            expected = np.asarray(full, float)[y0:y0 + shown.shape[0], x0:x0 + shown.shape[1]]
            return np.abs(shown - expected).mean()

        errors = {(dy, dx): error(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)}
        best = min(errors, key=errors.get)
        assert best == (0, 0), (n, best, errors[best], errors[0, 0])
        assert errors[0, 0] < min(3, 0.5 * min(e for s, e in errors.items() if s != (0, 0)))
    browser.click("#detail .links a")                                   # the parent
    browser.wait_for("document.querySelector('#detail h3').textContent.startsWith('top')")
    assert browser.evaluate("+document.querySelector('.column[data-layer=\"1\"] .row.selected')"
                            ".dataset.node") == 1
    assert browser.errors(since) == []


def test_layout_fits_from_800_px_wide(planted_page, browser):
    for width in (800, 1024, 1440):
        since = open_page(browser, planted_page, "#0:10", width=width)
        browser.wait_for("document.querySelectorAll('#detail .patches canvas').length > 0")
        assert browser.evaluate("document.documentElement.scrollWidth") <= width
        boxes = browser.evaluate("[...document.querySelectorAll('.column, #detail, #detail "
                                 ".patches canvas, #detail .heats canvas, header .tools')]"
                                 ".map(e => { const r = e.getBoundingClientRect(); "
                                 "return [r.left, r.right, r.width]; })")
        assert all(0 <= left and right <= width + 0.5 for left, right, _ in boxes), width
        patch_width = browser.evaluate("document.querySelector('#detail .patches canvas')"
                                       ".getBoundingClientRect().width")
        assert patch_width >= 80, width
        assert browser.errors(since) == []
