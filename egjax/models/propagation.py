"""The layer kinds of a network written as a list, bottom to top, for explicit propagation:
what a model's `lrp_layers` holds and `egjax.saliency.lrp` propagates relevance through.

Frozen dataclasses, not NamedTuples: two layers of different kinds never compare equal.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution, NHWC/HWIO: `params[name]` holds `kernel` `[kh, kw, I, O]` and `bias`
    `[O]` (optional). `padding`: an int (every side) or `"SAME"`/`"VALID"` as in `lax`.
    `norm` names a batch norm applied to the conv's output, `params[norm]` =
    `{scale, bias, mean, var}` (`y = scale (x - mean) / sqrt(var + norm_epsilon) + bias`);
    it is folded into the conv's weights before any rule applies."""

    name: str
    stride: int = 1
    padding: int | str = 0
    norm: str | None = None
    norm_epsilon: float = 1e-5


@dataclasses.dataclass(frozen=True)
class Dense:
    """`x @ params[name]["kernel"] + params[name]["bias"]` on `[N, I]`."""

    name: str


@dataclasses.dataclass(frozen=True)
class ReLU:
    """`max(x, 0)`; relevance passes through unchanged."""


@dataclasses.dataclass(frozen=True)
class MaxPool:
    """Max pooling over `window x window` cells every `stride`; `padding` as in `Conv`
    (padded cells never win). Relevance goes to each window's winner."""

    window: int
    stride: int
    padding: int | str = 0


@dataclasses.dataclass(frozen=True)
class GlobalMean:
    """`[N, h, w, C] -> [N, C]`, the mean over cells: a linear layer with weights `1 / hw`."""


@dataclasses.dataclass(frozen=True)
class Flatten:
    """`[N, ...] -> [N, -1]`, in C order."""


@dataclasses.dataclass(frozen=True)
class Residual:
    """`body(x) + shortcut(x)` (an empty shortcut is the identity); put a `ReLU` after it
    if the network has one. Relevance splits in proportion to the two summands."""

    body: tuple
    shortcut: tuple = ()


LINEAR = (Conv, Dense, GlobalMean)
LAYERS = (Conv, Dense, ReLU, MaxPool, GlobalMean, Flatten, Residual)
