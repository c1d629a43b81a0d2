"""Receptive-field geometry: the paper's values, the original's derivation, and the pixels that
actually move a cell."""

from __future__ import annotations

import numpy as np
import pytest

from egjax import GraphConfig, geometry
from egjax.models import VGG16
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
