"""Public sampling API: object batches with landmarks, negatives, mirroring, classifier batches.

Image i of a call depends only on (seed, stream, i), never on n: its random generator is
`SeedSequence(seed, spawn_key=(stream, i))`, the stream naming what is drawn (one per
category, one for negatives, one for mixed batches).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from egjax.data.synthetic import scene
from egjax.data.synthetic.categories import CANONICAL_FACING, CATEGORIES, PARTS

FACINGS = ("random", "left", "right")
_STREAMS = {"negatives": 0, "mixed": 1, "quadruped": 2, "bird": 3, "vehicle": 4}


class Batch(NamedTuple):
    """Images of one category with their part landmarks (parts in `PARTS[category]` order)."""

    images: np.ndarray  # uint8 [n, H, W, 3]
    landmarks: np.ndarray  # float32 [n, P, 2] (h, w) px, 0-based, pixel centres at integers
    visible: np.ndarray  # bool [n, P]: inside the image, no shape drawn over it within 1.5 px
    mirrored: np.ndarray  # bool [n]: facing left, i.e. flipped from the canonical right facing
    category: str


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low
            or (high is not None and value > high)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_arguments(n, seed, image_size) -> None:
    """ValueError unless n >= 1, seed >= 0 and 64 <= image_size <= 1024 (ints)."""
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    _check_int("image_size", image_size, 64, 1024)


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
    sequence = np.random.SeedSequence(int(seed), spawn_key=(_STREAMS[stream], index))
    return np.random.default_rng(sequence)


def _draw(rng: np.random.Generator, category: str | None,
          image_size: int) -> tuple[scene.Scene, bool]:
    """A random scene (canonical facing) and whether it is to be mirrored (a fair coin)."""
    flip = bool(rng.random() < 0.5)
    return scene.make_scene(rng, category, image_size), flip


def draw(category: str | None, index: int, *, seed: int,
         image_size: int) -> tuple[scene.Scene, bool]:
    """Image `index` of `sample(category, n, seed=seed, image_size=image_size)` for any n >
    index (of `negatives(...)` for category None), unpainted: its scene in the canonical
    facing and its coin (mirrored, where the facing is random)."""
    stream = "negatives" if category is None else category
    return _draw(_rng(seed, stream, index), category, image_size)


def paint(image: scene.Scene, flip: bool, image_size: int) -> np.ndarray:
    """`image` rendered: uint8 [S, S, 3], W-reversed if `flip`."""
    out = np.empty((image_size, image_size, 3), np.uint8)
    _paint(out, image, flip, np.empty((3, image_size, image_size), np.float32))
    return out


def paint_mask(image: scene.Scene, flip: bool, image_size: int) -> np.ndarray:
    """The object's pixels in `paint(image, flip, image_size)`: bool [S, S]
    (`scene.object_mask`, W-reversed if `flip`; all False without an object)."""
    mask = scene.object_mask(image, image_size)
    return np.ascontiguousarray(mask[:, ::-1]) if flip else mask


def _paint(out: np.ndarray, image: scene.Scene, flip: bool, canvas: np.ndarray) -> None:
    """Render `image` on the scratch `canvas` float32 [3, S, S] and store it rounded into
    `out` uint8 [S, S, 3], W-reversed if `flip`."""
    scene.render(image, canvas)
    canvas += 0.5
    np.clip(canvas, 0.0, 255.0, out=canvas)
    pixels = canvas.transpose(1, 2, 0)
    out[...] = pixels[:, ::-1] if flip else pixels


def sample(category: str, n: int, *, seed: int, image_size: int = 224,
           facing: str = "random") -> Batch:
    """n images of `category` on cluttered backgrounds with their landmarks.

    facing: "right" (canonical), "left" (mirrored) or "random" (each image flips a coin); the
    pose is the same for every facing, so `sample(..., facing="left")` equals
    `mirror(sample(..., facing="right"))`.
    """
    if category not in PARTS:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    check_arguments(n, seed, image_size)
    if facing not in FACINGS:
        raise ValueError(f"facing must be one of {FACINGS}, got {facing!r}")
    parts = len(PARTS[category])
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    landmarks = np.empty((n, parts, 2), np.float32)
    visible = np.empty((n, parts), bool)
    mirrored = np.empty(n, bool)
    canvas = np.empty((3, image_size, image_size), np.float32)
    for i in range(n):
        image, coin = draw(category, i, seed=seed, image_size=image_size)
        mirrored[i] = coin if facing == "random" else facing != CANONICAL_FACING
        _paint(images[i], image, mirrored[i], canvas)
        landmarks[i] = image.landmarks
        visible[i] = scene.visibility(image, image_size)
    landmarks[mirrored, :, 1] = image_size - 1 - landmarks[mirrored, :, 1]
    return Batch(images, landmarks, visible, mirrored, category)


def negatives(n: int, *, seed: int, image_size: int = 224) -> np.ndarray:
    """n images of backgrounds and distractors without any object: uint8 [n, S, S, 3]."""
    check_arguments(n, seed, image_size)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    canvas = np.empty((3, image_size, image_size), np.float32)
    for i in range(n):
        _paint(images[i], *draw(None, i, seed=seed, image_size=image_size), canvas)
    return images


def mirror(batch: Batch) -> Batch:
    """`batch` flipped left-right: images W-reversed, landmarks w -> W - 1 - w, `mirrored`
    toggled."""
    width = batch.images.shape[2]
    landmarks = batch.landmarks.copy()
    landmarks[..., 1] = width - 1 - landmarks[..., 1]
    return batch._replace(images=np.ascontiguousarray(batch.images[:, :, ::-1]),
                          landmarks=landmarks, mirrored=~batch.mirrored)


def sample_mixed(n: int, *, seed: int, categories: Sequence[str] = CATEGORIES,
                 negatives_frac: float | None = None, image_size: int = 224):
    """Classifier batch: (images uint8 [n, S, S, 3], labels int32 [n]); label 0 = no object
    (a negative), label k = object of `categories[k - 1]`, random facing.

    negatives_frac: probability of a negative; None gives every class the same probability,
    1 / (len(categories) + 1). One category vs negatives: `categories=("bird",)`.
    """
    check_arguments(n, seed, image_size)
    categories = tuple(categories)
    if (not categories or len(set(categories)) != len(categories)
            or not set(categories) <= set(PARTS)):
        raise ValueError(f"categories must be distinct names from {CATEGORIES}, got {categories!r}")
    if negatives_frac is None:
        negatives_frac = 1.0 / (len(categories) + 1)
    if not isinstance(negatives_frac, (int, float)) or not 0.0 <= negatives_frac <= 1.0:
        raise ValueError(f"negatives_frac must be None or in [0, 1], got {negatives_frac!r}")
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    labels = np.empty(n, np.int32)
    canvas = np.empty((3, image_size, image_size), np.float32)
    for i in range(n):
        rng = _rng(seed, "mixed", i)
        draw = rng.random()
        if draw < negatives_frac:
            labels[i] = 0
        else:
            share = (draw - negatives_frac) / (1.0 - negatives_frac)
            labels[i] = 1 + min(int(share * len(categories)), len(categories) - 1)
        category = categories[labels[i] - 1] if labels[i] else None
        _paint(images[i], *_draw(rng, category, image_size), canvas)
    return images, labels


def mixed_batches(categories: Sequence[str], batch_size: int, image_size: int, first_seed: int):
    """Endless fresh classifier batches: the k-th is `sample_mixed(batch_size,
    seed=first_seed + k, categories=categories, image_size=image_size)`."""
    seed = first_seed
    while True:
        yield sample_mixed(batch_size, seed=seed, categories=categories, image_size=image_size)
        seed += 1
