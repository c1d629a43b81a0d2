"""Run folders `runs/<name>/`, written atomically, and nothing outside them touched.

    target = runs.prepare("runs", "bird", overwrite=False)   # before any computation
    ...
    with runs.run_directory(target, overwrite=False) as out:
        runs.write_json(out / "metrics.json", metrics)

`prepare` refuses a name that is not one plain folder name, creates the runs folder and
checks that it can be written, so a bad folder fails in a second, not after the work.
`run_directory` writes into a hidden temporary sibling that is renamed into place once
complete: an interrupted run leaves nothing, and an earlier run it replaces stays whole
until the new one is in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
import uuid


def check_name(name: str) -> str:
    """`name` if it is one plain path component (not empty, not `.` or `..`, no separator);
    ValueError otherwise."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if (not isinstance(name, str) or name in ("", ".", "..")
            or any(s in name for s in separators) or "\0" in name):
        raise ValueError(f"a run name must be one plain folder name (not empty, not '.' or "
                         f"'..', no '/'), got {name!r}")
    return name


def check_writable(folder) -> pathlib.Path:
    """Creates `folder` (and its parents) if missing and writes and removes a probe file in
    it; OSError naming the folder and the reason if that fails. Returns the absolute path."""
    folder = pathlib.Path(folder).absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".egjax-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:     # the same kind of OSError, one line, no "[Errno n]"
        raise type(error)(f"cannot write to {folder}: {error.strerror or error}") from None
    return folder


def prepare(runs, name: str, *, overwrite: bool = False) -> pathlib.Path:
    """The absolute path `runs/<name>` of a new run, checked before any work: `name` is one
    plain folder name (ValueError), `runs` can be written (OSError), and `runs/<name>` does
    not exist unless `overwrite` (FileExistsError) and is a folder if it does (ValueError)."""
    check_name(name)
    target = check_writable(runs) / name
    _check_target(target, overwrite)
    return target


def _check_target(path: pathlib.Path, overwrite: bool) -> None:
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists (overwrite replaces it)")
        if path.is_symlink() or not path.is_dir():
            raise ValueError(f"{path} exists and is not a folder; it is not replaced")


@contextlib.contextmanager
def run_directory(path, *, overwrite: bool = False):
    """`with run_directory("runs/name") as tmp:` write into `tmp`; on success it becomes
    `runs/name` (replacing an earlier run only with `overwrite`); on error it is removed."""
    path = pathlib.Path(path).absolute()
    if path.name in ("", ".", ".."):
        raise ValueError(f"{path} is not a run folder path")
    _check_target(path, overwrite)
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        yield staging
        swap_in(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap_in(new: pathlib.Path, path: pathlib.Path) -> None:
    """Renames the folder `new` to `path`. What was at `path` is moved aside first and
    deleted only once `new` is in place; if that rename fails, it is moved back."""
    if not path.exists():
        os.replace(new, path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
