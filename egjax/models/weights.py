"""Ports ImageNet VGG-16 weights from Keras, torchvision and timm files to `VGG16` params.

Layouts (the file's -> ours):
* Keras (.h5, legacy layout, see `keras_h5`): `block{b}_conv{i}` -> `conv{b}_{i}`, `fc1`,
  `fc2`, `predictions` -> `fc6`, `fc7`, `logits`; kernels already HWIO / [in, out] with fc1's
  input in HWC order. The original Oxford (caffe) weights: "caffe" preprocessing.
* torchvision (.pth, see `torch_pickle`): `features.{k}` (the convs at k = 0, 2, 5, 7, 10, ...),
  `classifier.0/3/6`; conv weights OIHW -> HWIO; linear weights [out, in] -> [in, out], and
  classifier.0's input flattened from pool5 in CHW order is reordered to HWC.
* timm `vgg16.tv_in1k` (.safetensors): the torchvision weights with the head as convs:
  `pre_logits.fc1` [4096, 512, 7, 7] (OIHW), `pre_logits.fc2` [4096, 4096, 1, 1], `head.fc`.
Width, head and classes are read off the file; every tensor must find its place, every
layer must be present with its shape and every weight must be finite, else ValueError naming
the layer.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from egjax.models.download import locate
from egjax.models.meta import ModelMeta
from egjax.models.contract import check_finite, check_params
from egjax.models.vgg import FC_MAP_SIZE, VGG16, trunk_layers

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _keras_names() -> dict[str, str]:
    names = {"fc1": "fc6", "fc2": "fc7", "predictions": "logits"}
    for layer in trunk_layers():
        if layer.kind == "conv":
            block, index = layer.name[len("conv"):].split("_")
            names[f"block{block}_conv{index}"] = layer.name
    return names


def _torch_names() -> dict[str, str]:
    names = {"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "logits",
             "pre_logits.fc1": "fc6", "pre_logits.fc2": "fc7", "head.fc": "logits"}
    index = 0
    for layer in trunk_layers():
        if layer.kind == "conv":
            names[f"features.{index}"] = layer.name
            index += 2
        else:
            index += 1
    return names


KERAS_NAMES = _keras_names()
TORCH_NAMES = _torch_names()


def weights_format(path: str | os.PathLike) -> str:
    """"keras" (HDF5), "torch" (zip or legacy pickle) or "safetensors", from the file's bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(HDF5_SIGNATURE):
        return "keras"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise ValueError(f"{path}: unknown weights format; expected a Keras .h5, a torch .pth or a "
                     ".safetensors file")


def read_weights(path: str | os.PathLike) -> tuple[dict, str]:
    """A weights file -> (params in `VGG16` naming and layout as numpy, preprocessing name)."""
    path = os.fspath(path)
    kind = weights_format(path)
    if kind == "keras":
        from egjax.models.keras_h5 import read_keras_h5
        return _from_keras(read_keras_h5(path), path), "caffe"
    if kind == "torch":
        from egjax.models.torch_pickle import read_torch_state_dict
        return _from_torch(read_torch_state_dict(path), path), "torch"
    from safetensors.numpy import load_file
    return _from_torch(load_file(path), path), "torch"


def _from_keras(layers: dict, path: str) -> dict:
    params = {}
    for name, weights in layers.items():
        if name not in KERAS_NAMES:
            raise ValueError(f"{path}: unexpected layer {name!r}; not a VGG-16 weights file "
                             f"(VGG-16 layers: {', '.join(KERAS_NAMES)})")
        params[KERAS_NAMES[name]] = weights
    return params


def _from_torch(tensors: dict, path: str) -> dict:
    params: dict[str, dict] = {}
    for key, value in tensors.items():
        module, _, kind = key.rpartition(".")
        role = {"weight": "kernel", "bias": "bias"}.get(kind)
        if module not in TORCH_NAMES or role is None:
            raise ValueError(f"{path}: unexpected tensor {key!r} {tuple(value.shape)}; not a "
                             "VGG-16 state dict (batch norm, another depth or architecture?)")
        weights = params.setdefault(TORCH_NAMES[module], {})
        if role in weights:
            raise ValueError(f"{path}: two {role}s for layer {TORCH_NAMES[module]!r} "
                             f"(torchvision and timm names mixed?)")
        weights[role] = value
    for layer, weights in params.items():
        kernel = weights.get("kernel")
        if kernel is None:
            continue
        if layer.startswith("conv"):
            weights["kernel"] = _oihw_to_hwio(kernel, layer, path)
        elif layer == "fc6":
            channels = params.get("conv5_3", {}).get("bias", np.zeros(0)).shape[0]
            weights["kernel"] = _fc6_from_chw(kernel, channels, path)
        else:
            weights["kernel"] = kernel.reshape(kernel.shape[0], -1).T
    return params


def _oihw_to_hwio(kernel: np.ndarray, layer: str, path: str) -> np.ndarray:
    if kernel.ndim != 4:
        raise ValueError(f"{path}: layer {layer!r} kernel has shape {kernel.shape}, expected OIHW")
    return kernel.transpose(2, 3, 1, 0)


def _fc6_from_chw(kernel: np.ndarray, channels: int, path: str) -> np.ndarray:
    """[units, C*7*7] (torchvision) or [units, C, 7, 7] (timm), input in CHW order ->
    [7*7*C, units], input in HWC order (pool5 flattened as `VGG16` does)."""
    units, side = kernel.shape[0], FC_MAP_SIZE
    if channels == 0 or kernel.size != units * channels * side * side:
        raise ValueError(f"{path}: layer 'fc6' kernel has shape {kernel.shape}, which does not "
                         f"take {side}x{side}x{channels} pool5 maps")
    kernel = kernel.reshape(units, channels, side, side).transpose(2, 3, 1, 0)
    return kernel.reshape(side * side * channels, units)


def _infer_model(params: dict, path: str) -> VGG16:
    if "conv1_1" not in params or "kernel" not in params["conv1_1"]:
        raise ValueError(f"{path}: layer 'conv1_1' is missing; not a VGG-16 weights file")
    width = params["conv1_1"]["kernel"].shape[-1] / 64
    has_head = any(layer in params for layer in ("fc6", "fc7", "logits"))
    num_classes = 1000
    if "kernel" in params.get("logits", {}):
        num_classes = int(params["logits"]["kernel"].shape[-1])
    return VGG16(width=width, head="fc" if has_head else None, num_classes=num_classes)


def load_vgg16(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
               quiet: bool = False) -> tuple[VGG16, dict, ModelMeta]:
    """(model, params, meta) from a published name ("keras", "keras-notop", "torchvision",
    "timm"; fetched into `cache_dir`, default ~/.cache/egjax, and verified) or a weights file.
    """
    path, name = locate(source, cache_dir, quiet=quiet)
    params, preprocessing = read_weights(path)
    model = _infer_model(params, name)
    check_params(params, model, name)
    check_finite(params, name)
    params = jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), params)
    meta = ModelMeta(source=name, arch="vgg16", width=model.width, head=model.head,
                     num_classes=model.num_classes, preprocessing=preprocessing)
    return model, params, meta
