"""Settings of an explanatory graph: one `LayerConfig` per graph layer, a `GraphConfig` for all.

Defaults are the paper's (Zhang et al., AAAI 2018) as the original learner sets them in
`code/getNetParameters.m`. Every field is validated on construction; a bad value raises
ValueError naming the layer (its tap), the field and its allowed range.
"""

from __future__ import annotations

import dataclasses
import functools
import math


def _check(name: str, ok: bool, allowed: str, value, where: str = "") -> None:
    if not ok:
        raise ValueError(f"{where}{name} must be {allowed}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """One graph layer on one conv layer whose maps are `[N, map_size, map_size, C]`.

    `stride`/`center` map a 0-based cell to pixels: `px = center + cell * stride`.
    `max_delta`/`min_delta` bound the deformation scale as fractions of `map_size`
    (None: `1/sqrt(density * map_size**2)` and `max_delta / 10`, as the original).
    `top_n`/`top_m`: parents per node / candidate parents, used when a layer lies above.
    `tap`: the network layer the maps come from (e.g. "conv4_2"), for feature extraction.
    """

    map_size: int
    stride: float
    center: float
    density: float
    position_candidates: int = 6
    search_max_range: float = 0.3
    deform_ratio: float = 3.0
    init_delta: float = 0.15
    max_delta: float | None = None
    min_delta: float | None = None
    map_delta: float = 0.025
    tau_rate: float = 0.1
    top_n: int = 15
    top_m: int = 600
    iterations: int = 20
    eta: float = 1.0
    tap: str | None = None

    def __post_init__(self):
        where = f"layer {self.tap}: " if isinstance(self.tap, str) else ""
        check = functools.partial(_check, where=where)
        check("map_size", _is_int(self.map_size) and self.map_size >= 2,
              "an int >= 2", self.map_size)
        check("stride", self.stride > 0, "> 0", self.stride)
        check("center", math.isfinite(self.center), "finite", self.center)
        check("density", 0 < self.density <= 1, "in (0, 1]", self.density)
        check("position_candidates",
              _is_int(self.position_candidates) and self.position_candidates >= 2,
              "an int >= 2", self.position_candidates)
        check("search_max_range", 0 < self.search_max_range <= 2,
              "in (0, 2]", self.search_max_range)
        check("deform_ratio", self.deform_ratio > 0, "> 0", self.deform_ratio)
        check("init_delta", self.init_delta > 0, "> 0", self.init_delta)
        check("max_delta", self.max_delta is None or self.max_delta > 0, "None or > 0",
              self.max_delta)
        max_delta = self.max_deform / self.map_size
        check("min_delta", self.min_delta is None or 0 < self.min_delta <= max_delta,
              f"None or in (0, max_delta={max_delta:g}]", self.min_delta)
        check("map_delta", self.map_delta > 0, "> 0", self.map_delta)
        check("tau_rate", self.tau_rate >= 0, ">= 0", self.tau_rate)
        check("top_n", _is_int(self.top_n) and self.top_n >= 1, "an int >= 1", self.top_n)
        check("top_m", _is_int(self.top_m) and self.top_m >= self.top_n,
              f"an int >= top_n ({self.top_n})", self.top_m)
        check("iterations", _is_int(self.iterations) and self.iterations >= 1,
              "an int >= 1", self.iterations)
        check("eta", self.eta > 0, "> 0", self.eta)
        check("tap", self.tap is None or isinstance(self.tap, str), "a str or None", self.tap)

    @property
    def nodes_per_filter(self) -> int:
        """K = ceil(S^2 * density), computed as the original (`initializeModel.m`)."""
        return math.ceil(self.map_size * self.map_size * self.density)

    @property
    def max_deform(self) -> float:
        """Upper bound of a node's deformation scale, in cells (max_delta * map_size)."""
        max_delta = self.max_delta
        if max_delta is None:
            max_delta = 1.0 / math.sqrt(self.density * self.map_size**2)
        return max_delta * self.map_size

    @property
    def min_deform(self) -> float:
        """Lower bound of a node's deformation scale, in cells (min_delta * map_size)."""
        if self.min_delta is None:
            return self.max_deform / 10
        return self.min_delta * self.map_size

    @property
    def candidates(self) -> int:
        """Candidate positions per axis: P, at most the map side."""
        return min(self.position_candidates, self.map_size)

    @property
    def max_half_range(self) -> int:
        """The largest search half-range any node can have, in cells."""
        return _round_half_away(self.search_max_range * self.map_size / 2)


def _round_half_away(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    """Graph layers bottom to top; `image_size` (pixels, square) scales the evaluation."""

    layers: tuple[LayerConfig, ...]
    image_size: int = 224

    def __post_init__(self):
        layers = tuple(self.layers)
        _check("layers", len(layers) >= 1 and all(isinstance(l, LayerConfig) for l in layers),
               "a non-empty sequence of LayerConfig", self.layers)
        object.__setattr__(self, "layers", layers)
        _check("image_size", _is_int(self.image_size) and self.image_size >= 1,
               "an int >= 1", self.image_size)
        taps = [l.tap for l in layers if l.tap is not None]
        _check("layers[].tap", len(taps) == len(set(taps)), "distinct", taps)

    @classmethod
    def vgg16(cls, **overrides) -> "GraphConfig":
        """The paper's VGG-16 graph: conv4_2, conv4_3, conv5_2, conv5_3 of a 224-px input,
        densities 0.05, 0.05, 0.1, 0.1; geometry derived from the network (`egjax.geometry`).

        `overrides` (any `LayerConfig` field, e.g. `iterations=5` or `density=0.1`) apply to
        every layer and are validated as any setting (ValueError naming the layer).
        """
        from egjax.models import VGG16   # egjax.models -> egjax.geometry -> this module
        return cls._preset(VGG16(), (("conv4_2", 0.05), ("conv4_3", 0.05), ("conv5_2", 0.1),
                                     ("conv5_3", 0.1)), 224, overrides)

    @classmethod
    def resnet50(cls, variant: str = "v1.5", **overrides) -> "GraphConfig":
        """The original's ResNet setting: three graph layers on the 28/14/7 maps of a 224-px
        input (`layer2`, `layer3`, `layer4`: stage outputs), densities 0.05/0.1/0.2 (40/20/10
        nodes per filter), topN 15, topM 600; geometry derived from ResNet50 of `variant`
        ("v1.5" torchvision, "v1" Keras). `overrides` as in `vgg16`."""
        from egjax.models import ResNet50
        return cls._preset(ResNet50(variant=variant), (("layer2", 0.05), ("layer3", 0.1),
                                                       ("layer4", 0.2)), 224, overrides)

    @classmethod
    def _preset(cls, model, spec, image_size: int, overrides: dict) -> "GraphConfig":
        """Graph layers on `spec`'s (tap, density) pairs of `model`, geometry derived
        (`geometry.layer_config`), then `overrides` (validated; unknown names refused)."""
        from egjax.geometry import layer_config
        fields = [f.name for f in dataclasses.fields(LayerConfig)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ValueError(f"unknown LayerConfig settings {unknown}; the settings are "
                             f"{', '.join(fields)}")
        layers = tuple(dataclasses.replace(layer_config(model, tap, image_size, density=density),
                                           **overrides)
                       for tap, density in spec)
        return cls(layers=layers, image_size=image_size)
