"""Cluttered textured backgrounds: palette colours blended by value noise, ground, gratings."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from egjax.data.synthetic import palette


class Background(NamedTuple):
    """Parameters of one background; `render` turns them into pixels."""

    colours: np.ndarray  # [3, 3] rgb rows: base, mixed in by `coarse` noise, ground
    coarse: np.ndarray  # [c + 1, c + 1] value-noise grid: weight of the mixed-in colour
    fine: np.ndarray  # [f + 1, f + 1] value-noise grid modulating brightness
    fine_amp: float
    gratings: np.ndarray  # [k, 4] rows (freq rad/px, angle, phase, amplitude)
    ground: tuple[float, float] | None  # (height as a fraction of the image, slope) or None


@functools.lru_cache(maxsize=64)
def _interpolation(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation from a grid of cells + 1 knots to `size` pixel centres:
    (left knot int [size], weight of the right knot float32 [size])."""
    pos = (np.arange(size) + 0.5) / size * cells
    left = np.minimum(pos.astype(int), cells - 1)
    return left, (pos - left).astype(np.float32)


def _noise(grid: np.ndarray, size: int) -> np.ndarray:
    """Value noise [size, size] in [0, 1] interpolated from `grid` [c + 1, c + 1]."""
    left, frac = _interpolation(size, grid.shape[0] - 1)
    # separable, without BLAS (its threads are slow on tiny matrices on a busy machine)
    cols = grid[:, left] + (grid[:, left + 1] - grid[:, left]) * frac  # [c + 1, size]
    noise = cols[left]
    step = (cols[1:] - cols[:-1])[left]
    step *= frac[:, None]
    noise += step
    return noise


def make_background(rng: np.random.Generator) -> Background:
    """Random background parameters (independent of the image size)."""
    colours = np.array([palette.pick(rng, amount=0.2) for _ in range(3)], np.float32)
    coarse = rng.random((int(rng.integers(2, 5)) + 1,) * 2).astype(np.float32)
    fine = rng.random((int(rng.integers(8, 24)) + 1,) * 2).astype(np.float32)
    count = int(rng.integers(0, 3))
    gratings = np.stack([
        rng.uniform(2 * math.pi / 30, 2 * math.pi / 5, count),
        rng.uniform(0, math.pi, count),
        rng.uniform(0, 2 * math.pi, count),
        rng.uniform(0.04, 0.16, count),
    ], axis=1).astype(np.float32)
    ground = (rng.uniform(0.45, 0.9), rng.uniform(-0.3, 0.3)) if rng.random() < 0.5 else None
    return Background(colours, coarse, fine, float(rng.uniform(0.1, 0.35)), gratings, ground)


def render(background: Background, canvas: np.ndarray) -> None:
    """Paint `background` over all of `canvas` (float32 [3, S, S]), values in [0, 255].

    Works channel by channel on [S, S] arrays, without [3, S, S] temporaries: fresh large
    arrays cost page faults that dominate the arithmetic.
    """
    size = canvas.shape[-1]
    mix_weight = _noise(background.coarse, size)
    ground_weight = None
    if background.ground is not None:
        height, slope = background.ground
        pixels = np.arange(size, dtype=np.float32)
        line = size * height + slope * (pixels - size / 2)
        ground_weight = np.clip(pixels[:, None] - line[None, :], 0.0, 1.0)
        mix_weight *= 1.0 - ground_weight
    brightness = _noise(background.fine, size)
    scratch = np.empty_like(brightness)
    brightness *= background.fine_amp
    brightness += 1.0 - background.fine_amp / 2
    pixels = np.arange(size, dtype=np.float32) * np.float32(224.0 / size)  # freq: per px at 224
    for freq, angle, phase, amp in background.gratings:
        along_h = np.float32(freq * math.sin(angle)) * pixels + np.float32(phase)
        along_w = np.float32(freq * math.cos(angle)) * pixels
        # sin(a + b) as a sum of outer products: sines of [S] vectors, not of [S, S]
        brightness += np.multiply.outer(amp * np.sin(along_h), np.cos(along_w), out=scratch)
        brightness += np.multiply.outer(amp * np.cos(along_h), np.sin(along_w), out=scratch)
    base, mixed, ground = background.colours
    for c in range(3):
        np.multiply(mix_weight, mixed[c] - base[c], out=canvas[c])
        canvas[c] += base[c]
        if ground_weight is not None:
            canvas[c] += np.multiply(ground_weight, ground[c] - base[c], out=scratch)
        canvas[c] *= brightness
    np.clip(canvas, 0.0, 255.0, out=canvas)
