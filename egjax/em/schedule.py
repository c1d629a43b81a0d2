"""How the EM's loops are shaped (docs/algorithm.md, "Loop shapes"): one `Schedule` per
backend, and the loops it shapes, over images in chunks and over rows in blocks. The results
do not depend on it beyond float rounding."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from egjax.em.reduce import slice_sum


@dataclasses.dataclass(frozen=True)
class Schedule:
    """`images` of a chunk at once in the E-step (None: the whole chunk, vmapped); `filters`
    per group of the competition, `children` per block of the parents' (None: all)."""

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


def scan_chunks(fn: Callable, inputs, chunk: int, into=None):
    """`fn(chunk_inputs, valid) -> (summed, recorded)` over the leading axis N of `inputs`,
    `chunk` at a time in one loop; `summed` added, `recorded [N, ...]` written into `into`
    (arrays whose contents are no longer needed; None: new ones). The last chunk ends at
    image N and repeats some: `valid [chunk]` marks the new ones, the others must add 0.
    """
    num = jax.tree.leaves(inputs)[0].shape[0]
    chunk = max(1, min(chunk, num))

    def part(start):
        return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, chunk), inputs)

    summed, recorded = jax.eval_shape(fn, part(0), jnp.ones(chunk, bool))
    if into is None:
        into = jax.tree.map(lambda r: jnp.zeros((num,) + r.shape[1:], r.dtype), recorded)

    def body(i, carry):
        total, out = carry
        start = jnp.minimum(i * chunk, num - chunk)
        summed, recorded = fn(part(start), start + jnp.arange(chunk) >= i * chunk)
        out = jax.tree.map(lambda o, r: jax.lax.dynamic_update_slice_in_dim(o, r, start, 0),
                           out, recorded)
        return jax.tree.map(jnp.add, total, summed), out

    with jax.enable_x64(True):   # of fn's sums' dtype: float64 for `reduce.wide` sums
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), summed)
    return jax.lax.fori_loop(0, -(-num // chunk), body, (zeros, into))


def row_blocks(fn: Callable, num: int, block: int | None, out: jnp.ndarray) -> jnp.ndarray:
    """`out [num, ...]` with `fn(start, size) [size, ...]` written at row `start`, blocks of
    `block` rows (None: all) in one loop; the last block ends at row `num`."""
    size = min(block or num, num)

    def one_block(i, out):
        start = jnp.minimum(i * size, num - size)
        return jax.lax.dynamic_update_slice_in_dim(out, fn(start, size), start, 0)

    return jax.lax.fori_loop(0, -(-num // size), one_block, out)


def map_images(fn: Callable, *args, batch: int | None = 1):
    """`fn(*one_image_args)` over the images of `args`, `batch` at a time vmapped (None: all)."""
    if batch is None:
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda per_image: fn(*per_image), args,
                       batch_size=None if batch == 1 else batch)


def masked_sum(x: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Sum over the images marked `valid`, one after another (`reduce.slice_sum`)."""
    return slice_sum(jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0), 0)
