"""Published ImageNet weight files, their publishers' checksums, and a local cache (VGG-16's
table is here; ResNet-50's is `resnet_weights.PUBLISHED`).

Nothing here runs at import. `fetch(name)` returns the cached file, downloading it first
where a network exists; every file, cached or new, is checked against the checksum its
publisher pins:
* "keras", "keras-notop": the md5 hashes in Keras' `keras/applications/vgg16.py`;
* "torchvision": the sha256 prefix in the file name (`vgg16-397923af.pth`), as torch.hub checks;
* "timm": `timm/vgg16.tv_in1k` on the Hugging Face Hub; neither timm nor the Hub pins a hash in
  code, so the file is not verified (its sha256 is printed; the shape checks of `load_vgg16`
  still refuse a file of another network).
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from egjax.progress import Step

DEFAULT_CACHE = "~/.cache/egjax"


class Published(NamedTuple):
    """A published weights file: where it lives and the checksum (or prefix) that pins it."""

    filename: str
    url: str
    algorithm: str
    digest: str | None
    preprocessing: str


PUBLISHED = {
    "keras": Published(
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        "md5", "64373286793e3c8b2b4e3219cbf3544b", "caffe"),
    "keras-notop": Published(
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "md5", "6d6bbae143d832006294945121d1f1fc", "caffe"),
    "torchvision": Published(
        "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
        "sha256", "397923af", "torch"),
    "timm": Published(
        "vgg16.tv_in1k.safetensors",
        "https://huggingface.co/timm/vgg16.tv_in1k/resolve/main/model.safetensors",
        "sha256", None, "torch"),
}


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | os.PathLike, entry: Published) -> str:
    """The file's digest; ValueError unless it matches (starts with) the pinned one."""
    actual = file_digest(path, entry.algorithm)
    _require_pinned(actual, entry, f"{path}", "it is corrupt or another file; delete it")
    return actual


def _require_pinned(actual: str, entry: Published, what: str, advice: str) -> None:
    if entry.digest is not None and not actual.startswith(entry.digest):
        raise ValueError(f"{what} fails its {entry.algorithm} check: expected {entry.digest}, "
                         f"got {actual}; {advice}")


def fetch(name: str, cache_dir: str | os.PathLike | None = None, *, quiet: bool = False,
          published: dict | None = None) -> Path:
    """Path of the published file `name` of `published` (default: VGG-16's `PUBLISHED`) in
    the cache, downloaded and verified if absent."""
    published = PUBLISHED if published is None else published
    if name not in published:
        raise ValueError(f"unknown published weights {name!r}; known: {', '.join(published)}")
    entry = published[name]
    cache = Path(DEFAULT_CACHE if cache_dir is None else cache_dir).expanduser()
    path = cache / entry.filename
    actual = verify(path, entry) if path.exists() else _download(entry, path, quiet=quiet)
    if entry.digest is None and not quiet:
        print(f"{path}: sha256 {actual} (not pinned by its publisher)", file=sys.stderr)
    return path



def locate(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
           quiet: bool = False, published: dict | None = None) -> tuple[Path, str]:
    """(path, name) of a weights source: a published name of `published` (default VGG-16's
    `PUBLISHED`; fetched and verified, see `fetch`) or an existing file."""
    published = PUBLISHED if published is None else published
    if isinstance(source, str) and source in published:
        return fetch(source, cache_dir, quiet=quiet, published=published), source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}; give a file or one of the "
                                f"published names {', '.join(published)}")
    return path, str(path)

def _download(entry: Published, path: Path, *, quiet: bool) -> str:
    """Downloads `entry` to `path` (via a temporary sibling); returns its verified digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        with urllib.request.urlopen(entry.url, timeout=60) as response, open(partial, "wb") as out:
            length = response.headers.get("Content-Length")
            size = None if length is None else int(length)
            total = None if size is None else round(size / 2**20)
            with Step(total, f"download {entry.filename}", "MiB", quiet=quiet) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk) / 2**20)
        if size is not None and partial.stat().st_size != size:
            raise OSError(f"got {partial.stat().st_size} of {size} bytes")
        actual = file_digest(partial, entry.algorithm)
        _require_pinned(actual, entry, f"the download of {entry.url}", "nothing was kept")
        os.replace(partial, path)
        return actual
    except (urllib.error.URLError, OSError) as err:
        raise FileNotFoundError(
            f"could not download {entry.url} ({err}). Without a network, download it elsewhere "
            f"and put it at {path} (or pass its path instead of the name)") from None
    finally:
        partial.unlink(missing_ok=True)
