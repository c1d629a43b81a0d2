"""Atomic checkpoints of an array pytree plus JSON metadata, with orbax.

One directory per checkpoint, written by orbax to a temporary path and renamed when
complete, so an interrupted save leaves nothing that looks like a checkpoint. Overwriting
writes the new checkpoint beside the old one and swaps them only once it is complete.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import uuid

import orbax.checkpoint as ocp


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save(path, tree, meta: dict, *, overwrite: bool = False) -> pathlib.Path:
    """Write `tree` (arrays) and `meta` (JSON-serialisable) to the directory `path`."""
    path = pathlib.Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _checkpointer().save(staging, ocp.args.Composite(arrays=ocp.args.StandardSave(tree),
                                                         meta=ocp.args.JsonSave(meta)))
        _swap_in(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _swap_in(new: pathlib.Path, path: pathlib.Path) -> None:
    """Rename `new` to `path`, removing what was at `path` only once `new` is there."""
    if not path.exists():
        os.replace(new, path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def load(path) -> tuple[dict, dict]:
    """Read `(tree, meta)` written by `save`; a clear error if `path` is not such a checkpoint."""
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        restored = _checkpointer().restore(path, ocp.args.Composite(
            arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except Exception as error:  # orbax raises many types for unreadable checkpoints
        raise ValueError(f"{path} is not a readable egjax checkpoint: {error}") from error
    return restored["arrays"], restored["meta"]
