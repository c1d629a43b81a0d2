"""The dataset contract's functions: load, iter_objects, negatives, iter_negatives,
describe.

    objects = egjax.data.load("pascal_part", "~/data/pascal", "cow")       # ObjectSet, all N
    for batch in egjax.data.iter_objects("cub200", root, "bird", split="test", batch_size=64,
                                         shard=(jax.process_index(), jax.process_count())):
        ...                                                              # ObjectSet, <= 64

A source (`egjax.data.source`) indexes the objects; here they are limited, sharded, read in
batches (images decoded on a few threads, each image once per batch) and cropped
(`egjax.data.crop`). Memory while streaming is one batch plus the index.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import pathlib
from typing import Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from egjax.data import crop, registry
from egjax.data.files import BadFiles, read_image
from egjax.data.objects import ObjectSet, empty
from egjax.data.source import Description, Entry, Index, check_choice
from egjax.data.sources import folder

THREADS = min(4, os.cpu_count() or 1)  # image decoding and resampling release the GIL


def names() -> tuple[str, ...]:
    """The datasets `load` knows."""
    return registry.names()


def describe(name: str) -> Description:
    """A dataset's categories, parts, splits, default landmarks and folder layout
    (`print(describe(name))` for the text)."""
    return registry.get(name).DESCRIPTION


def instability_parts(name: str, category: str) -> tuple[str, ...] | None:
    """The parts whose landmarks the location-instability metric uses by default: the authors'
    choice (pascal_part: head, neck, torso; cub200: back, forehead, tail; ilsvrc_animal_part:
    head, front_legs); None: all of the loaded set's parts. `select_parts` applies it."""
    return describe(name).instability_parts(category)


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check(name: str, split: str, image_size: int, limit, shard, batch_size: int = 1):
    source = registry.get(name)
    check_choice(name, "split", split, source.DESCRIPTION.splits)
    _check_int("image_size", image_size, 8)
    _check_int("batch_size", batch_size, 1)
    if limit is not None:
        _check_int("limit", limit, 1)
    if (not isinstance(shard, tuple) or len(shard) != 2 or not all(
            isinstance(v, (int, np.integer)) for v in shard) or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    return source


def _root(root) -> pathlib.Path | None:
    return None if root is None else pathlib.Path(root).expanduser()


def _share(entries: list[Entry], limit: int | None, shard: tuple[int, int]) -> list[Entry]:
    """The first `limit` entries, then this shard's share: every count-th from index."""
    return entries[:limit][shard[0]::shard[1]]


class ObjectStream:
    """Batches of objects (ObjectSet, <= batch_size each), read as they are iterated.

    `total` objects are indexed for this shard; files found unreadable while reading are
    skipped (one warning at the end) unless strict, so the batches may hold fewer.
    """

    def __init__(self, name: str, index: Index, entries: list[Entry], image_size: int,
                 batch_size: int, bad: BadFiles, quiet: bool):
        self.name, self.index, self.entries = name, index, entries
        self.image_size, self.batch_size, self.bad, self.quiet = image_size, batch_size, bad, quiet

    @property
    def category(self) -> str:
        return self.index.category

    @property
    def part_names(self) -> tuple[str, ...]:
        return self.index.part_names

    @property
    def total(self) -> int:
        """Objects indexed for this shard (unreadable images are skipped when read)."""
        return len(self.entries)

    @property
    def images(self) -> StreamImages:
        """The images, read when sliced (`StreamImages`)."""
        return StreamImages(self)

    def __iter__(self) -> Iterator[ObjectSet]:
        try:
            with concurrent.futures.ThreadPoolExecutor(THREADS) as pool, tqdm(
                    total=self.total, unit="obj", desc=f"{self.name} {self.category}",
                    disable=self.quiet, leave=False) as bar:
                for start in range(0, self.total, self.batch_size):
                    batch = self.entries[start:start + self.batch_size]
                    objects = _read_batch(batch, self.index, self.image_size, self.bad, pool)
                    bar.update(len(batch))
                    if len(objects):
                        yield objects
        finally:
            self.bad.warn()


class StreamImages:
    """The images of an `ObjectStream`, uint8 `[total, S, S, 3]` as an array that is read
    when sliced: `images[a:b]` reads objects a..b-1 only (unreadable ones skipped, so it
    may hold fewer). `features.negative_statistics(same_images=True)` takes it: under
    several processes each reads only the batches it runs."""

    def __init__(self, stream: ObjectStream):
        self.stream = stream
        self.dtype = np.dtype(np.uint8)
        self.shape = (stream.total, stream.image_size, stream.image_size, 3)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError(f"StreamImages reads slices (images[a:b]), got {index!r}")
        stream = self.stream
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            read = _read_batch(stream.entries[index], stream.index, stream.image_size,
                               stream.bad, pool)
        stream.bad.warn()
        return read.images


def _read_group(group: list[Entry], size: int,
                bad: BadFiles) -> list[tuple[Entry, tuple, np.ndarray, np.ndarray | None]]:
    """(entry, box, crop, mask crop or None) of entries that share one image (decoded once);
    a box reaching out
    of the image is clipped to it, as the original's getI.m does; None: the whole image."""
    source = group[0].image
    image = read_image(source, bad) if isinstance(source, pathlib.Path) else Image.fromarray(
        source())
    if image is None:
        return []
    height, width = float(image.height), float(image.width)
    read = []
    for entry in group:
        y0, x0, y1, x1 = entry.box or (0.0, 0.0, height, width)
        box = (max(y0, 0.0), max(x0, 0.0), min(y1, height), min(x1, width))
        if box[2] <= box[0] or box[3] <= box[1]:
            bad.skip(source, f"the box {entry.box} of {entry.id} lies outside the "
                             f"{image.height} x {image.width} image")
            continue
        read.append((entry, box, crop.crop_image(image, box, size),
                     None if entry.mask is None else crop.crop_mask(entry.mask(), box, size)))
    return read


def _read_batch(entries: Sequence[Entry], index: Index, size: int, bad: BadFiles,
               pool: concurrent.futures.Executor) -> ObjectSet:
    """Reads and crops `entries` (unreadable images skipped) into an ObjectSet."""
    groups = [list(g) for _, g in itertools.groupby(entries, key=lambda e: e.image)]
    read = [one for ones in pool.map(lambda g: _read_group(g, size, bad), groups) for one in ones]
    if not read:
        return empty(index.category, index.part_names, size)
    parts = len(index.part_names)
    landmarks = np.zeros((len(read), parts, 2), np.float32)
    for i, (entry, box, *_) in enumerate(read):
        if parts:
            landmarks[i] = np.nan_to_num(crop.to_crop(entry.points, box, size))
    masks = [mask for *_, mask in read]
    return ObjectSet(np.stack([pixels for _, _, pixels, _ in read]), landmarks,
                     np.array([e.visible for e, *_ in read], bool).reshape(len(read), parts),
                     index.part_names, np.array([box for _, box, *_ in read], np.float32),
                     tuple(e.id for e, *_ in read), index.category,
                     None if any(m is None for m in masks) else np.stack(masks))


def iter_objects(name: str, root, category: str, *, split: str = "all", image_size: int = 224,
                 min_area: float = 2500, limit: int | None = None, batch_size: int = 64,
                 shard: tuple[int, int] = (0, 1), strict: bool = False, quiet: bool = False,
                 seed: int = 0) -> ObjectStream:
    """The objects of `category` of dataset `name` (extracted under `root`) in batches.

    Objects come in the source's fixed order; `limit` keeps the first ones, then `shard =
    (index, count)` keeps every count-th from index (one share per process). Objects whose
    box area (source pixels) is below `min_area` are dropped. Unreadable files are skipped
    with one `SkippedFilesWarning`, or raise `CorruptFileError` with `strict`. `seed` draws the
    synthetic set (the others are files). The index is built now; pixels are read as the
    stream is iterated.
    """
    source = _check(name, split, image_size, limit, shard, batch_size)
    if not isinstance(min_area, (int, float, np.number)) or min_area < 0:
        raise ValueError(f"min_area must be a number >= 0, got {min_area!r}")
    bad = BadFiles(name, strict)
    index = source.index(_root(root), category, split=split, min_area=min_area,
                         image_size=image_size, limit=limit, seed=seed, bad=bad, quiet=quiet)
    if not index.entries:
        bad.warn()
        raise ValueError(f"{name}: no objects of {category!r} in split {split!r} with a box "
                         f"area >= {min_area} under {root}")
    return ObjectStream(name, index, _share(index.entries, limit, shard), image_size, batch_size,
                        bad, quiet)


def _gather(stream: ObjectStream) -> ObjectSet:
    """All batches of `stream` in one ObjectSet, filled in place (one copy of the pixels)."""
    size, parts, total = stream.image_size, len(stream.part_names), stream.total
    images = np.empty((total, size, size, 3), np.uint8)
    landmarks = np.empty((total, parts, 2), np.float32)
    visible = np.empty((total, parts), bool)
    boxes = np.empty((total, 4), np.float32)
    masks = np.empty((total, size, size), bool)   # dropped if a batch has none
    has_masks = True
    ids: list[str] = []
    for batch in stream:
        n, k = len(ids), len(batch)
        images[n:n + k], landmarks[n:n + k] = batch.images, batch.landmarks
        visible[n:n + k], boxes[n:n + k] = batch.visible, batch.boxes
        has_masks = has_masks and batch.masks is not None
        if has_masks:
            masks[n:n + k] = batch.masks
        ids += batch.ids
    n = len(ids)
    return ObjectSet(images[:n], landmarks[:n], visible[:n], stream.part_names, boxes[:n],
                     tuple(ids), stream.category, masks[:n] if has_masks and n else None)


def load(name: str, root, category: str, *, split: str = "all", image_size: int = 224,
         min_area: float = 2500, limit: int | None = None, shard: tuple[int, int] = (0, 1),
         strict: bool = False, quiet: bool = False, seed: int = 0) -> ObjectSet:
    """All objects of `category` of dataset `name` in one ObjectSet (see `iter_objects`)."""
    return _gather(iter_objects(name, root, category, split=split, image_size=image_size,
                                min_area=min_area, limit=limit, shard=shard, strict=strict,
                                quiet=quiet, seed=seed))


def negatives(name: str, root, category: str, *, split: str = "all", image_size: int = 224,
              limit: int | None = None, negatives_dir=None, shard: tuple[int, int] = (0, 1),
              strict: bool = False, quiet: bool = False, seed: int = 0) -> ObjectSet:
    """Whole images without `category`, resized to S x S: an ObjectSet without parts.

    pascal_part: the VOC images with no object of the category; synthetic: its backgrounds;
    the others have none of their own: give `negatives_dir`, a folder of images without the
    category (it overrides the dataset's own negatives too).
    """
    return _gather(iter_negatives(name, root, category, split=split, image_size=image_size,
                                  limit=limit, negatives_dir=negatives_dir, shard=shard,
                                  strict=strict, quiet=quiet, seed=seed))


def iter_negatives(name: str, root, category: str, *, split: str = "all",
                   image_size: int = 224, limit: int | None = None, negatives_dir=None,
                   shard: tuple[int, int] = (0, 1), strict: bool = False, quiet: bool = False,
                   seed: int = 0) -> ObjectStream:
    """`negatives` (same arguments) as a stream: indexed now, read as iterated or sliced
    (`ObjectStream.images`)."""
    source = _check(name, split, image_size, limit, shard)
    bad = BadFiles(name if negatives_dir is None else str(negatives_dir), strict)
    if negatives_dir is not None:
        entries = folder.whole_images(_root(negatives_dir), bad)
    elif source.negatives is None:
        raise ValueError(f"{name} has no negative images of its own: give negatives_dir, a "
                         f"folder of images without {category!r} (--negatives-dir in the "
                         "scripts)")
    else:
        entries = source.negatives(_root(root), category, split=split, image_size=image_size,
                                   limit=limit, seed=seed, bad=bad, quiet=quiet)
    if not entries:
        bad.warn()
        raise ValueError(f"{name}: no negative images for {category!r}"
                         + (f" in {negatives_dir}" if negatives_dir is not None else ""))
    index = Index(f"not {category}", (), entries)
    return ObjectStream(name, index, _share(entries, limit, shard), image_size, 64, bad, quiet)
