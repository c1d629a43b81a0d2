"""Reads a PyTorch state dict (`torch.save(model.state_dict())`) into numpy, without torch.

Both formats `torch.save` has written are read:
* zip (torch >= 1.6): records `<archive>/data.pkl` (the pickle) and `<archive>/data/<key>`
  (the raw bytes of each storage), plus `<archive>/byteorder` and `<archive>/version`;
* legacy (torch < 1.6; torchvision's `vgg16-397923af.pth` of 2017 is one): a stream of
  pickles (magic number, protocol version, sys info, the state dict, the storage keys), then
  per storage an int64 element count and its bytes.
In both, storages appear in the pickle as persistent ids `('storage', <type>, key, location,
numel[, view])` and tensors as calls of `torch._utils._rebuild_tensor[_v2]`. The unpickler
resolves only those globals, the storage types and `collections.OrderedDict`; any other
global (a pickled module, arbitrary code) is refused before it is touched.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import sys
import zipfile
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": jnp.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType(NamedTuple):
    dtype: np.dtype


class _Storage:
    """One storage: `numel` elements of `dtype`; `data` is filled once its bytes are read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), int(numel)
        self.data: np.ndarray | None = None


class _StorageView(NamedTuple):
    storage: _Storage
    offset: int


class _TensorRef(NamedTuple):
    view: _StorageView
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles tensors as `_TensorRef`s into `storages`; refuses every other global."""

    def __init__(self, file, storages: dict[str, _Storage], path: str):
        super().__init__(file, encoding="utf-8")
        self.storages = storages
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _GLOBALS:
            return _GLOBALS[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        raise pickle.UnpicklingError(
            f"{self.path}: refusing to load global {module}.{name}; only state dicts of tensors "
            "can be read (save model.state_dict(), not the model)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and _text(pid[0]) == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"{self.path}: unknown persistent id {pid!r:.80}")
        storage_type, key, _, numel = pid[1:5]
        key = _text(key)
        storage = self.storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        view = pid[5] if len(pid) > 5 else None
        return _StorageView(storage, 0 if view is None else int(view[1]))


def _text(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torch state dict file -> {name: numpy array} (zip or legacy format, see module doc)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        state, storages = _read_zip(path)
    else:
        state, storages = _read_legacy(path)
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    missing = [s.key for s in storages.values() if s.data is None]
    if missing:
        raise ValueError(f"{path}: storages {missing} have no data; the file is truncated")
    return {str(name): _materialize(ref, path, name) for name, ref in state.items()}


def _read_zip(path: str):
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: a zip file, but no torch checkpoint (no <archive>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in archive.namelist():
            order = archive.read(prefix + "byteorder").decode("ascii")
        with archive.open(pickles[0]) as f:
            state = _StateDictUnpickler(f, storages, path).load()
        for key, storage in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            storage.data = _from_bytes(raw, storage, order, path)
    return state, storages


def _read_legacy(path: str):
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        try:
            magic = _StateDictUnpickler(f, storages, path).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise ValueError(f"{path}: not a torch checkpoint ({err})") from None
        if magic != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a torch checkpoint (bad magic number)")
        protocol = _StateDictUnpickler(f, storages, path).load()
        if protocol != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported torch legacy protocol {protocol}")
        sys_info = _StateDictUnpickler(f, storages, path).load()
        order = "little" if sys_info.get("little_endian", True) else "big"
        state = _StateDictUnpickler(f, storages, path).load()
        keys = _StateDictUnpickler(f, storages, path).load()
        for key in keys:
            storage = storages[_text(key)]
            count_bytes = f.read(8)
            if len(count_bytes) != 8:
                raise ValueError(f"{path}: truncated at storage {key}")
            numel = struct.unpack("<q" if order == "little" else ">q", count_bytes)[0]
            raw = f.read(numel * storage.dtype.itemsize)
            storage.data = _from_bytes(raw, storage, order, path)
    return state, storages


def _from_bytes(raw: bytes, storage: _Storage, order: str, path: str) -> np.ndarray:
    if len(raw) != storage.numel * storage.dtype.itemsize:
        raise ValueError(f"{path}: storage {storage.key} has {len(raw)} bytes, expected "
                         f"{storage.numel} x {storage.dtype.itemsize}; the file is truncated")
    data = np.frombuffer(raw, storage.dtype)
    return data if order == sys.byteorder else data.byteswap()


def _materialize(ref: _TensorRef, path: str, name) -> np.ndarray:
    data = ref.view.storage.data
    start = ref.view.offset + ref.offset
    last = start + sum((n - 1) * s for n, s in zip(ref.size, ref.stride) if n > 0)
    if start < 0 or (all(ref.size) and last >= data.size):
        raise ValueError(f"{path}: tensor {name} lies outside its storage")
    strides = tuple(s * data.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(data[start:], shape=ref.size, strides=strides)
    return np.array(view)
