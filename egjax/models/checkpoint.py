"""A network's params + its `ModelMeta` (which records the architecture) as one checkpoint
directory (`egjax.checkpoint`: orbax, atomic, every file checksummed).

Writing refuses non-finite parameters; reading verifies the checksums and checks every layer
against the model the meta describes.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp

from egjax import checkpoint
from egjax.models.contract import check_finite, check_params
from egjax.models.meta import ModelMeta

KIND = "network"


def save_checkpoint(path: str | os.PathLike, params: dict, meta: ModelMeta) -> Path:
    """Writes `params` (checked against `meta.model()`) and `meta` to directory `path`, atomically.

    An existing checkpoint at `path` is replaced once the new one is complete.
    """
    check_params(params, meta.model(), "params to save")
    check_finite(params, "params to save")
    return checkpoint.save(path, jax.tree.map(jnp.asarray, params), meta.to_dict(),
                           kind=KIND, overwrite=True)


def load_checkpoint(path: str | os.PathLike) -> tuple[object, dict, ModelMeta]:
    """(model, params, meta) from a directory written by `save_checkpoint`.

    ValueError naming the array if a file fails its checksum, and the layer if a layer is
    missing, unexpected or has the wrong shape; an explanatory graph is named as such.
    """
    path = Path(path).absolute()
    params, fields = checkpoint.load(path, kind=KIND)
    if not isinstance(fields, dict):
        raise ValueError(f"{path} is not an egjax model checkpoint (its meta is not a dict)")
    meta = ModelMeta.from_dict(fields)
    model = meta.model()
    check_params(params, model, str(path))
    params = jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), params)
    return model, params, meta
