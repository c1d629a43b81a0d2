"""Crop geometry, in one place: source pixels <-> S x S crop pixels, and the resampling.

A source pixel centre r in a box spanning rows y0 .. y1-1 (y1 exclusive) maps to
`(r + 0.5 - y0) * S / (y1 - y0) - 0.5`, likewise for columns: pixel centres sit at integers and
the box's outer edges (y0 - 0.5 ... in centre coordinates, y0 in edge coordinates) map to the
crop's outer edges. The resampling is PIL's bilinear resize of the box, which aligns pixel
centres the same way (and filters when it shrinks, like MATLAB's imresize in the original's
getI.m), so a landmark lands on the pixel that shows it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Box = Sequence[float]  # (y0, x0, y1, x1) source pixels, y1 / x1 exclusive


def to_crop(points: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Source-pixel points float [..., 2] (h, w) -> crop pixels of an S x S crop of `box`."""
    y0, x0, y1, x1 = (float(v) for v in box)
    scale = np.array([size / (y1 - y0), size / (x1 - x0)])
    return ((np.asarray(points, np.float64) + 0.5 - np.array([y0, x0])) * scale
            - 0.5).astype(np.float32)


def to_source(points: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Crop pixels float [..., 2] (h, w) of an S x S crop of `box` -> source pixels (the
    inverse of `to_crop`)."""
    y0, x0, y1, x1 = (float(v) for v in box)
    scale = np.array([(y1 - y0) / size, (x1 - x0) / size])
    return (np.asarray(points, np.float64) + 0.5) * scale - 0.5 + np.array([y0, x0])


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The bounding box (r0, c0, r1, c1) of a mask's nonzero pixels, r1 / c1 inclusive; None
    for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def box_centre(box: Sequence[float]) -> tuple[float, float]:
    """The centre (h, w) of a pixel box (r0, c0, r1, c1), r1 / c1 inclusive: ((r0 + r1) / 2,
    (c0 + c1) / 2)."""
    r0, c0, r1, c1 = box
    return (r0 + r1) / 2.0, (c0 + c1) / 2.0


def crop_image(image, box: Box, size: int) -> np.ndarray:
    """The `box` of a PIL RGB image resampled to uint8 [S, S, 3] (bilinear, pixel centres
    aligned as in `to_crop`); the whole image at its own size is returned as it is."""
    from PIL import Image

    y0, x0, y1, x1 = (float(v) for v in box)
    if (y0, x0, y1, x1) == (0.0, 0.0, float(image.height), float(image.width)) and (
            image.size == (size, size)):
        return np.asarray(image, np.uint8)
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR,
                                   box=(x0, y0, x1, y1)), np.uint8)


def crop_mask(mask: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The `box` of a bool [H, W] mask resampled to bool [S, S] (nearest pixel centre, aligned
    as in `to_crop`); the whole mask at its own size is returned as it is."""
    from PIL import Image

    y0, x0, y1, x1 = (float(v) for v in box)
    if (y0, x0, y1, x1) == (0.0, 0.0, *map(float, mask.shape)) and mask.shape == (size, size):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((size, size), Image.Resampling.NEAREST,
                                   box=(x0, y0, x1, y1))) > 127
