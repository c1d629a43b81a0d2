"""Reads Keras HDF5 weights in the legacy layout of the Keras application releases.

The layout (Keras 1/2 `save_weights` and `model.save` .h5 files, and the published
`vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5`): the root group, or its `model_weights`
group in a whole-model file, has the attribute `layer_names`; each layer is a group of that
name whose attribute `weight_names` lists its datasets' paths relative to the group. Weight
names vary with the Keras version that wrote the file: `block1_conv1_W_1:0` and
`block1_conv1_b_1:0` (the release files), `block1_conv1/kernel:0` (tf.keras 2),
`block1_conv1/kernel` (Keras 3); batch norm's `gamma`, `beta`, `moving_mean`, `moving_variance`
likewise. Conv kernels are HWIO ("tf_kernels"), dense kernels [in, out].
"""

from __future__ import annotations

import os
import re

import h5py
import numpy as np

_ROLE = re.compile(r"(?:^|[/_])(?P<role>W|kernel|b|bias|gamma|beta|moving_mean|moving_variance)"
                   r"(?:_\d+)?(?::\d+)?$")
ROLES = {"W": "kernel", "kernel": "kernel", "b": "bias", "bias": "bias", "gamma": "gamma",
         "beta": "beta", "moving_mean": "mean", "moving_variance": "variance"}


def _names(attrs, key: str) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in attrs.get(key, [])]


def read_keras_h5(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """A legacy Keras weights file -> {layer name: {role: array}}, roles "kernel", "bias" and,
    for batch norm, "gamma", "beta", "mean", "variance".

    Only layers with weights appear. ValueError if the file has no legacy layout or a weight
    name has none of those roles.
    """
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not an HDF5 file ({err})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layer_names = _names(root.attrs, "layer_names")
        if not layer_names:
            raise ValueError(f"{path}: not a Keras HDF5 weights file in the legacy layout (no "
                             "'layer_names' attribute; Keras 3 '.weights.h5' files differ)")
        layers = {}
        for layer in layer_names:
            group = root[layer]
            weights = {}
            for weight in _names(group.attrs, "weight_names"):
                match = _ROLE.search(weight)
                if match is None:
                    raise ValueError(f"{path}: layer {layer!r} has weight {weight!r}, which is "
                                     f"none of {', '.join(ROLES)}")
                role = ROLES[match["role"]]
                if role in weights:
                    raise ValueError(f"{path}: layer {layer!r} has two {role}s")
                weights[role] = np.asarray(group[weight][()])
            if weights:
                layers[layer] = weights
    return layers
