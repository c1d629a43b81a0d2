"""Run a function over all images in chunks, adding some outputs and stacking others."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def scan_chunks(fn: Callable, inputs, chunk: int):
    """`fn(chunk_inputs, valid) -> (summed, recorded)` over the leading axis N of `inputs`.

    Images are taken `chunk` at a time inside a `scan`, so memory grows with the chunk, not
    with N; `valid [chunk]` marks the images that exist (N need not be a multiple of the
    chunk: the last one is padded), and `fn` must give padded images no weight in `summed`.
    Returns `summed` added over the chunks and `recorded` stacked `[N, ...]`.
    """
    num = jax.tree.leaves(inputs)[0].shape[0]
    chunk = max(1, min(chunk, num))
    chunks = -(-num // chunk)
    padded = chunks * chunk

    def split(x):
        x = jnp.pad(x, [(0, padded - num)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((chunks, chunk) + x.shape[1:])

    valid = split(jnp.arange(num) < num)
    parts = jax.tree.map(split, inputs)
    example = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], parts), valid[0])[0]

    def body(total, args):
        summed, recorded = fn(*args)
        return jax.tree.map(jnp.add, total, summed), recorded

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example)
    total, recorded = jax.lax.scan(body, zeros, (parts, valid))
    return total, jax.tree.map(lambda r: r.reshape((padded,) + r.shape[2:])[:num], recorded)


def map_images(fn: Callable, *args):
    """`fn(*args_of_one_image)` over the leading (image) axis of `args` (None entries pass
    through as None), one image at a time: a vmapped batch multiplies every per-image
    intermediate (`[J, K, C]` arrays of several MB) by the batch size and pushes it out of
    cache; one image's stay there."""
    return jax.lax.map(lambda per_image: fn(*per_image), args)


def masked_sum(x: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Sum over the leading (image) axis of the images marked `valid`."""
    return jnp.sum(jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0), axis=0)
