"""Float arithmetic as the original's compiled code does it, for `compat="original"`.

XLA rewrites some arithmetic in ways exact in real numbers but not in floats: it fuses a
product and a sum into one multiply-add (one rounding instead of two), and divides by a
broadcast divisor by multiplying with its reciprocal. Each changes the last bit now and then, and
the original learner's near-ties (which candidate, which parent) hang on last bits. The
original's path through the EM uses these helpers where it matters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# `divide(x, divisor)`: `x / divisor` rounded once (XLA would multiply by `1 / divisor`).
from egjax.maps import divide  # noqa: F401


def rounded(x: jax.Array) -> jax.Array:
    """`x`; a product passed through here is rounded before it is added, as the original's
    code adds it. (The `where` is a no-op that XLA does not see through; an optimisation
    barrier does not keep the fusion away.)"""
    return jnp.where(x != 0, x, jnp.zeros_like(x))


def in_order_sum(x: jnp.ndarray) -> jnp.ndarray:
    """Sum over the leading axis, added one by one in order, as MATLAB/Octave's `sum`."""
    return jax.lax.scan(lambda total, row: (total + row, None), jnp.zeros_like(x[0]), x)[0]


def in_order_mean(x: jnp.ndarray) -> jnp.ndarray:
    """Mean over the leading axis as MATLAB/Octave's `mean`: `in_order_sum / n`."""
    return divide(in_order_sum(x), x.shape[0])

