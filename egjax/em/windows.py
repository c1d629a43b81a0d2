"""The maps of a layer fit as the E-step reads them: in place, a window around each node.

Maps stay as they are given, `[N, S, S, C]`: floats, or the uint8 codes of
`maps.QuantizedMaps`, decoded cell by cell as they are read so that memory holds one byte
per cell. Nothing is transposed, oriented or copied per data set; each image is taken in its
orientation when it is read (`pick`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from egjax.maps import QuantizedMaps, divide


class Maps(NamedTuple):
    """`values [N, S, S, C]` floats, or uint8 codes with per-image, per-filter `minimum` and
    `range [N, C]` (None for floats). Also one image's: `[S, S, C]` and `[C]`."""

    values: jnp.ndarray
    minimum: jnp.ndarray | None
    range: jnp.ndarray | None


def as_maps(maps, dtype) -> Maps:
    """`[N, S, S, C]` float maps (cast to `dtype`) or `QuantizedMaps` (codes kept) -> Maps."""
    if isinstance(maps, QuantizedMaps):
        return Maps(jnp.asarray(maps.data), jnp.asarray(maps.minimum, dtype),
                    jnp.asarray(maps.range, dtype))
    return Maps(jnp.asarray(maps, dtype), None, None)


def pick(flip: jnp.ndarray, plain: Maps, mirrored: Maps) -> Maps:
    """One image's maps: the mirrored ones where `flip` (a scalar bool), else the plain ones."""
    return Maps(*(None if a is None else jnp.where(flip, b, a) for a, b in zip(plain, mirrored)))


def window_values(image: Maps, cells: jnp.ndarray, max_window: int) -> jnp.ndarray:
    """Rectified map values in the `(2H+1)^2` cells around each node's centre cell, one image.

    `image` one image's Maps (`values [S, S, C]`), `cells [2, K, C]` integer centres (h, w;
    any, also off the map) -> `[K, C, Q]`, Q = `(2H+1)^2` cells w-major (`jw` outer, `jh`
    inner) as the original walks the window; cells off the map read 0.
    """
    size = image.values.shape[0]
    _, k, c = cells.shape
    offsets = jnp.arange(-max_window, max_window + 1)
    rows = cells[0][..., None, None] + offsets[None, :]            # [K, C, 1, A]  jh
    cols = cells[1][..., None, None] + offsets[:, None]            # [K, C, A, 1]  jw
    inside = ((rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)).reshape(k, c, -1)
    index = (jnp.clip(rows, 0, size - 1) * size + jnp.clip(cols, 0, size - 1)) * c
    index = index.reshape(k, c, -1) + jnp.arange(c)[:, None]
    values = image.values.reshape(-1).at[index].get(mode="promise_in_bounds")
    if image.minimum is not None:
        codes = values.astype(image.minimum.dtype) * image.range[:, None]
        values = divide(codes, 255) + image.minimum[:, None]
    return jnp.where(inside, jnp.maximum(values, 0), 0)
