"""A node's candidate grid: half-range and offsets (`getBasicSettings.m`; docs/algorithm.md,
"Settings and node state"), w-major (`iw * P + ih`) as the original enumerates them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from egjax.config import LayerConfig


def round_half_away(x: jnp.ndarray) -> jnp.ndarray:
    """Round half away from zero (MATLAB/C `round`); numpy rounds half to even."""
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def half_range(deform: jnp.ndarray, cfg: LayerConfig) -> jnp.ndarray:
    """`h = round(min(search_max_range * S / 2, deform_ratio * deform))` cells, int32."""
    limit = cfg.search_max_range * cfg.map_size / 2
    return round_half_away(jnp.minimum(limit, cfg.deform_ratio * deform)).astype(jnp.int32)


def offset_table(cfg: LayerConfig) -> np.ndarray:
    """`[H+1, P]` offsets for half-range h = 0..H (float64, host): midpoints of
    `linspace(-h, h, P + 1)`, edges built from both ends as Octave builds them, so that the
    offsets are exactly antisymmetric and mirrored candidates tie as the original's do."""
    num = cfg.candidates
    table = np.zeros((cfg.max_half_range + 1, num))
    for h in range(cfg.max_half_range + 1):
        step = (h - -h) / num
        edges = [0.0] * (num + 1)
        edges[0], edges[num] = float(-h), float(h)
        for i in range(1, (num + 1) // 2):
            edges[i] = -h + i * step
            edges[num - i] = h - i * step
        if num % 2 == 0:
            edges[num // 2] = 0.0
        table[h] = [(edges[i] + edges[i + 1]) / 2 for i in range(num)]
    return table
