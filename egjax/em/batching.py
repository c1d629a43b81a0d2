"""Loops shaped for the cache: a function over all images in chunks (adding some outputs and
stacking others), one image at a time, or over the rows of an array in blocks."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from egjax.em.reduce import slice_sum


def scan_chunks(fn: Callable, inputs, chunk: int, into=None):
    """`fn(chunk_inputs, valid) -> (summed, recorded)` over the leading axis N of `inputs`.

    Images are taken `chunk` at a time inside one loop, so memory grows with the chunk, not
    with N. When N is not a multiple of the chunk, the last chunk is moved back to end at
    image N: it repeats some images, `valid [chunk]` marks those not seen before, and `fn`
    must give the others no weight in `summed` (nothing is padded, so the inputs are never
    copied). Returns `summed` added over the chunks and `recorded` `[N, ...]`, written into
    `into` (arrays of that shape whose contents are no longer needed, e.g. the previous
    iteration's records, so that XLA can reuse their memory) or into new arrays.
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
    """`out [num, ...]` with `fn(start, size) [size, ...]` written at rows `start` on, for
    blocks of `size = block` rows (None: all) in one loop, so that each block's intermediates
    stay in cache. The last block is moved back to end at row `num` (it repeats some rows)."""
    size = min(block or num, num)

    def one_block(i, out):
        start = jnp.minimum(i * size, num - size)
        return jax.lax.dynamic_update_slice_in_dim(out, fn(start, size), start, 0)

    return jax.lax.fori_loop(0, -(-num // size), one_block, out)


def map_images(fn: Callable, *args, batch: int | None = 1):
    """`fn(*args_of_one_image)` over the leading (image) axis of `args` (None entries pass
    through as None), `batch` images at a time, vmapped (None: all at once;
    `schedule.Schedule.images`). On CPU one at a time: a vmapped batch multiplies every
    per-image intermediate (`[J, K, C]` arrays of several MB) by the batch size and pushes it
    out of cache; one image's stay there."""
    if batch is None:
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda per_image: fn(*per_image), args,
                       batch_size=None if batch == 1 else batch)


def masked_sum(x: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Sum over the leading (image) axis of the images marked `valid`, image after image
    (`reduce.slice_sum`)."""
    return slice_sum(jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0), 0)
