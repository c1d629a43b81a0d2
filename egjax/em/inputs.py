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


def device_array(x, dtype=None) -> jax.Array:
    """`x` on the default device; a host array in place where the platform allows it (CPU,
    64-byte aligned: `maps.host_empty`), so that large maps are held once."""
    if isinstance(x, jax.Array):
        return x if dtype is None else x.astype(dtype)
    return jax.device_put(np.asarray(x, dtype), may_alias=True)


def map_shape(maps):
    return np.shape(maps.data) if isinstance(maps, QuantizedMaps) else np.shape(maps)


def all_finite(x, chunk: int = 64) -> bool:
    """NaN/Inf check over the leading axis in chunks (no full-size temporary)."""
    return all(bool(np.isfinite(np.asarray(x[i:i + chunk])).all())
               for i in range(0, np.shape(x)[0], chunk))


def check_maps(maps, flipped_maps, cfg, *, filters: int | None = None, min_images: int = 1,
               where: str = "") -> int:
    """N; ValueError unless `maps` (and `flipped_maps`, None or alike) are `[N, S, S, C]` float
    or uint8 `QuantizedMaps` maps of layer `cfg` with `filters` channels (None: any), at
    least `min_images`, finite, some value positive (else every score is 0/0). `where`
    prefixes the names."""
    shapes = [_check_one(f"{where}{name}", m, cfg, filters, min_images)
              for name, m in (("maps", maps), ("flipped_maps", flipped_maps)) if m is not None]
    if len(shapes) == 2 and shapes[1] != shapes[0]:
        raise ValueError(f"{where}flipped_maps must have the shape of maps, {shapes[0]} (as "
                         f"many images and channels), got {shapes[1]}")
    if not any(has_positive(m) for m in (maps, flipped_maps) if m is not None):
        names = "maps" if flipped_maps is None else "maps and flipped_maps"
        raise ValueError(f"{where}{names} hold no positive value (no evidence), so every node "
                         f"score would be 0 and its normalisation 0/0 (NaN); pass the layer's "
                         f"normalised activations (`features.normalize`)")
    return shapes[0][0]


def _check_one(name: str, maps, cfg, filters: int | None, min_images: int) -> tuple:
    shape = map_shape(maps)
    s, c = cfg.map_size, "C" if filters is None else filters
    if len(shape) != 4 or shape[1:3] != (s, s) or filters not in (None, shape[3]):
        fitted = "" if filters is None else ", C its filters, as the graph layer was fitted on"
        raise ValueError(f"{name} must be [N, S, S, C] (channels last) = [N, {s}, {s}, {c}] "
                         f"(rank 4, S the layer's map_size {s}{fitted}), got shape {shape}")
    if shape[0] < min_images:
        raise ValueError(f"{name} needs at least {min_images} images, got {shape[0]}")
    arrays = (maps,)
    if isinstance(maps, QuantizedMaps):
        if np.asarray(maps.data).dtype != np.uint8:
            raise ValueError(f"{name}: QuantizedMaps data must be uint8")
        if not np.shape(maps.minimum) == np.shape(maps.range) == (shape[0], shape[3]):
            raise ValueError(f"{name}: QuantizedMaps minimum and range must be [N, C] = "
                             f"{[shape[0], shape[3]]}")
        arrays = (maps.minimum, maps.range)
    if not all(all_finite(a) for a in arrays):
        raise ValueError(f"{name} contains NaN or Inf")
    return shape


def has_positive(maps, chunk: int = 64) -> bool:
    if isinstance(maps, QuantizedMaps):   # the largest decoded value is minimum + range
        return bool(np.any(np.asarray(maps.minimum) + np.asarray(maps.range) > 0))
    return any(bool((np.asarray(maps[i:i + chunk]) > 0).any())
               for i in range(0, np.shape(maps)[0], chunk))


def check_per_layer(num_layers: int, **sequences) -> None:
    """ValueError unless each sequence given (None: absent) has one entry per graph layer."""
    for name, seq in sequences.items():
        if seq is not None and len(seq) != num_layers:
            raise ValueError(f"{name} needs one entry per graph layer ({num_layers}), got "
                             f"{len(seq)}")


def check_same_images(counts) -> None:
    """ValueError unless every layer's maps hold as many images."""
    counts = sorted(set(counts))
    if len(counts) > 1:
        raise ValueError(f"every layer's maps must hold the same images, got counts {counts}")


def placed(maps, dtype, mesh, images):
    """Maps (None stays None), float ones in `dtype`, on the default device (`device_array`),
    or split over the images along `mesh` as `images` lays them out (`sharding.put_images`)."""
    if maps is None:
        return None
    quantized = isinstance(maps, QuantizedMaps)
    if mesh is not None:
        return sharding.put_images(maps, mesh, images, None if quantized else dtype)
    if quantized:
        return QuantizedMaps(*(device_array(x) for x in maps))
    return device_array(maps, dtype)
