"""The main job, `experiments/vgg16_voc.py`: flags refused clearly, a tiny run end to end."""

import json
import pathlib
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egjax import ExplanatoryGraph
from egjax.data import synthetic
from egjax.models import ModelMeta, save_checkpoint
from test_evaluate import direct

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "vgg16_voc.py"


def run(argv):
    sys.argv = [str(SCRIPT)] + argv
    return runpy.run_path(str(SCRIPT), run_name="__main__")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A narrow random VGG-16 (the pipeline's work does not depend on the weights)."""
    meta = ModelMeta(source="random", width=1 / 16, head="gap", num_classes=2,
                     preprocessing="torch")
    params = meta.model().init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
    return save_checkpoint(tmp_path_factory.mktemp("net") / "vgg16-random", params, meta)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "imagenet"], "--dataset must be one of"),
    (["--category", "cat"], "--category must be one of"),
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


def test_voc_is_not_available_yet(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--dataset", "voc"])
    assert exit_info.value.code == 2
    assert "not available yet" in capsys.readouterr().err


def assert_instability(metrics, graph, batch):
    """Node instability recomputed from the saved graph and the run's landmarks: per node the
    orientation with the higher score (mirrored positions mapped back), the metric per node
    as `test_evaluate.direct` writes it out, the mean over the nodes, over the diagonal.
    Filters: a standard deviation (N - 1) of 4 distances that all lie in [0, diagonal] is at
    most diagonal * sqrt(4 / 12)."""
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
        assert 0.01 < row["filters"] <= np.sqrt(4 / 12), row
        assert row["ratio"] == pytest.approx(row["nodes"] / row["filters"])
    for key in ("nodes", "filters"):
        assert metrics[key] == pytest.approx(np.mean([r[key] for r in metrics["layers"]]))


def test_tiny_run_writes_graph_metrics_and_figures(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--checkpoint", str(checkpoint), "--images", "4", "--negatives", "4",
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
        run(["--checkpoint", str(checkpoint), "--images", "4", "--negatives", "4",
             "--iterations", "1", "--runs", str(tmp_path), "--name", "tiny", "--quiet"])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
