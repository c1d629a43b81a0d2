"""Receptive-field geometry of a network's spatial taps, derived from its layers; cells <->
pixels; mirror-back. Every conversion between map cells and image pixels in egjax is here.

A conv or pool layer with kernel k, stride s and padding p maps the geometry of its input
(stride J between cells, centre c of cell 0 and receptive-field side r, all in image pixels) to

    J' = J * s,    c' = c + ((k - 1) / 2 - p) * J,    r' = r + (k - 1) * J,

starting from the image (J = 1, c = 0, r = 1). A residual block (`models.Residual`: branches
summed) sees the union of its branches' fields (their strides must agree). Pixels and cells
are 0-based: cell i of a tap is centred on pixel `center + i * stride`. The original derives
the same numbers in `code/getNetParameters.m`, counting pixels from 1 (its conv4 centre 4.5 is
our 3.5). VGG-16 at 224 px: conv4_x stride 8, centre 3.5, 28x28 maps; conv5_x stride 16,
centre 7.5, 14x14 maps. ResNet-50 (v1.5) at 224 px: layer2 stride 8, centre 0, 28x28 maps.

Mirror-back: a position found in the maps of the mirrored image is mirrored back in pixels,
`w -> W - 1 - w` of its pixel centre. Mirroring the cell instead (`w -> S - 1 - w`) lands on
the same pixel only when the cell grid is symmetric in the image,
`2 * center + (S - 1) * stride == W - 1` (VGG-16 at 224 px; not ResNet-50: 0 + 27 * 8 != 223).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from egjax.config import LayerConfig
from egjax.models.contract import Residual


class ReceptiveField(NamedTuple):
    """Where a tap's cells look: `px = center + cell * stride`; `size` is the field's side."""

    stride: float
    center: float
    size: float


def _path(model, tap: str) -> tuple:
    if not hasattr(model, "path"):
        raise ValueError(f"{type(model).__name__} does not describe its layers (no path(tap)); "
                         "give the geometry by hand: LayerConfig(stride=..., center=...)")
    return tuple(model.path(tap))


def _through(field: ReceptiveField, steps) -> ReceptiveField:
    stride, center, size = field
    for step in steps:
        if isinstance(step, Residual):
            stride, center, size = _union([_through((stride, center, size), branch)
                                           for branch in step.branches], step.name)
            continue
        center += ((step.kernel - 1) / 2 - step.padding) * stride
        size += (step.kernel - 1) * stride
        stride *= step.stride
    return ReceptiveField(stride, center, size)


def _union(fields: list, name: str) -> ReceptiveField:
    """The field of a sum of branches: from the lowest first pixel to the highest last one."""
    strides = {f.stride for f in fields}
    if len(strides) != 1:
        raise ValueError(f"the branches of {name!r} have different strides {sorted(strides)}")
    low = min(f.center - (f.size - 1) / 2 for f in fields)
    high = max(f.center + (f.size - 1) / 2 for f in fields)
    return ReceptiveField(fields[0].stride, (low + high) / 2, high - low + 1)


def receptive_field(model, tap: str) -> ReceptiveField:
    """Stride, 0-based centre of cell 0, and receptive-field side (pixels) of `tap`, derived
    from `model.path(tap)` (the model contract)."""
    return _through(ReceptiveField(1.0, 0.0, 1.0), _path(model, tap))


def _side(side: int, steps) -> int:
    for step in steps:
        if isinstance(step, Residual):
            sides = {_side(side, branch) for branch in step.branches}
            if len(sides) != 1:
                raise ValueError(f"the branches of {step.name!r} give maps of sides "
                                 f"{sorted(sides)}")
            side = sides.pop()
            continue
        side = (side + 2 * step.padding - step.kernel) // step.stride + 1
    return side


def map_size(model, tap: str, image_size: int) -> int:
    """Side of `tap`'s maps for square `image_size`-px images (strided layers floor)."""
    side = _side(image_size, _path(model, tap))
    if side < 1:
        raise ValueError(f"{image_size}-px images are too small for tap {tap!r}")
    return side


def to_pixels(cells, stride: float, center: float):
    """0-based cells -> 0-based pixel centres: `center + cells * stride` (arrays welcome)."""
    return center + cells * stride


def to_cells(pixels, stride: float, center: float):
    """0-based pixels -> fractional 0-based cells; the inverse of `to_pixels`."""
    return (pixels - center) / stride


def mirror(w, image_width: int):
    """Pixel column `w` of an image <-> the same point in its mirror: `W - 1 - w` (its own
    inverse)."""
    return image_width - 1 - w


def mirror_points(points, flip, image_width: int):
    """Pixel points `[..., N, 2]` (h, w) of N images, their w mirrored where `flip [N]`
    (numpy or jax arrays; the frame of the image <-> that of its mirror)."""
    w = points[..., 1]
    w = w + flip * (mirror(w, image_width) - w)
    return _stack(points[..., 0], w)


def cells_to_pixels(cells, config: LayerConfig, flip=None, image_width: int | None = None):
    """Cells `[..., N, 2]` (h, w) of a `config` layer's maps -> pixel centres in the frame of
    the image as stored; where `flip [N]`, the cells were found in the maps of the mirrored
    image and their pixels are mirrored back (`mirror`)."""
    pixels = to_pixels(cells, config.stride, config.center)
    if flip is None:
        return pixels
    if image_width is None:
        raise ValueError("mirror-back needs the image width")
    return mirror_points(pixels, flip, image_width)


def _stack(h, w):
    """(h, w) as points [..., 2]: a jax array if either is one, else numpy."""
    stack = jnp.stack if isinstance(h, jax.Array) or isinstance(w, jax.Array) else np.stack
    return stack([h, w], axis=-1)


def layer_config(model, tap: str, image_size: int = 224, *, density: float,
                 **settings) -> LayerConfig:
    """A `LayerConfig` for `tap` of `model` on `image_size`-px images, geometry derived.

    `settings` are the other LayerConfig fields (e.g. `iterations=5`).
    """
    field = receptive_field(model, tap)
    return LayerConfig(map_size=map_size(model, tap, image_size), stride=field.stride,
                       center=field.center, density=density, tap=tap, **settings)
