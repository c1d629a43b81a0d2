"""Ported weights: files written in each publisher's real layout, compared with the framework
that wrote them (tf.keras) or an independent numpy forward pass (torchvision, timm)."""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle

import jax
import numpy as np
import pytest

from egjax import checkpoint
from egjax.models import (PUBLISHED, VGG16, ModelMeta, load_checkpoint, load_vgg16,
                          preprocess, save_checkpoint)
from egjax.models import download
from egjax.models.torch_pickle import read_torch_state_dict
from vgg_weight_files import (random_params, torch_reference, torchvision_state_dict,
                              write_keras_h5, write_torch_legacy, write_torch_zip)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TOLERANCE = 1e-4


def assert_close(ours, reference, name: str) -> None:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, name
    scale = np.abs(reference).max()
    assert scale > 0, name
    assert np.abs(ours - reference).max() <= TOLERANCE * scale, name


def all_taps(model: VGG16, params, images) -> dict:
    return jax.jit(model.apply, static_argnames="taps")({"params": params}, images,
                                                        taps=model.tap_names)


# ----------------------------------------------------------------------------- Keras

@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def keras_taps(tf, keras_model, images) -> dict:
    """Every tap of a tf.keras VGG16, via a multi-output Model; conv taps pre-ReLU by tf.nn."""
    layers = [layer for layer in keras_model.layers if layer.weights or "pool" in layer.name]
    probe = tf.keras.Model(keras_model.input,
                           [layer.output for layer in layers] + [layer.input for layer in layers])
    outputs = probe(images)
    taps = {}
    for layer, out, inp in zip(layers, outputs[: len(layers)], outputs[len(layers):]):
        name = layer.name
        if "conv" in name:
            block, index = name[len("block"):].split("_conv")
            kernel, bias = layer.get_weights()
            pre_relu = tf.nn.conv2d(inp, kernel, strides=1, padding="SAME") + bias
            taps[f"conv{block}_{index}"] = pre_relu.numpy()
            taps[f"relu{block}_{index}"] = out.numpy()
        elif "pool" in name:
            taps[f"pool{name[len('block'):].split('_')[0]}"] = out.numpy()
        else:
            taps[{"fc1": "fc6", "fc2": "fc7", "predictions": "logits"}[name]] = out.numpy()
    return taps


def test_keras_release_file_matches_tf_keras(tf, tmp_path):
    tf.keras.utils.set_random_seed(0)
    keras_model = tf.keras.applications.VGG16(weights=None, classes=1000,
                                              classifier_activation=None)
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    write_keras_h5(path, keras_model, naming="release")
    images = np.random.default_rng(1).uniform(-120, 150, (2, 224, 224, 3)).astype(np.float32)
    expected = keras_taps(tf, keras_model, images)
    del keras_model

    model, params, meta = load_vgg16(path)
    assert (model.width, model.head, model.num_classes) == (1.0, "fc", 1000)
    assert meta.preprocessing == "caffe" and meta.source == str(path)
    ours = all_taps(model, params, images)
    assert set(expected) == set(model.tap_names)
    for tap in model.tap_names:
        assert_close(ours[tap], expected[tap], tap)


def test_keras_notop_file_in_tf_keras2_naming(tf, tmp_path):
    tf.keras.utils.set_random_seed(1)
    keras_model = tf.keras.applications.VGG16(weights=None, include_top=False,
                                              input_shape=(64, 64, 3))
    path = tmp_path / "notop.h5"
    write_keras_h5(path, keras_model, naming="tf.keras")
    images = np.random.default_rng(2).uniform(-120, 150, (3, 64, 64, 3)).astype(np.float32)
    expected = keras_taps(tf, keras_model, images)
    reread = tf.keras.applications.VGG16(weights=path, include_top=False, input_shape=(64, 64, 3))
    for ours, theirs in zip(reread.get_weights(), keras_model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)  # Keras itself reads the written layout

    model, params, meta = load_vgg16(path)
    assert model.head is None and meta.head is None
    ours = all_taps(model, params, images)
    for tap in model.tap_names:
        assert_close(ours[tap], expected[tap], tap)


def test_caffe_preprocessing_is_keras_vgg16_preprocess_input(tf):
    images = np.random.default_rng(5).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    expected = tf.keras.applications.vgg16.preprocess_input(images.astype(np.float32))
    ours = preprocess(images, ModelMeta(source="keras", preprocessing="caffe"))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


def test_keras_file_of_another_network_is_refused(tf, tmp_path):
    tf.keras.utils.set_random_seed(2)
    vgg19 = tf.keras.applications.VGG19(weights=None, include_top=False, input_shape=(32, 32, 3))
    write_keras_h5(tmp_path / "vgg19.h5", vgg19)
    with pytest.raises(ValueError, match="block3_conv4"):
        load_vgg16(tmp_path / "vgg19.h5")


# ----------------------------------------------------------------------------- torch

WIDTH = 0.125


@pytest.fixture(scope="module")
def narrow_images():
    return np.random.default_rng(3).normal(0, 1, (2, 224, 224, 3)).astype(np.float32)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_torchvision_file_matches_numpy_reference(tmp_path, narrow_images, layout):
    state = torchvision_state_dict(WIDTH, num_classes=10)
    path = tmp_path / "vgg16-397923af.pth"
    (write_torch_zip if layout == "zip" else write_torch_legacy)(path, state)
    for name, value in read_torch_state_dict(path).items():
        np.testing.assert_array_equal(value, state[name])

    model, params, meta = load_vgg16(path)
    assert (model.width, model.head, model.num_classes) == (WIDTH, "fc", 10)
    assert meta.preprocessing == "torch"
    expected = torch_reference(state, narrow_images)
    ours = all_taps(model, params, narrow_images)
    for tap in model.tap_names:
        assert_close(ours[tap], expected[tap], tap)


def test_timm_safetensors_matches_numpy_reference(tmp_path, narrow_images):
    from safetensors.numpy import save_file
    state = torchvision_state_dict(WIDTH, num_classes=7, seed=4, head="timm")
    path = tmp_path / "model.safetensors"
    save_file(dict(state), path)

    model, params, meta = load_vgg16(path)
    assert (model.head, model.num_classes, meta.preprocessing) == ("fc", 7, "torch")
    expected = torch_reference(state, narrow_images)
    ours = all_taps(model, params, narrow_images)
    for tap in ("conv1_1", "conv4_2", "conv5_3", "pool5", "fc6", "fc7", "logits"):
        assert_close(ours[tap], expected[tap], tap)


@pytest.mark.parametrize("extra, match", [
    ("features.1.running_mean", "features.1.running_mean"),  # vgg16_bn
    ("features.16.weight", "features.16.weight"),  # vgg19's extra conv
    ("fc.weight", "fc.weight"),  # resnet head
])
def test_torch_file_of_another_network_is_refused(tmp_path, extra, match):
    state = torchvision_state_dict(WIDTH, num_classes=10)
    state[extra] = np.zeros(4, np.float32)
    write_torch_zip(tmp_path / "other.pth", state)
    with pytest.raises(ValueError, match=match):
        load_vgg16(tmp_path / "other.pth")


def test_torch_file_missing_a_layer_is_refused(tmp_path):
    state = torchvision_state_dict(WIDTH, num_classes=10)
    del state["features.26.weight"], state["features.26.bias"]
    write_torch_legacy(tmp_path / "partial.pth", state)
    with pytest.raises(ValueError, match="conv5_2"):
        load_vgg16(tmp_path / "partial.pth")


def test_torch_pickle_refuses_foreign_globals(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        pickle.dump({"features.0.weight": Exploit()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        read_torch_state_dict(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- errors, cache

def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="keras-notop"):
        load_vgg16(tmp_path / "absent.h5")
    (tmp_path / "noise.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="unknown weights format"):
        load_vgg16(tmp_path / "noise.bin")


def test_pinned_checksums_are_the_publishers():
    keras_vgg16 = pytest.importorskip("keras.src.applications.vgg16")
    source = inspect.getsource(keras_vgg16)
    assert PUBLISHED["keras"].url == keras_vgg16.WEIGHTS_PATH
    assert PUBLISHED["keras-notop"].url == keras_vgg16.WEIGHTS_PATH_NO_TOP
    for name in ("keras", "keras-notop"):
        assert f'file_hash="{PUBLISHED[name].digest}"' in source
        assert PUBLISHED[name].filename in source
    torchvision = PUBLISHED["torchvision"]
    assert torchvision.filename == f"vgg16-{torchvision.digest}.pth"


def fake_publisher(monkeypatch, tmp_path, content: bytes, digest: str) -> str:
    served = tmp_path / "served.pth"
    served.write_bytes(content)
    entry = PUBLISHED["torchvision"]._replace(url=served.as_uri(), digest=digest)
    monkeypatch.setitem(download.PUBLISHED, "torchvision", entry)
    return entry.filename


def test_fetch_downloads_verifies_and_caches(monkeypatch, tmp_path):
    write_torch_zip(tmp_path / "w.pth", torchvision_state_dict(WIDTH, num_classes=10))
    content = (tmp_path / "w.pth").read_bytes()
    filename = fake_publisher(monkeypatch, tmp_path, content,
                              hashlib.sha256(content).hexdigest()[:8])
    cache = tmp_path / "cache"
    model, _, meta = load_vgg16("torchvision", cache_dir=cache, quiet=True)
    assert meta.source == "torchvision" and model.num_classes == 10
    assert sorted(os.listdir(cache)) == [filename]
    assert download.fetch("torchvision", cache) == cache / filename  # cached, verified again
    (cache / filename).write_bytes(content[:-1] + bytes([content[-1] ^ 0xFF]))
    with pytest.raises(ValueError, match="corrupt"):
        download.fetch("torchvision", cache)


def test_fetch_refuses_a_corrupt_download(monkeypatch, tmp_path):
    fake_publisher(monkeypatch, tmp_path, b"not the weights", "397923af")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="sha256"):
        download.fetch("torchvision", cache, quiet=True)
    assert os.listdir(cache) == []


def test_fetch_offline_says_where_to_put_the_file(monkeypatch, tmp_path):
    entry = PUBLISHED["keras"]._replace(url=(tmp_path / "unreachable.h5").as_uri())
    monkeypatch.setitem(download.PUBLISHED, "keras", entry)
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match=str(cache / entry.filename)):
        download.fetch("keras", cache, quiet=True)
    assert os.listdir(cache) == []


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def narrow_checkpoint():
    model = VGG16(width=WIDTH, head="gap", num_classes=5)
    params = random_params(model)
    meta = ModelMeta(source="test", width=WIDTH, head="gap", num_classes=5, preprocessing="torch",
                     classes=("none", "a", "b", "c", "d"))
    return model, params, meta


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path, narrow_checkpoint):
    model, params, meta = narrow_checkpoint
    path = save_checkpoint(tmp_path / "ckpt", params, meta)
    save_checkpoint(tmp_path / "ckpt", params, meta)  # replaces the first
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    loaded_model, loaded, loaded_meta = load_checkpoint(path)
    assert loaded_model == model and loaded_meta == meta
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_checkpoint_with_wrong_shapes_or_missing_layer_is_refused(tmp_path, narrow_checkpoint):
    _, params, meta = narrow_checkpoint
    wider = ModelMeta(**{**meta.to_dict(), "width": 0.25})
    with pytest.raises(ValueError, match="conv1_1"):
        save_checkpoint(tmp_path / "a", params, wider)
    # written by other means
    checkpoint.save(tmp_path / "a", params, wider.to_dict(), kind="network")
    with pytest.raises(ValueError, match="conv1_1"):
        load_checkpoint(tmp_path / "a")
    partial = {k: v for k, v in params.items() if k != "conv3_2"}
    with pytest.raises(ValueError, match="conv3_2"):
        save_checkpoint(tmp_path / "b", partial, meta)
    checkpoint.save(tmp_path / "b", partial, meta.to_dict(), kind="network")
    with pytest.raises(ValueError, match="conv3_2"):
        load_checkpoint(tmp_path / "b")
    checkpoint.save(tmp_path / "c", params, {"format": "something else"}, kind="network")
    with pytest.raises(ValueError, match="model meta"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing")
