"""synthetic: the embedded procedural parts set (`egjax.data.synthetic`) through the contract.

Object i of (category, seed) is image i of `synthetic.sample(category, n, seed=seed,
image_size=S)`: the same pixels, landmarks and visibility, with box = the whole S x S image
(so the crop is the image itself), and the object's exact pixel mask from the renderer
(`ObjectSet.masks`, `scene.object_mask`). No files; `root` is ignored and `limit` is the number of
objects to draw (required). Negatives are `synthetic.negatives(n, seed=seed)`.
"""

from __future__ import annotations

import functools

import numpy as np

from egjax.data.source import Description, Entry, Index, check_choice
from egjax.data.synthetic import CATEGORIES, PARTS, sampling, scene

DESCRIPTION = Description(
    name="synthetic",
    title="the embedded procedural parts set: figures on cluttered backgrounds, exact landmarks",
    categories=CATEGORIES,
    parts=PARTS,
    splits=("all",),
    instability={},
    instability_default=None,
    layout="nothing to get: images are drawn on demand (root is ignored); limit = N images, "
           "seed chooses them",
    notes="`egjax.data.synthetic.describe()` says what each landmark marks.",
)


def _count(limit: int | None, seed: int, image_size: int) -> int:
    if limit is None:
        raise ValueError("synthetic: images are drawn on demand; give limit, the number of "
                         "images (--images in the scripts)")
    sampling.check_arguments(limit, seed, image_size)
    return limit


def _entry(category: str | None, i: int, seed: int, image_size: int) -> Entry:
    image, flip = sampling.draw(category, i, seed=seed, image_size=image_size)
    points = image.landmarks.astype(np.float64)
    if flip:
        points[:, 1] = image_size - 1 - points[:, 1]
    whole = (0.0, 0.0, float(image_size), float(image_size))
    render = functools.partial(sampling.paint, image, flip, image_size)
    visible = scene.visibility(image, image_size)
    mask = None if category is None else functools.partial(sampling.paint_mask, image, flip,
                                                            image_size)
    return Entry(f"seed{seed}-{i:06d}/0", render, whole, points, visible, mask)


def index(root, category: str, *, split: str, min_area: float, image_size: int,
          limit: int | None, seed: int, bad, quiet: bool) -> Index:
    """The first `limit` images of `synthetic.sample(category, ..., seed=seed)`."""
    check_choice("synthetic", "category", category, CATEGORIES)
    n = _count(limit, seed, image_size)
    keep = image_size * image_size >= min_area
    return Index(category, PARTS[category],
                 [_entry(category, i, seed, image_size) for i in range(n)] if keep else [])


def negatives(root, category: str, *, split: str, image_size: int, limit: int | None, seed: int,
              bad, quiet: bool) -> list[Entry]:
    """The first `limit` images of `synthetic.negatives(..., seed=seed)`."""
    check_choice("synthetic", "category", category, CATEGORIES)
    return [_entry(None, i, seed, image_size) for i in range(_count(limit, seed, image_size))]
