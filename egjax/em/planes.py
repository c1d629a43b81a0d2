"""Feature maps laid out for the E-step's window reads: one S x S plane per filter.

The E-step reads, for every node, the `(2H+1)^2` cells around its centre in its filter's
plane; a plane per filter keeps those reads local. Float maps are stored rectified
(`max(x, 0)`, all the E-step uses); uint8 maps (`maps.QuantizedMaps`) stay uint8 and are
decoded cell by cell as they are read, so memory holds one byte per cell.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from egjax.maps import QuantizedMaps, divide


class Planes(NamedTuple):
    """`values [N, C, S*S]` rectified floats, or uint8 codes with per-image, per-filter
    `minimum` and `range [N, C]` (None for floats)."""

    values: jnp.ndarray
    minimum: jnp.ndarray | None
    range: jnp.ndarray | None


def to_planes(maps, dtype) -> Planes:
    """`[N, S, S, C]` float maps or `QuantizedMaps` -> Planes (cells row-major in a plane)."""
    if isinstance(maps, QuantizedMaps):
        n, s, _, c = maps.data.shape
        codes = jnp.transpose(jnp.asarray(maps.data), (0, 3, 1, 2)).reshape(n, c, s * s)
        return Planes(codes, jnp.asarray(maps.minimum, dtype), jnp.asarray(maps.range, dtype))
    n, s, _, c = maps.shape
    values = jnp.maximum(jnp.transpose(jnp.asarray(maps, dtype), (0, 3, 1, 2)), 0)
    return Planes(values.reshape(n, c, s * s), None, None)


def orient(flip: jnp.ndarray, plain: Planes, mirrored: Planes) -> Planes:
    """Per image, the mirrored planes where `flip [N]`, else the plain ones."""
    def pick(a, b):
        return None if a is None else jnp.where(flip.reshape((-1,) + (1,) * (a.ndim - 1)), b, a)
    return Planes(*(pick(a, b) for a, b in zip(plain, mirrored)))


def window_values(planes: Planes, cells: jnp.ndarray, size: int, max_window: int) -> jnp.ndarray:
    """Rectified map values in the `(2H+1)^2` cells around each node's centre cell, one image.

    `planes` of one image (`values [C, S*S]`), `cells [2, K, C]` integer centres (h, w; any,
    also off the map), `size` = S -> `[K, C, Q]`, Q = `(2H+1)^2` cells w-major (`jw` outer,
    `jh` inner) as the original walks the window; cells off the map read 0.
    """
    _, k, c = cells.shape
    offsets = jnp.arange(-max_window, max_window + 1)
    rows = cells[0][..., None, None] + offsets[None, :]            # [K, C, 1, A]  jh
    cols = cells[1][..., None, None] + offsets[:, None]            # [K, C, A, 1]  jw
    inside = ((rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)).reshape(k, c, -1)
    index = jnp.clip(rows, 0, size - 1) * size + jnp.clip(cols, 0, size - 1)
    index = index.reshape(k, c, -1) + (jnp.arange(c) * size * size)[:, None]
    values = planes.values.reshape(-1).at[index].get(mode="promise_in_bounds")
    if planes.minimum is not None:
        codes = values.astype(planes.minimum.dtype) * planes.range[:, None]
        values = jnp.maximum(divide(codes, 255) + planes.minimum[:, None], 0)
    return jnp.where(inside, values, 0)
