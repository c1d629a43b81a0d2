"""The model contract: what egjax needs from a network, and the checks every network shares.

A network is a Flax module (frozen and hashable, so it can be a static `jit` argument) with
* `apply({"params": params}, images, taps=names) -> {name: array}`: images `[N, H, W, 3]`
  float, preprocessed as its `ModelMeta` says; spatial taps `[N, h, w, C]`, others `[N, D]`;
  a `"logits"` tap for training and the saliency methods; every tap passes through
  `self.perturb(perturbation_name(tap), x)` so that Grad-CAM can reach it;
* `tap_names` (bottom to top) and `check_taps(taps) -> tuple` (ValueError naming the valid
  taps; None means the top tap);
* `path(tap)`: the layers from the image to a spatial tap, as `Layer`s and `Residual`s, from
  which `egjax.geometry` derives the tap's receptive field and map size (ValueError for a tap
  without a map). A network that cannot describe itself so gives the geometry by hand:
  `LayerConfig(stride=..., center=...)`;
* optionally `prepare(params) -> {collection: tree}`: variables derived from the params once
  per run of batches and passed to `apply` beside them (VGG-16's Winograd kernels on CPU).
* optionally `initialize(params) -> params`: freshly drawn params adjusted for training from
  scratch (`egjax.train.initial_params`; ResNet-50 zeroes each block's last conv).
* optionally `cpu_whole_batch = True` (a class attribute): `egjax.features` runs a batch at
  once on CPU instead of image by image (faster for ResNet-50, slower for VGG-16).

Registered in `egjax.models.registry` (a builder from `ModelMeta` and a weights loader), a
network works with `egjax.models.load`, checkpoints, features, training and the main job.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Layer(NamedTuple):
    """One layer on a tap's path: a "conv" or a "pool" (max or average), sizes in cells of
    its input; `features` its output channels (0 for pools)."""

    name: str
    kind: str
    kernel: int
    stride: int
    padding: int
    features: int = 0


class Residual(NamedTuple):
    """Branches (each a tuple of `Layer`s; an empty tuple is the identity) run on one input
    and summed: a residual block. `name` is the block's tap."""

    name: str
    branches: tuple


def scaled(channels: int, width: float) -> int:
    """Channels of a layer in a network `width` times as wide: round(channels * width) >= 1."""
    return max(1, round(channels * width))


def perturbation_name(tap: str) -> str:
    """Name of the `self.perturb` variable through which a model exposes `tap` to gradients:
    the tap's plus "_out" (Flax keeps one namespace for a module's submodules and variables,
    and the conv `conv5_3` owns that name)."""
    return f"{tap}_out"


def prepare(model, params) -> dict:
    """`model.prepare(params)` where the network defines it, else no extra variables."""
    method = getattr(model, "prepare", None)
    return {} if method is None else method(params)


def describe(model) -> str:
    """`Name(field=value, ...)` of a Flax module, on one line."""
    fields = [f"{f.name}={getattr(model, f.name)!r}" for f in dataclasses.fields(model)
              if f.name not in ("parent", "name")]
    return f"{type(model).__name__}({', '.join(fields)})"


def param_shapes(model, image_size: int = 224) -> dict:
    """The parameter tree of `model` as ShapeDtypeStructs (computes nothing)."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    return variables["params"]


def check_params(params, model, origin: str) -> None:
    """ValueError naming the first layer of `params` (`{layer: {role: array}}`) that is
    missing, unexpected or misshapen for `model`; `origin` (a path, a checkpoint) starts the
    message."""
    expected = param_shapes(model)
    name = describe(model)
    unexpected = sorted(set(params) - set(expected))
    if unexpected:
        raise ValueError(f"{origin}: unexpected layer {unexpected[0]!r} for {name} "
                         f"(layers found: {', '.join(params)})")
    for layer, weights in expected.items():
        if layer not in params:
            raise ValueError(f"{origin}: layer {layer!r} is missing; {name} needs "
                             f"{', '.join(expected)}")
        for role, want in weights.items():
            got = getattr(params[layer].get(role), "shape", None)
            if got is None:
                raise ValueError(f"{origin}: layer {layer!r} has no {role}")
            if tuple(got) != want.shape:
                raise ValueError(f"{origin}: layer {layer!r} {role} has shape {tuple(got)}, but "
                                 f"{name} needs {want.shape}")
        extra = sorted(set(params[layer]) - set(weights))
        if extra:
            raise ValueError(f"{origin}: layer {layer!r} has unexpected weights {extra}")


def check_finite(params: dict, origin: str) -> None:
    """ValueError naming every layer of `params` (`{layer: {role: array}}`) that holds a NaN
    or an infinity; `origin` (a path, a checkpoint) starts the message."""
    bad = []
    for layer, weights in params.items():
        for role, value in weights.items():
            count = np.size(value) - np.count_nonzero(np.isfinite(np.asarray(value)))
            if count:
                bad.append(f"layer {layer!r} {role} holds {count} of {np.size(value)}")
    if bad:
        raise ValueError(f"{origin}: non-finite weights (NaN or Inf): {'; '.join(bad)}; the "
                         f"weights are corrupt")


def check_images(images) -> None:
    """ValueError unless `images` is `[N, H, W, 3]` float (preprocessed network input)."""
    shape = getattr(images, "shape", None)
    dtype = getattr(images, "dtype", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] (NHWC RGB/BGR), got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"images must be float (preprocessed; see egjax.models.preprocess), "
                         f"got {dtype}")


def select_taps(taps, names: tuple, network: str, aliases: dict | None = None) -> tuple:
    """The requested taps as a tuple (the top tap of `names` for None); ValueError naming the
    valid taps (and `aliases`: other names of taps) for unknown ones."""
    if taps is None:
        return names[-1:]
    if isinstance(taps, str):
        taps = (taps,)
    taps = tuple(taps)
    aliases = aliases or {}
    unknown = [t for t in taps if t not in names and t not in aliases]
    if unknown or not taps:
        also = f" (or their aliases, e.g. {next(iter(aliases))})" if aliases else ""
        raise ValueError(f"unknown taps {unknown or list(taps)} for {network}; valid taps: "
                         f"{', '.join(names)}{also}")
    return taps
