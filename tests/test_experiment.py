"""The main job, `experiments/vgg16_voc.py`: flags refused clearly, a tiny run end to end."""

import json
import pathlib
import runpy
import sys

import jax
import jax.numpy as jnp
import pytest

from egjax import ExplanatoryGraph
from egjax.models import ModelMeta, save_checkpoint

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
    assert all(row["nodes"] > 0 and row["filters"] > 0 for row in metrics["layers"])
    graph = ExplanatoryGraph.load(out / "graph")
    assert graph.layers[0].score.shape[1] == 4
    for figure in ("instability.png", "detections.png"):
        assert (out / figure).stat().st_size > 10_000
    assert "conv5_3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        run(["--checkpoint", str(checkpoint), "--images", "4", "--negatives", "4",
             "--iterations", "1", "--runs", str(tmp_path), "--name", "tiny", "--quiet"])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
