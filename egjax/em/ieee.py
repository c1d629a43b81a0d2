"""Arithmetic that XLA may not rewrite, where a result must not depend on the program
around it.

XLA rewrites some arithmetic in ways exact in real numbers but not in floats: it fuses a
product and a sum into one multiply-add (one rounding instead of two), divides by a
broadcast divisor by multiplying with its reciprocal, and skips a float32 rounding between
two float64 operations (`reduce.narrow` keeps it). Whether it does depends on the program
around the operation (one device or an image-sharded `shard_map`, the fusions nearby), and
each changes the last bit now and then. The EM's discrete choices (best candidates, parents)
hang on last bits: `compat="original"` uses these helpers to round as the original learner
does, `compat="fixed"` to give the same fit however the images are split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# `divide(x, divisor)`: `x / divisor` rounded once (XLA would multiply by `1 / divisor`).
from egjax.maps import divide  # noqa: F401


def rounded(x: jax.Array) -> jax.Array:
    """`x`; a product passed through here is rounded before it is added. (The `where` is a
    no-op that XLA does not see through; an optimisation barrier does not keep the fusion
    away.)"""
    return jnp.where(x != 0, x, jnp.zeros_like(x))


def squared_length(h: jax.Array, w: jax.Array) -> jax.Array:
    """`h^2 + w^2`, each square rounded before they are added."""
    return rounded(h * h) + rounded(w * w)
