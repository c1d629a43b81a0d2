"""The maps of a layer fit as the E-step reads them: in place, a window around each node.

Maps stay as they are given, `[N, S, S, C]`: floats, or the uint8 codes of
`maps.QuantizedMaps`, decoded cell by cell as they are read so that memory holds one byte
per cell. Nothing is transposed, oriented or copied per data set; each image is taken in its
orientation, and padded, when it is read (`pick`, `window_values`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
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
    """Rectified map values `[K, C, Q]` in the `Q = (2H+1)^2` cells around each node's centre
    cell in one image (`values [S, S, C]`), `cells [2, K, C]` integer centres (h, w; any,
    also off the map); cells w-major (`jw` outer, `jh` inner) as the original walks the
    window; cells off the map read 0.

    Each window is one slice of the map padded by 2H on every side (a centre up to H off the
    map still sees some of it; farther ones see none): XLA:CPU copies slices, where a gather
    cell by cell computes an index per cell (several times slower). Codes are decoded once
    per window, after the slice.
    """
    k, c = cells.shape[1:]
    reach, side = 2 * max_window, 2 * max_window + 1
    padded = jnp.pad(image.values, ((reach, reach), (reach, reach), (0, 0)))
    # The window of centre x starts at x - H, which is x + H in the padded map.
    start = jnp.stack([cells[0] + max_window, cells[1] + max_window,
                       jnp.broadcast_to(jnp.arange(c), (k, c))], -1)            # [K, C, 3]
    numbers = jax.lax.GatherDimensionNumbers(offset_dims=(2, 3), collapsed_slice_dims=(2,),
                                             start_index_map=(0, 1, 2))
    window = jax.lax.gather(padded, start, numbers, (side, side, 1), mode="clip")
    values = jnp.swapaxes(window, -1, -2)                                     # jw, jh
    offsets = jnp.arange(-max_window, max_window + 1)
    rows = cells[0][..., None, None] + offsets[None, :]            # [K, C, 1, A]  jh
    cols = cells[1][..., None, None] + offsets[:, None]            # [K, C, A, 1]  jw
    size_h, size_w = image.values.shape[:2]
    inside = (rows >= 0) & (rows < size_h) & (cols >= 0) & (cols < size_w)
    if image.minimum is not None:
        codes = values.astype(image.minimum.dtype) * image.range[:, None, None]
        values = divide(codes, 255) + image.minimum[:, None, None]
    return jnp.where(inside, jnp.maximum(values, 0), 0).reshape(k, c, -1)
