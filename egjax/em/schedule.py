"""How the EM's loops are shaped for a backend: one `Schedule` value, chosen per backend.

The results do not depend on it (up to float rounding in the compute dtype); only the
order in which the work is laid out does. On CPU, loops keep each step's intermediates in
cache: images one at a time, filters in groups, children in blocks. On an accelerator,
serial loops leave it idle, so everything a step can take at once is vectorised.
"""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Schedule:
    """`images` of a chunk taken at once by the E-step (1: one after another, `lax.map`;
    None: the whole chunk, vmapped); `filters` per group of the competition (None: all);
    `children` per block of the parent selection's affinities (None: all)."""

    images: int | None = 1
    filters: int | None = 128
    children: int | None = 256


CPU = Schedule()
ACCELERATOR = Schedule(images=None, filters=None, children=None)


def for_backend(platform: str) -> Schedule:
    """The schedule for a JAX platform name (`jax.default_backend()`)."""
    return CPU if platform == "cpu" else ACCELERATOR


def for_devices(devices=None) -> Schedule:
    """The schedule for the backend of `devices` (None: the default devices)."""
    return for_backend((devices or jax.devices())[0].platform)
