"""The registered networks: a name -> how to build the module a `ModelMeta` describes, and how
to load published or local weights into it.

    model, params, meta = egjax.models.load("resnet50", "torchvision")   # published weights
    model, params, meta = egjax.models.load("vgg16", "checkpoints/synthetic_quadruped")

A network of one's own (see `egjax.models.contract`) joins with `register`; from then on
`ModelMeta(arch=name, ...)` builds it, and its checkpoints load by `load_checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from egjax.models.checkpoint import load_checkpoint
from egjax.models.meta import ModelMeta
from egjax.models.resnet import ResNet50
from egjax.models.resnet_weights import load_resnet50
from egjax.models.vgg import VGG16
from egjax.models.weights import load_vgg16


class Architecture(NamedTuple):
    """`build(meta) -> module`; `load(source, *, cache_dir, quiet) -> (model, params, meta)`
    for a published name or a weights file (None: checkpoints only); `variants`: the other
    architectures that `load` of this name may return (ResNet-50 v1.5 or v1, as the file is);
    `batch_norm`: whether `load` also takes `batch_norm=True` and then returns the network
    with batch norm unfolded for training and its variables `{"params", "batch_stats"}`."""

    build: Callable
    load: Callable | None = None
    variants: tuple[str, ...] = ()
    batch_norm: bool = False


ARCHITECTURES: dict[str, Architecture] = {}


def register(name: str, build: Callable, load: Callable | None = None,
             variants: tuple[str, ...] = (), batch_norm: bool = False) -> None:
    """Make network `name` known: `build(meta: ModelMeta)` returns its module, `load` (optional)
    ports weights files (see `Architecture`)."""
    if not (isinstance(name, str) and name):
        raise ValueError(f"an architecture name must be a non-empty str, got {name!r}")
    ARCHITECTURES[name] = Architecture(build, load, tuple(variants), batch_norm)


def _architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; registered: "
                         f"{', '.join(ARCHITECTURES)} (add one with egjax.models.register)")
    return ARCHITECTURES[name]


def build(meta: ModelMeta):
    """The module of the architecture `meta.arch`, shaped as `meta` says."""
    return _architecture(meta.arch).build(meta)


def load(arch: str, source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
         quiet: bool = False, training: bool = False) -> tuple[object, dict, ModelMeta]:
    """(model, params, meta) of network `arch` from `source`: an egjax checkpoint directory,
    a published name (fetched into `cache_dir`, default ~/.cache/egjax, and verified) or a
    weights file. ValueError if what `source` holds is another architecture.

    `training=True`: (model, variables, meta) to start `egjax.train` from, variables
    `{"params": ...}` plus, where the file has batch norm and the network can keep it
    (ResNet-50), `"batch_stats"`, with the model's batch norm unfolded so that training
    updates its statistics (checkpoints hold folded networks: params only)."""
    entry = _architecture(arch)
    unfolded = training and entry.batch_norm and not Path(source).is_dir()
    if Path(source).is_dir():
        model, params, meta = load_checkpoint(source)
    elif entry.load is None:
        raise ValueError(f"{arch} has no weights loader; give an egjax checkpoint directory")
    elif unfolded:
        model, params, meta = entry.load(source, cache_dir=cache_dir, quiet=quiet,
                                         batch_norm=True)
    else:
        model, params, meta = entry.load(source, cache_dir=cache_dir, quiet=quiet)
    if meta.arch not in (arch, *entry.variants):
        raise ValueError(f"{source} holds a {meta.arch} network, not a {arch}")
    if training and not unfolded:
        params = {"params": params}
    return model, params, meta


register("vgg16", lambda meta: VGG16(width=meta.width, head=meta.head,
                                     num_classes=meta.num_classes), load_vgg16)
register("resnet50", ResNet50.from_meta, load_resnet50, variants=("resnet50_v1",),
         batch_norm=True)
register("resnet50_v1", ResNet50.from_meta, load_resnet50, batch_norm=True)
