"""The two node orders and the only conversions between them, at the kernel's edge: the graph
numbers node k of filter c `v = c*K + k` (`[C, K, ...]`, rows `[C*K, ...]`, as the original);
the kernel lays nodes out `[..., K, C]`, filters last to vectorise across them (`k*C + c`).
"""

from __future__ import annotations

import jax.numpy as jnp


def params_in(coord, deform):
    """Graph `coord [C,K,2]`, `deform [C,K]` -> kernel `[2,K,C]`, `[K,C]` (numpy or jax)."""
    return coord.transpose(2, 1, 0), deform.T


def params_out(coord: jnp.ndarray, deform: jnp.ndarray):
    """Kernel `coord [2,K,C]`, `deform [K,C]` -> graph `[C,K,2]`, `[C,K]`."""
    return jnp.transpose(coord, (2, 1, 0)), deform.T


def rows_in(x: jnp.ndarray, filters: int) -> jnp.ndarray:
    """Per-node rows in graph order `[C*K, ...]` -> kernel order `[K*C, ...]`."""
    per_filter = x.shape[0] // filters
    return jnp.swapaxes(x.reshape(filters, per_filter, *x.shape[1:]), 0, 1).reshape(x.shape)


def rows_out(x: jnp.ndarray, filters: int) -> jnp.ndarray:
    """Per-node rows in kernel order `[K*C, ...]` -> graph order `[C*K, ...]`."""
    return rows_in(x, x.shape[0] // filters)


def records_out(x: jnp.ndarray) -> jnp.ndarray:
    """Kernel records `[N, K, C]` or `[N, 2, K, C]` -> graph `[C*K, N]` or `[C*K, N, 2]`."""
    if x.ndim == 3:
        return jnp.transpose(x, (2, 1, 0)).reshape(-1, x.shape[0])
    return jnp.transpose(x, (3, 2, 0, 1)).reshape(-1, x.shape[0], 2)
