"""ResNet-50 (He et al., CVPR 2016) in Flax linen, with named taps and batch norm folded.

The trunk: `conv1` (7x7, stride 2, pad 3) + ReLU, `maxpool` (3x3, stride 2, pad 1), then four
stages of 3, 4, 6, 3 bottleneck blocks (1x1 -> 3x3 -> 1x1 convs with ReLUs between, the
input added, ReLU) of widths 64, 128, 256, 512 and outputs 4x that; the first block of a
stage has a 1x1 projection shortcut, and of stages 2-4 it halves the map. Two variants
differ in which conv of that block has stride 2:
* "v1.5" (torchvision, timm; arch "resnet50"): the 3x3;
* "v1" (the paper, Caffe, the Keras release; arch "resnet50_v1"): the first 1x1.
Head "gap": the global average `pool` and a Dense `logits`; or None.

Batch norm is folded into the convs for inference: every conv has a kernel and a bias, the
ported weights already carry `gamma * (x - mean) / sqrt(var + eps) + beta`. For training,
`batch_norm=True` keeps it unfolded, as Flax does: after every conv an `nn.BatchNorm`
(`{conv}_bn`: params `scale`, `bias`; collection `batch_stats`: `mean`, `var`) that, called
with `train=True`, normalises by the batch's statistics and moves the running ones toward
them by the momentum (`mutable=["batch_stats"]`, see `egjax.train`); `fold` turns it back
into the inference network. Epsilon and momentum are those of the framework each variant's
weights come from (v1: Keras, 1.001e-5 and 0.99; v1.5: torchvision, 1e-5 and 0.9, i.e.
torch's momentum 0.1); the running variance is the batch's biased one, as Flax and Keras
keep it.

On CPU (`conv_nhwc`) the 1x1 convs run as matrix products and the wide stride-1 3x3 ones as
Winograd F(2x2, 3x3) (`winograd`; kernels transformed once by `prepare`), and `egjax.features`
runs a whole batch at once (`cpu_whole_batch`): with those, feature extraction went from
0.83x to 0.94x tf.keras's CPU time per image at batch 8 (`benchmarks/bench_features.py`).

Taps, bottom to top: `conv1` (after its ReLU), `maxpool`, `layer{s}.{b}` (block b of stage
s, 0-based b, after the ReLU), `pool`, `logits`. Aliases: `layer{s}` is the stage's last
block (`layer3` = `layer3.5`); the Keras names `conv1_relu`, `pool1_pool`,
`conv{s+1}_block{b+1}_out` and `avg_pool` name the same taps. Parameters: `conv1`,
`layer{s}_{b}_conv{1,2,3}`, `layer{s}_0_downsample`, `logits`; kernels HWIO.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from egjax.models import propagation, winograd
from egjax.models.contract import (Layer, Residual, check_images, perturbation_name, scaled,
                                   select_taps)

VARIANTS = {"v1.5": "resnet50", "v1": "resnet50_v1"}       # variant -> arch name
EPSILON = {"v1.5": 1e-5, "v1": 1.001e-5}                   # batch norm: torchvision's, Keras's
MOMENTUM = {"v1.5": 0.9, "v1": 0.99}         # running <- m * running + (1 - m) * batch
WINOGRAD = "winograd"   # variable collection of pre-transformed 3x3 kernels (`prepare`)
HEADS = ("gap", None)
STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))          # bottleneck width, blocks
EXPANSION = 4


class Block(NamedTuple):
    """One bottleneck block: its tap, parameter prefix, widths, stride, projection."""

    tap: str
    prefix: str
    features: int
    out: int
    stride: int
    project: bool


def blocks(width: float = 1.0) -> tuple[Block, ...]:
    """The 16 bottleneck blocks of ResNet-50, bottom to top."""
    out = []
    for stage, (features, count) in enumerate(STAGES, start=1):
        for index in range(count):
            out.append(Block(f"layer{stage}.{index}", f"layer{stage}_{index}",
                             scaled(features, width), EXPANSION * scaled(features, width),
                             2 if index == 0 and stage > 1 else 1, index == 0))
    return tuple(out)


def tap_names(head: str | None) -> tuple[str, ...]:
    """Every tap of a ResNet50 with `head`, in the order the network computes them."""
    return ("conv1", "maxpool", *(b.tap for b in blocks()),
            *(("pool", "logits") if head == "gap" else ()))


def aliases() -> dict[str, str]:
    """Other names of taps: `layer{s}` -> its last block; the Keras application's names."""
    names = {"conv1_relu": "conv1", "pool1_pool": "maxpool", "avg_pool": "pool"}
    for stage, (_, count) in enumerate(STAGES, start=1):
        names[f"layer{stage}"] = f"layer{stage}.{count - 1}"
        for index in range(count):
            names[f"conv{stage + 1}_block{index + 1}_out"] = f"layer{stage}.{index}"
    return names


ALIASES = aliases()


class ResNet50(nn.Module):
    """ResNet-50 returning the requested taps: `apply(variables, images, taps) -> {name: array}`.

    images: [N, H, W, 3] float, preprocessed (see `egjax.models.preprocess`), any H, W. Maps
    come out `[N, h, w, C]`, keyed by the names asked for (aliases included). Only the layers
    up to the highest requested tap run. `taps=None` returns the top tap.
    """

    width: float = 1.0
    head: str | None = "gap"
    num_classes: int = 1000
    variant: str = "v1.5"
    batch_norm: bool = False
    # features on CPU: the whole batch at once, not image by image as VGG-16 (its maps are
    # small enough to stay in the caches; benchmarks/bench_features.py)
    cpu_whole_batch: ClassVar[bool] = True

    def __post_init__(self):
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width)
                and self.width > 0):
            raise ValueError(f"width must be a finite number > 0, got {self.width!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS} for ResNet50, got {self.head!r}")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
            raise ValueError(f"num_classes must be an int >= 1, got {self.num_classes!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {self.variant!r}")
        super().__post_init__()

    @classmethod
    def from_meta(cls, meta) -> "ResNet50":
        """The module a `ModelMeta` of arch "resnet50" (v1.5) or "resnet50_v1" describes."""
        variant = {arch: variant for variant, arch in VARIANTS.items()}[meta.arch]
        return cls(width=meta.width, head=meta.head, num_classes=meta.num_classes,
                   variant=variant)

    @property
    def arch(self) -> str:
        """The registry name of this variant."""
        return VARIANTS[self.variant]

    @property
    def tap_names(self) -> tuple[str, ...]:
        """Valid tap names (without aliases), bottom to top."""
        return tap_names(self.head)

    def check_taps(self, taps: Sequence[str] | None) -> tuple[str, ...]:
        """The requested taps as a tuple (the top tap for None); ValueError for unknown names."""
        return select_taps(taps, self.tap_names, f"ResNet50(head={self.head!r})", ALIASES)

    def _strides(self, block: Block) -> tuple[int, int]:
        """Strides of the block's first 1x1 and its 3x3."""
        return (1, block.stride) if self.variant == "v1.5" else (block.stride, 1)

    def path(self, tap: str) -> tuple:
        """The layers from the image to spatial `tap`, for `egjax.geometry`."""
        tap = ALIASES.get(tap, tap)
        spatial = ["conv1", "maxpool", *(b.tap for b in blocks())]
        if tap not in spatial:
            raise ValueError(f"tap {tap!r} has no spatial map; spatial taps: "
                             f"{', '.join(spatial)}")
        steps = [Layer("conv1", "conv", 7, 2, 3, scaled(64, self.width)),
                 Layer("maxpool", "pool", 3, 2, 1)]
        for block in blocks(self.width):
            first, middle = self._strides(block)
            main = (Layer(f"{block.prefix}_conv1", "conv", 1, first, 0, block.features),
                    Layer(f"{block.prefix}_conv2", "conv", 3, middle, 1, block.features),
                    Layer(f"{block.prefix}_conv3", "conv", 1, 1, 0, block.out))
            shortcut = ((Layer(f"{block.prefix}_downsample", "conv", 1, block.stride, 0,
                               block.out),) if block.project else ())
            steps.append(Residual(block.tap, (main, shortcut)))
        return tuple(steps[: spatial.index(tap) + 1])

    @property
    def lrp_layers(self) -> tuple:
        """The network as `egjax.saliency.lrp` propagates relevance through it, bottom to top:
        the stem, each bottleneck block as a `Residual` (main branch, projection or identity)
        followed by its ReLU, then the GAP head. Batch norm is folded into the convs."""
        if self.head is None:
            raise ValueError("lrp needs logits: build ResNet50 with head='gap'")
        layers = [propagation.Conv("conv1", 2, 3), propagation.ReLU(),
                  propagation.MaxPool(3, 2, 1)]
        for block in blocks(self.width):
            first, middle = self._strides(block)
            main = (propagation.Conv(f"{block.prefix}_conv1", first, 0), propagation.ReLU(),
                    propagation.Conv(f"{block.prefix}_conv2", middle, 1), propagation.ReLU(),
                    propagation.Conv(f"{block.prefix}_conv3", 1, 0))
            shortcut = ((propagation.Conv(f"{block.prefix}_downsample", block.stride, 0),)
                        if block.project else ())
            layers += [propagation.Residual(main, shortcut), propagation.ReLU()]
        return (*layers, propagation.GlobalMean(), propagation.Dense("logits"))

    def initialize(self, params: dict) -> dict:
        """Freshly drawn `params` made ready for training from scratch (`egjax.train.
        initial_params`): every block starts as the identity (Goyal et al., 2017), by a zero
        scale of its last batch norm, or without batch norm by `zero_residual`."""
        if not self.batch_norm:
            return zero_residual(params)
        return {name: ({**layer, "scale": jnp.zeros_like(layer["scale"])}
                       if name.endswith("_conv3_bn") else layer)
                for name, layer in params.items()}

    def prepare(self, params) -> dict:
        """The `WINOGRAD` collection: each stride-1 3x3 kernel that runs by Winograd on this
        backend (`winograd.pays`) transformed once (`winograd.transform_kernel`), for `apply`
        on many batches (`egjax.features` does so)."""
        kernels = {}
        for block in blocks(self.width):
            name = f"{block.prefix}_conv2"
            kernel = params[name]["kernel"]
            if self._strides(block)[1] == 1 and winograd.pays(kernel.shape):
                kernels[name] = winograd.transform_kernel(kernel)
        return {WINOGRAD: kernels}

    def fold(self, variables: dict) -> tuple["ResNet50", dict]:
        """(inference module, params) of a `batch_norm=True` network's `variables`
        (`{"params", "batch_stats"}`): each batch norm, with its running statistics, folded
        into the conv before it (`fold_conv`)."""
        if not self.batch_norm:
            return self, variables["params"]
        params, stats = variables["params"], variables["batch_stats"]
        folded = {}
        for name, layer in params.items():
            if name.endswith("_bn"):
                continue
            norm = params.get(f"{name}_bn")
            folded[name] = layer if norm is None else fold_conv(
                {**layer, "gamma": norm["scale"], "beta": norm["bias"],
                 "mean": stats[f"{name}_bn"]["mean"], "variance": stats[f"{name}_bn"]["var"]},
                EPSILON[self.variant], name, "batch_norm=True variables")
        return self.clone(batch_norm=False), jax.tree.map(jnp.asarray, folded)

    @nn.compact
    def __call__(self, images: jax.Array, taps: Sequence[str] | None = None,
                 train: bool = False) -> dict:
        """`train` (with `batch_norm=True`): batch norm uses and updates the batch's
        statistics (apply with `mutable=["batch_stats"]`); else it uses the running ones."""
        requested = self.check_taps(taps)
        check_images(images)
        asked = {}                            # tap -> the names it was requested by
        for name in requested:
            asked.setdefault(ALIASES.get(name, name), []).append(name)
        last = max(self.tap_names.index(t) for t in asked)
        run_all = self.is_initializing()
        out = {}

        def keep(tap: str, value: jax.Array) -> tuple[jax.Array, bool]:
            """Records `value` under each name it was requested by, passed through
            `self.perturb` once per name (so that Grad-CAM reaches it by any of them);
            returns the value to compute on and whether to stop here."""
            for name in asked.get(tap, ()):
                value = out[name] = self.perturb(perturbation_name(name), value)
            return value, self.tap_names.index(tap) >= last and not run_all

        def conv(x, features, kernel, stride, padding, name):
            transformed = (self.get_variable(WINOGRAD, name)
                           if self.has_variable(WINOGRAD, name) else None)
            x = nn.Conv(features, (kernel, kernel), (stride, stride),
                        padding=((padding, padding),) * 2, precision=jax.lax.Precision.HIGHEST,
                        conv_general_dilated=functools.partial(conv_nhwc,
                                                               transformed=transformed),
                        name=name)(x)
            if not self.batch_norm:
                return x
            return nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM[self.variant],
                                epsilon=EPSILON[self.variant], name=f"{name}_bn")(x)

        x = nn.relu(conv(images, scaled(64, self.width), 7, 2, 3, "conv1"))
        x, done = keep("conv1", x)
        if done:
            return out
        x, done = keep("maxpool", nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1))))
        if done:
            return out
        for block in blocks(self.width):
            first, middle = self._strides(block)
            y = nn.relu(conv(x, block.features, 1, first, 0, f"{block.prefix}_conv1"))
            y = nn.relu(conv(y, block.features, 3, middle, 1, f"{block.prefix}_conv2"))
            y = conv(y, block.out, 1, 1, 0, f"{block.prefix}_conv3")
            if block.project:
                x = conv(x, block.out, 1, block.stride, 0, f"{block.prefix}_downsample")
            x, done = keep(block.tap, nn.relu(x + y))
            if done:
                return out
        if self.head == "gap":
            x, _ = keep("pool", jnp.mean(x, axis=(1, 2)))
            keep("logits", nn.Dense(self.num_classes, precision=jax.lax.Precision.HIGHEST,
                                    name="logits")(x))
        return out


def conv_nhwc(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, precision=None, transformed=None,
              **kwargs):
    """`lax.conv_general_dilated` for NHWC inputs and HWIO kernels: a 1x1 kernel as a matrix
    product of the (strided) pixels, the same sums, which XLA:CPU runs as one GEMM instead of
    a convolution (bottleneck blocks are 2/3 1x1 convs); a 3x3 one by
    `winograd.conv_general_dilated` (F(2x2, 3x3) where it pays on CPU, from the
    `transformed` kernel where given)."""
    unpadded = padding == "VALID" or all(tuple(p) == (0, 0) for p in padding)
    if (rhs.shape[:2] == (1, 1) and unpadded and feature_group_count == 1
            and not any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))):
        sh, sw = window_strides
        return jnp.einsum("nhwi,io->nhwo", lhs[:, ::sh, ::sw], rhs[0, 0], precision=precision)
    return winograd.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                         rhs_dilation, dimension_numbers, feature_group_count,
                                         precision=precision, transformed=transformed, **kwargs)


def fold_conv(layer: dict, epsilon: float, name: str, origin: str) -> dict:
    """{kernel[, bias], gamma, beta, mean, variance} -> {kernel, bias}: the batch norm folded
    into the conv, `kernel * g`, `beta + (bias - mean) * g` with `g = gamma / sqrt(variance +
    eps)` per output channel (exact in real arithmetic); a layer without batch norm passes
    as it is. ValueError naming the layer (from `origin`) when it has only part of one."""
    norm = ("gamma", "beta", "mean", "variance")
    if not any(role in layer for role in norm):
        return layer
    missing = [role for role in ("kernel", *norm) if role not in layer]
    if missing:
        raise ValueError(f"{origin}: layer {name!r} lacks {missing} (a conv with its batch norm)")
    layer = {role: np.asarray(value) for role, value in layer.items()}
    scale = layer["gamma"] / np.sqrt(layer["variance"].astype(np.float64) + epsilon)
    bias = layer.get("bias", 0.0)
    return {"kernel": (layer["kernel"] * scale).astype(np.float32),
            "bias": (layer["beta"] + (bias - layer["mean"]) * scale).astype(np.float32)}


def zero_residual(params: dict) -> dict:
    """`params` with the last conv of every block (`*_conv3`) zeroed, so that each block starts
    as the identity: the start for training without batch norm (the zero-gamma start of
    Goyal et al., 2017, "Accurate, large minibatch SGD", applied to the folded conv)."""
    return {name: ({role: jnp.zeros_like(value) for role, value in layer.items()}
                   if name.endswith("_conv3") else layer) for name, layer in params.items()}
