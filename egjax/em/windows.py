"""The maps as the E-step reads them: in place, `[N, S, S, C]` floats or the uint8 codes of
`maps.QuantizedMaps` (decoded as read), a window around each node."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from egjax.maps import QuantizedMaps, divide


class Maps(NamedTuple):
    """`values [N, S, S, C]` floats, or uint8 codes with `minimum`, `range [N, C]` (None for
    floats); or one image's, `[S, S, C]` and `[C]`."""

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
    """One image's maps: `mirrored` where `flip` (scalar bool), else `plain`."""
    return Maps(*(None if a is None else jnp.where(flip, b, a) for a, b in zip(plain, mirrored)))


def window_values(image: Maps, cells: jnp.ndarray, max_window: int) -> jnp.ndarray:
    """`max(x_q, 0)` `[K, C, Q]` in the `(2H+1)^2` cells around each of `cells [2, K, C]` (h, w)
    in one image, w-major as the original walks them, 0 off the map: one slice per window."""
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
