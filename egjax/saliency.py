"""Saliency maps with one target class per image: gradient, gradient x input, CAM, Grad-CAM.

Every method takes a classifier that follows the egjax model protocol,
`model.apply({"params": params}, images, taps=names) -> {name: array}` with images
`[N, H, W, C]` float, conv taps `[N, h, w, K]` and `"logits"` `[N, num_classes]`, and
returns maps `[N, H, W]` at image resolution. Two extra requirements, each for one method:

* `cam` needs a head that is linear on the global average of a conv tap
  (`logits = mean_hw(tap) @ kernel + bias`); the Dense parameters are read from
  `params["logits"]` (the Dense layer that produces the logits) unless `head=` is given.
* `grad_cam` needs the gradient of a logit with respect to a tap, which a model can only
  expose through an injection point: the model passes the tap through Flax's
  `x = self.perturb(perturbation_name(tap), x)` (a no-op unless a `"perturbations"`
  collection is supplied); the name is the tap's plus `"_out"`, since Flax keeps one
  namespace for a module's submodules and variables (the conv `conv5_3` owns that name).

Images never mix: each map is computed from `image[None]` alone and `jax.vmap`-ped over
the batch, so no gradient, batch statistic or maximum crosses images whatever the model
does with its batch axis. `batch_size` runs the vmap in chunks (`jax.lax.map`) to bound
memory; results do not depend on it. Each method compiles once per input shape.

Post-processing, in this order: channel reduction (gradient methods), ReLU (CAM and
Grad-CAM, as both papers do; `relu=False` keeps the signed map), bilinear upsampling to
`[H, W]` (`jax.image.resize`, half-pixel centres as in OpenCV and PyTorch with
`align_corners=False`), then per-image normalisation:

* `"none"`: raw values (what Lipschitz-type continuity should be measured on);
* `"max"`: divided by the largest absolute value, so in [-1, 1] ([0, 1] after ReLU);
* `"minmax"`: shifted and scaled to [0, 1] (pytorch-grad-cam's display scaling).

A map that is constant (e.g. all zero) normalises to zeros.

These functions validate on the host before any work, so call them outside `jax.jit`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from egjax.models.contract import perturbation_name

NORMALIZATIONS = ("none", "max", "minmax")
CHANNEL_REDUCTIONS = ("max_abs", "l2", "sum")
LAST_CONV = "relu5_3"  # VGG-16's last conv map after ReLU: what a GAP head pools


def gradient(model, params, images, targets, *, channel_reduce: str = "max_abs",
             normalize: str = "none", batch_size: int | None = None) -> jax.Array:
    """Gradient saliency: `d logit_t / d x` per pixel (Simonyan et al., 2014).

    images `[N, H, W, C]`, targets int `[N]` -> `[N, H, W]`. The gradient `[H, W, C]` is
    reduced over channels by `channel_reduce`: `"max_abs"` (Simonyan et al., eq. for
    `M_ij`), `"l2"` (the pixel's gradient norm; its square is Montavon et al.'s 2018
    sensitivity `sum_c (df/dx_c)^2`) or `"sum"` (signed).
    """
    _check_common(images, targets, channel_reduce=channel_reduce, normalize=normalize,
                  batch_size=batch_size)
    _check_targets(targets, _logit_count(model, params, images))
    return _gradient_maps(model, params, images, jnp.asarray(targets), times_input=False,
                          channel_reduce=channel_reduce, normalize=normalize,
                          batch_size=batch_size)


def gradient_x_input(model, params, images, targets, *, channel_reduce: str = "sum",
                     normalize: str = "none", batch_size: int | None = None) -> jax.Array:
    """Gradient x input, `x * d logit_t / d x` (Shrikumar et al., 2016).

    images `[N, H, W, C]`, targets int `[N]` -> `[N, H, W]`. With the default signed
    channel sum, the map sums to the first-order Taylor term `<x, grad>`, which for a
    linear model is the logit minus its bias.
    """
    _check_common(images, targets, channel_reduce=channel_reduce, normalize=normalize,
                  batch_size=batch_size)
    _check_targets(targets, _logit_count(model, params, images))
    return _gradient_maps(model, params, images, jnp.asarray(targets), times_input=True,
                          channel_reduce=channel_reduce, normalize=normalize,
                          batch_size=batch_size)


def cam(model, params, images, targets, *, tap: str = LAST_CONV, head: Mapping | None = None,
        relu: bool = True, normalize: str = "none",
        batch_size: int | None = None) -> jax.Array:
    """Class activation map `sum_k kernel[k, t] * A_k` (Zhou et al., CVPR 2016, eq. 2).

    images `[N, H, W, C]`, targets int `[N]` -> `[N, H, W]`. `tap` is the conv map the
    head globally averages (default `"relu5_3"`); `head` holds its Dense parameters
    (`{"kernel": [K, num_classes], ...}`, default `params["logits"]`). The bias is not part
    of the map.
    """
    _check_common(images, targets, normalize=normalize, batch_size=batch_size)
    if head is None:
        if not (isinstance(params, Mapping) and "logits" in params):
            raise ValueError("cam needs the Dense head on the pooled tap: pass head= or "
                             "keep it at params['logits']")
        head = params["logits"]
    if "kernel" not in head:
        raise ValueError("head must hold the Dense 'kernel' [channels, num_classes]")
    kernel = jnp.asarray(head["kernel"])
    channels = _conv_tap_shape(model, params, images, tap)[-1]
    if kernel.ndim != 2 or kernel.shape[0] != channels:
        raise ValueError(f"head kernel must be [{channels}, num_classes] to match tap "
                         f"{tap!r}, got {kernel.shape}")
    _check_targets(targets, kernel.shape[1])
    return _cam_maps(model, params, images, jnp.asarray(targets), kernel, tap=tap,
                     relu=relu, normalize=normalize, batch_size=batch_size)


def grad_cam(model, params, images, targets, *, tap: str = LAST_CONV, relu: bool = True,
             normalize: str = "none", batch_size: int | None = None) -> jax.Array:
    """Grad-CAM (Selvaraju et al., ICCV 2017, eqs. 1-2) at any conv tap.

    images `[N, H, W, C]`, targets int `[N]` -> `[N, H, W]`. Channel weights are the
    spatial mean of `d logit_t / d A` (the pre-softmax score, as in the paper); the map is
    `sum_k weight_k * A_k`. Needs the model to pass `tap` through
    `self.perturb(perturbation_name(tap), x)`.
    At the tap a GAP head pools, Grad-CAM is CAM divided by the map's area `h * w`.
    """
    _check_common(images, targets, normalize=normalize, batch_size=batch_size)
    _conv_tap_shape(model, params, images, tap)
    _check_targets(targets, _logit_count(model, params, images))
    perturbations = traverse_util.flatten_dict(_abstract_apply(
        model, params, images, (tap, "logits"), perturbations=True)[1].get("perturbations", {}))
    return _grad_cam_maps(model, params, images, jnp.asarray(targets), tap=tap,
                          perturbations=tuple(perturbations.items()),
                          path=_perturbation_path(perturbations, tap),
                          relu=relu, normalize=normalize, batch_size=batch_size)


def class_activation_maps(features: jax.Array, kernel: jax.Array,
                          classes: jax.Array) -> jax.Array:
    """CAM at map resolution (Zhou et al., 2016): features `[N, h, w, K]`, kernel
    `[K, num_classes]`, classes int `[N]` -> `[N, h, w]`, without ReLU."""
    return jnp.einsum("nhwk,kn->nhw", features, kernel[:, classes])


# ---------------------------------------------------------------------------- kernels


def _over_images(one, images, targets, batch_size):
    """`one(image, target)` over the batch: a vmap, chunked by `batch_size` if given."""
    if batch_size is None:
        return jax.vmap(one)(images, targets)
    return jax.lax.map(lambda args: one(*args), (images, targets), batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("model", "times_input", "channel_reduce",
                                             "normalize", "batch_size"))
def _gradient_maps(model, params, images, targets, *, times_input, channel_reduce,
                   normalize, batch_size):
    def one(image, target):
        def score(x):
            return model.apply({"params": params}, x[None], taps=("logits",))["logits"][0, target]

        relevance = jax.grad(score)(image)
        if times_input:
            relevance = relevance * image
        return _normalize(_reduce_channels(relevance, channel_reduce), normalize)

    return _over_images(one, images, targets, batch_size)


@functools.partial(jax.jit, static_argnames=("model", "tap", "relu", "normalize",
                                             "batch_size"))
def _cam_maps(model, params, images, targets, kernel, *, tap, relu, normalize, batch_size):
    def one(image, target):
        features = model.apply({"params": params}, image[None], taps=(tap,))[tap]
        saliency_map = class_activation_maps(features, kernel, target[None])[0]
        return _finish(saliency_map, image.shape[:2], relu, normalize)

    return _over_images(one, images, targets, batch_size)


@functools.partial(jax.jit, static_argnames=("model", "tap", "perturbations", "path",
                                             "relu", "normalize", "batch_size"))
def _grad_cam_maps(model, params, images, targets, *, tap, perturbations, path, relu,
                   normalize, batch_size):
    """`perturbations`: (path, shape) of every variable the model perturbs, all set to zero
    except the one at `path`, which carries the tap's gradient."""
    zeros = {name: jnp.zeros(spec.shape, spec.dtype) for name, spec in perturbations}

    def one(image, target):
        def score(tap_perturbation):
            variables = {"params": params,
                         "perturbations": traverse_util.unflatten_dict(
                             {**zeros, path: tap_perturbation})}
            out = model.apply(variables, image[None], taps=(tap, "logits"))
            return out["logits"][0, target], out[tap][0]

        tap_grad, features = jax.grad(score, has_aux=True)(zeros[path])
        weights = jnp.mean(tap_grad[0], axis=(0, 1))
        return _finish(features @ weights, image.shape[:2], relu, normalize)

    return _over_images(one, images, targets, batch_size)


def _finish(saliency_map, image_size, relu, normalize):
    """`[h, w]` -> `[H, W]`: optional ReLU, bilinear upsampling, normalisation."""
    if relu:
        saliency_map = jax.nn.relu(saliency_map)
    saliency_map = jax.image.resize(saliency_map, image_size, "bilinear")
    return _normalize(saliency_map, normalize)


def _reduce_channels(relevance, how):
    if how == "max_abs":
        return jnp.max(jnp.abs(relevance), axis=-1)
    if how == "l2":
        return jnp.linalg.norm(relevance, axis=-1)
    return jnp.sum(relevance, axis=-1)


def _normalize(saliency_map, how):
    if how == "max":
        scale = jnp.max(jnp.abs(saliency_map))
        return saliency_map / jnp.where(scale > 0, scale, 1.0)
    if how == "minmax":
        low = jnp.min(saliency_map)
        span = jnp.max(saliency_map) - low
        return (saliency_map - low) / jnp.where(span > 0, span, 1.0)
    return saliency_map


# ------------------------------------------------------------------------- validation


def _check_common(images, targets, *, normalize, batch_size, channel_reduce="sum"):
    if jnp.ndim(images) != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {jnp.shape(images)}")
    if not jnp.issubdtype(jnp.result_type(images), jnp.floating):
        raise ValueError(f"images must be floating point, got {jnp.result_type(images)}")
    if jnp.ndim(targets) != 1 or jnp.shape(targets)[0] != jnp.shape(images)[0]:
        raise ValueError(f"targets must be [N] = [{jnp.shape(images)[0]}] (one class per "
                         f"image), got shape {jnp.shape(targets)}")
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise ValueError(f"targets must be integer class indices, got {jnp.result_type(targets)}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if channel_reduce not in CHANNEL_REDUCTIONS:
        raise ValueError(f"channel_reduce must be one of {CHANNEL_REDUCTIONS}, "
                         f"got {channel_reduce!r}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    if not bool(jnp.isfinite(images).all()):
        raise ValueError("images contain NaN or Inf")


def _check_targets(targets, num_classes):
    targets = np.asarray(targets)
    if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got values in "
                         f"[{targets.min()}, {targets.max()}]")


def _logit_count(model, params, images):
    return _abstract_apply(model, params, images, ("logits",))["logits"].shape[-1]


def _conv_tap_shape(model, params, images, tap):
    shape = _abstract_apply(model, params, images, (tap,))[tap].shape
    if len(shape) != 4:
        raise ValueError(f"tap {tap!r} must be a conv map [N, h, w, K], got rank {len(shape)}")
    return shape


def _perturbation_path(perturbations, tap):
    name = perturbation_name(tap)
    paths = [path for path in perturbations if path[-1] == name]
    if len(paths) != 1:
        found = "none" if not paths else f"{len(paths)}"
        raise ValueError(f"grad_cam needs the gradient at tap {tap!r}: the model must pass "
                         f"it through `self.perturb({name!r}, x)` exactly once "
                         f"(perturbations named {name!r}: {found})")
    return paths[0]


def _abstract_apply(model, params, images, taps, perturbations=False):
    """Output shapes of the model on one image, from a cache keyed by shapes only."""
    leaves, treedef = jax.tree.flatten(params)
    leaf_specs = tuple(jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in leaves)
    image_spec = jax.ShapeDtypeStruct((1, *jnp.shape(images)[1:]), jnp.result_type(images))
    return _cached_abstract_apply(model, treedef, leaf_specs, image_spec, taps, perturbations)


@functools.lru_cache(maxsize=256)
def _cached_abstract_apply(model, treedef, leaf_specs, image_spec, taps, perturbations):
    mutable = ["perturbations"] if perturbations else False

    def apply(params, image):
        return model.apply({"params": params}, image, taps=taps, mutable=mutable)

    return jax.eval_shape(apply, treedef.unflatten(leaf_specs), image_spec)
