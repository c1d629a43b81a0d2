"""Ports ImageNet ResNet-50 weights from Keras, torchvision and timm files to `ResNet50` params,
folding each batch norm into the conv before it (or, for training, keeping it unfolded).

Layouts (the file's -> ours):
* Keras (.h5, legacy layout, see `keras_h5`; tf.keras's `ResNet50` release, variant v1,
  "caffe" preprocessing): `conv1_conv` + `conv1_bn` -> `conv1`;
  `conv{s+1}_block{b+1}_{i}_conv` + `_{i}_bn` -> `layer{s}_{b}_conv{i}` (i = 1, 2, 3) and
  `_0_conv` + `_0_bn` -> `layer{s}_{b}_downsample`; `probs` (the release files, written by
  keras-applications' `resnet_common.py`, whose md5s Keras pins) or `predictions` (tf.keras's
  `ResNet50` and files it writes) -> `logits`. Convs have biases; batch norm epsilon 1.001e-5.
* torchvision (.pth, see `torch_pickle`; V1 and V2 weights) and timm (.safetensors, same
  names), variant v1.5, "torch" preprocessing: `conv1` + `bn1`; `layer{s}.{b}.conv{i}` +
  `.bn{i}`; `layer{s}.{b}.downsample.0` + `.downsample.1`; `fc`. Convs without bias, kernels
  OIHW -> HWIO, the linear [out, in] -> [in, out]; batch norm epsilon 1e-5.
Folding: `kernel * g`, `beta + (bias - mean) * g` with `g = gamma / sqrt(variance + eps)`, per
output channel (exact in real arithmetic). Width, head and classes are read off the file;
every tensor must find its place, every layer its shape, every weight be finite, else
ValueError naming the layer.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from egjax.models.contract import check_finite, check_params
from egjax.models.download import Published, locate
from egjax.models.meta import ModelMeta
from egjax.models.resnet import EPSILON, ResNet50, blocks, fold_conv
from egjax.models.weights import weights_format

_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
PUBLISHED = {
    # md5: WEIGHTS_HASHES["resnet50"] of keras/src/applications/resnet.py
    "keras": Published("resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                       _KERAS_BASE + "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                       "md5", "2cb95161c43110f7111970584f804107", "caffe"),
    "keras-notop": Published("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             _KERAS_BASE + "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             "md5", "4d473c1dd8becc155b73f8504c6f6626", "caffe"),
    # sha256 prefixes in the file names, as torch.hub checks (ResNet50_Weights.IMAGENET1K_V1/V2)
    "torchvision": Published("resnet50-0676ba61.pth",
                             "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                             "sha256", "0676ba61", "torch"),
    "torchvision-v2": Published("resnet50-11ad3fa6.pth",
                                "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
                                "sha256", "11ad3fa6", "torch"),
    # neither timm nor the Hub pins a hash in code: not verified (its sha256 is printed)
    "timm": Published("resnet50.a1_in1k.safetensors",
                      "https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/"
                      "model.safetensors", "sha256", None, "torch"),
}


def _keras_names() -> dict[str, str]:
    names = {"conv1_conv": "conv1", "conv1_bn": "conv1", "probs": "logits",
             "predictions": "logits"}
    for block in blocks():
        stage, index = (int(i) for i in block.tap[len("layer"):].split("."))
        keras = f"conv{stage + 1}_block{index + 1}"
        for i in (1, 2, 3):
            names[f"{keras}_{i}_conv"] = names[f"{keras}_{i}_bn"] = f"{block.prefix}_conv{i}"
        if block.project:
            names[f"{keras}_0_conv"] = names[f"{keras}_0_bn"] = f"{block.prefix}_downsample"
    return names


def _torch_names() -> dict[str, str]:
    names = {"conv1": "conv1", "bn1": "conv1", "fc": "logits"}
    for block in blocks():
        for i in (1, 2, 3):
            names[f"{block.tap}.conv{i}"] = names[f"{block.tap}.bn{i}"] = \
                f"{block.prefix}_conv{i}"
        if block.project:
            names[f"{block.tap}.downsample.0"] = names[f"{block.tap}.downsample.1"] = \
                f"{block.prefix}_downsample"
    return names


KERAS_NAMES = _keras_names()
TORCH_NAMES = _torch_names()
_TORCH_ROLES = {"weight": None, "bias": None, "running_mean": "mean",
                "running_var": "variance", "num_batches_tracked": "skip"}


def _from_keras(layers: dict, path: str) -> dict:
    merged: dict[str, dict] = {}
    for name, weights in layers.items():
        if name not in KERAS_NAMES:
            raise ValueError(f"{path}: unexpected layer {name!r}; not a Keras ResNet-50 weights "
                             f"file (its layers: conv1_conv, conv1_bn, conv2_block1_1_conv, ..., "
                             f"probs)")
        linear = ("_conv", "probs", "predictions")
        role_of = {"kernel": "kernel", "bias": "bias"} if name.endswith(linear) \
            else {"gamma": "gamma", "beta": "beta", "mean": "mean", "variance": "variance"}
        target = merged.setdefault(KERAS_NAMES[name], {})
        for role, value in weights.items():
            if role not in role_of:
                raise ValueError(f"{path}: layer {name!r} has a {role}, which it should not")
            target[role_of[role]] = value
    return merged


def _from_torch(tensors: dict, path: str) -> dict:
    merged: dict[str, dict] = {}
    for key, value in tensors.items():
        module, _, kind = key.rpartition(".")
        if module not in TORCH_NAMES or kind not in _TORCH_ROLES:
            raise ValueError(f"{path}: unexpected tensor {key!r} {tuple(value.shape)}; not a "
                             "ResNet-50 state dict (another depth or architecture?)")
        role = _TORCH_ROLES[kind]
        if role == "skip":
            continue
        norm = module.endswith(("bn1", "bn2", "bn3", "downsample.1"))
        if role is None:
            role = ({"weight": "gamma", "bias": "beta"} if norm
                    else {"weight": "kernel", "bias": "bias"})[kind]
        layer = TORCH_NAMES[module]
        if role == "kernel":
            value = value.T if value.ndim == 2 else _oihw_to_hwio(value, layer, path)
        merged.setdefault(layer, {})[role] = value
    return merged


def _oihw_to_hwio(kernel: np.ndarray, layer: str, path: str) -> np.ndarray:
    if kernel.ndim != 4:
        raise ValueError(f"{path}: layer {layer!r} kernel has shape {kernel.shape}, expected OIHW")
    return kernel.transpose(2, 3, 1, 0)


def read_resnet50_weights(path: str | os.PathLike, *,
                          batch_norm: bool = False) -> tuple[dict, str, str]:
    """A weights file -> (params in `ResNet50` naming as numpy, variant, preprocessing): batch
    norm folded, or with `batch_norm` the variables of `ResNet50(batch_norm=True)`
    (`unfolded`)."""
    path = os.fspath(path)
    kind = weights_format(path)
    if kind == "keras":
        from egjax.models.keras_h5 import read_keras_h5
        layers, variant, preprocessing = _from_keras(read_keras_h5(path), path), "v1", "caffe"
    elif kind == "torch":
        from egjax.models.torch_pickle import read_torch_state_dict
        layers, variant, preprocessing = (_from_torch(read_torch_state_dict(path), path),
                                          "v1.5", "torch")
    else:
        from safetensors.numpy import load_file
        layers, variant, preprocessing = _from_torch(load_file(path), path), "v1.5", "torch"
    folded = {name: fold_conv(layer, EPSILON[variant], name, path)
              for name, layer in layers.items()}       # checks every batch norm is whole
    return (unfolded(layers) if batch_norm else folded), variant, preprocessing


def unfolded(layers: dict) -> dict:
    """{layer: {kernel[, bias], gamma, beta, mean, variance}} -> the variables of
    `ResNet50(batch_norm=True)`: `{"params": {layer: {kernel, bias}, layer_bn: {scale,
    bias}}, "batch_stats": {layer_bn: {mean, var}}}` (a conv without bias gets zeros)."""
    params, stats = {}, {}
    for name, layer in layers.items():
        if "gamma" not in layer:
            params[name] = layer
            continue
        kernel = layer["kernel"]
        params[name] = {"kernel": kernel,
                        "bias": layer.get("bias", np.zeros(kernel.shape[-1], kernel.dtype))}
        params[f"{name}_bn"] = {"scale": layer["gamma"], "bias": layer["beta"]}
        stats[f"{name}_bn"] = {"mean": layer["mean"], "var": layer["variance"]}
    return {"params": params, "batch_stats": stats}


def _infer_model(params: dict, variant: str, path: str, batch_norm: bool) -> ResNet50:
    if "kernel" not in params.get("conv1", {}):
        raise ValueError(f"{path}: layer 'conv1' is missing; not a ResNet-50 weights file")
    width = params["conv1"]["kernel"].shape[-1] / 64
    num_classes = 1000
    if "kernel" in params.get("logits", {}):
        num_classes = int(params["logits"]["kernel"].shape[-1])
    return ResNet50(width=width, head="gap" if "logits" in params else None,
                    num_classes=num_classes, variant=variant, batch_norm=batch_norm)


def load_resnet50(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  quiet: bool = False,
                  batch_norm: bool = False) -> tuple[ResNet50, dict, ModelMeta]:
    """(model, params, meta) from a published name ("keras", "keras-notop": v1;
    "torchvision", "torchvision-v2", "timm": v1.5; fetched into `cache_dir`, default
    ~/.cache/egjax, and verified) or a weights file; the variant follows the file.
    `batch_norm`: for training, `ResNet50(batch_norm=True)` and its variables `{"params",
    "batch_stats"}` in place of params, the file's batch norms unfolded."""
    path, name = locate(source, cache_dir, quiet=quiet, published=PUBLISHED)
    loaded, variant, preprocessing = read_resnet50_weights(path, batch_norm=batch_norm)
    params = loaded["params"] if batch_norm else loaded
    model = _infer_model(params, variant, name, batch_norm)
    check_params(params, model, name)
    check_finite(params, name)
    if batch_norm:
        check_finite(loaded["batch_stats"], name)
    loaded = jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), loaded)
    meta = ModelMeta(source=name, arch=model.arch, width=model.width, head=model.head,
                     num_classes=model.num_classes, preprocessing=preprocessing)
    return model, loaded, meta
