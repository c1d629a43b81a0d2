"""RGB arrays as pictures: resizing, text labels, tiling, and atomic PNG/JPEG files."""

from __future__ import annotations

import io
import os
import pathlib
import uuid

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = 255
TEXT = (40, 40, 40)


def resized(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 `[H, W, 3]` -> `[side, side, 3]`, bilinear."""
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))


def text_block(lines, width: int, height: int, *, size: int = 11, colours=None) -> np.ndarray:
    """A white `[height, width, 3]` uint8 block with `lines` of text from its top left, in
    `colours` (one RGB triple per line; default dark grey)."""
    block = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(block)
    font = ImageFont.load_default(size=size)
    for row, (line, colour) in enumerate(zip(lines, colours or [TEXT] * len(lines))):
        draw.text((4, 3 + row * (size + 3)), line, fill=tuple(colour), font=font)
    return np.asarray(block)


def row(tiles, gap: int) -> np.ndarray:
    """Tiles of equal height side by side, `gap` white pixels apart."""
    height = tiles[0].shape[0]
    spacer = np.full((height, gap, 3), BACKGROUND, np.uint8)
    parts = [p for tile in tiles for p in (tile, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def column(rows, gap: int) -> np.ndarray:
    """Rows stacked top to bottom, `gap` white pixels apart, padded white to the widest."""
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)),
                     constant_values=BACKGROUND) for r in rows]
    return np.concatenate(padded, axis=0)[:-gap or None]


def encoded(image: np.ndarray, *, quality: int = 85) -> bytes:
    """uint8 `[H, W, 3]` as JPEG bytes, as `save` writes a .jpg."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def save(image: np.ndarray, path, *, quality: int = 85) -> pathlib.Path:
    """Write uint8 `[H, W, 3]` to `path` (PNG, or JPEG for .jpg) atomically. Returns the path."""
    path = pathlib.Path(path)
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    kind = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    try:
        options = {"quality": quality} if kind == "JPEG" else {"optimize": True}
        Image.fromarray(np.asarray(image, np.uint8)).save(staging, kind, **options)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path
