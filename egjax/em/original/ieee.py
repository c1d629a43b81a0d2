"""Float arithmetic as the original's compiled code does it, for `compat="original"`: its
sums over images, added one by one in order (`egjax.em.ieee` has the products rounded
before adding and the true divisions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from egjax.em.ieee import divide


def in_order_sum(x: jnp.ndarray) -> jnp.ndarray:
    """Sum over the leading axis, added one by one in order, as MATLAB/Octave's `sum`."""
    return jax.lax.scan(lambda total, row: (total + row, None), jnp.zeros_like(x[0]), x)[0]


def in_order_mean(x: jnp.ndarray) -> jnp.ndarray:
    """Mean over the leading axis as MATLAB/Octave's `mean`: `in_order_sum / n`."""
    return divide(in_order_sum(x), x.shape[0])

