"""Saliency maps with one target class per image: gradient, gradient x input, sensitivity,
layer-wise relevance propagation (LRP), CAM, Grad-CAM; `gradient_methods` gives the first three
from one backward pass.

Every method takes a classifier that follows the egjax model protocol,
`model.apply({"params": params}, images, taps=names) -> {name: array}` with images
`[N, H, W, C]` float, conv taps `[N, h, w, K]` and `"logits"` `[N, num_classes]`, and
returns maps `[N, H, W]` at image resolution. Three extra requirements, each for one method:

* `cam` needs a head that is linear on the global average of a conv tap
  (`logits = mean_hw(tap) @ kernel + bias`); the Dense parameters are read from
  `params["logits"]` (the Dense layer that produces the logits) unless `head=` is given.
* `grad_cam` needs the gradient of a logit with respect to a tap, which a model can only
  expose through an injection point: the model passes the tap through Flax's
  `x = self.perturb(perturbation_name(tap), x)` (a no-op unless a `"perturbations"`
  collection is supplied); the name is the tap's plus `"_out"`, since Flax keeps one
  namespace for a module's submodules and variables (the conv `conv5_3` owns that name).
* `lrp` needs the network as a list of layers, `model.lrp_layers` (a tuple of `Conv`,
  `Dense`, `ReLU`, `MaxPool`, `GlobalMean`, `Flatten` and `Residual` of
  `egjax.models.propagation`, bottom
  to top, ending in the logits), whose parameters it reads from `params` by layer name.

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
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from egjax.models.contract import perturbation_name
from egjax.models.propagation import (LAYERS, LINEAR, Conv, Dense, Flatten, GlobalMean, ReLU,
                                      Residual)

NORMALIZATIONS = ("none", "max", "minmax")
CHANNEL_REDUCTIONS = ("max_abs", "l2", "sum")
LRP_RULES = ("0", "epsilon", "gamma", "zplus", "composite")
LAST_CONV = "relu5_3"  # VGG-16's last conv map after ReLU: what a GAP head pools


def gradient(model, params, images, targets, *, channel_reduce: str = "max_abs",
             normalize: str = "none", batch_size: int | None = None) -> jax.Array:
    """Gradient saliency: `d logit_t / d x` per pixel (Simonyan et al., 2014).

    images `[N, H, W, C]`, targets int `[N]` -> `[N, H, W]`. The gradient `[H, W, C]` is
    reduced over channels by `channel_reduce`: `"max_abs"` (Simonyan et al., eq. for
    `M_ij`), `"l2"` (the pixel's gradient norm; its square is `sensitivity`) or `"sum"`
    (signed).
    """
    _check_common(images, targets, channel_reduce=channel_reduce, normalize=normalize,
                  batch_size=batch_size)
    _check_targets(targets, _logit_count(model, params, images))
    return _gradient_maps(model, params, images, jnp.asarray(targets),
                          maps=((False, channel_reduce),), normalize=normalize,
                          batch_size=batch_size)[0]


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
    return _gradient_maps(model, params, images, jnp.asarray(targets),
                          maps=((True, channel_reduce),), normalize=normalize,
                          batch_size=batch_size)[0]


def sensitivity(model, params, images, targets, *, normalize: str = "none",
                batch_size: int | None = None) -> jax.Array:
    """Sensitivity analysis, `sum_c (d logit_t / d x_c)^2` per pixel (Montavon, Samek and
    Mueller, "Methods for interpreting and understanding deep neural networks", Digital
    Signal Processing 2018, sec. 3.1): images `[N, H, W, C]`, targets int `[N]` -> `[N, H, W]`.
    """
    _check_common(images, targets, normalize=normalize, batch_size=batch_size)
    _check_targets(targets, _logit_count(model, params, images))
    return _gradient_maps(model, params, images, jnp.asarray(targets),
                          maps=((False, "squares"),), normalize=normalize,
                          batch_size=batch_size)[0]


GRADIENT_METHODS = {"gradient": (False, "max_abs"), "gradient_x_input": (True, "sum"),
                    "sensitivity": (False, "squares")}


def gradient_methods(model, params, images, targets, *, normalize: str = "none",
                     batch_size: int | None = None) -> dict[str, jax.Array]:
    """`gradient`, `gradient_x_input` and `sensitivity`, each with its default channel
    reduction, from one backward pass per image: `{name: [N, H, W]}`, equal to the three
    calls at the cost of one."""
    _check_common(images, targets, normalize=normalize, batch_size=batch_size)
    _check_targets(targets, _logit_count(model, params, images))
    maps = _gradient_maps(model, params, images, jnp.asarray(targets),
                          maps=tuple(GRADIENT_METHODS.values()), normalize=normalize,
                          batch_size=batch_size)
    return dict(zip(GRADIENT_METHODS, maps))


def lrp(model, params, images, targets, *, rule: str = "composite", epsilon: float = 0.25,
        gamma: float = 0.25, bounds=None, channel_reduce: str = "sum", normalize: str = "none",
        batch_size: int | None = None) -> jax.Array:
    """Layer-wise relevance propagation (Montavon et al., "Layer-wise relevance propagation:
    an overview", 2019: the rules of sec. 10.2.1, the general rule of sec. 10.2.2, the
    choice per layer of sec. 10.3): images `[N, H, W, C]`, targets int `[N]` -> `[N, H, W]`.

    The relevance of the target logit, `R = logit_t`, flows down `model.lrp_layers`. Through
    a linear layer (conv, dense, global mean) with inputs `a_j`, weights `w_jk`, bias `b_k`:

        R_j = sum_k a_j rho(w_jk) / (sum_j a_j rho(w_jk) + rho(b_k) + stab_k) R_k

    * `"0"`: `rho(w) = w`, `stab = 1e-9 sign(z)` (division guard only);
    * `"epsilon"`: `rho(w) = w`, `stab = (1e-9 + epsilon * rms(z)) sign(z)`, `rms(z)` the
      root mean square of the layer's pre-activations on this image (the scale the
      authors' tutorial uses); the stabiliser absorbs relevance. It follows the sign of
      `z`, so it shrinks every ratio instead of blowing up a negative `z` near `-stab`;
    * `"gamma"`: `rho(w) = w + gamma w+` (favours positive contributions);
    * `"zplus"`: `rho(w) = w+` (z+, alpha1-beta0; non-negative for non-negative inputs);
    * `"composite"` (the overview's recommendation for VGG-16): z^B at the input layer
      (`R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / z_j R_j`, sec. 10.3.2), gamma
      for the lower half of the convs (rounded up: conv1_1..conv3_3 of VGG-16), epsilon
      for the upper convs, LRP-0 at the dense layers and the global mean.

    The other rules apply to every linear layer, the input layer included. `rho` applies to
    the bias as to the weights; sign(0) counts as +1. ReLUs pass relevance unchanged; max
    pools pass it to the winner of each window; a residual addition splits it in proportion
    to its two summands, modified as weights are (`rho`; LRP-0 in the composite); a batch
    norm named by a `Conv` is folded into it first. `bounds` are z^B's lowest and highest
    pixel values, a pair broadcastable to `[C]` (e.g. the preprocessed 0 and 255); None
    takes each image's own per-channel minimum and maximum. `channel_reduce` sums (default: the relevance
    then sums to the logit, less what biases and stabilisers absorb), or takes "max_abs"
    or "l2" over the input channels.
    """
    _check_common(images, targets, channel_reduce=channel_reduce, normalize=normalize,
                  batch_size=batch_size)
    if rule not in LRP_RULES:
        raise ValueError(f"rule must be one of {LRP_RULES}, got {rule!r}")
    for name, value in (("epsilon", epsilon), ("gamma", gamma)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    layers = getattr(model, "lrp_layers", None)
    if not isinstance(layers, tuple) or not layers:
        raise ValueError(f"lrp needs the network as a tuple of layers, model.lrp_layers; "
                         f"{type(model).__name__} has {layers!r}")
    _check_lrp_layers(layers, params)
    _check_targets(targets, _logit_count(model, params, images))
    channels = jnp.shape(images)[-1]
    if bounds is not None:
        if len(bounds) != 2:
            raise ValueError(f"bounds must be a (low, high) pair, got {bounds!r}")
        bounds = tuple(jnp.broadcast_to(jnp.asarray(b, jnp.float32), (channels,))
                       for b in bounds)
        if not bool(jnp.all(bounds[0] <= bounds[1])):
            raise ValueError(f"bounds must have low <= high, got {bounds}")
    return _lrp_maps(layers, params, images, jnp.asarray(targets), bounds,
                     jnp.float32(epsilon), jnp.float32(gamma), rules=_lrp_rules(layers, rule),
                     channel_reduce=channel_reduce, normalize=normalize, batch_size=batch_size)


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


@functools.partial(jax.jit, static_argnames=("model", "maps", "normalize", "batch_size"))
def _gradient_maps(model, params, images, targets, *, maps, normalize, batch_size):
    """One gradient per image, and from it one map per `(times_input, channel_reduce)` of
    `maps`: a tuple of `[N, H, W]`."""
    def one(image, target):
        def score(x):
            return model.apply({"params": params}, x[None], taps=("logits",))["logits"][0, target]

        grad = jax.grad(score)(image)
        return tuple(_normalize(_reduce_channels(grad * image if times_input else grad, how),
                                normalize) for times_input, how in maps)

    return _over_images(one, images, targets, batch_size)


@functools.partial(jax.jit, static_argnames=("layers", "rules", "channel_reduce", "normalize",
                                             "batch_size"))
def _lrp_maps(layers, params, images, targets, bounds, epsilon, gamma, *, rules,
              channel_reduce, normalize, batch_size):
    """`lrp` for one image, vmapped; `rules` `((path, rule), ...)` from `_lrp_rules`."""
    rules = dict(rules)

    def one(image, target):
        x = image[None]
        logits, trace = _lrp_forward(layers, params, x)
        relevance = jax.nn.one_hot(target[None], logits.shape[-1], dtype=logits.dtype) * logits
        low, high = ((x.min(axis=(0, 1, 2)), x.max(axis=(0, 1, 2))) if bounds is None
                     else bounds)
        relevance = _lrp_backward(layers, params, trace, relevance, (), rules,
                                  epsilon=epsilon, gamma=gamma, bounds=(low, high))[0]
        return _normalize(_reduce_channels(relevance, channel_reduce), normalize)

    return _over_images(one, images, targets, batch_size)


def _lrp_forward(layers, params, x):
    """The network's output and a trace: each layer's input (for a `Residual`, its input,
    the two summands and their own traces)."""
    trace = []
    for layer in layers:
        if isinstance(layer, Residual):
            body, body_trace = _lrp_forward(layer.body, params, x)
            shortcut, shortcut_trace = _lrp_forward(layer.shortcut, params, x)
            trace.append((x, body, body_trace, shortcut, shortcut_trace))
            x = body + shortcut
        else:
            trace.append(x)
            x = _layer_forward(layer, params, x)
    return x, trace


def _lrp_backward(layers, params, trace, relevance, path, rules, **settings):
    """Relevance at the input of `layers`, given the relevance of their output."""
    for index in reversed(range(len(layers))):
        layer, where = layers[index], (*path, index)
        if isinstance(layer, Residual):
            _, body, body_trace, shortcut, shortcut_trace = trace[index]
            rho = _rho(rules[where], settings["gamma"])
            body, shortcut = rho(body), rho(shortcut)
            share = relevance / _stabilised(body + shortcut, rules[where], settings["epsilon"])
            relevance = (
                _lrp_backward(layer.body, params, body_trace, body * share, (*where, 0),
                              rules, **settings)
                + _lrp_backward(layer.shortcut, params, shortcut_trace, shortcut * share,
                                (*where, 1), rules, **settings))
        elif isinstance(layer, LINEAR):
            relevance = _linear_relevance(layer, params, trace[index], relevance, rules[where],
                                          **settings)
        elif not isinstance(layer, ReLU):          # max pool (to the winner), flatten
            _, pull_back = jax.vjp(lambda x, layer=layer: _layer_forward(layer, params, x),
                                   trace[index])
            relevance = pull_back(relevance)[0]
    return relevance


def _linear_relevance(layer, params, a, relevance, rule, *, epsilon, gamma, bounds):
    """One linear layer's rule (Montavon et al. 2019, secs. 10.2.2 and 10.3.2) as
    `R_in = a * J^T (R / z)`, the transposed Jacobian `J` of the `rho`-modified layer."""
    layer_fn = _linear_fn(layer, params)
    if rule == "zB":
        low, high = (jnp.broadcast_to(bound, a.shape) for bound in bounds)

        def z_box(x, lowest, highest):
            return (layer_fn(x, _identity) - layer_fn(lowest, _positive)
                    - layer_fn(highest, _negative))

        z, pull_back = jax.vjp(z_box, a, low, high)
        from_x, from_low, from_high = pull_back(relevance / _stabilised(z, "0", 0.0))
        return a * from_x + low * from_low + high * from_high
    rho = _rho(rule, gamma)
    z, pull_back = jax.vjp(lambda x: layer_fn(x, rho), a)
    return a * pull_back(relevance / _stabilised(z, rule, epsilon))[0]


def _stabilised(z, rule, epsilon):
    """`z + stab sign(z)` (sign(0) = +1): `stab = 1e-9`, plus `epsilon * rms(z)` for the
    epsilon rule."""
    stab = 1e-9 + (epsilon * jnp.sqrt(jnp.mean(z * z)) if rule == "epsilon" else 0.0)
    return z + jnp.where(z >= 0, stab, -stab)


def _rho(rule, gamma):
    """The rule's modification of weights (and of a residual addition's summands)."""
    if rule == "gamma":
        return lambda w: w + gamma * jax.nn.relu(w)
    return _positive if rule == "zplus" else _identity


def _identity(w):
    return w


def _positive(w):
    return jnp.maximum(w, 0.0)


def _negative(w):
    return jnp.minimum(w, 0.0)


def _linear_fn(layer, params):
    """`(x, rho) -> rho(W) x + rho(b)` of a linear layer (a batch norm folded in)."""
    if isinstance(layer, GlobalMean):
        return lambda x, rho: jnp.mean(x, axis=(1, 2))
    weights = params[layer.name]
    kernel = jnp.asarray(weights["kernel"])
    bias = jnp.asarray(weights.get("bias", jnp.zeros(kernel.shape[-1:], kernel.dtype)))
    if isinstance(layer, Conv) and layer.norm is not None:
        norm = params[layer.norm]
        scale = norm["scale"] / jnp.sqrt(norm["var"] + layer.norm_epsilon)
        kernel, bias = kernel * scale, (bias - norm["mean"]) * scale + norm["bias"]
    if isinstance(layer, Dense):
        return lambda x, rho: jnp.dot(x, rho(kernel), precision=_PRECISION) + rho(bias)
    padding = ((layer.padding,) * 2,) * 2 if isinstance(layer.padding, int) else layer.padding
    return lambda x, rho: jax.lax.conv_general_dilated(
        x, rho(kernel), (layer.stride,) * 2, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_PRECISION) + rho(bias)


_PRECISION = jax.lax.Precision.HIGHEST


def _layer_forward(layer, params, x):
    if isinstance(layer, LINEAR):
        return _linear_fn(layer, params)(x, _identity)
    if isinstance(layer, ReLU):
        return jax.nn.relu(x)
    if isinstance(layer, Flatten):
        return x.reshape(x.shape[0], -1)
    padding = (((0, 0),) + ((layer.padding,) * 2,) * 2 + ((0, 0),)
               if isinstance(layer.padding, int) else layer.padding)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, layer.window, layer.window, 1),
                                 (1, layer.stride, layer.stride, 1), padding)


def _lrp_rules(layers, rule):
    """`((path, rule), ...)` for every linear layer and residual addition, `path` the
    indices leading to it (a `Residual`'s body is branch 0, its shortcut branch 1)."""
    linear, residual = [], []

    def walk(layers, path):
        for index, layer in enumerate(layers):
            where = (*path, index)
            if isinstance(layer, Residual):
                residual.append(where)
                walk(layer.body, (*where, 0))
                walk(layer.shortcut, (*where, 1))
            elif isinstance(layer, LINEAR):
                linear.append((where, layer))

    walk(layers, ())
    if rule == "composite":
        convs = [where for where, layer in linear if isinstance(layer, Conv)]
        lower = set(convs[:math.ceil(len(convs) / 2)])
        rules = {where: ("gamma" if where in lower else "epsilon")
                 if isinstance(layer, Conv) else "0" for where, layer in linear}
        rules[linear[0][0]] = "zB"
    else:
        rules = {where: rule for where, _ in linear}
    rules.update({where: "0" if rule == "composite" else rule for where in residual})
    return tuple(sorted(rules.items()))


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
    if how == "squares":
        return jnp.sum(relevance * relevance, axis=-1)
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


def _check_lrp_layers(layers, params):
    """ValueError naming the first layer that is not an LRP layer or lacks its weights."""
    for layer in layers:
        if not isinstance(layer, LAYERS):
            raise ValueError(f"lrp_layers may hold only {[k.__name__ for k in LAYERS]}, got "
                             f"{layer!r}")
        if isinstance(layer, Residual):
            _check_lrp_layers(layer.body + layer.shortcut, params)
        if isinstance(layer, (Conv, Dense)) and "kernel" not in params.get(layer.name, {}):
            raise ValueError(f"lrp: layer {layer.name!r} has no params[{layer.name!r}]"
                             f"['kernel']; params hold {sorted(params)}")
        if isinstance(layer, Conv) and layer.norm is not None:
            missing = {"scale", "bias", "mean", "var"} - set(params.get(layer.norm, {}))
            if missing:
                raise ValueError(f"lrp: batch norm {layer.norm!r} after {layer.name!r} "
                                 f"lacks {sorted(missing)} in params[{layer.norm!r}]")


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
