"""Normalised feature maps as the EM consumes them: float32, or uint8 codes per image and
channel as the original stores them (`roughCNN_compress.m` / `roughCNN_uncompress.m`)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# XLA:CPU uses a host buffer in place (no copy) only if it starts on this boundary.
ALIGNMENT = 64


class QuantizedMaps(NamedTuple):
    """uint8 maps with per-image, per-channel `minimum` and `range` [N, C] float32."""

    data: jax.Array
    minimum: jax.Array
    range: jax.Array


def host_empty(shape, dtype) -> np.ndarray:
    """An uninitialised numpy array whose data starts on a 64-byte boundary, so that the EM
    reads it in place on CPU instead of copying it (numpy itself aligns to 16 bytes)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def divide(numerator: jax.Array, denominator) -> jax.Array:
    """IEEE division, as MATLAB's `./`. XLA rewrites a division by a broadcast value into a
    multiplication by its reciprocal (up to 1 ulp off). float32: divided in float64 and
    rounded once, which is the float32 quotient exactly: with 24-bit operands the exact
    quotient lies at least 2^-49 (relative) from any point halfway between two float32
    values, farther than the float64 result can be from it (2^-52, reciprocal or not).
    float64: a full-shape denominator behind an optimization barrier keeps the true
    division (a buffer the size of the numerator)."""
    if jnp.result_type(numerator) == jnp.float32:
        with jax.enable_x64(True):
            divisor = jnp.asarray(denominator, jnp.float32).astype(jnp.float64)
            return (numerator.astype(jnp.float64) / divisor).astype(jnp.float32)
    full = jnp.broadcast_to(jnp.asarray(denominator, numerator.dtype), numerator.shape)
    return numerator / jax.lax.optimization_barrier(full)


def to_uint8(values: jax.Array) -> jax.Array:
    """MATLAB `uint8(values)`: round half away from zero, saturate to [0, 255], NaN -> 0."""
    magnitude = jnp.abs(values)
    whole = jnp.floor(magnitude)
    rounded = jnp.sign(values) * (whole + (magnitude - whole >= 0.5))
    return jnp.nan_to_num(jnp.clip(rounded, 0, 255), nan=0.0).astype(jnp.uint8)


def quantize(maps: jax.Array) -> QuantizedMaps:
    """[N, S, S, C] float32 -> uint8 per image and channel, as `roughCNN_compress.m`.

    q = uint8((x - min) * (255 / range)) in float32, min and range over the S x S cells; a
    channel with range 0 stores q = 0 (the original's uint8(NaN)).
    """
    maps = jnp.asarray(maps, jnp.float32)
    minimum = jnp.min(maps, axis=(1, 2))
    shifted = maps - minimum[:, None, None, :]
    extent = jnp.max(shifted, axis=(1, 2))
    scale = jnp.where(extent > 0, jnp.float32(255) / jnp.where(extent > 0, extent, 1.0), 0.0)
    return QuantizedMaps(to_uint8(shifted * scale[:, None, None, :]), minimum, extent)


def dequantize(quantized: QuantizedMaps) -> jax.Array:
    """QuantizedMaps -> [N, S, S, C] float32: `q * range / 255 + min` (`roughCNN_uncompress.m`)."""
    data, minimum, extent = quantized
    values = jnp.asarray(data).astype(jnp.float32) * jnp.asarray(extent)[:, None, None, :]
    return divide(values, 255) + jnp.asarray(minimum)[:, None, None, :]
