"""Reductions over images that also run image-sharded across devices.

Inside `shard_map` each device holds a slice of the images; `axis_name` names the mesh axis
they are split over, and the sums are completed with `psum`. With `axis_name=None` they are
plain sums on one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def image_sum(x: jnp.ndarray, axis: int, axis_name: str | None) -> jnp.ndarray:
    """Sum over the image axis `axis`, across all devices holding images."""
    total = jnp.sum(x, axis=axis)
    return total if axis_name is None else jax.lax.psum(total, axis_name)


def image_mean(x: jnp.ndarray, axis: int, num_images: int, axis_name: str | None) -> jnp.ndarray:
    """Mean over all `num_images` images, across devices."""
    return image_sum(x, axis, axis_name) / num_images


def image_var(x: jnp.ndarray, axis: int, num_images: int, axis_name: str | None) -> jnp.ndarray:
    """Unbiased variance (N - 1) over all images, two-pass, across devices."""
    mean = jnp.expand_dims(image_mean(x, axis, num_images, axis_name), axis)
    return image_sum((x - mean) ** 2, axis, axis_name) / (num_images - 1)


def all_images(x: jnp.ndarray, axis: int, axis_name: str | None) -> jnp.ndarray:
    """`x` with the images of every device along `axis`, in image order (for sums that
    must be added one image after another)."""
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, axis=axis, tiled=True)
