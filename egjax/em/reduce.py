"""Sums over images in float64, rounded once (docs/algorithm.md, "Sums over images"), on one
device (`images=None`) or inside `shard_map`, each device holding a slice of the images
padded with masked ones (`Images`), completed with a `psum`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from egjax.em.ieee import divide


class Images(NamedTuple):
    """How `num_images` images lie along the sharded image axis `axis` (`egjax.em.sharding`).

    Each of `processes` processes holds a contiguous block of `block` slots: process p's
    images are p, p + P, p + 2P, ... (its share, `egjax.data.iter_objects(shard=(p, P))`),
    in that order, then padding (masked) slots. One process: image i in slot i.
    """

    axis: str
    num_images: int
    processes: int = 1
    block: int = 0

    @property
    def slots(self) -> int:
        """Length of the sharded image axis, padding included."""
        return self.processes * self.block

    def share(self, process: int) -> int:
        """Images held by `process`."""
        return len(range(process, self.num_images, self.processes))

    def slot_of_image(self) -> np.ndarray:
        """`[num_images]` the slot of each image."""
        i = np.arange(self.num_images)
        return (i % self.processes) * self.block + i // self.processes

    def image_at_slot(self) -> np.ndarray:
        """`[slots]` the image in each slot, `num_images` for padding."""
        out = np.full(self.slots, self.num_images)
        out[self.slot_of_image()] = np.arange(self.num_images)
        return out


def real(x: jnp.ndarray, axis: int, images: Images | None) -> jnp.ndarray:
    """`x` with this device's padding images (along `axis`) set to 0."""
    if images is None:
        return x
    local = x.shape[axis]
    slot = jax.lax.axis_index(images.axis) * local + jnp.arange(local)
    at = jnp.asarray(images.image_at_slot())[slot]
    valid = (at < images.num_images).reshape((-1,) + (1,) * (x.ndim - axis - 1))
    return jnp.where(valid, x, jnp.zeros_like(x))


def wide(x: jnp.ndarray) -> jnp.ndarray:
    """`x` in float64 (whatever `jax_enable_x64` says), for sums over images."""
    with jax.enable_x64(True):
        return x.astype(jnp.float64)


def narrow(x: jnp.ndarray, dtype) -> jnp.ndarray:
    """A float64 sum `x` rounded once to `dtype`, by `reduce_precision`, which XLA keeps
    (it may skip a plain conversion that is widened again; `xla_allow_excess_precision`)."""
    bits = jnp.finfo(dtype)
    return jax.lax.reduce_precision(x, bits.nexp, bits.nmant).astype(dtype)


def wide_psum(x: jnp.ndarray, images: Images | None) -> jnp.ndarray:
    """`psum` of float64 partial sums across the devices holding images (None: `x`)."""
    if images is None:
        return x
    with jax.enable_x64(True):
        return jax.lax.psum(x, images.axis)


def wide_sum(x: jnp.ndarray, axis) -> jnp.ndarray:
    """Sum over `axis` accumulated in float64 (`wide`), rounded once to `x`'s dtype."""
    with jax.enable_x64(True):
        return narrow(jnp.sum(wide(x), axis=axis), x.dtype)


def slice_sum(x: jnp.ndarray, axis: int, each=lambda part: part) -> jnp.ndarray:
    """Sum of `each(slice)` over the slices of `x` along `axis`, one after another (a loop
    unrolled by 8): XLA:CPU reduces over a leading axis tens of times slower."""
    def add(i, total):
        return total + each(jax.lax.dynamic_index_in_dim(x, i, axis, False))

    part = jax.eval_shape(each, jax.ShapeDtypeStruct(x.shape[:axis] + x.shape[axis + 1:],
                                                     x.dtype))
    zeros = jnp.zeros(part.shape, part.dtype)
    return jax.lax.fori_loop(0, x.shape[axis], add, zeros, unroll=8)


def image_sum(x: jnp.ndarray, axis, images: Images | None) -> jnp.ndarray:
    """Sum over the image axis `axis` (or a tuple of axes, images first) of all devices,
    padding excluded, in float64 (`wide`), image after image (`slice_sum`)."""
    first, *others = axis if isinstance(axis, tuple) else (axis,)
    with jax.enable_x64(True):
        total = slice_sum(real(x, first, images), first, wide)
        total = jnp.sum(total, axis=tuple(a - (a > first) for a in others))   # other axes
    return narrow(wide_psum(total, images), x.dtype)


def image_mean(x: jnp.ndarray, axis, num_images: int, images: Images | None) -> jnp.ndarray:
    """Mean over all `num_images` images, across devices."""
    return divide(image_sum(x, axis, images), num_images)


def image_var(x: jnp.ndarray, axis: int, num_images: int, images: Images | None) -> jnp.ndarray:
    """Unbiased variance (N - 1) over all images, two-pass, across devices."""
    mean = jnp.expand_dims(image_mean(x, axis, num_images, images), axis)
    return image_sum((x - mean) ** 2, axis, images) / (num_images - 1)


def all_images(x: jnp.ndarray, axis: int, images: Images | None) -> jnp.ndarray:
    """`x` with every device's images along `axis`, in image order, padding dropped."""
    if images is None:
        return x
    gathered = jax.lax.all_gather(x, images.axis, axis=axis, tiled=True)
    return jnp.take(gathered, jnp.asarray(images.slot_of_image()), axis=axis)
