"""Run a per-image function over all images in chunks, summing some outputs, stacking others."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def map_images(fn: Callable, inputs, chunk: int):
    """`fn(one_image_inputs) -> (summed, recorded)` over the leading axis N of `inputs`.

    Images are processed `chunk` at a time (vmapped inside a `scan`), so memory grows with
    the chunk, not with N. Returns `summed` added over all images and `recorded` stacked
    `[N, ...]`. N need not be a multiple of `chunk`: padded images count nothing.
    """
    num = jax.tree.leaves(inputs)[0].shape[0]
    chunk = max(1, min(chunk, num))
    chunks = -(-num // chunk)
    padded = chunks * chunk

    def split(x):
        x = jnp.pad(x, [(0, padded - num)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((chunks, chunk) + x.shape[1:])

    valid = split(jnp.arange(num) < num)
    batched = jax.vmap(fn)

    def body(total, args):
        part, ok = args
        summed, recorded = batched(part)
        summed = jax.tree.map(lambda s: jnp.sum(jnp.where(
            ok.reshape((-1,) + (1,) * (s.ndim - 1)), s, 0), axis=0), summed)
        return jax.tree.map(jnp.add, total, summed), recorded

    example = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], inputs))[0]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example)
    total, recorded = jax.lax.scan(body, zeros, (jax.tree.map(split, inputs), valid))
    recorded = jax.tree.map(lambda r: r.reshape((padded,) + r.shape[2:])[:num], recorded)
    return total, recorded
