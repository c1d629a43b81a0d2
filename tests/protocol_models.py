"""Tiny Flax classifiers that follow the egjax model protocol, for the saliency/continuity tests.

`model.apply({"params": params}, images, taps=names) -> {name: array}`; unknown taps raise
ValueError; taps pass through `self.perturb(perturbation_name(tap), x)` so Grad-CAM can reach them.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from egjax.saliency import perturbation_name


TRACES: list = []  # the input shape of every GapCNN trace, to count compilations


def _select(outputs, taps):
    unknown = [tap for tap in taps if tap not in outputs]
    if unknown:
        raise ValueError(f"unknown taps {unknown}; known: {sorted(outputs)}")
    return {tap: outputs[tap] for tap in taps}


class LinearClassifier(nn.Module):
    """`logits = flatten(x) @ kernel + bias`; with `coupled`, every logit also gets half the
    batch mean of the logits, so any computation that lets images share a batch leaks."""

    num_classes: int = 3
    coupled: bool = False

    @nn.compact
    def __call__(self, images, taps):
        logits = nn.Dense(self.num_classes, name="dense")(images.reshape(images.shape[0], -1))
        if self.coupled:
            logits = logits + 0.5 * logits.mean(axis=0)
        return _select({"logits": logits}, taps)


class GapCNN(nn.Module):
    """conv1_1 -> relu1_1 -> pool1 (2x2) -> conv5_3 -> relu5_3 -> gap -> head (Dense)."""

    num_classes: int = 3
    width: int = 4
    perturbable: bool = True

    @nn.compact
    def __call__(self, images, taps):
        TRACES.append(images.shape)
        tag = ((lambda tap, x: self.perturb(perturbation_name(tap), x)) if self.perturbable
               else (lambda tap, x: x))
        out = {}
        x = nn.Conv(self.width, (3, 3), name="block1_conv1")(images)
        out["conv1_1"] = x = tag("conv1_1", x)
        out["relu1_1"] = x = tag("relu1_1", nn.relu(x))
        out["pool1"] = x = nn.max_pool(x, (2, 2), (2, 2))
        out["conv5_3"] = x = tag("conv5_3", nn.Conv(self.width, (3, 3), name="block5_conv3")(x))
        out["relu5_3"] = x = tag("relu5_3", nn.relu(x))
        out["gap"] = x.mean(axis=(1, 2))
        out["logits"] = nn.Dense(self.num_classes, name="logits")(out["gap"])
        return _select(out, taps)


def random_params(model, image_shape, seed):
    """Parameters drawn with NumPy (He-scaled kernels, small biases): no jax.random compiles."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(image_shape),
                                               taps=("logits",)))["params"]

    def draw(path, spec):
        fan_in = int(np.prod(spec.shape[:-1])) if path[-1].key == "kernel" else 200
        return jnp.asarray(rng.normal(size=spec.shape) * np.sqrt(2.0 / fan_in), spec.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def numpy_init(model, image_shape, seed) -> dict:
    """`model.init`'s variables as flax initialises them (LeCun-normal kernels, variance
    1 / fan_in; zero biases; batch norm scale 1, running mean 0 and variance 1), the kernels
    drawn with NumPy: `model.init` of a ResNet-50 compiles a random draw for each parameter
    shape (~10 s on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(image_shape))

    def draw(path, spec):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(spec.shape[:-1]))
            return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), spec.shape), spec.dtype)
        return (jnp.ones if name in ("scale", "var") else jnp.zeros)(spec.shape, spec.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
