"""Multi-shot part localisation on hand-made inference with planted nodes: exact predictions,
mirror-back, ignored shots, the measure and the baselines by hand, checkpoints, bad input."""

import json
import pathlib
import runpy
import sys

import numpy as np
import pytest

import egjax
from egjax import localize
from egjax.models import ModelMeta, param_shapes, save_checkpoint
from tests import toy_graph
from tests.data_trees import cache_home, pattern, write_cub, write_jpeg  # noqa: F401

SIZE = toy_graph.CONFIG.image_size                # 96 px
TOP = 1                                           # the toy graph's top layer (stride 16)
PLANTED = 5                                       # the node planted in it
OFFSET = np.array([8.5, -20.5], np.float32)       # from the node to the part, px


def planted(flip, seed=0):
    """Inference of the toy graph in `len(flip)` images in which node PLANTED of the top
    layer sits at OFFSET from the part (in the frame of `flip`) and fires strongly; every
    other node fires at random places. Returns (inference, part centre [N, 2] in the image)."""
    flip = np.asarray(flip, bool)
    rng = np.random.default_rng(seed)
    inference = []
    for fitted in toy_graph.graph().layers:
        cfg, nodes = fitted.config, fitted.score.shape[0]
        score = rng.uniform(1.0, 2.0, (nodes, len(flip))).astype(np.float32)
        pos = rng.uniform(0, cfg.map_size - 1, (nodes, len(flip), 2)).astype(np.float32)
        inference.append(egjax.LayerInference(score, pos, flip))
    cells = np.stack([rng.integers(0, 5, len(flip)), rng.integers(1, 6, len(flip))], -1)
    inference[TOP].pos[PLANTED] = cells
    inference[TOP].score[PLANTED] = 3.0
    top = toy_graph.TOP
    centre = top.center + cells * top.stride + OFFSET             # integer pixels, in the frame
    centre[flip, 1] = SIZE - 1 - centre[flip, 1]                 # mirrored back into the image
    return inference, centre


def test_a_planted_node_at_a_fixed_offset_predicts_the_part_exactly():
    graph = toy_graph.graph()
    shots, shot_truth = planted([False, False, False], seed=1)
    part = localize.fit_part(graph, shots, shot_truth, np.ones(3, bool), nodes=1)
    assert (part.layer.tolist(), part.index.tolist()) == ([TOP], [PLANTED])
    np.testing.assert_allclose(part.offset, [OFFSET], atol=1e-5)
    assert part.sigma == pytest.approx(70 * SIZE / 224)
    images, truth = planted([False] * 6, seed=2)
    np.testing.assert_array_equal(localize.predict(part, graph, images), truth)


def test_a_prediction_in_a_mirrored_image_is_mapped_back():
    graph = toy_graph.graph()
    shots, shot_truth = planted([True, False, True], seed=3)      # offsets in the node's frame
    part = localize.fit_part(graph, shots, shot_truth, np.ones(3, bool), nodes=1)
    np.testing.assert_allclose(part.offset, [OFFSET], atol=1e-5)
    flip = np.array([True, False, True, True, False, True])
    images, truth = planted(flip, seed=4)
    predicted = localize.predict(part, graph, images)
    np.testing.assert_array_equal(predicted, truth)
    unmirrored = truth.copy()
    unmirrored[:, 1] = SIZE - 1 - truth[:, 1]
    assert not np.array_equal(predicted[flip], unmirrored[flip])


def test_a_shot_not_showing_the_part_is_ignored():
    graph = toy_graph.graph()
    shots, truth = planted([False, True, False, True], seed=5)
    shots[TOP].score[PLANTED, 2] = 0.0            # the node does not fire where the part is hidden
    truth[2] = np.nan                             # and that shot has no usable landmark
    visible = np.array([True, True, False, True])
    part = localize.fit_part(graph, shots, truth, visible, nodes=4)
    kept = [0, 1, 3]
    alone = localize.fit_part(graph, [egjax.LayerInference(s.score[:, kept], s.pos[:, kept],
                                                           s.flip[kept]) for s in shots],
                              truth[kept], visible[kept], nodes=4)
    assert (part.layer[0], part.index[0]) == (TOP, PLANTED)
    np.testing.assert_array_equal(part.layer, alone.layer)
    np.testing.assert_array_equal(part.index, alone.index)
    np.testing.assert_allclose(part.offset, alone.offset, rtol=1e-6)


def test_layers_and_min_score_restrict_the_nodes():
    graph = toy_graph.graph()
    shots, truth = planted([False] * 3, seed=6)
    low = localize.fit_part(graph, shots, truth, np.ones(3, bool), nodes=5, layers=[0])
    assert low.layer.tolist() == [0] * 5
    shots[TOP].score[PLANTED, 1] = 0.5            # below min_score on one shot: not firing
    part = localize.fit_part(graph, shots, truth, np.ones(3, bool), nodes=1)
    assert (part.layer[0], part.index[0]) != (TOP, PLANTED)
    part = localize.fit_part(graph, shots, truth, np.ones(3, bool), nodes=1, min_score=0.5)
    assert (part.layer[0], part.index[0]) == (TOP, PLANTED)


def test_votes_are_weighted_by_score():
    """Two lone votes far apart: the higher-scoring one wins, though the other comes first
    in row-major order (where a tie would go)."""
    score = np.array([[1.0], [2.0]], np.float32)
    px = np.array([[[20.0, 20.0]], [[70.0, 70.0]]], np.float32)
    found = localize.vote(score, px, np.zeros((2, 2), np.float32), np.float32(5.0), SIZE)
    np.testing.assert_array_equal(found, [[70.0, 70.0]])
    offset = np.array([[3.0, 0.0], [-1.0, 2.0]], np.float32)     # votes at (23, 20), (69, 72)
    silent = np.array([[0.0], [0.0]], np.float32)                 # no pattern fires: alike
    found = localize.vote(silent, px, offset, np.float32(5.0), SIZE)
    np.testing.assert_array_equal(found, [[23.0, 20.0]])


def test_the_filter_baseline_votes_with_each_filters_argmax_cell():
    cfg = toy_graph.CONFIG
    rng = np.random.default_rng(7)
    flip = np.array([False, True, False, True, False])
    maps = [rng.uniform(-1, 0.5, (5, c.map_size, c.map_size, f)).astype(np.float32)
            for c, f in zip(cfg.layers, toy_graph.FILTERS)]
    flipped = [rng.uniform(-1, 0.5, m.shape).astype(np.float32) for m in maps]
    cells = np.stack([rng.integers(0, 4, 5), rng.integers(2, 6, 5)], -1)
    for n, (h, w) in enumerate(cells):                 # filter 1 of the top layer: hottest here
        (flipped if flip[n] else maps)[TOP][n, h, w, 1] = 5.0
    patterns = localize.filter_patterns(cfg, maps, flipped, flip)
    top = cfg.layers[TOP]
    np.testing.assert_array_equal(patterns[TOP].px[1], top.center + cells * top.stride)
    np.testing.assert_array_equal(patterns[TOP].score[1], 5.0)
    truth = top.center + cells * top.stride + OFFSET
    truth[flip, 1] = SIZE - 1 - truth[flip, 1]
    part = localize.fit_patterns(patterns, truth, np.ones(5, bool), SIZE, nodes=1, min_score=2)
    assert (part.layer[0], part.index[0]) == (TOP, 1)
    np.testing.assert_array_equal(localize.predict_patterns(part, patterns), truth)


def test_normalized_distance_by_hand():
    predicted = np.array([[0.0, 0.0], [3.0, 4.0], [50.0, 50.0]])
    truth = np.zeros((3, 2))
    visible = np.array([True, True, False])
    # (0 + 5) / 2 px over the diagonal of a 100-px image, 100 sqrt 2
    assert localize.normalized_distance(predicted, truth, visible, 100) == pytest.approx(
        2.5 / 141.4213562373095, rel=1e-12)


def test_prior_is_the_mean_of_the_shots_showing_the_part():
    landmarks = np.array([[10.0, 20.0], [30.0, 60.0], [np.nan, np.nan], [50.0, 10.0]])
    got = localize.prior(landmarks, np.array([True, True, False, True]), 4)
    np.testing.assert_array_equal(got, np.tile([[30.0, 30.0]], (4, 1)))


def test_nearest_takes_the_most_similar_shot_or_its_mirror():
    shots = np.eye(4)[:3]                              # pooled features of three shots
    mirrored = np.eye(4)[[3, 3, 3]] + 0.1 * np.eye(4)[:3]
    landmarks = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    visible = np.array([True, False, True])
    features = np.array([[0.1, 0.0, 1.0, 0.0],        # most like shot 2
                         [0.0, 1.0, 0.0, 0.0],        # like shot 1, which is left out
                         [1.0, 0.0, 0.0, 2.0]])       # most like shot 0 mirrored
    got = localize.nearest(shots, mirrored, landmarks, visible, features, SIZE)
    np.testing.assert_array_equal(got, [[50.0, 60.0], [10.0, 20.0], [10.0, SIZE - 1 - 20.0]])


def test_a_part_model_saves_and_loads(tmp_path):
    part = localize.PartModel(layer=np.array([0, 1, 1]), index=np.array([4, 0, 7]),
                              offset=np.array([[1.5, -2.0], [0.0, 3.25], [-8.0, 9.0]]),
                              sigma=30.0, image_size=96)
    path = part.save(tmp_path / "head")
    loaded = localize.PartModel.load(path)
    for field in ("layer", "index", "offset"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(part, field))
        assert getattr(loaded, field).dtype == getattr(part, field).dtype
    assert (loaded.sigma, loaded.image_size) == (30.0, 96)
    with pytest.raises(FileExistsError):
        part.save(path)
    toy_graph.graph().save(tmp_path / "graph")
    with pytest.raises(ValueError, match="not a part model"):
        localize.PartModel.load(tmp_path / "graph")


def test_bad_input_is_refused_with_a_clear_error():
    graph = toy_graph.graph()
    shots, truth = planted([False] * 3, seed=8)
    visible = np.ones(3, bool)
    with pytest.raises(ValueError, match="no shot shows the part"):
        localize.fit_part(graph, shots, truth, np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"shot_landmarks must be \[3, 2\]"):
        localize.fit_part(graph, shots, truth[:2], visible)
    with pytest.raises(ValueError, match="nodes must be an int >= 1"):
        localize.fit_part(graph, shots, truth, visible, nodes=0)
    with pytest.raises(ValueError, match=r"layers must be distinct graph layer indices in \[0, 2\)"):
        localize.fit_part(graph, shots, truth, visible, layers=[2])
    with pytest.raises(ValueError, match="no pattern fires"):
        localize.fit_part(graph, shots, truth, visible, min_score=100.0)
    with pytest.raises(ValueError, match="graph's 2 layers"):
        localize.fit_part(graph, shots[:1], truth, visible)
    part = localize.fit_part(graph, shots, truth, visible, nodes=2)
    mirrored = egjax.LayerInference(shots[1].score, shots[1].pos, ~shots[1].flip)
    with pytest.raises(ValueError, match="different orientations"):
        localize.predict(part, graph, [shots[0], mirrored])
    with pytest.raises(ValueError, match="for 224-px images"):
        localize.predict(localize.PartModel(part.layer, part.index, part.offset, 70.0, 224),
                         graph, shots)
    with pytest.raises(ValueError, match="do not have"):
        localize.predict_patterns(localize.PartModel([1], [99], [[0, 0]], 5.0, SIZE),
                                  localize.node_patterns(graph, shots))
    with pytest.raises(ValueError, match="layer and index must be >= 0"):
        localize.PartModel([0], [-1], [[0, 0]], 5.0, SIZE)
    with pytest.raises(ValueError, match=r"predicted and truth must be \[N, 2\]"):
        localize.normalized_distance(np.zeros((3, 2)), np.zeros((2, 2)), np.ones(3, bool), 96)
    with pytest.raises(ValueError, match="at least one image showing the part"):
        localize.normalized_distance(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros(3, bool), 96)
    with pytest.raises(ValueError, match="must be finite"):
        localize.normalized_distance(np.full((3, 2), np.nan), np.zeros((3, 2)),
                                     np.ones(3, bool), 96)


# -- the experiment script ------------------------------------------------------------------

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "part_localization.py"


def run(argv):
    sys.argv = [str(SCRIPT)] + argv
    return runpy.run_path(str(SCRIPT), run_name="__main__")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A narrow VGG-16 with random weights (the pipeline's work does not depend on them),
    drawn without tracing the network."""
    meta = ModelMeta(source="random", width=1 / 16, head="gap", num_classes=2,
                     preprocessing="torch")
    rng = np.random.default_rng(0)
    params = {layer: {role: (0.1 * rng.standard_normal(shape.shape)).astype(np.float32)
                      for role, shape in weights.items()}
              for layer, weights in param_shapes(meta.model()).items()}
    return save_checkpoint(tmp_path_factory.mktemp("net") / "vgg16-random", params, meta)


@pytest.mark.parametrize("argv, message", [
    (["--part", "wing"], "--part ['wing'] unknown"),
    (["--images", "2"], "--images must be at least 2 and --shots (3)"),
    (["--min-score", "nan"], "--min-score must be finite"),
    (["--layers", "conv9_9"], "--layers must be distinct graph taps"),
    (["--graph", "/nonexistent"], "cannot read the graph"),
])
def test_bad_flags_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def write_birds(root, count: int, train: int) -> None:
    """A CUB-200-2011 tree (`tests.data_trees.write_cub`): `count` birds, the first `train`
    in the train split, each with back, forehead and tail visible (the first one's tail
    hidden)."""
    birds = []
    for i in range(count):
        x, y = 10 + 3 * i, 8 + 2 * i
        parts = {1: (x + 40, y + 30), 6: (x + 10, y + 10), 14: (x + 70, y + 50)}
        if i == 0:
            del parts[14]
        birds.append({"id": i + 1, "folder": "001.Black_footed_Albatross",
                      "pixels": pattern(120, 140, seed=i), "box": (x, y, 80, 60),
                      "train": i < train, "parts": parts})
    write_cub(root, birds)


def test_a_fake_cub_tree_runs_through_the_dataset_contract(checkpoint, tmp_path, capsys):
    """cub200: training objects from the train split, test objects from the test split,
    negatives from --negatives-dir; shapes as the tiny synthetic run (compiled once)."""
    write_birds(tmp_path / "cub", 12, train=8)
    for i in range(4):
        write_jpeg(tmp_path / "sky" / f"{i}.jpg", pattern(90, 90, seed=20 + i))
    argv = ["--dataset", "cub200", "--data-dir", str(tmp_path / "cub"), "--checkpoint",
            str(checkpoint), "--images", "5", "--test-images", "5", "--negatives", "4",
            "--iterations", "1", "--repeats", "2", "--part", "back", "tail", "--nodes", "5",
            "--runs", str(tmp_path / "runs"), "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        run(argv + ["--name", "no_negatives"])
    assert exit_info.value.code == 2
    assert "give negatives_dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run(argv + ["--name", "cub", "--negatives-dir", str(tmp_path / "sky")])
    assert exit_info.value.code == 0
    report = json.loads((tmp_path / "runs" / "cub" / "localization.json").read_text())
    assert (report["dataset"], report["category"], report["images"]) == (
        "cub200", "bird", {"train": 5, "test": 4})            # CUB's 4 test birds
    assert list(report["parts"]) == ["back", "tail"]
    assert "back" in capsys.readouterr().out


def test_the_interval_is_the_t_interval_of_the_mean():
    interval = runpy.run_path(str(SCRIPT), run_name="part_localization")["interval"]
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.302653 (tables), half width 4.302653 / sqrt 3
    mean, low, high = interval([1.0, 2.0, 3.0])
    assert (mean, low, high) == pytest.approx((2.0, 2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert interval([0.5]) == (0.5, None, None)


def test_tiny_run_writes_the_table_json_figure_and_part_models(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--checkpoint", str(checkpoint), "--images", "5", "--test-images", "5",
             "--negatives", "4", "--iterations", "1", "--repeats", "2", "--part", "head",
             "tail_tip", "--nodes", "5", "--runs", str(tmp_path), "--name", "tiny", "--quiet"])
    assert exit_info.value.code == 0
    out = tmp_path / "tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]      # no temporaries left
    report = json.loads((out / "localization.json").read_text())
    assert (report["shots"], report["images"], report["dataset"], report["category"]) == (
        3, {"train": 5, "test": 5}, "synthetic", "quadruped")
    assert list(report["parts"]) == ["head", "tail_tip"]
    for methods in report["parts"].values():
        assert list(methods) == ["graph", "filters", "nearest", "prior"]
        for entry in methods.values():
            assert len(entry["repeats"]) == 2
            assert entry["low"] <= entry["mean"] == pytest.approx(np.mean(entry["repeats"]))
            assert entry["mean"] <= entry["high"]
    part = localize.PartModel.load(out / "parts" / "head")
    graph = egjax.ExplanatoryGraph.load(out / "graph")
    assert len(part.index) == 5 and part.image_size == graph.config.image_size
    assert (out / "localization.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "tail_tip" in printed and "95% t-interval" in printed
