"""The main job, `experiments/vgg16_voc.py`: flags refused clearly, tiny runs end to end on
the embedded set, on a fake Pascal-Part tree in the real formats, and on a folder of images
without landmarks."""

import json
import pathlib
import runpy
import sys

import numpy as np
import pytest

from egjax import ExplanatoryGraph, data
from egjax.data import synthetic
from test_evaluate import direct
from tests.data_trees import (cache_home, pattern, rect, truncate, write_jpeg,  # noqa: F401
                              write_pascal_part)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "vgg16_voc.py"
COMMITTED = ROOT / "checkpoints" / "synthetic_quadruped"


def run(argv):
    sys.argv = [str(SCRIPT)] + argv
    return runpy.run_path(str(SCRIPT), run_name="__main__")


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "voc"], "invalid choice: 'voc' (choose from"),
    (["--category", "cat"], "unknown category 'cat'; valid: quadruped"),
    (["--dataset", "pascal_part", "--data-dir", "/nonexistent"], "needs --checkpoint"),
    (["--dataset", "pascal_part", "--data-dir", "/nonexistent", "--checkpoint", str(COMMITTED)],
     "extract VOCtrainval_03-May-2010.tar"),
    (["--dataset", "ilsvrc_animal_part", "--checkpoint", str(COMMITTED)],
     "needs --category; valid: n01443537"),
    (["--landmarks", "head,hoof"], "unknown part(s) hoof of 'quadruped'; its parts: head"),
    (["--images", "1"], "at least 2"),
    (["--checkpoint", "/nonexistent"], "no network checkpoint"),
])
def test_bad_flags_are_refused_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unreadable_checkpoint_is_refused_with_a_message(tmp_path, capsys):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "metadata").write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        run(["--checkpoint", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "cannot read the network checkpoint" in capsys.readouterr().err


def test_default_checkpoint_is_the_committed_net_of_the_category():
    names = {c: run_module()["default_checkpoint"](c).name for c in ("quadruped", "bird")}
    assert names == {"quadruped": "synthetic_quadruped", "bird": "synthetic_all"}


def run_module():
    return runpy.run_path(str(SCRIPT), run_name="vgg16_voc")


def assert_instability(metrics, graph, batch, filters_floor=0.01):
    """Node instability recomputed from the saved graph and the run's landmarks: per node the
    orientation with the higher score (mirrored positions mapped back), the metric per node
    as `test_evaluate.direct` writes it out, the mean over the nodes, over the diagonal.
    Filters: a standard deviation (N - 1) of 4 distances that all lie in [0, diagonal] is at
    most diagonal * sqrt(4 / 12) (of more distances, less)."""
    size = graph.config.image_size
    diagonal = np.hypot(size, size)
    for fit, row in zip(graph.layers, metrics["layers"]):
        cfg = fit.config
        score, alt_score = np.asarray(fit.score), np.asarray(fit.alt_score)
        use_alt = alt_score > score
        px = cfg.center + np.where(use_alt[..., None], fit.alt_pos, fit.pos) * cfg.stride
        mirrored = np.asarray(fit.flip)[None] != use_alt
        px[..., 1] = np.where(mirrored, size - 1 - px[..., 1], px[..., 1])
        best = np.maximum(score, alt_score)
        nodes = np.argsort(-best.mean(axis=1), kind="stable")[:167]      # 4 images: all top
        per_node = [direct(best[v], px[v], batch.landmarks, batch.visible, 20) for v in nodes]
        assert row["nodes"] == pytest.approx(np.nanmean(per_node) / diagonal, rel=1e-6)
        assert filters_floor <= row["filters"] <= np.sqrt(4 / 12), row
        assert row["ratio"] == pytest.approx(row["nodes"] / row["filters"])
    for key in ("nodes", "filters"):
        assert metrics[key] == pytest.approx(np.mean([r[key] for r in metrics["layers"]]))


def test_tiny_run_writes_graph_metrics_and_figures(tmp_path, capsys):
    """With the committed network; the runs below take the same shapes (4 objects, 4
    negatives, 2 iterations), so the graph's kernels compile once for all of them."""
    with pytest.raises(SystemExit) as exit_info:
        run(["--images", "4", "--negatives", "4",
             "--iterations", "2", "--runs", str(tmp_path), "--name", "tiny", "--quiet"])
    assert exit_info.value.code == 0
    out = tmp_path / "tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]      # no temporaries left
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["tap"] for row in metrics["layers"]] == ["conv4_2", "conv4_3", "conv5_2",
                                                          "conv5_3"]
    graph = ExplanatoryGraph.load(out / "graph")
    assert graph.layers[0].score.shape[1] == 4
    assert_instability(metrics, graph, synthetic.sample("quadruped", 4, seed=0))
    for figure in ("instability.png", "detections.png"):
        assert (out / figure).stat().st_size > 10_000
    assert "conv5_3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        run(["--images", "4", "--negatives", "4", "--iterations", "1", "--runs", str(tmp_path),
             "--name", "tiny", "--quiet"])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err


def write_cow_tree(root: pathlib.Path, cows: int, others: int = 3, size: int = 128) -> None:
    """A Pascal-Part tree (`tests.data_trees.write_pascal_part`): `cows` images of one cow
    each (a red body with head, neck and torso masks; the first without parts) and `others`
    images of a dog (the negatives); train / val alternate."""
    images = {}
    for i in range(cows + others):
        rng = np.random.default_rng(i)
        top, left = (int(v) for v in rng.integers(0, size // 4, 2))
        body = rect(size, size, top, left, top + size // 2, left + size // 2)
        pixels = pattern(size, size, seed=i)
        if i < cows:
            pixels[body.astype(bool)] = (190, 40, 40)
            parts = [] if i == 0 else [
                ("head", rect(size, size, top, left, top + 8, left + 8)),
                ("neck", rect(size, size, top + 8, left + 4, top + 14, left + 10)),
                ("torso", rect(size, size, top + 12, left + 8, top + size // 2,
                               left + size // 2))]
            images[f"2010_{i:06d}"] = (pixels, [("cow", body, parts)])
        else:
            images[f"2010_{i:06d}"] = (pixels, [("dog", body, [])])
    write_pascal_part(root, images, {k: ("train", "val")[n % 2] for n, k in enumerate(images)})


@pytest.fixture(scope="module")
def cow_tree(tmp_path_factory):
    """5 cows (the first without parts, the second's JPEG truncated) and 4 dogs."""
    root = tmp_path_factory.mktemp("pascal")
    write_cow_tree(root, cows=5, others=4)
    truncate(root / "VOCdevkit" / "VOC2010" / "JPEGImages" / "2010_000001.jpg")
    return root


def cow_argv(root, runs, name):
    return ["--dataset", "pascal_part", "--data-dir", str(root), "--category", "cow",
            "--checkpoint", str(COMMITTED), "--negatives", "4", "--iterations", "2",
            "--runs", str(runs), "--name", name, "--quiet"]


def test_corrupt_jpeg_with_strict_is_refused_before_any_work(cow_tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(cow_argv(cow_tree, tmp_path, "strict") + ["--strict"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "2010_000001.jpg" in err and "Traceback" not in err
    assert not (tmp_path / "strict").exists()


def test_pascal_part_run_end_to_end_with_the_committed_network(cow_tree, tmp_path, capsys):
    """Also: the truncated JPEG is skipped with a warning naming it; the cow without parts is
    kept, its parts invisible; the default landmarks are the authors' (head, neck, torso)."""
    with pytest.warns(data.SkippedFilesWarning, match=r"skipped 1 .*2010_000001\.jpg"):
        with pytest.raises(SystemExit) as exit_info:
            run(cow_argv(cow_tree, tmp_path, "cow"))
    assert exit_info.value.code == 0
    banner = capsys.readouterr().out.splitlines()[0]
    assert f"pascal_part / cow: 4 objects (+ mirrors) from {cow_tree}" in banner
    assert "4 negatives; landmarks head, neck, torso" in banner
    metrics = json.loads((tmp_path / "cow" / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["data_dir"], metrics["images"]) == (
        "pascal_part", str(cow_tree), 4)
    assert metrics["landmarks"] == ["head", "neck", "torso"]
    with pytest.warns(data.SkippedFilesWarning):
        objects = data.select_parts(data.load("pascal_part", cow_tree, "cow", quiet=True),
                                    ["head", "neck", "torso"])
    assert objects.ids[0] == "2010_000000/0" and len(objects) == 4
    assert not objects.visible[0].any() and objects.visible[1:].all()
    # the fake cows are one picture at several places, so raw filters can be near-perfectly
    # stable (instability ~0): no lower bound for them here
    assert_instability(metrics, ExplanatoryGraph.load(tmp_path / "cow" / "graph"), objects,
                       filters_floor=0.0)
    assert (tmp_path / "cow" / "explorer" / "index.html").is_file()


def test_folder_without_landmarks_writes_graph_pictures_and_explorer(tmp_path, capsys):
    for i in range(4):      # 4 objects and negatives, 2 iterations: the pascal run's compiles
        write_jpeg(tmp_path / "mine" / f"{i}.jpg", pattern(80, 120, seed=i))
        write_jpeg(tmp_path / "other" / f"{i}.jpg", pattern(100, 70, seed=10 + i))
    with pytest.raises(SystemExit) as exit_info:
        run(["--dataset", "folder", "--data-dir", str(tmp_path / "mine"), "--negatives-dir",
             str(tmp_path / "other"), "--checkpoint", str(COMMITTED), "--iterations", "2",
             "--runs", str(tmp_path / "runs"), "--name", "mine", "--quiet"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "landmarks none" in out and "instability needs landmarks" in out
    metrics = json.loads((tmp_path / "runs" / "mine" / "metrics.json").read_text())
    assert metrics["dataset"] == "folder" and "needs landmarks" in metrics["instability"]
    assert metrics["images"] == 4 and metrics["negatives"] == 4
    for name in ("graph", "explorer/index.html", "detections.png", "graph.png"):
        assert (tmp_path / "runs" / "mine" / name).exists(), name
    assert not (tmp_path / "runs" / "mine" / "instability.png").exists()


def test_folder_needs_negatives(tmp_path, capsys):
    for i in range(2):
        write_jpeg(tmp_path / "mine" / f"{i}.jpg", pattern(80, 120, seed=i))
    with pytest.raises(SystemExit) as exit_info:
        run(["--dataset", "folder", "--data-dir", str(tmp_path / "mine"), "--checkpoint",
             str(COMMITTED), "--runs", str(tmp_path / "runs"), "--name", "x", "--quiet"])
    assert exit_info.value.code == 2
    assert "no negative images of its own: give negatives_dir" in capsys.readouterr().err
