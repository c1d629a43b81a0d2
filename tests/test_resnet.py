"""The Flax ResNet-50: weights ported from Keras (a seeded tf.keras ResNet50, compared tap by
tap), from torchvision's layout (against a computation in torch's own layout with batch norm
unfolded) and from timm's; the geometry of every spatial tap found by perturbing pixels;
taps, aliases and the registry."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from egjax import GraphConfig, geometry, models
from egjax.models import ModelMeta, ResNet50, load_resnet50
from egjax.models import resnet
from vgg_weight_files import write_torch_zip

SIDE = 64   # px: small inputs keep the tests fast; every tap still has a map


# -- Keras ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras_port(tmp_path_factory):
    """A seeded tf.keras ResNet50 with random batch-norm statistics, written by Keras's legacy
    HDF5 writer; its outputs at every tap (Keras names) on random images; our port."""
    keras = pytest.importorskip("keras")
    from keras.src.legacy.saving import legacy_h5_format
    import h5py

    keras.utils.set_random_seed(0)
    net = keras.applications.ResNet50(weights=None, input_shape=(SIDE, SIDE, 3), classes=10,
                                      classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                               rng.normal(0, 0.2, c), rng.uniform(0.5, 2.0, c)])
        elif isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
    path = tmp_path_factory.mktemp("keras") / "resnet50.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, net)
    names = ["conv1_relu", "pool1_pool", *[k for k in resnet.ALIASES if k.endswith("_out")],
             "avg_pool", "predictions"]
    probe = keras.Model(net.input, [net.get_layer(n).output for n in names])
    images = rng.normal(0, 50, (2, SIDE, SIDE, 3)).astype(np.float32)
    expected = dict(zip(names, (np.asarray(o) for o in probe.predict(images, verbose=0))))
    return path, images, expected


def test_keras_port_matches_keras_at_every_tap(keras_port):
    path, images, expected = keras_port
    model, params, meta = load_resnet50(path)
    assert (model.variant, meta.arch, meta.preprocessing) == ("v1", "resnet50_v1", "caffe")
    assert (model.width, model.head, model.num_classes) == (1.0, "gap", 10)
    taps = [t if t != "predictions" else "logits" for t in expected]
    got = jax.jit(model.apply, static_argnames="taps")({"params": params}, jnp.asarray(images),
                                                       taps=tuple(taps))
    for tap, name in zip(taps, expected):
        want = expected[name]
        assert got[tap].shape == want.shape, tap
        scale = np.abs(want).max()
        assert scale > 0, tap
        assert np.abs(np.asarray(got[tap]) - want).max() <= 1e-4 * scale, tap


def test_the_release_files_top_layer_name_probs_is_read(keras_port, tmp_path):
    """The published `resnet50_weights_tf_dim_ordering_tf_kernels.h5` was written by
    keras-applications' `resnet_common.py` (the md5 Keras pins), whose classifier is named
    `probs`; tf.keras names it `predictions`. The same file with that layer renamed ports to
    the same params."""
    import shutil
    import h5py
    path = tmp_path / "probs.h5"
    shutil.copy(keras_port[0], path)
    with h5py.File(path, "r+") as f:
        f.move("predictions", "probs")
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = [("probs" if n == "predictions" else n).encode()
                                  for n in names]
    _, params, _ = load_resnet50(path)
    _, want, _ = load_resnet50(keras_port[0])
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- torchvision and timm ------------------------------------------------------------------------

def torchvision_state_dict(width: float, num_classes: int, seed: int = 0) -> dict:
    """Random ResNet-50 weights named and shaped as torchvision's state dict (OIHW convs
    without bias, batch norms with running statistics and num_batches_tracked)."""
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()

    def conv_bn(conv, bn, cin, cout, k):
        state[f"{conv}.weight"] = rng.normal(0, np.sqrt(2 / (cin * k * k)),
                                             (cout, cin, k, k)).astype(np.float32)
        state[f"{bn}.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        state[f"{bn}.bias"] = rng.normal(0, 0.2, cout).astype(np.float32)
        state[f"{bn}.running_mean"] = rng.normal(0, 0.2, cout).astype(np.float32)
        state[f"{bn}.running_var"] = rng.uniform(0.5, 2.0, cout).astype(np.float32)
        state[f"{bn}.num_batches_tracked"] = np.array(7, np.int64)

    stem = resnet.scaled(64, width)
    conv_bn("conv1", "bn1", 3, stem, 7)
    cin = stem
    for block in resnet.blocks(width):
        conv_bn(f"{block.tap}.conv1", f"{block.tap}.bn1", cin, block.features, 1)
        conv_bn(f"{block.tap}.conv2", f"{block.tap}.bn2", block.features, block.features, 3)
        conv_bn(f"{block.tap}.conv3", f"{block.tap}.bn3", block.features, block.out, 1)
        if block.project:
            conv_bn(f"{block.tap}.downsample.0", f"{block.tap}.downsample.1", cin, block.out, 1)
        cin = block.out
    state["fc.weight"] = rng.normal(0, 0.05, (num_classes, cin)).astype(np.float32)
    state["fc.bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
    return state


def torch_layout_reference(state: dict, images_nhwc: np.ndarray) -> dict:
    """torchvision's ResNet-50 forward in its own layout (NCHW, OIHW, stride on the 3x3, batch
    norm applied, not folded), in float64 numpy-backed lax calls: {block tap: NHWC, logits}."""
    def conv(x, name, stride=1, padding=0):
        return lax.conv_general_dilated(x, jnp.asarray(state[f"{name}.weight"], jnp.float64),
                                        (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                        precision=lax.Precision.HIGHEST)

    def bn(x, name):
        def v(key):
            return jnp.asarray(state[f"{name}.{key}"], jnp.float64)[None, :, None, None]
        return (x - v("running_mean")) / jnp.sqrt(v("running_var") + 1e-5) * v("weight") \
            + v("bias")

    def forward(x):
        out = {}
        x = x.transpose(0, 3, 1, 2)
        x = jax.nn.relu(bn(conv(x, "conv1", 2, 3), "bn1"))
        x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                              ((0, 0), (0, 0), (1, 1), (1, 1)))
        for block in resnet.blocks():
            t = block.tap
            y = jax.nn.relu(bn(conv(x, f"{t}.conv1"), f"{t}.bn1"))
            y = jax.nn.relu(bn(conv(y, f"{t}.conv2", block.stride, 1), f"{t}.bn2"))
            y = bn(conv(y, f"{t}.conv3"), f"{t}.bn3")
            if block.project:
                x = bn(conv(x, f"{t}.downsample.0", block.stride), f"{t}.downsample.1")
            x = jax.nn.relu(x + y)
            out[t] = x.transpose(0, 2, 3, 1)
        pooled = x.mean(axis=(2, 3))
        out["logits"] = pooled @ jnp.asarray(state["fc.weight"], jnp.float64).T + state["fc.bias"]
        return out

    with jax.enable_x64(True):
        out = jax.jit(forward)(jnp.asarray(images_nhwc, jnp.float64))
        return {tap: np.asarray(value) for tap, value in out.items()}


@pytest.fixture(scope="module")
def torch_state():
    return torchvision_state_dict(width=1 / 8, num_classes=5, seed=1)


def test_torchvision_port_matches_torchs_layout_with_batch_norm_unfolded(torch_state, tmp_path):
    write_torch_zip(tmp_path / "resnet50.pth", torch_state)
    model, params, meta = load_resnet50(tmp_path / "resnet50.pth")
    assert (model.variant, meta.arch, meta.preprocessing) == ("v1.5", "resnet50", "torch")
    assert (model.width, model.num_classes) == (1 / 8, 5)
    images = np.random.default_rng(2).normal(0, 1, (2, SIDE, SIDE, 3)).astype(np.float32)
    want = torch_layout_reference(torch_state, images)
    got = jax.jit(model.apply, static_argnames="taps")({"params": params}, jnp.asarray(images),
                                                       taps=tuple(want))
    for tap in want:
        scale = np.abs(want[tap]).max()
        assert np.abs(np.asarray(got[tap]) - want[tap]).max() <= 1e-4 * scale, tap


def test_timm_safetensors_port_as_torchvision(torch_state, tmp_path):
    from safetensors.numpy import save_file
    write_torch_zip(tmp_path / "tv.pth", torch_state)
    save_file({k: v for k, v in torch_state.items() if "num_batches" not in k},
              str(tmp_path / "timm.safetensors"))
    _, from_torch, _ = load_resnet50(tmp_path / "tv.pth")
    model, from_timm, meta = load_resnet50(tmp_path / "timm.safetensors")
    assert meta.arch == "resnet50"
    jax.tree.map(np.testing.assert_array_equal, from_timm, from_torch)


def test_bad_files_name_the_layer(torch_state, tmp_path):
    broken = dict(torch_state)
    broken["layer3.2.conv2.weight"] = broken["layer3.2.conv2.weight"][:, :, :1]
    write_torch_zip(tmp_path / "broken.pth", broken)
    with pytest.raises(ValueError, match="layer3_2_conv2"):
        load_resnet50(tmp_path / "broken.pth")
    extra = {**torch_state, "layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)}
    write_torch_zip(tmp_path / "extra.pth", extra)
    with pytest.raises(ValueError, match="layer5.0.conv1.weight"):
        load_resnet50(tmp_path / "extra.pth")


def test_offline_fetch_says_which_file_to_put_where(tmp_path, monkeypatch):
    from egjax.models import resnet_weights
    unreachable = resnet_weights.PUBLISHED["keras"]._replace(
        url=(tmp_path / "unreachable.h5").as_uri())
    monkeypatch.setitem(resnet_weights.PUBLISHED, "keras", unreachable)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "cache" / unreachable.filename)):
        models.load("resnet50", "keras", cache_dir=tmp_path / "cache", quiet=True)


def test_published_keras_hashes_are_keras_own():
    from keras.src.applications import resnet as keras_resnet
    from egjax.models.resnet_weights import PUBLISHED
    assert keras_resnet.WEIGHTS_HASHES["resnet50"] == (PUBLISHED["keras"].digest,
                                                      PUBLISHED["keras-notop"].digest)
    for name in ("keras", "keras-notop"):
        assert PUBLISHED[name].url == keras_resnet.BASE_WEIGHTS_PATH + PUBLISHED[name].filename


# -- geometry ------------------------------------------------------------------------------------

SPATIAL = ("conv1", "maxpool", "layer1", "layer2.0", "layer2", "layer3.5", "layer4")


@pytest.mark.parametrize("variant", ["v1.5", "v1"])
def test_every_tap_sees_the_pixels_its_derived_field_says(variant):
    """Kernels all 1 / C_in, biases 0, a black image: every map is exactly 0, and a pixel
    column set to 1 makes a unit positive if and only if the column lies in the unit's
    receptive field (all paths positive; max pools pass positive values). For each tap, a
    cell whose field lies inside the image gets the columns just inside and just outside
    both edges of its derived field set, one image each."""
    model = ResNet50(width=1 / 16, head=None, variant=variant)
    params = jax.tree.map(
        lambda s: np.full(s.shape, 1.0 / s.shape[-2] if len(s.shape) == 4 else 0.0, np.float32),
        models.param_shapes(model))
    fields = [geometry.receptive_field(model, tap) for tap in SPATIAL]
    width = int(32 * np.ceil(max(f.size + 4 * f.stride + 8 for f in fields) / 32))
    images = np.zeros((1 + 4 * len(SPATIAL), 32, width, 3), np.float32)
    cells = []
    for index, field in enumerate(fields):
        cell = int(round((width / 2 - field.center) / field.stride))
        low = geometry.to_pixels(cell, field.stride, field.center) - (field.size - 1) / 2
        high = low + field.size - 1
        assert 1 <= low and high <= width - 2
        columns = np.array([low - 1, low, high, high + 1], int)
        images[1 + 4 * index + np.arange(4), :, columns] = 1.0
        cells.append(cell)
    maps = model.apply({"params": params}, jnp.asarray(images), taps=SPATIAL)
    for index, (tap, cell) in enumerate(zip(SPATIAL, cells)):
        assert maps[tap].shape[2] == geometry.map_size(model, tap, width), tap
        response = np.asarray(maps[tap][:, 0, cell].sum(axis=-1))
        assert response[0] == 0, tap
        seen = response[1 + 4 * index:5 + 4 * index] > 0
        assert list(seen) == [False, True, True, False], tap


def test_resnet50_geometry_by_hand():
    """v1.5: the 3x3s of layer2 (4 blocks at stride 8 after the first's stride-4 3x3) and the
    stem: 7 + 2 * 2 (pool) + 3 * 2 * 4 (layer1) = 35; + 2 * 4 + 3 * 2 * 8 = 91. v1 moves the
    stride before the 3x3: + 2 * 8 + 3 * 2 * 8 = 99. Centres stay at pixel 0."""
    assert geometry.receptive_field(ResNet50(), "layer1") == (4, 0, 35)
    assert geometry.receptive_field(ResNet50(), "layer2") == (8, 0, 91)
    assert geometry.receptive_field(ResNet50(variant="v1"), "layer2") == (8, 0, 99)
    assert [geometry.map_size(ResNet50(), t, 224) for t in ("layer2", "layer3", "layer4")] \
        == [28, 14, 7]
    with pytest.raises(ValueError, match="no spatial map"):
        geometry.receptive_field(ResNet50(), "pool")


# -- taps, registry, preset ----------------------------------------------------------------------

def test_aliases_return_the_same_maps_under_the_names_asked_for():
    model = ResNet50(width=1 / 16, num_classes=3)
    params = jax.tree.map(lambda s: np.full(s.shape, 0.01, np.float32),
                          models.param_shapes(model))
    images = jnp.ones((1, SIDE, SIDE, 3))
    got = jax.jit(model.apply, static_argnames="taps")(
        {"params": params}, images, taps=("layer3", "layer3.5", "conv4_block6_out", "conv1_relu"))
    assert set(got) == {"layer3", "layer3.5", "conv4_block6_out", "conv1_relu"}
    np.testing.assert_array_equal(got["layer3"], got["layer3.5"])
    np.testing.assert_array_equal(got["layer3"], got["conv4_block6_out"])
    with pytest.raises(ValueError, match="valid taps: conv1, maxpool, layer1.0"):
        model.apply({"params": params}, images, taps=("layer5",))


def test_meta_builds_the_registered_variant():
    for arch, variant in (("resnet50", "v1.5"), ("resnet50_v1", "v1")):
        meta = ModelMeta(source="x", arch=arch, width=0.5, head="gap", num_classes=4)
        assert meta.model() == ResNet50(width=0.5, num_classes=4, variant=variant)
    with pytest.raises(ValueError, match="head must be one of"):
        ModelMeta(source="x", arch="resnet50", head="fc")


def test_resnet50_preset_is_the_originals_setting_on_derived_geometry():
    config = GraphConfig.resnet50()
    assert [l.tap for l in config.layers] == ["layer2", "layer3", "layer4"]
    assert [l.map_size for l in config.layers] == [28, 14, 7]
    assert [l.nodes_per_filter for l in config.layers] == [40, 20, 10]
    assert all((l.top_n, l.top_m) == (15, 600) for l in config.layers)
    assert [(l.stride, l.center) for l in config.layers] == [(8, 0), (16, 0), (32, 0)]


def test_every_name_a_tap_is_asked_by_gets_its_perturbation():
    """Grad-CAM differentiates through `self.perturb(perturbation_name(tap), x)`; a tap asked
    for by an alias must offer it under that name too."""
    model = ResNet50(width=1 / 16, num_classes=3)
    taps = ("layer4", "conv5_block3_out", "layer4.2", "layer1.0")
    _, variables = jax.eval_shape(
        lambda p, x: model.apply({"params": p}, x, taps=taps, mutable=["perturbations"]),
        models.param_shapes(model), jax.ShapeDtypeStruct((1, SIDE, SIDE, 3), jnp.float32))
    assert set(variables["perturbations"]) == {models.perturbation_name(t) for t in taps}
