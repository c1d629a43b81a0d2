"""VGG-16 params + `ModelMeta` as a checkpoint directory: `params/` (orbax) and `meta.json`.

Written to a temporary sibling directory, then renamed into place, so `path` never holds a
half-written checkpoint. Reading checks every layer against the model the meta describes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from egjax.models.meta import ModelMeta
from egjax.models.vgg import VGG16, check_params


def save_checkpoint(path: str | os.PathLike, params: dict, meta: ModelMeta) -> Path:
    """Writes `params` (checked against `meta.model()`) and `meta` to directory `path`, atomically.

    An existing checkpoint at `path` is replaced.
    """
    path = Path(path).absolute()
    check_params(params, meta.model(), "params to save")
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / "params", jax.tree.map(jnp.asarray, params))
        checkpointer.wait_until_finished()
        (staging / "meta.json").write_text(json.dumps(meta.to_dict(), indent=1) + "\n")
        _replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _replace(new: Path, path: Path) -> None:
    if not path.exists():
        os.replace(new, path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike) -> tuple[VGG16, dict, ModelMeta]:
    """(model, params, meta) from a directory written by `save_checkpoint`.

    ValueError naming the layer if a layer is missing, unexpected or has the wrong shape.
    """
    path = Path(path).absolute()
    if not (path / "meta.json").is_file() or not (path / "params").is_dir():
        raise FileNotFoundError(f"{path} is not an egjax model checkpoint (needs meta.json and "
                                "params/)")
    meta = ModelMeta.from_dict(json.loads((path / "meta.json").read_text()))
    model = meta.model()
    params = ocp.StandardCheckpointer().restore(path / "params")
    check_params(params, model, str(path))
    params = jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), params)
    return model, params, meta
