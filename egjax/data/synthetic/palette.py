"""Colours shared by objects, distractors and backgrounds, so that no class owns a colour.

Channels stay <= 212 so that a texture factor of up to 1.2 never clips at 255.
"""

from __future__ import annotations

import numpy as np

PALETTE: dict[str, tuple[float, float, float]] = {
    "brown": (120, 72, 40),
    "tan": (190, 150, 100),
    "grey": (128, 128, 134),
    "orange": (205, 112, 40),
    "charcoal": (52, 48, 46),
    "cream": (208, 198, 172),
    "red": (186, 44, 38),
    "blue": (52, 92, 180),
    "yellow": (210, 182, 46),
    "green": (72, 140, 62),
    "olive": (104, 112, 50),
    "purple": (118, 72, 150),
    "sky": (150, 190, 210),
    "pink": (205, 132, 150),
    "white": (206, 206, 200),
}
NAMES = tuple(PALETTE)
MAX_CHANNEL = 212.0


def jitter(rng: np.random.Generator, rgb, amount: float = 0.1) -> tuple[float, float, float]:
    """`rgb` with its brightness scaled by 1 +- amount and each channel moved by +- 8."""
    u = rng.random(4).tolist()
    scale = 1.0 + amount * (2.0 * u[0] - 1.0)
    return tuple(min(max(c * scale + 16.0 * d - 8.0, 0.0), MAX_CHANNEL) for c, d in zip(rgb, u[1:]))


def pick(rng: np.random.Generator, names=NAMES, amount: float = 0.1) -> tuple[float, float, float]:
    """A jittered colour drawn from the named palette entries."""
    return jitter(rng, PALETTE[names[rng.integers(len(names))]], amount)


def scaled(rgb, factor: float) -> tuple[float, float, float]:
    """`rgb` times `factor`, clipped to the palette range."""
    return tuple(float(min(c * factor, MAX_CHANNEL)) for c in rgb)
