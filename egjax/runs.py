"""Run directories written atomically: everything goes to a hidden temporary sibling, which
is renamed into place only when the run has finished, so an interrupted run leaves no
half-written results."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import uuid


@contextlib.contextmanager
def run_directory(path, *, overwrite: bool = False):
    """`with run_directory("runs/name") as tmp:` write into `tmp`; on success it becomes
    `runs/name` (replacing an earlier run only with `overwrite`); on error it is removed."""
    path = pathlib.Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another run name or pass overwrite")
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        yield staging
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path, data) -> None:
    """`data` as JSON with a trailing newline, written to a temporary sibling and renamed
    into place, so `path` is never half-written."""
    path = pathlib.Path(path)
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        staging.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
