"""The inputs of a fit or of inference: checks of the maps, and their placement on devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from egjax.em import sharding
from egjax.maps import QuantizedMaps


def compute_dtype():
    """float64 when `jax_enable_x64` is on, else float32."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


def as_device(maps, dtype):
    """Float maps in the compute dtype; uint8 `QuantizedMaps` as they are; None stays None."""
    if maps is None:
        return None
    if isinstance(maps, QuantizedMaps):
        return QuantizedMaps(*(device_array(x) for x in maps))
    return device_array(maps, dtype)


def device_array(x, dtype=None) -> jax.Array:
    """`x` on the default device. A host array is used in place where the platform allows it
    (CPU, 64-byte aligned: `maps.host_empty`) instead of being copied, so the maps of a
    large data set are held once."""
    if isinstance(x, jax.Array):
        return x if dtype is None else x.astype(dtype)
    return jax.device_put(np.asarray(x, dtype), may_alias=True)


def map_shape(maps):
    return np.shape(maps.data) if isinstance(maps, QuantizedMaps) else np.shape(maps)


def all_finite(x, chunk: int = 64) -> bool:
    """NaN/Inf check over the leading axis in chunks (no full-size temporary)."""
    return all(bool(np.isfinite(np.asarray(x[i:i + chunk])).all())
               for i in range(0, np.shape(x)[0], chunk))


def check_evidence(name: str, maps, flipped_maps) -> None:
    """ValueError unless some map value is positive: with no evidence every node score is 0
    and their normalisation to mean 1 is 0/0."""
    if not any(has_positive(m) for m in (maps, flipped_maps) if m is not None):
        raise ValueError(f"{name} hold no positive value (no evidence), so every node score "
                         f"would be 0 and its normalisation 0/0 (NaN); pass the layer's "
                         f"normalised activations (`features.normalize`)")


def has_positive(maps, chunk: int = 64) -> bool:
    if isinstance(maps, QuantizedMaps):   # the largest decoded value is minimum + range
        return bool(np.any(np.asarray(maps.minimum) + np.asarray(maps.range) > 0))
    return any(bool((np.asarray(maps[i:i + chunk]) > 0).any())
               for i in range(0, np.shape(maps)[0], chunk))


def as_sharded(maps, mesh, images, dtype):
    """`as_device`, but split over the images along `mesh` (`sharding.put_images`)."""
    if maps is None:
        return None
    return sharding.put_images(maps, mesh, images,
                               None if isinstance(maps, QuantizedMaps) else dtype)
