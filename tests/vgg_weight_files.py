"""Test helpers: VGG-16 weight files in the publishers' real layouts, written without their
frameworks where those are absent (torch), and a numpy forward pass with torch semantics.

* Keras: the legacy HDF5 layout of the application release files (`layer_names`, per-layer
  groups with `weight_names`), named as the release (`block1_conv1_W_1:0`) or as tf.keras 2
  (`block1_conv1/kernel:0`).
* torch: what `torch.save(state_dict)` writes, zip (torch >= 1.6: `<archive>/data.pkl`,
  `byteorder`, `data/<key>`, `version`, `.data/serialization_id`; tensors via
  `torch._utils._rebuild_tensor_v2`) or legacy (magic number, protocol 1001, sys info, the
  pickle, the storage keys, then per storage an int64 count and its bytes; tensors via
  `_rebuild_tensor` as in torchvision's 2017 files). The pickles are protocol 2, as torch's.
* safetensors via the safetensors package.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import h5py
import jax
import numpy as np

from egjax.models import param_shapes

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


# ----------------------------------------------------------------------------- Keras

def write_keras_h5(path, keras_model, naming: str = "release") -> None:
    """Writes `keras_model`'s weights in the legacy Keras HDF5 layout."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name.encode() for layer in keras_model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for layer in keras_model.layers:
            group = f.create_group(layer.name)
            weights = layer.get_weights()
            if naming == "release":
                names = [f"{layer.name}_W_1:0", f"{layer.name}_b_1:0"][: len(weights)]
            else:
                names = [f"{layer.name}/kernel:0", f"{layer.name}/bias:0"][: len(weights)]
            group.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
            for name, value in zip(names, weights):
                group.create_dataset(name, data=value)


# ----------------------------------------------------------------------------- torch

def torchvision_state_dict(width: float, num_classes: int, seed: int = 0,
                           head: str = "torchvision") -> dict:
    """Random VGG-16 weights named and shaped as torchvision's (or timm's) state dict."""
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()
    index, channels = 0, 3
    for v in CFG:
        if v == "M":
            index += 1
            continue
        out = max(1, round(v * width))
        std = np.sqrt(2.0 / (9 * channels))
        weight = rng.normal(0, std, (out, channels, 3, 3))
        state[f"features.{index}.weight"] = weight.astype(np.float32)
        state[f"features.{index}.bias"] = rng.normal(0, 0.1, out).astype(np.float32)
        index += 2
        channels = out
    units = max(1, round(4096 * width))
    fc6 = rng.normal(0, np.sqrt(2.0 / (49 * channels)), (units, channels * 49)).astype(np.float32)
    fc7 = rng.normal(0, np.sqrt(2.0 / units), (units, units)).astype(np.float32)
    fc8 = rng.normal(0, np.sqrt(1.0 / units), (num_classes, units)).astype(np.float32)
    biases = [rng.normal(0, 0.1, n).astype(np.float32) for n in (units, units, num_classes)]
    if head == "torchvision":
        names, weights = ("classifier.0", "classifier.3", "classifier.6"), (fc6, fc7, fc8)
    else:
        names = ("pre_logits.fc1", "pre_logits.fc2", "head.fc")
        weights = (fc6.reshape(units, channels, 7, 7), fc7.reshape(units, units, 1, 1), fc8)
    for name, weight, bias in zip(names, weights, biases):
        state[f"{name}.weight"] = weight
        state[f"{name}.bias"] = bias
    return state


class _Global:
    """A global pickled by reference (`c<module>\\n<name>\\n`) without importing it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):
        raise NotImplementedError


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, np.ascontiguousarray(array)


class _Tensor:
    def __init__(self, storage: _Storage, rebuild: str):
        self.storage, self.rebuild = storage, rebuild

    def __reduce__(self):
        array = self.storage.array
        size = tuple(array.shape)
        stride = tuple(s // array.itemsize for s in array.strides)
        if self.rebuild == "v2":
            return (_Global("torch._utils", "_rebuild_tensor_v2"),
                    (self.storage, 0, size, stride, False, collections.OrderedDict()))
        return _Global("torch._utils", "_rebuild_tensor"), (self.storage, 0, size, stride)


class _TorchPickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def _save_global_stub(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_global_stub

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        pid = ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", obj.array.size)
        return pid + (None,) if self.legacy else pid


def _torch_objects(state: dict, rebuild: str, first_key: int = 0):
    storages = {}
    tensors = collections.OrderedDict()
    for i, (name, value) in enumerate(state.items()):
        storage = _Storage(str(first_key + i), np.asarray(value, np.float32))
        storages[storage.key] = storage
        tensors[name] = _Tensor(storage, rebuild)
    tensors._metadata = collections.OrderedDict([("", {"version": 1})])
    return tensors, storages


def write_torch_zip(path, state: dict) -> None:
    """`torch.save(state)` (zip format, as torch 2.x writes it) without torch."""
    tensors, storages = _torch_objects(state, "v2")
    buffer = io.BytesIO()
    _TorchPickler(buffer, legacy=False).dump(tensors)
    archive = Path(path).stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", buffer.getvalue())
        z.writestr(f"{archive}/byteorder", "little")
        for key in sorted(storages):
            z.writestr(f"{archive}/data/{key}", storages[key].array.tobytes())
        z.writestr(f"{archive}/version", "3\n")
        z.writestr(f"{archive}/.data/serialization_id", "1234567890123456789012345678901234567890")


def write_torch_legacy(path, state: dict) -> None:
    """`torch.save(state)` in the legacy (torch < 1.6) format, tensors as torch 0.x pickled them."""
    tensors, storages = _torch_objects(state, "v1", first_key=94000000000000)
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump(sys_info, f, protocol=2)
        _TorchPickler(f, legacy=True).dump(tensors)
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            f.write(struct.pack("<q", storages[key].array.size))
            f.write(storages[key].array.tobytes())


# ----------------------------------------------------------------------------- numpy reference

def _conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """NCHW conv, OIHW weight, padding 1 (torch.nn.Conv2d(k=3, padding=1))."""
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = sum(np.einsum("nchw,oc->nohw", padded[:, :, i:i + h, j:j + w], weight[:, :, i, j],
                        optimize=True) for i in range(3) for j in range(3))
    return out + bias[None, :, None, None]


def _max_pool(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def torch_reference(state: dict, images_nhwc: np.ndarray) -> dict:
    """Every tap of a torchvision/timm VGG-16 state dict, in float64 NCHW semantics -> NHWC."""
    x = np.asarray(images_nhwc, np.float64).transpose(0, 3, 1, 2)
    taps = {}
    index, block, conv = 0, 1, 1
    for v in CFG:
        if v == "M":
            x = _max_pool(x)
            taps[f"pool{block}"] = x
            index, block, conv = index + 1, block + 1, 1
            continue
        x = _conv3x3(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"])
        taps[f"conv{block}_{conv}"] = x
        x = np.maximum(x, 0)
        taps[f"relu{block}_{conv}"] = x
        index, conv = index + 2, conv + 1
    if "classifier.0.weight" in state:
        x = x.reshape(x.shape[0], -1)
        x = np.maximum(x @ state["classifier.0.weight"].T + state["classifier.0.bias"], 0)
        taps["fc6"] = x
        x = np.maximum(x @ state["classifier.3.weight"].T + state["classifier.3.bias"], 0)
        taps["fc7"] = x
        taps["logits"] = x @ state["classifier.6.weight"].T + state["classifier.6.bias"]
    else:
        fc1 = np.einsum("nchw,ochw->no", x, state["pre_logits.fc1.weight"])
        x = np.maximum(fc1 + state["pre_logits.fc1.bias"], 0)
        taps["fc6"] = x
        fc2 = state["pre_logits.fc2.weight"][:, :, 0, 0]
        x = np.maximum(x @ fc2.T + state["pre_logits.fc2.bias"], 0)
        taps["fc7"] = x
        taps["logits"] = x @ state["head.fc.weight"].T + state["head.fc.bias"]
    return {k: (v.transpose(0, 2, 3, 1) if v.ndim == 4 else v) for k, v in taps.items()}


# ----------------------------------------------------------------------------- Flax params

def random_params(model, seed: int = 0, positive: bool = False) -> dict:
    """He-scaled random params for a `VGG16` (numpy; no XLA compile, unlike `model.init`)."""
    rng = np.random.default_rng(seed)

    def draw(shape_dtype):
        shape = shape_dtype.shape
        if len(shape) == 1:
            values = rng.normal(0, 0.1, shape)
        else:
            values = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        return (np.abs(values) if positive else values).astype(np.float32)

    return jax.tree.map(draw, param_shapes(model))
