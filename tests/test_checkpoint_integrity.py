"""Checkpoints verified: a flipped, truncated or missing file is refused with an error naming
its array, in one line and without orbax's event-loop noise; a graph is not taken for a
network (nor the reverse); only a checkpoint is ever overwritten; ported weights with NaN
or Inf are refused naming the layer."""

from __future__ import annotations

import json
import pathlib
import runpy
import sys
import types

import h5py
import numpy as np
import pytest

import toy_graph
from egjax import ExplanatoryGraph, checkpoint
from egjax.models import VGG16, ModelMeta, load_checkpoint, load_vgg16, save_checkpoint
from egjax.models.weights import KERAS_NAMES
from vgg_weight_files import random_params, torchvision_state_dict, write_keras_h5, write_torch_zip

ROOT = pathlib.Path(__file__).resolve().parents[1]
WIDTH = 1 / 16


@pytest.fixture(scope="module")
def graph_path(tmp_path_factory):
    return toy_graph.graph().save(tmp_path_factory.mktemp("graph") / "graph")


@pytest.fixture(scope="module")
def network_path(tmp_path_factory):
    model = VGG16(width=WIDTH, head="gap", num_classes=3)
    meta = ModelMeta(source="test", width=WIDTH, head="gap", num_classes=3,
                     preprocessing="torch")
    return save_checkpoint(tmp_path_factory.mktemp("net") / "net", random_params(model), meta)


def copy_of(path: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    import shutil
    return pathlib.Path(shutil.copytree(path, tmp_path / path.name))


def data_file(path: pathlib.Path, array: str) -> pathlib.Path:
    """The file holding the (single-chunk) array `array` of a checkpoint."""
    (chunk,) = [f for f in (path / "arrays" / array).iterdir() if f.name != ".zarray"]
    return chunk


def flip_bytes(file: pathlib.Path, count: int = 16) -> None:
    data = bytearray(file.read_bytes())
    start = len(data) // 2 - count // 2
    data[start:start + count] = bytes(b ^ 0xFF for b in data[start:start + count])
    file.write_bytes(bytes(data))


def test_graph_with_flipped_bytes_in_an_array_is_refused(graph_path, tmp_path, capfd):
    path = copy_of(graph_path, tmp_path)
    flip_bytes(data_file(path, "0.score"))
    with pytest.raises(ValueError, match=r"corrupt \(fails its checksum: array '0.score'\)"):
        ExplanatoryGraph.load(path)
    assert capfd.readouterr().err == ""


def test_graph_with_altered_settings_is_refused(graph_path, tmp_path):
    path = copy_of(graph_path, tmp_path)
    meta = path / "meta" / "metadata"
    text = meta.read_text()
    assert '"image_size": 96' in text
    meta.write_text(text.replace('"image_size": 96', '"image_size": 97'))
    with pytest.raises(ValueError, match=r"fails its checksum: the metadata"):
        ExplanatoryGraph.load(path)


def test_truncated_graph_is_refused_in_one_line_without_event_loop_noise(graph_path, tmp_path,
                                                                         capfd):
    path = copy_of(graph_path, tmp_path)
    for field in ("coord", "score", "pos", "alt_pos"):
        for layer in (0, 1):
            file = data_file(path, f"{layer}.{field}")
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError) as error:
        ExplanatoryGraph.load(path)
    message = str(error.value)
    assert "\n" not in message and "array '1.alt_pos'" in message
    assert capfd.readouterr().err == ""


def test_missing_array_file_is_named(network_path, tmp_path):
    path = copy_of(network_path, tmp_path)
    data_file(path, "conv5_1.bias").unlink()
    with pytest.raises(ValueError, match=r"missing: array 'conv5_1.bias'"):
        load_checkpoint(path)


def test_network_with_flipped_bytes_is_refused_naming_the_array(network_path, tmp_path):
    path = copy_of(network_path, tmp_path)
    flip_bytes(data_file(path, "conv3_1.kernel"))
    with pytest.raises(ValueError, match=r"array 'conv3_1.kernel'"):
        load_checkpoint(path)


def test_orbax_errors_reach_the_caller_as_one_line(tmp_path, capfd):
    """A file truncated behind the manifest's back (its checksum rewritten to match) is read
    by orbax, which fails: the error is one line, with no TensorStore object reprs. (One
    array: with several, reads still in flight when orbax closes its event loop print
    "Event loop is closed"; the manifest check keeps orbax from ever reading bad files.)"""
    path = checkpoint.save(tmp_path / "one", {"weights": np.arange(4096.0)}, {}, kind="test")
    file = data_file(path, "weights")
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["sha256"] = {name: digest for name, digest in checkpoint._digests(path).items()
                          if name != "manifest.json"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a readable egjax checkpoint") as error:
        checkpoint.load(path, kind="test")
    message = str(error.value)
    assert "\n" not in message and "<bound method" not in message
    assert "TensorStore(" not in message and "weights" in message
    assert capfd.readouterr().err == ""


def test_graph_and_network_are_not_taken_for_each_other(graph_path, network_path):
    with pytest.raises(ValueError, match="is an explanatory graph checkpoint, not a network "
                                         "checkpoint"):
        load_checkpoint(graph_path)
    with pytest.raises(ValueError, match="is a network checkpoint, not an explanatory graph "
                                         "checkpoint"):
        ExplanatoryGraph.load(network_path)


def test_a_graph_given_to_the_experiment_as_its_network_is_named(graph_path, capsys):
    script = ROOT / "experiments" / "vgg16_voc.py"
    sys.argv = [str(script), "--checkpoint", str(graph_path)]
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 2
    assert "is an explanatory graph checkpoint, not a network checkpoint" in \
        capsys.readouterr().err


def test_a_checkpoint_without_manifest_is_refused(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "_CHECKPOINT_METADATA").write_text("{}")
    with pytest.raises(ValueError, match="has no manifest.json"):
        ExplanatoryGraph.load(tmp_path / "old")


@pytest.mark.parametrize("name", ["synthetic_all", "synthetic_quadruped"])
def test_committed_checkpoints_have_every_file_checksummed(name):
    path = ROOT / "checkpoints" / name
    manifest = json.loads((path / "manifest.json").read_text())
    files = {f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file()}
    assert manifest["kind"] == "network"
    assert set(manifest["sha256"]) == files - {"manifest.json"}
    assert any(key.startswith("arrays/conv5_3.kernel/") for key in manifest["sha256"])


def test_only_a_checkpoint_is_overwritten(tmp_path, network_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    _, params, meta = load_checkpoint(network_path)
    with pytest.raises(ValueError, match="is not a checkpoint; it is not replaced"):
        save_checkpoint(folder, params, meta)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    nan = {**params, "conv2_1": {**params["conv2_1"],
                                 "bias": params["conv2_1"]["bias"].at[0].set(np.nan)}}
    with pytest.raises(ValueError, match="non-finite weights .*layer 'conv2_1' bias holds 1 "):
        save_checkpoint(tmp_path / "nan", nan, meta)
    assert not (tmp_path / "nan").exists()


# ----------------------------------------------------------------- ported weight files

def keras_file(path: pathlib.Path) -> None:
    """A Keras release-layout .h5 of a narrow VGG-16 without head (no tf.keras needed)."""
    params = random_params(VGG16(width=WIDTH, head=None))
    layers = [types.SimpleNamespace(name=keras, get_weights=lambda ours=ours: [
        params[ours]["kernel"], params[ours]["bias"]])
        for keras, ours in KERAS_NAMES.items() if ours in params]
    write_keras_h5(path, types.SimpleNamespace(layers=layers))


def test_keras_file_with_nan_bytes_is_refused_naming_the_layer(tmp_path):
    path = tmp_path / "vgg16.h5"
    keras_file(path)
    load_vgg16(path)                                          # the intact file loads
    with h5py.File(path, "r") as f:
        offset = f["block3_conv1"]["block3_conv1_W_1:0"].id.get_offset()
    with open(path, "r+b") as f:                              # 16 bytes of 0xFF: 4 NaNs
        f.seek(offset + 64)
        f.write(b"\xff" * 16)
    with pytest.raises(ValueError, match="non-finite weights .*layer 'conv3_1' kernel holds 4 "
                                         "of 1152; the"):  # 3 x 3 x 8 x 16
        load_vgg16(path)


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_torch_and_safetensors_weights_with_nan_or_inf_are_refused(tmp_path, fmt):
    state = torchvision_state_dict(WIDTH, num_classes=3)
    state["features.10.weight"][0, 0, 0, 0] = np.nan       # conv3_1
    state["classifier.6.bias"][1] = np.inf                  # logits
    path = tmp_path / ("w.pth" if fmt == "torch" else "w.safetensors")
    if fmt == "torch":
        write_torch_zip(path, state)
    else:
        from safetensors.numpy import save_file
        save_file(dict(state), str(path))
    with pytest.raises(ValueError) as error:
        load_vgg16(path)
    assert "layer 'conv3_1' kernel holds 1 of " in str(error.value)
    assert "layer 'logits' bias holds 1 of 3" in str(error.value)
