"""Arithmetic that XLA may not rewrite (fuse into a multiply-add, divide by a reciprocal),
where a result must not depend on the program around it: the original's rounding, and a fit
independent of the images' split (docs/algorithm.md, "Sums over images")."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# `divide(x, divisor)`: `x / divisor` rounded once (XLA would multiply by `1 / divisor`).
from egjax.maps import divide  # noqa: F401


def rounded(x: jax.Array) -> jax.Array:
    """`x`; a product passed through here is rounded before it is added (the `where` is a
    no-op XLA does not see through; an optimisation barrier does not stop the fusion)."""
    return jnp.where(x != 0, x, jnp.zeros_like(x))


def squared_length(h: jax.Array, w: jax.Array) -> jax.Array:
    """`h^2 + w^2`, each square rounded before they are added."""
    return rounded(h * h) + rounded(w * w)
