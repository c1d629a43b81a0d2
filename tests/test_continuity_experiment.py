"""`experiments/continuity.py`: flags refused clearly, a tiny run end to end."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--seeds", "2", "--width", "0.0625", "--size", "64", "--steps", "4", "--triplet-after",
        "0", "--min-accuracy", "0", "--batch", "8", "--heldout", "40", "--triplets", "16", "--pairs", "8",
        "--graph-images", "4", "--graph-negatives", "4", "--graph-iterations", "2",
        "--batch-size", "8", "--resamples", "50", "--quiet"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("continuity_experiment",
                                                  ROOT / "experiments" / "continuity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], ">= 1"),
    (["--size", "32"], "64, 1024"),
    (["--size", "72"], "multiple of 16"),
    (["--pairs", "6"], "multiple of the 4 classes"),
    (["--pairs", "4"], ">= 8"),
    (["--graph-images", "1"], "--graph-images must be >= 2"),
    (["--graph-category", "cat"], "invalid choice"),
    (["--noise", "-1"], "> 0"),
    (["--heldout-seed", "3"], "a training seed"),
    (["--seeds", "2", "--steps", "200", "--heldout-seed", "399"], "gives held-out seed 399"),
    (["--seeds", "0"], ">= 1"),
    (["--resamples", "1"], "--resamples must be >= 2"),
    (["--steps", "3"], "--steps must be >= 4"),
    (["--triplet-after", "1.5"], "must be a number in [0, 1]"),
    (["--min-accuracy", "-0.1"], "must be a number in [0, 1]"),
    (["--model", "resnet50", "--size", "80"], "multiple of 32 (layer4 cells"),
    (["--model", "alexnet"], "invalid choice"),
])
def test_bad_flags_are_refused(script, capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--runs", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_graph_layer_geometry_is_derived_from_each_network(script, tmp_path):
    """VGG-16's relu5_3: the paper's stride 16 and centre 7.5 px; ResNet-50's layer4:
    stride 32 (each arm of `--model resnet50` trains and explains a ResNet-50)."""
    from egjax.models import ModelMeta
    vgg = ModelMeta("t", arch="vgg16", head="gap").model()
    layer = script.graph_config(vgg, script.TAPS["vgg16"][-1], 112, 2).layers[0]
    assert (layer.tap, layer.map_size, layer.stride, layer.center) == ("relu5_3", 7, 16, 7.5)
    resnet = ModelMeta("t", arch="resnet50", head="gap").model()
    layer = script.graph_config(resnet, script.TAPS["resnet50"][-1], 128, 2).layers[0]
    assert (layer.tap, layer.map_size, layer.stride) == ("layer4", 4, 32)
    args = script.parse_args(["--model", "resnet50", "--size", "64", "--runs", str(tmp_path)])
    assert ModelMeta("t", arch=args.model, head="gap").model().arch == "resnet50"


def test_an_existing_run_is_kept_unless_overwritten(script, capsys, tmp_path):
    (tmp_path / "continuity").mkdir()
    with pytest.raises(SystemExit):
        script.parse_args(["--runs", str(tmp_path)])
    assert "--overwrite" in capsys.readouterr().err
    assert script.parse_args(["--runs", str(tmp_path), "--overwrite"]).overwrite


def test_tiny_run_writes_the_documented_record(script, capsys, tmp_path):
    assert script.main(["--runs", str(tmp_path), "--name", "tiny", *TINY]) == 0
    record = json.loads((tmp_path / "tiny" / "continuity.json").read_text())
    assert (tmp_path / "tiny" / "continuity.png").stat().st_size > 1000
    assert set(record["results"]) == set(script.VARIANTS)
    for runs in record["results"].values():
        assert [r["seed"] for r in runs] == [0, 4]                   # seed + k * steps
        # --triplet-after 0: the first step's metrics are read while the second runs
        assert [r["shared_steps"] for r in runs] == [2, 2]
        for result in runs:
            low, high = result["accuracy"]["wilson95"]
            assert 0 <= low <= result["accuracy"]["accuracy"] <= high <= 1
            assert result["accuracy"]["images"] == 40
            assert set(result["triplet_consistency"]) == set(script.TAPS["vgg16"])
            for tap in result["triplet_consistency"].values():
                assert tap["wilson95"][0] <= tap["consistency"] <= tap["wilson95"][1]
                assert tap["triplets"] == 16
            assert set(result["ratios"]) == set(script.EXPLAINERS)
            for kinds in result["ratios"].values():
                assert set(kinds) == set(script.PAIRS)
                assert all(len(r) == 8 and np.isfinite(r).all() and min(r) >= 0
                           for r in kinds.values())
            assert result["graph"]["nodes"] == 32 * 2  # 32 filters x ceil(0.1 * 4 * 4) nodes
    for name in script.EXPLAINERS:
        for kind in script.PAIRS:
            for statistic in ("mean", "max"):
                cell = record["summary"][name][kind][statistic]
                for variant in script.VARIANTS:
                    scores = [np.mean(r["ratios"][name][kind]) if statistic == "mean"
                              else np.max(r["ratios"][name][kind])
                              for r in record["results"][variant]]
                    mean = (np.exp(np.mean(np.log(scores))) if cell[variant]["scale"] == "log"
                            else np.mean(scores))
                    assert cell[variant]["estimate"] == pytest.approx(mean, rel=1e-5)
                    assert cell[variant]["low"] <= cell[variant]["estimate"] \
                        <= cell[variant]["high"]
                    assert cell["per_seed"][variant] == pytest.approx(scores)
    printed = capsys.readouterr().out
    assert "| lrp_composite | shift |" in printed and "held-out accuracy" in printed


@pytest.mark.parametrize("floor, reason", [
    (["--min-accuracy", "1"], "below the held-out accuracy floor --min-accuracy 1"),
    (["--triplet-after", "1"], "still on the initial plateau after 2 shared steps"),
])
def test_refused_seeds_are_replaced_and_recorded_and_too_few_make_no_comparison(
        script, capsys, tmp_path, floor, reason):
    """Each refused seed is replaced by the next, up to twice --seeds; with fewer than
    --seeds passing, the run exits 1, keeps what it measured and compares nothing."""
    assert script.main(["--runs", str(tmp_path), "--name", "refused", *TINY, *floor]) == 1
    record = json.loads((tmp_path / "refused" / "continuity.json").read_text())
    assert [r["seed"] for r in record["refused"]] == [0, 4, 8, 12]    # 2 x --seeds tried
    assert all(reason in r["reason"] for r in record["refused"])
    assert record["results"] == {"plain": [], "triplet": []} and record["summary"] is None
    assert not (tmp_path / "refused" / "continuity.png").exists()
    err = capsys.readouterr().err
    assert "seed 12 refused: " in err and "only 0 of 4 seeds passed (--seeds 2 needed)" in err


def test_the_shared_phase_branches_when_until_fires_though_its_last_step_falls_back(
        script, monkeypatch, tmp_path):
    """`train.fit` records one more step after `until` fires. If that step pulls the mean
    back under `--triplet-after`, the seed has still left the plateau: it branches at the
    step count `fit` ran, and is not refused. Here the plateau test holds only for a
    history of exactly 2 steps, so the 3-step history `fit` returns fails it."""
    monkeypatch.setattr(script, "left_plateau", lambda accuracy: lambda history: len(history) == 2)
    args = script.parse_args(["--runs", str(tmp_path), *TINY, "--steps", "8"])
    from egjax.models import ModelMeta
    meta = ModelMeta(source="synthetic", arch="vgg16", width=args.width, head="gap",
                     num_classes=5, preprocessing="torch")
    start, arms = script.train_pair(meta, args, seed=0)
    assert start == 3
    assert sorted(arms) == ["plain", "triplet"]
    assert [len(arms[v][1]) for v in script.VARIANTS] == [8, 8]
