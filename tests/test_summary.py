"""What the pictures read of the records (`visualize.summary`): summaries of disjoint sets of
images (each process's) merge into the summary of all of them, bit for bit, and equal the
definitions written out image by image; the pictures drawn from summaries and a graph
without records are those drawn from the whole graph, byte for byte."""

import filecmp
import json
import math

import numpy as np

import toy_graph
from egjax import ExplanatoryGraph, LayerFit, evaluate
from egjax.visualize import figures, pictures, summary

N = 45   # images: more than summary.TOP, so that shares cut each node's best


def layer_fit(seed: int = 0) -> LayerFit:
    """Toy layer records on N images, with tied and zero scores; node 4 is dead."""
    rng = np.random.default_rng(seed)
    cfg, filters = toy_graph.LOW, 3
    v = filters * cfg.nodes_per_filter
    score = (rng.integers(0, 6, (v, N)) * rng.choice([0.5, 1 / 3], (v, 1))).astype(np.float32)
    alt_score = rng.gamma(1.0, 0.5, (v, N)).astype(np.float32)
    score[4], alt_score[4] = 0, 0
    return LayerFit(coord=rng.uniform(2, 9, (filters, cfg.nodes_per_filter, 2)).astype(np.float32),
                    deform=np.full((filters, cfg.nodes_per_filter), 1.5, np.float32),
                    parents=np.zeros((v, 0), np.int32), score=score,
                    pos=rng.uniform(-1, 12, (v, N, 2)), flip=rng.random(N) < 0.5,
                    alt_score=alt_score, alt_pos=rng.uniform(-1, 12, (v, N, 2)), config=cfg)


def shares(fit, held_sets, landmarks, visible):
    records = [np.asarray(getattr(fit, f)) for f in evaluate.RECORDS]
    return [summary.summarize_share(fit.config, 96, held,
                                    *[r[held] if r.ndim == 1 else r[:, held] for r in records],
                                    num_images=N, landmarks=landmarks, visible=visible)
            for held in held_sets]


def test_shares_merge_into_the_summary_of_all_images_bit_for_bit():
    fit = layer_fit()
    rng = np.random.default_rng(1)
    landmarks, visible = rng.uniform(0, 96, (N, 3, 2)), rng.random((N, 3)) < 0.7
    whole = summary.summarize_layer(fit, 96, landmarks, visible)
    splits = [[np.arange(p, N, 2) for p in range(2)],          # every other image
              [np.arange(p, N, 3) for p in range(3)],
              [np.arange(0, 3), np.arange(3, N)],               # a process with 3 images only
              [np.sort(part) for part in np.array_split(rng.permutation(N), 4)]]
    for held_sets in splits:
        merged = summary.merge(shares(fit, held_sets, landmarks, visible), N)
        for name, got, want in zip(summary.LayerSummary._fields, merged, whole):
            np.testing.assert_array_equal(got, want, err_msg=name)
    # The definitions, image by image (toy_graph's plain references).
    for v in range(fit.num_nodes):
        best = toy_graph.plain_best_images(fit, v, summary.TOP, 96)
        assert whole.image[v].tolist() == best
        detected = [toy_graph.plain_detection(fit, v, n, 96) for n in best]
        assert whole.score[v].tolist() == [s for s, _ in detected]
        np.testing.assert_allclose(whole.px[v], [p for _, p in detected], rtol=0, atol=1e-9)
        assert whole.mean[v] == math.fsum(max(float(a), float(b)) for a, b in
                                          zip(fit.score[v], fit.alt_score[v])) / N
        for axis in range(2):
            px = fit.config.center + np.asarray(fit.pos)[v, :, axis] * fit.config.stride
            assert whole.position[v, axis] == math.fsum(px.tolist()) / N
        assert whole.first_score[v].tolist() == [toy_graph.plain_detection(fit, v, n, 96)[0]
                                                 for n in range(summary.FIRST)]
        plain = toy_graph.plain_instability(fit, v, landmarks, visible, 96)
        np.testing.assert_allclose(whole.instability[v] / math.hypot(96, 96), plain, rtol=1e-9)
    assert whole.score[4].max() == 0   # dead: its best scores are 0


def test_exact_sums_are_exact_whatever_the_split():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 300)) * 10.0 ** rng.integers(-40, 40, (6, 300))
    x[0, :150] = -x[0, 150:]                                   # cancels to exactly 0
    x[1] = rng.gamma(2.0, 0.5, 300).astype(np.float32)            # float32 scores
    want = [math.fsum(row) for row in x.tolist()]
    assert summary.rounded_sums([summary.exact_sums(x)]).tolist() == want
    parts = np.array_split(rng.permutation(300), 5)
    got = summary.rounded_sums([summary.exact_sums(x[:, p], rows_per_chunk=4) for p in parts])
    assert got.tolist() == want and want[0] == 0


def test_pictures_from_summaries_and_a_graph_without_records_are_the_same(tmp_path):
    graph, images, maps = toy_graph.graph(), toy_graph.images(), toy_graph.maps()
    landmarks, visible = toy_graph.landmarks()
    model = ExplanatoryGraph(tuple(layer.without_records() for layer in graph.layers),
                             graph.config)
    summaries = summary.summarize(graph, landmarks, visible)
    prepared = pictures.prepare(model, images, maps, summaries)   # the images, maps read
    for folder, drawn, given, ready in ((tmp_path / "whole", graph, None, None),
                                        (tmp_path / "summaries", model, summaries, None),
                                        (tmp_path / "prepared", model, summaries, prepared)):
        folder.mkdir()
        shown = images if ready is None else ready.images
        pictures.write(folder, drawn, None if ready else images, None if ready else maps,
                       landmarks, visible, summaries=given, prepared=ready)
        figures.detections(shown, drawn, folder / "detections.png", landmarks=landmarks,
                           visible=visible, summaries=given)
    files = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*")
                   if p.is_file())
    assert len(files) >= 20   # 7 images, 5 pictures, the explorer's data and code
    for other in ("summaries", "prepared"):
        assert files == sorted(p.relative_to(tmp_path / other)
                               for p in (tmp_path / other).rglob("*") if p.is_file())
        assert all(filecmp.cmp(tmp_path / "whole" / f, tmp_path / other / f, shallow=False)
                   for f in files), other
    # The explorer's mean-score column: each node's mean over all images, by hand.
    text = (tmp_path / "summaries" / "explorer" / "assets" / "data" / "layer0.js").read_text()
    shown = json.loads(text[text.index(",") + 1:text.rindex(")")])["mean"]
    fit = graph.layers[0]
    assert shown == [round(math.fsum(max(float(a), float(b)) for a, b in zip(s, alt))
                           / toy_graph.IMAGES, 3) for s, alt in zip(fit.score, fit.alt_score)]
