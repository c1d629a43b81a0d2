"""Reading dataset files: images and .mat annotations, missing and unreadable files.

A missing folder or file that a dataset needs is a FileNotFoundError that names the archive
to extract and where. An unreadable file (a truncated JPEG, a corrupt .mat) is skipped and
counted: the loader ends with one `SkippedFilesWarning` naming them, or, with strict=True,
stops at the first with a `CorruptFileError`. The parsers' own exceptions never escape.
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Callable

NAMED = 20  # skipped files named in the warning; the rest are counted


class CorruptFileError(ValueError):
    """A dataset file that cannot be read (strict=True)."""


class SkippedFilesWarning(UserWarning):
    """Files skipped because they cannot be read."""


class BadFiles:
    """Collects unreadable files while a dataset is read; `strict` raises at the first."""

    def __init__(self, dataset: str, strict: bool):
        self.dataset = dataset
        self.strict = strict
        self.skipped: list[tuple[str, str]] = []

    def skip(self, path: pathlib.Path | str, reason: str) -> None:
        if self.strict:
            raise CorruptFileError(f"{self.dataset}: cannot read {path}: {reason} "
                                   "(without strict, unreadable files are skipped with a warning)")
        self.skipped.append((str(path), reason))

    def warn(self) -> None:
        """One warning for everything skipped so far (nothing if none), then forgets them."""
        if not self.skipped:
            return
        named = "; ".join(f"{path} ({reason})" for path, reason in self.skipped[:NAMED])
        more = len(self.skipped) - NAMED
        warnings.warn(f"{self.dataset}: skipped {len(self.skipped)} unreadable file(s): {named}"
                      + (f"; and {more} more" if more > 0 else ""), SkippedFilesWarning,
                      stacklevel=3)
        self.skipped = []


def attempt(bad: BadFiles, path: pathlib.Path, function: Callable, *args, what: str = ""):
    """`function(*args)`, or None with `path` reported to `bad` if it raises: whatever a parser
    raises on a bad file means an unreadable file, never a traceback from inside it."""
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 - see the docstring
        reason = f"{what}{type(error).__name__}: {error}".rstrip(": ")
    bad.skip(path, reason)  # outside the except: a strict error does not chain the parser's
    return None


def _decode(path: pathlib.Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")


def read_image(path: pathlib.Path, bad: BadFiles):
    """The image at `path` decoded as a PIL RGB image, or None (reported to `bad`)."""
    return attempt(bad, path, _decode, path)


def read_mat(path: pathlib.Path, bad: BadFiles) -> dict | None:
    """A MATLAB v5 file's variables (scipy.io.loadmat), or None (reported to `bad`)."""
    import scipy.io

    return attempt(bad, path, scipy.io.loadmat, path)


def open_mat73(path: pathlib.Path, bad: BadFiles):
    """A MATLAB v7.3 (HDF5) file opened with h5py, or None (reported to `bad`)."""
    import h5py

    return attempt(bad, path, h5py.File, path, "r")


def require(path: pathlib.Path, dataset: str, remedy: str) -> pathlib.Path:
    """`path` if it exists, else a FileNotFoundError naming it and saying what to extract."""
    if not path.exists():
        raise FileNotFoundError(f"{dataset}: {path} not found: {remedy}")
    return path


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The image files under `folder` (recursive), sorted by relative path."""
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file()),
                  key=lambda p: p.relative_to(folder).as_posix())
