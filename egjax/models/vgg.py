"""VGG-16 (Simonyan & Zisserman, ICLR 2015, configuration D) in Flax linen, with named taps.

The conv trunk is 13 3x3 convs (pad 1, stride 1, each followed by ReLU) in 5 blocks, each
block ending in a 2x2 max pool (stride 2). Heads: "fc" (fc6, fc7 with ReLU, then logits; the
ImageNet network, needs 7x7 pool5 maps, i.e. 224-px input), "gap" (global average of relu5_3,
then one Dense: the CAM-compatible head for small trained networks) or None. Inference only:
no dropout. `width` scales every channel count: round(c * width), at least 1.

Tap names, bottom to top: `conv{b}_{i}` (pre-ReLU conv output), `relu{b}_{i}`, `pool{b}`;
head "fc": `fc6`, `fc7` (post-ReLU), `logits`; head "gap": `gap` (pooled vector), `logits`.
Parameters are named after the layer: `conv1_1` .. `conv5_3`, `fc6`, `fc7`, `logits`; conv
kernels HWIO, dense kernels [in, out] with fc6's input flattened from pool5 in HWC order.
On CPU the wide 3x3 convs run as Winograd F(2x2, 3x3) (see `winograd`); float32 throughout,
at full precision on every backend.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from egjax.models import propagation, winograd
from egjax.models.contract import Layer, check_images, perturbation_name, scaled, select_taps

HEADS = ("fc", "gap", None)
FC_UNITS = 4096
FC_MAP_SIZE = 7
WINOGRAD = "winograd"   # variable collection of pre-transformed kernels (`winograd_kernels`)
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def trunk_layers(width: float = 1.0) -> tuple[Layer, ...]:
    """The 13 convs and 5 pools of VGG-16, bottom to top (`features` 0 for pools)."""
    layers = []
    for block, convs in enumerate(BLOCKS, start=1):
        for index, channels in enumerate(convs, start=1):
            layers.append(Layer(f"conv{block}_{index}", "conv", 3, 1, 1, scaled(channels, width)))
        layers.append(Layer(f"pool{block}", "pool", 2, 2, 0, 0))
    return tuple(layers)


def relu_name(conv_name: str) -> str:
    """`conv4_2` -> `relu4_2`."""
    return "relu" + conv_name[len("conv"):]


def tap_names(head: str | None) -> tuple[str, ...]:
    """Every tap of a VGG16 with `head`, in the order the network computes them."""
    names = []
    for layer in trunk_layers():
        names.append(layer.name)
        if layer.kind == "conv":
            names.append(relu_name(layer.name))
    if head == "fc":
        names += ["fc6", "fc7", "logits"]
    elif head == "gap":
        names += ["gap", "logits"]
    return tuple(names)


class VGG16(nn.Module):
    """VGG-16 returning the requested taps: `apply(variables, images, taps) -> {name: array}`.

    images: [N, H, W, 3] float, preprocessed (see `egjax.models.preprocess`); any H, W for
    conv taps (pools floor odd sides), 224 for the "fc" head. Maps come out `[N, h, w, C]`.
    Only the layers up to the highest requested tap run. `taps=None` returns the top tap.
    """

    width: float = 1.0
    head: str | None = "fc"
    num_classes: int = 1000

    def __post_init__(self):
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width)
                and self.width > 0):
            raise ValueError(f"width must be a finite number > 0, got {self.width!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
            raise ValueError(f"num_classes must be an int >= 1, got {self.num_classes!r}")
        super().__post_init__()

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The conv trunk, bottom to top, with this width's channel counts."""
        return trunk_layers(self.width)

    @property
    def lrp_layers(self) -> tuple:
        """The network as `egjax.saliency.lrp` propagates relevance through it, bottom to top:
        convs with their ReLUs, pools, then the head ("gap" pools relu5_3, not pool5)."""
        if self.head is None:
            raise ValueError("lrp needs logits: build VGG16 with head='fc' or 'gap'")
        layers = []
        for layer in self.layers:
            if layer.kind == "conv":
                layers += [propagation.Conv(layer.name, layer.stride, layer.padding),
                           propagation.ReLU()]
            elif self.head == "fc" or layer.name != "pool5":
                layers.append(propagation.MaxPool(layer.kernel, layer.stride, layer.padding))
        if self.head == "gap":
            return (*layers, propagation.GlobalMean(), propagation.Dense("logits"))
        return (*layers, propagation.Flatten(), propagation.Dense("fc6"), propagation.ReLU(),
                propagation.Dense("fc7"), propagation.ReLU(), propagation.Dense("logits"))

    @property
    def tap_names(self) -> tuple[str, ...]:
        """Valid tap names, bottom to top."""
        return tap_names(self.head)

    def check_taps(self, taps: Sequence[str] | None) -> tuple[str, ...]:
        """The requested taps as a tuple (the top tap for None); ValueError for unknown names."""
        return select_taps(taps, self.tap_names, f"VGG16(head={self.head!r})")

    def path(self, tap: str) -> tuple[Layer, ...]:
        """The trunk layers from the image to spatial `tap` (a ReLU's is its conv's), for
        `egjax.geometry`; ValueError for a tap without a map."""
        name = "conv" + tap[len("relu"):] if tap.startswith("relu") else tap
        names = [layer.name for layer in self.layers]
        if name not in names:
            spatial = [t for t in self.tap_names if t.startswith(("conv", "relu", "pool"))]
            raise ValueError(f"tap {tap!r} has no spatial map; spatial taps: {', '.join(spatial)}")
        return self.layers[: names.index(name) + 1]

    def prepare(self, params) -> dict:
        """The `WINOGRAD` collection of `winograd_kernels` (see there), for `apply`."""
        return {WINOGRAD: winograd_kernels(self, params)}

    @nn.compact
    def __call__(self, images: jax.Array, taps: Sequence[str] | None = None) -> dict:
        taps = self.check_taps(taps)
        check_images(images)
        run_all = self.is_initializing()
        out = {}

        def keep(name: str, value: jax.Array) -> tuple[jax.Array, bool]:
            """Records `value` if requested, passed through `self.perturb` so that gradient
            explainers (Grad-CAM) can differentiate with respect to it; returns the value to
            compute on and whether every requested tap is recorded."""
            if name in taps:
                value = out[name] = self.perturb(perturbation_name(name), value)
            return value, len(out) == len(taps) and not run_all

        precision = jax.lax.Precision.HIGHEST
        x = last_relu = images
        for layer in self.layers:
            if layer.kind == "pool":
                window = (layer.kernel, layer.kernel)
                x, done = keep(layer.name, nn.max_pool(x, window, strides=(layer.stride,) * 2))
                if done:
                    return out
                continue
            transformed = (self.get_variable(WINOGRAD, layer.name)
                           if self.has_variable(WINOGRAD, layer.name) else None)
            conv = functools.partial(winograd.conv_general_dilated, transformed=transformed)
            x = nn.Conv(layer.features, (layer.kernel, layer.kernel),
                        padding=((layer.padding, layer.padding),) * 2,
                        precision=precision, conv_general_dilated=conv, name=layer.name)(x)
            x, done = keep(layer.name, x)
            if done:
                return out
            x, done = keep(relu_name(layer.name), nn.relu(x))
            last_relu = x
            if done:
                return out

        if self.head == "gap":
            x, _ = keep("gap", jnp.mean(last_relu, axis=(1, 2)))
            keep("logits", nn.Dense(self.num_classes, precision=precision, name="logits")(x))
        elif self.head == "fc":
            if x.shape[1:3] != (FC_MAP_SIZE, FC_MAP_SIZE):
                raise ValueError(
                    f"head 'fc' needs {FC_MAP_SIZE}x{FC_MAP_SIZE} pool5 maps (224-px images), got "
                    f"{x.shape[1]}x{x.shape[2]} from {images.shape[1]}x{images.shape[2]} images; "
                    "request conv taps only, or build the model with head='gap' or None")
            x = x.reshape(x.shape[0], -1)
            units = scaled(FC_UNITS, self.width)
            x, _ = keep("fc6", nn.relu(nn.Dense(units, precision=precision, name="fc6")(x)))
            x, _ = keep("fc7", nn.relu(nn.Dense(units, precision=precision, name="fc7")(x)))
            keep("logits", nn.Dense(self.num_classes, precision=precision, name="logits")(x))
        return out


def winograd_kernels(model: VGG16, params) -> dict:
    """{conv name: `winograd.transform_kernel` of its kernel} for the convs that run by
    Winograd on this backend. Pass them to `model.apply` as the `WINOGRAD` collection,
    `{"params": params, WINOGRAD: kernels}`, when applying the same params many times: each
    call then skips the transform (VGG-16's kernels are 58 MB: on a 2-core CPU their
    transform took ~45 ms of a ~170 ms call for one image and its mirror)."""
    return {layer.name: winograd.transform_kernel(params[layer.name]["kernel"])
            for layer in model.layers
            if layer.kind == "conv" and winograd.pays(params[layer.name]["kernel"].shape)}
