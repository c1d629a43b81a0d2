"""Receptive-field geometry of a network's spatial taps, derived from its layer list.

A conv or pool layer with kernel k, stride s and padding p maps the geometry of its input
(stride J between cells, centre c of cell 0 and receptive-field side r, all in image pixels) to

    J' = J * s,    c' = c + ((k - 1) / 2 - p) * J,    r' = r + (k - 1) * J,

starting from the image (J = 1, c = 0, r = 1). Pixels and cells are 0-based: cell i of a tap
is centred on pixel `center + i * stride`. The original derives the same numbers in
`code/getNetParameters.m`, counting pixels from 1 (its conv4 centre 4.5 is our 3.5).
VGG-16 at 224 px: conv4_x stride 8, centre 3.5, 28x28 maps; conv5_x stride 16, centre 7.5,
14x14 maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from egjax.config import LayerConfig
from egjax.models.vgg import Layer


class ReceptiveField(NamedTuple):
    """Where a tap's cells look: `px = center + cell * stride`; `size` is the field's side."""

    stride: float
    center: float
    size: float


def _layers(model) -> Sequence[Layer]:
    return model.layers if hasattr(model, "layers") else model


def _trunk_index(layers: Sequence[Layer], tap: str) -> int:
    """Index of the layer whose output (or its ReLU) is `tap`."""
    name = "conv" + tap[len("relu"):] if tap.startswith("relu") else tap
    names = [layer.name for layer in layers]
    if name not in names:
        spatial = [n for layer in layers
                   for n in ((layer.name, "relu" + layer.name[len("conv"):])
                             if layer.kind == "conv" else (layer.name,))]
        raise ValueError(f"tap {tap!r} has no spatial map; spatial taps: {', '.join(spatial)}")
    return names.index(name)


def receptive_field(model, tap: str) -> ReceptiveField:
    """Stride, 0-based centre of cell 0, and receptive-field side (pixels) of `tap`.

    `model`: a VGG16 (anything with `.layers`) or a sequence of `Layer`.
    """
    layers = _layers(model)
    stride, center, size = 1.0, 0.0, 1.0
    for layer in layers[: _trunk_index(layers, tap) + 1]:
        center += ((layer.kernel - 1) / 2 - layer.padding) * stride
        size += (layer.kernel - 1) * stride
        stride *= layer.stride
    return ReceptiveField(stride, center, size)


def map_size(model, tap: str, image_size: int) -> int:
    """Side of `tap`'s maps for square `image_size`-px images (pools floor odd sides)."""
    layers = _layers(model)
    side = image_size
    for layer in layers[: _trunk_index(layers, tap) + 1]:
        side = (side + 2 * layer.padding - layer.kernel) // layer.stride + 1
    if side < 1:
        raise ValueError(f"{image_size}-px images are too small for tap {tap!r}")
    return side


def to_pixels(cells, stride: float, center: float):
    """0-based cells -> 0-based pixel centres: `center + cells * stride` (arrays welcome)."""
    return center + cells * stride


def to_cells(pixels, stride: float, center: float):
    """0-based pixels -> fractional 0-based cells; the inverse of `to_pixels`."""
    return (pixels - center) / stride


def layer_config(model, tap: str, image_size: int = 224, *, density: float,
                 **settings) -> LayerConfig:
    """A `LayerConfig` for `tap` of `model` on `image_size`-px images, geometry derived.

    `settings` are the other LayerConfig fields (e.g. `iterations=5`).
    """
    field = receptive_field(model, tap)
    return LayerConfig(map_size=map_size(model, tap, image_size), stride=field.stride,
                       center=field.center, density=density, tap=tap, **settings)
