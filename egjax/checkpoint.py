"""Atomic, verified checkpoints of an array pytree plus JSON metadata, with orbax.

One directory per checkpoint:
* `arrays/`: the pytree, one zarr array per leaf, each in a folder of its own
  (`arrays/<key>/`, e.g. `arrays/conv4_2.kernel/`; orbax without OCDBT, which would pack all
  arrays into shared files);
* `meta/`: the JSON metadata (orbax);
* `manifest.json`: what the checkpoint holds (`kind`: "network", "explanatory graph") and
  the sha256 of every other file in the directory.

`load` verifies every file against the manifest before orbax reads any: a missing,
truncated or altered file is refused with an error naming the array (or the metadata) it
belongs to. Orbax thus never decodes bad bytes (a failed read inside its event loop leaves
"Event loop is closed" tracebacks behind), and what reaches the caller is one line.

Writing goes to a temporary sibling renamed into place when complete, so an interrupted
save leaves nothing that looks like a checkpoint; overwriting swaps the new checkpoint in
only once it is complete, and replaces only a checkpoint, never another folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import re
import shutil
import uuid

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.handlers.composite_checkpoint_handler import CompositeOptions

from egjax import distributed, runs

MANIFEST = "manifest.json"
FORMAT = "egjax.checkpoint/1"
ORBAX_MARKER = "_CHECKPOINT_METADATA"


class _SkipEmptyMerge(logging.Filter):
    """orbax 0.12 merges OCDBT files after every save and warns when, as here (no OCDBT),
    there are none to merge; that warning alone is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


def _checkpointer(together: bool = False) -> ocp.Checkpointer:
    """This process reads or writes the checkpoint alone (under `jax.distributed`, process 0
    writes run folders while the others wait; orbax would wait for them), or, `together`,
    every process writes its own shards of the arrays that span processes (orbax's
    default: process 0 writes the rest)."""
    alone = (ocp.options.MultiprocessingOptions() if together else
             ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                                active_processes={jax.process_index()}))
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
        arrays=ocp.StandardCheckpointHandler(use_ocdbt=False, multiprocessing_options=alone),
        meta=ocp.JsonCheckpointHandler(multiprocessing_options=alone),
        composite_options=CompositeOptions(multiprocessing_options=alone)),
        multiprocessing_options=alone)


def _spans_processes(a) -> bool:
    """Whether `a` is a `jax.Array` with shards on other processes' devices."""
    return isinstance(a, jax.Array) and not a.is_fully_addressable


def storable(a):
    """`a` as a host array, or as it is where it spans processes (every process then writes
    its own shards, see `save`)."""
    return a if _spans_processes(a) else np.asarray(a)


def check_target(path, *, overwrite: bool) -> pathlib.Path:
    """The absolute `path` if a checkpoint may be written there: nothing is there, or, with
    `overwrite`, a checkpoint (FileExistsError / ValueError otherwise)."""
    path = pathlib.Path(path).absolute()
    if path.name in ("", ".", ".."):
        raise ValueError(f"{path} is not a checkpoint path")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if path.is_symlink() or not (path / ORBAX_MARKER).is_file():
            raise ValueError(f"{path} exists and is not a checkpoint; it is not replaced")
    return path


def save(path, tree, meta: dict, *, kind: str, overwrite: bool = False) -> pathlib.Path:
    """Write `tree` (arrays) and `meta` (JSON-serialisable) to the directory `path`, with a
    manifest saying it holds a `kind` and the checksums of its files.

    Where `tree` holds arrays that span several processes (under `jax.distributed`, e.g. a
    graph's records sharded over the images), every process calls `save` with the same
    arguments and writes its own shards; process 0 writes the rest and puts the checkpoint in
    place, and every process returns once it is there. Else this process writes alone."""
    together = jax.process_count() > 1 and any(map(_spans_processes, jax.tree.leaves(tree)))
    path = check_target(path, overwrite=overwrite)
    token = distributed.agreed_token() if together else uuid.uuid4().hex
    staging = path.with_name(f".{path.name}.tmp-{token[:8]}")
    writer = not together or distributed.is_main()
    quiet = _SkipEmptyMerge()
    logging.getLogger("absl").addFilter(quiet)
    try:
        _checkpointer(together).save(staging, ocp.args.Composite(
            arrays=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
        if writer:
            manifest = {"format": FORMAT, "kind": kind, "sha256": _digests(staging)}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True)
                                            + "\n")
            runs.swap_in(staging, path)
    finally:
        logging.getLogger("absl").removeFilter(quiet)
        if writer:
            shutil.rmtree(staging, ignore_errors=True)
    if together:
        distributed.leave_together(f"checkpoint {token}")
    return path


def load(path, *, kind: str) -> tuple[dict, dict]:
    """Read `(tree, meta)` written by `save` for a `kind`, after verifying every file.

    FileNotFoundError if there is no directory; ValueError (one line) if it is not an egjax
    checkpoint, holds another kind, or a file is missing or fails its checksum (naming the
    array), or orbax cannot read it.
    """
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    manifest = _manifest(path)
    if manifest["kind"] != kind:
        raise ValueError(f"{path} is {_article(manifest['kind'])} checkpoint, not "
                         f"{_article(kind)} checkpoint")
    _verify(path, manifest["sha256"])
    try:   # onto this process's first device, whichever device wrote it
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        stored = _checkpointer().metadata(path).item_metadata["arrays"].tree
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local),
                              stored)
        restored = _checkpointer().restore(path, ocp.args.Composite(
            arrays=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as error:  # orbax raises many types for unreadable checkpoints
        raise ValueError(f"{path} is not a readable egjax checkpoint: "
                         f"{_one_line(error)}") from None
    return restored["arrays"], restored["meta"]


def _digests(directory: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by path relative to it ('/'-separated)."""
    return {file.relative_to(directory).as_posix(): _sha256(file)
            for file in sorted(directory.rglob("*")) if file.is_file()}


def _sha256(file: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(path: pathlib.Path) -> dict:
    file = path / MANIFEST
    if not file.is_file():
        raise ValueError(f"{path} is not a readable egjax checkpoint: it has no {MANIFEST} "
                         f"(the checksums of its files; a checkpoint written before egjax "
                         f"recorded them must be written again)")
    try:
        manifest = json.loads(file.read_text())
        if manifest["format"] != FORMAT:
            raise ValueError(f"format {manifest['format']!r}, expected {FORMAT!r}")
        if not (isinstance(manifest["kind"], str) and isinstance(manifest["sha256"], dict)):
            raise ValueError("kind or sha256 missing")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a readable egjax checkpoint: its {MANIFEST} is "
                         f"unreadable ({_one_line(error)})") from None
    return manifest


def _verify(path: pathlib.Path, digests: dict[str, str]) -> None:
    """ValueError naming every array (or other part) with a missing or altered file."""
    missing, altered = [], []
    for name, expected in digests.items():
        file = path / name
        if not file.is_file():
            missing.append(_part(name, digests))
        elif _sha256(file) != expected:
            altered.append(_part(name, digests))
    if missing or altered:
        problems = ([f"missing: {', '.join(dict.fromkeys(missing))}"] if missing else []) + (
            [f"fails its checksum: {', '.join(dict.fromkeys(altered))}"] if altered else [])
        raise ValueError(f"{path} is corrupt ({'; '.join(problems)}); it is not loaded")


def _part(name: str, digests: dict) -> str:
    """What the checkpoint file `name` holds: an array, the metadata, or orbax's own records."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "arrays" and f"arrays/{parts[1]}/.zarray" in digests:
        return f"array {parts[1]!r}"
    if parts[0] == "meta":
        return f"the metadata ({name})"
    return f"orbax record {name}"


def _one_line(error: BaseException) -> str:
    """The innermost cause of `error`, on one line, without TensorStore's object reprs."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = re.split(r"\s*See full TensorStore details", str(error))[0]
    return " ".join(text.split()) or type(error).__name__


def _article(kind: str) -> str:
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"
