"""Receptive-field geometry: the paper's values, the original's derivation, the pixels that
actually move a cell; mirror-back for any geometry; a registered network of one's own."""

from __future__ import annotations

import types

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from egjax import GraphConfig, LayerConfig, LayerFit, LayerInference, evaluate, geometry, localize
from egjax import graph_explainer, models
from egjax.models import VGG16, Layer, ModelMeta, Residual
from vgg_weight_files import random_params


@pytest.mark.parametrize("tap, stride, center, size, side", [
    ("conv4_2", 8, 3.5, 76, 28), ("relu4_2", 8, 3.5, 76, 28), ("conv4_3", 8, 3.5, 92, 28),
    ("conv5_2", 16, 7.5, 164, 14), ("conv5_3", 16, 7.5, 196, 14), ("pool5", 32, 15.5, 212, 7),
    ("conv1_1", 1, 0.0, 3, 224), ("pool1", 2, 0.5, 6, 112),
])
def test_vgg16_values_at_224(tap, stride, center, size, side):
    assert geometry.receptive_field(VGG16(), tap) == (stride, center, size)
    assert geometry.map_size(VGG16(), tap, 224) == side


def original_conv_geometry(layers):
    """`getConvNetPara` of the original `getNetParameters.m`, 1-based centres, per conv."""
    out, stride, scale, center, pool = {}, None, None, None, None
    for layer in layers:
        if layer.kind == "pool":
            pool = layer
            continue
        k, s, p = layer.kernel, layer.stride, layer.padding
        if stride is None:
            stride, scale, center = s, k, (1 + k - 2 * p) / 2
        else:
            is_pool = pool is not None
            new_stride = (1 + is_pool * ((pool.stride if is_pool else 1) - 1)) * s * stride
            pool_size = pool.kernel if is_pool else 0
            scale = scale + is_pool * (pool_size - 1) * stride + new_stride * (k - 1)
            if is_pool:
                center = ((k - 2 * p - 1) * pool.stride * stride / 2
                          + center + stride * (pool.kernel - 2 * pool.padding - 1) / 2)
            else:
                center = (k - 2 * p - 1) * stride / 2 + center
            stride = new_stride
        out[layer.name] = (stride, center, scale)
        pool = None
    return out


def test_every_conv_matches_the_original_derivation():
    model = VGG16(width=0.25)
    for name, (stride, center, size) in original_conv_geometry(model.layers).items():
        assert geometry.receptive_field(model, name) == (stride, center - 1, size)


def test_paper_graph_config_is_what_the_geometry_derives():
    model = VGG16()
    for layer in GraphConfig.vgg16().layers:
        derived = geometry.layer_config(model, layer.tap, 224, density=layer.density)
        assert derived == layer


def test_pixels_and_cells():
    assert geometry.to_pixels(0, 8, 3.5) == 3.5
    assert geometry.to_pixels(27, 8, 3.5) == 219.5
    cells = np.array([[0.0, 3.0], [13.0, 6.25]])
    pixels = geometry.to_pixels(cells, 16, 7.5)
    np.testing.assert_array_equal(pixels, [[7.5, 55.5], [215.5, 107.5]])
    np.testing.assert_array_equal(geometry.to_cells(pixels, 16, 7.5), cells)


def test_the_pixels_that_move_a_cell_are_its_receptive_field():
    """With positive weights the network is monotone in its input: bumping one pixel column
    raises a cell's response if and only if the column lies in the cell's receptive field."""
    model = VGG16(width=1 / 16, head=None)
    params = random_params(model, seed=0, positive=True)
    tap, cell, side = "conv4_2", 5, 96
    field = geometry.receptive_field(model, tap)
    images = np.ones((side + 1, side, side, 3), np.float32)
    images[np.arange(side), :, np.arange(side)] += 100.0  # image i: column i bumped
    maps = model.apply({"params": params}, images, taps=(tap,))[tap]
    response = np.asarray(maps[:, cell, cell].sum(axis=-1))
    moved = np.nonzero(response[:side] != response[side])[0]
    assert moved.size == field.size
    assert np.all(np.diff(moved) == 1)
    assert (moved[0] + moved[-1]) / 2 == geometry.to_pixels(cell, field.stride, field.center)


def test_non_spatial_taps_and_tiny_images_are_refused():
    with pytest.raises(ValueError, match="no spatial map"):
        geometry.receptive_field(VGG16(), "fc6")
    with pytest.raises(ValueError, match="too small"):
        geometry.map_size(VGG16(), "pool5", 16)


# -- mirror-back: one rule for every geometry ---------------------------------------------------
# ResNet-50's layer2 at 224 px: stride 8, centre 0, 28 cells. Its grid is not symmetric in the
# image (2 * 0 + 27 * 8 = 216 != 223), so mirroring the cell (w -> 27 - w) misses the pixel.
ASYMMETRIC = LayerConfig(map_size=28, stride=8, center=0.0, density=0.05, tap="layer2")


def test_mirror_back_is_in_pixels_for_an_asymmetric_grid():
    """Cell w = 3 of the mirrored image's maps is centred on its pixel 24, which is pixel
    223 - 24 = 199 of the image (by hand); the cell mirror 27 - 3 = 24 would say 192."""
    cells = np.array([[[5.0, 3.0], [5.0, 3.0]]])                  # [V=1, N=2, 2]
    flip = np.array([False, True])
    px = geometry.cells_to_pixels(cells, ASYMMETRIC, flip, 224)
    np.testing.assert_array_equal(px, [[[40, 24], [40, 199]]])
    np.testing.assert_array_equal(localize.to_frame(px, flip, 224), [[[40, 24], [40, 24]]])


def test_node_detections_mirror_back_in_pixels():
    v, n = 2, 3
    pos = np.tile(np.array([[5.0, 3.0]]), (v, n, 1))
    fit = LayerFit(coord=np.zeros((1, 2, 2)), deform=np.ones((1, 2)), parents=np.zeros((v, 0)),
                   score=np.ones((v, n)), pos=pos, flip=np.array([False, True, False]),
                   alt_score=np.array([[0.0, 0.0, 2.0]] * v), alt_pos=pos + 1,
                   config=ASYMMETRIC)
    det = evaluate.node_detections(fit, 224)
    # image 0: plain, cell (5, 3); image 1: mirrored; image 2: the mirror (alt) wins, (6, 4)
    np.testing.assert_array_equal(det.px[0], [[40, 24], [40, 199], [48, 223 - 32]])


def test_graph_explainer_positions_mirror_back_in_pixels(monkeypatch):
    pos = jnp.asarray(np.tile(np.array([[5.0, 3.0]]), (1, 2, 1)))        # [V=1, N=2, 2]
    inferred = LayerInference(jnp.ones((1, 2)), pos, jnp.array([False, True]))
    monkeypatch.setattr(graph_explainer, "graph_inference", lambda *args: lambda x: inferred)
    graph = types.SimpleNamespace(config=GraphConfig((ASYMMETRIC,), 224))
    explain = graph_explainer.node_positions(None, None, graph, {})
    got = np.asarray(explain(jnp.zeros((2, 224, 224, 3))))
    np.testing.assert_array_equal(got, [[[40, 24]], [[40, 199]]])


# -- a network of one's own ---------------------------------------------------------------------

class TwoConvs(nn.Module):
    """conv a (5x5, stride 2, pad 1) -> relu -> b = a + conv (3x3, pad 1) -> relu."""

    width: int = 2

    def path(self, tap):
        if tap not in ("a", "b"):
            raise ValueError(f"tap {tap!r} has no spatial map")
        first = (Layer("a", "conv", 5, 2, 1, self.width),)
        return first if tap == "a" else first + (
            Residual("b", ((), (Layer("b_conv", "conv", 3, 1, 1, self.width),))),)

    @nn.compact
    def __call__(self, images, taps=("b",)):
        a = nn.relu(nn.Conv(self.width, (5, 5), 2, padding=((1, 1),) * 2, name="a")(images))
        b = nn.relu(a + nn.Conv(self.width, (3, 3), padding=((1, 1),) * 2, name="b_conv")(a))
        return {t: {"a": a, "b": b}[t] for t in taps}


def test_a_registered_network_of_ones_own_gets_its_geometry_and_meta(monkeypatch):
    monkeypatch.setitem(models.ARCHITECTURES, "two_convs", None)
    models.register("two_convs", lambda meta: TwoConvs(width=max(1, round(2 * meta.width))))
    meta = ModelMeta(source="mine", arch="two_convs", head=None, width=1.5)
    model = meta.model()
    assert model == TwoConvs(width=3)
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    # a: c = (5 - 1) / 2 - 1 = 1, r = 5, J = 2; b: the union of a and a 3x3 on it: r = 9
    assert geometry.receptive_field(model, "a") == (2, 1, 5)
    assert geometry.receptive_field(model, "b") == (2, 1, 9)
    assert geometry.map_size(model, "b", 33) == 16


def test_unknown_architectures_are_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match="unknown architecture 'vgg19'; registered: vgg16"):
        ModelMeta(source="x", arch="vgg19")
    assert ModelMeta.from_dict({"source": "old checkpoint"}).arch == "vgg16"


def test_load_reads_checkpoints_of_its_architecture_only(tmp_path, monkeypatch):
    model = VGG16(width=1 / 16, head="gap", num_classes=2)
    meta = ModelMeta(source="test", width=1 / 16, head="gap", num_classes=2)
    models.save_checkpoint(tmp_path / "net", random_params(model, seed=0), meta)
    loaded, _, got = models.load("vgg16", tmp_path / "net")
    assert loaded == model and got == meta and got.arch == "vgg16"
    monkeypatch.setitem(models.ARCHITECTURES, "two_convs", None)
    models.register("two_convs", lambda meta: TwoConvs())
    with pytest.raises(ValueError, match="holds a vgg16 network, not a two_convs"):
        models.load("two_convs", tmp_path / "net")
