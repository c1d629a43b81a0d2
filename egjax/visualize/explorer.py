"""The graph explorer: a self-contained static web page over a fitted graph and its images.

`write(directory, ...)` makes `directory/index.html` and `directory/assets/`: the page's
script and style, the images as JPEG, and the data as small scripts that hand their content
to the page (`EGX.receive(name, data)`), so the page works from `file://` with no server and
no network. Data is split so that a VGG-16 graph (61,440 nodes) stays quick to open:
`data/meta.js` (layers, images), `data/layer<l>.js` (every node's scores (the mean of its
top 20, and its mean over all images: the exact sum, correctly rounded, / N) and
instability, for the sortable columns, and which are dead) and `data/layer<l>-<chunk>.js`
(`CHUNK` nodes' details, loaded when one of them is opened). A node's details: prior
position, deformation, parents and live children with their mean offsets
(`graph_figure.edge_offsets`), its
`PATCH_IMAGES` best images with its detections there (the page cuts the patches,
`patches.patch_side` px, from the images) and the heat maps (`heatmaps` module) of its
`HEAT_IMAGES` best images, each stored as the window of cells it covers, uint8 relative to
the node's largest value over those images. Dead nodes (`selection.dead`: score 0 in every
image) have none of these but their prior position and deformation: the page marks them,
counts them per layer and lists them last. Sorting by stability ranks the nodes scoring at
least `selection.MIN_SCORE`; the page shows that threshold. All of it is read from the
layers' `summary.LayerSummary`s and `prepare`'s JPEGs and heat windows, which several
processes make together without gathering a layer's records or maps.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import pathlib
from typing import NamedTuple

import numpy as np

from egjax import distributed, evaluate, geometry, runs
from egjax.maps import QuantizedMaps
from egjax.visualize import heatmaps, patches, raster, selection, summary
from egjax.visualize.graph_figure import edge_offsets

CHUNK = 256
PATCH_IMAGES = 10
HEAT_IMAGES = 4
CHILDREN_SHOWN = 24
JPEG_QUALITY = 88
STATIC = ("index.html", "explorer.js", "explorer.css")


class Prepared(NamedTuple):
    """What the explorer reads of the images and maps: every image as JPEG (`jpegs`, bytes,
    in image order) and per layer its live nodes' `heat_windows` (`heat`: {node: windows})."""

    jpegs: list
    heat: list


def prepare(graph, images, maps, summaries, *, across_processes: bool = False) -> Prepared:
    """The explorer's `Prepared` from `images` and `maps` (as `write` takes them) and the
    graph's `summary.summarize`. `across_processes`: every process calls it with its share
    of the images and maps (images p, p + P, ...: `distributed.shard()`); only JPEGs and
    heat-map windows are exchanged, and all get the whole."""
    own = [raster.encoded(image, quality=JPEG_QUALITY) for image in images]
    jpegs = distributed.gather_blobs(own) if across_processes else own
    heat = []
    for fit, layer_maps, det in zip(graph.layers, maps, summaries):
        values = np.asarray(evaluate.decoded(layer_maps), np.float32)
        live, layer = np.flatnonzero(~selection.dead(det)), {}
        for start in range(0, len(live), CHUNK):                     # bounded memory
            nodes = live[start:start + CHUNK]
            layer.update(zip(nodes.tolist(), heat_windows(values, fit, det, nodes,
                                                          across_processes=across_processes)))
        heat.append(layer)
    return Prepared(jpegs, heat)


def write(directory, graph, images: np.ndarray, maps, landmarks=None, visible=None, *,
          title: str = "explanatory graph", summaries=None, prepared=None) -> pathlib.Path:
    """Write the explorer for `graph` fitted on `images [N, H, W, 3]` uint8 (unmirrored) into
    `directory` (atomically; replaces an earlier one). `maps`: the layers' normalised
    unmirrored maps, bottom to top (`[N, S, S, C]` or uint8 `QuantizedMaps`); `landmarks
    [N, P, 2]` px and `visible [N, P]` give per-node instability (omitted when None).
    `summaries`: the graph's `summary.summarize` (with the landmarks, if given), if already
    made; the graph's records are not read then. `prepared`: `prepare`'s, if already made;
    `images` and `maps` are not read then (None will do)."""
    _check(graph, images, maps, landmarks, visible, summaries, prepared)
    summaries = summaries or summary.summarize(graph, landmarks, visible)
    prepared = prepared or prepare(graph, images, maps, summaries)
    with runs.run_directory(directory, overwrite=True) as out:
        assets = out / "assets"
        (assets / "data").mkdir(parents=True)
        (assets / "images").mkdir()
        for n, jpeg in enumerate(prepared.jpegs):
            (assets / "images" / f"{n:04d}.jpg").write_bytes(jpeg)
        layers = [_write_layer(assets / "data", graph, index, summaries, prepared.heat[index])
                  for index in range(len(graph.layers))]
        _emit(assets / "data" / "meta.js", "meta", {
            "title": title, "image_size": graph.config.image_size,
            "images": len(prepared.jpegs),
            "top_images": evaluate.TOP_IMAGES, "heat_opacity": heatmaps.OPACITY,
            "patch_images": PATCH_IMAGES, "min_score": selection.MIN_SCORE,
            "instability": landmarks is not None, "layers": layers})
        source = importlib.resources.files("egjax.visualize") / "explorer_assets"
        for name in STATIC:
            target = out / name if name == "index.html" else assets / name
            target.write_text(source.joinpath(name).read_text())
    return pathlib.Path(directory)


def _check(graph, images, maps, landmarks, visible, summaries, prepared) -> None:
    if summaries is None:
        graph.require_records("the explorer")
    count = summaries[0].num_images if summaries else graph.layers[0].num_images
    if prepared is not None:
        if len(prepared.jpegs) != count or len(prepared.heat) != len(graph.layers):
            raise ValueError(f"prepared must hold {count} images and {len(graph.layers)} "
                             f"layers, got {len(prepared.jpegs)} and {len(prepared.heat)}")
    else:
        _check_images(graph, images, maps, count)
    if (landmarks is None) != (visible is None):
        raise ValueError("give both landmarks and visible, or neither")
    if landmarks is not None and (np.shape(landmarks)[:1] != (count,)
                                  or np.shape(landmarks)[:2] != np.shape(visible)):
        raise ValueError(f"landmarks must be [{count}, P, 2] and visible [{count}, P], got "
                         f"{np.shape(landmarks)} and {np.shape(visible)}")


def _check_images(graph, images, maps, count: int) -> None:
    size = graph.config.image_size
    if np.ndim(images) != 4 or np.shape(images)[1:] != (size, size, 3) or len(images) != count:
        raise ValueError(f"images must be [{count}, {size}, {size}, 3] (the graph's images), "
                         f"got {np.shape(images)}")
    if np.asarray(images).dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {np.asarray(images).dtype}")
    if len(maps) != len(graph.layers):
        raise ValueError(f"maps: {len(maps)} layers given, the graph has {len(graph.layers)}")
    for index, (fit, layer_maps) in enumerate(zip(graph.layers, maps)):
        data = layer_maps.data if isinstance(layer_maps, QuantizedMaps) else layer_maps
        s, c = fit.config.map_size, np.shape(fit.deform)[0]
        if np.shape(data) != (count, s, s, c):
            raise ValueError(f"maps[{index}] must be [{count}, {s}, {s}, {c}], "
                             f"got {np.shape(data)}")


def _rounded(values, digits: int = 4) -> list:
    """Floats for JSON (nested lists as the array): rounded, NaN -> null."""
    rounded = np.round(np.asarray(values, np.float64), digits)
    return np.where(np.isnan(rounded), None, rounded).tolist()


def _emit(path: pathlib.Path, name: str, data) -> None:
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    path.write_text(f"EGX.receive({json.dumps(name)},{body});\n")


def _children(graph, index: int, summaries) -> list[list[tuple[int, int]]]:
    """Per node of layer `index`: (child, parent slot) pairs of the live nodes of the layer
    below that take it as a parent, best first."""
    found = [[] for _ in range(graph.layers[index].num_nodes)]
    if index == 0:
        return found
    below, det = graph.layers[index - 1], summaries[index - 1]
    parents = np.asarray(below.parents)
    for child in selection.strongest(det, len(parents)):
        for slot, parent in enumerate(parents[child]):
            if parent >= 0:
                found[parent].append((int(child), slot))
    return found


def _links(nodes, offsets) -> list:
    """`[[node, dh, dw], ...]` for the valid (>= 0) entries of `nodes`."""
    return [[n, *o] for n, o in zip(nodes, offsets) if n >= 0]


def _write_layer(folder: pathlib.Path, graph, index: int, summaries, heat: dict) -> dict:
    """Write a layer's summary and detail chunks; return its entry in meta."""
    fit, size, det = graph.layers[index], graph.config.image_size, summaries[index]
    cfg = fit.config
    num, per_filter = np.shape(det.score)[0], np.shape(fit.deform)[1]
    dead = selection.dead(det)
    columns = {"score": _rounded(selection.strength(det), 3), "mean": _rounded(det.mean, 3),
               "dead": np.flatnonzero(dead).tolist()}
    if det.instability is not None:
        columns["instability"] = _rounded(np.where(dead, np.nan,
                                                   det.instability / evaluate.diagonal(size)))
    _emit(folder / f"layer{index}.js", f"layer{index}", columns)
    above = index + 1 < len(graph.layers)
    parents = np.asarray(fit.parents).tolist()
    up = (_rounded(edge_offsets(fit, graph.layers[index + 1], summaries[index:index + 2]), 1)
          if above else None)
    down = (_rounded(-edge_offsets(graph.layers[index - 1], fit, summaries[index - 1:index + 1]),
                     1) if index > 0 else None)
    children = _children(graph, index, summaries)
    best = det.image[:, :PATCH_IMAGES]                 # each node's best images, best first
    top_px = _rounded(det.px[:, :PATCH_IMAGES], 1)
    top_score = _rounded(det.score[:, :PATCH_IMAGES], 3)
    coord = _rounded(np.asarray(fit.coord).reshape(-1, 2), 2)
    deform = _rounded(np.asarray(fit.deform).reshape(-1), 3)
    for start in range(0, num, CHUNK):
        nodes = range(start, min(start + CHUNK, num))
        details = [{"coord": coord[v], "deform": deform[v], "dead": True} if dead[v] else {
            "coord": coord[v], "deform": deform[v],
            "parents": _links(parents[v], up[v]) if above else [],
            "children": [[c, *down[c][slot]] for c, slot in children[v][:CHILDREN_SHOWN]],
            "children_total": len(children[v]),
            "top": [[n, *px, sc] for i, (n, px, sc)
                    in enumerate(zip(best[v].tolist(), top_px[v], top_score[v]))
                    if det.score[v, i] > 0],
            "heat": [w for i, w in enumerate(heat[v]) if det.score[v, i] > 0]} for v in nodes]
        _emit(folder / f"layer{index}-{start // CHUNK}.js", f"layer{index}-{start // CHUNK}",
              {"start": start, "nodes": details})
    return {"tap": cfg.tap or f"layer {index}", "filters": int(np.shape(fit.deform)[0]),
            "per_filter": int(per_filter), "nodes": int(num), "dead": int(dead.sum()),
            "map_size": cfg.map_size,
            "stride": cfg.stride, "center": cfg.center, "patch_side": patches.patch_side(cfg),
            "chunk": CHUNK}


def heat_windows(values: np.ndarray, fit, det, nodes, *,
                 across_processes: bool = False) -> list[list]:
    """Per node of `nodes` of `fit`: `[image, h0, w0, rows, cols, base64 uint8]` heat-map
    windows (`heatmaps.evidence`; the window holds all of it) in its `HEAT_IMAGES` best
    images, scaled so that 255 is its largest value there. `values [N, S, S, C]` the
    layer's decoded maps, `det` its `summary.LayerSummary`. `across_processes`: every
    process calls it with its share of the maps (images p, p + P, ...:
    `distributed.shard()`); each computes the windows in the images it holds, and all get
    every window."""
    cfg, per_filter = fit.config, np.shape(fit.deform)[1]
    index, count = distributed.shard() if across_processes else (0, 1)
    nodes = np.asarray(nodes, np.int64)
    chosen = det.image[nodes, :HEAT_IMAGES]                                          # [B, I]
    flat_nodes, images = np.repeat(nodes, chosen.shape[1]), chosen.reshape(-1)
    cells = geometry.to_cells(det.px[nodes, :HEAT_IMAGES].reshape(-1, 2), cfg.stride, cfg.center)
    deform = np.asarray(fit.deform).reshape(-1)[flat_nodes]
    half = heatmaps.search_half_range(deform, cfg)
    centre = np.floor(cells + 0.5).astype(int)
    low = np.clip(centre - half[:, None], 0, cfg.map_size - 1)
    high = np.clip(centre + half[:, None], 0, cfg.map_size - 1) + 1
    mine = np.flatnonzero(images % count == index)
    heat = heatmaps.evidence(values[images[mine] // count, :, :, flat_nodes[mine] // per_filter],
                             cells[mine], deform[mine], half[mine])
    cut = [heat[j, h0:h1, w0:w1] for j, ((h0, w0), (h1, w1))
           in enumerate(zip(low[mine].tolist(), high[mine].tolist()))]
    if count == 1:
        parts = cut
    else:   # each window from the process that holds its image, in order
        every = distributed.gather_exact(np.concatenate([c.reshape(-1) for c in cut] + [
            np.zeros(int(np.prod(high - low, axis=1).sum()) - sum(c.size for c in cut),
                     np.float32)]))
        sizes, starts = np.prod(high - low, axis=1), np.zeros(count, np.int64)
        parts = []
        for i, owner in enumerate((images % count).tolist()):
            parts.append(every[owner, starts[owner]:starts[owner] + sizes[i]].reshape(
                high[i] - low[i]))
            starts[owner] += sizes[i]
    peak = np.asarray([max((float(p.max()) for p in parts[b:b + chosen.shape[1]] if p.size),
                           default=0.0) for b in range(0, len(parts), chosen.shape[1])],
                      np.float32)
    scale = np.repeat(np.where(peak > 0, 255 / np.where(peak > 0, peak, 1), 0), chosen.shape[1])
    windows = []
    for i, n in enumerate(images.tolist()):
        (h0, w0), (rows, cols) = low[i].tolist(), parts[i].shape
        codes = np.round(parts[i] * scale[i]).astype(np.uint8)
        windows.append([n, h0, w0, rows, cols, base64.b64encode(codes.tobytes()).decode()])
    return [windows[b:b + chosen.shape[1]] for b in range(0, len(windows), chosen.shape[1])]
