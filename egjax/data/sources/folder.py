"""folder: any folder of images, with an optional `objects.csv` of boxes and landmarks.

Without `objects.csv`, every image under root (recursive) is one object: the whole image,
no parts (P = 0), of whatever `category` label is given. With it, each row is one object:

    image,category,y0,x0,y1,x1,head_y,head_x,tail_y,tail_x
    cats/001.jpg,cat,12,30,200,310,40.5,250,150,35
    cats/001.jpg,cat,,,,,60,80,,

`image` (required): path relative to root. `category` (optional): rows of other categories
are left out; without the column every row is of the `category` asked for. `y0,x0,y1,x1`
(optional, all four or none): the box in source pixels, y1 / x1 exclusive; empty cells: the
whole image. `<part>_y,<part>_x` (any number of parts): the landmark in source pixels, 0-based,
pixel centres at integers; empty cells: the part is not visible. Any other column is an error.
"""

from __future__ import annotations

import csv
import math
import pathlib

import numpy as np

from egjax.data.files import BadFiles, image_files, require
from egjax.data.source import Description, Entry, Index, check_choice

CSV = "objects.csv"
BOX = ("y0", "x0", "y1", "x1")

DESCRIPTION = Description(
    name="folder",
    title="your own images: any folder, with an optional objects.csv of boxes and landmarks",
    categories=(),
    parts={},
    splits=("all",),
    instability={},
    instability_default=None,
    layout=f"root/**/*.jpg|png|...   any images, in any subfolders\n"
           f"root/{CSV}           optional: one row per object (image,category,y0,x0,y1,x1,"
           "<part>_y,<part>_x,...)",
    notes="categories: any label without a category column, else the column's values.\n"
          f"parts: those of the {CSV} columns <part>_y,<part>_x; none without {CSV}.\n"
          "Without a box (no CSV, or empty cells) an object is its whole image, kept at any "
          "size.\nNegatives: give negatives_dir, a folder of images without the category.",
)

negatives = None  # the user gives a folder (negatives_dir)


def _relative_id(path: pathlib.Path, root: pathlib.Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def whole_images(folder: pathlib.Path, bad: BadFiles) -> list[Entry]:
    """Every image under `folder` as one object without parts: the whole image."""
    require(folder, "folder", "give a folder of images")
    none = np.zeros((0, 2)), np.zeros(0, bool)
    return [Entry(f"{_relative_id(p, folder)}/0", p, None, *none) for p in image_files(folder)]


def _parse_header(fields: list[str], path: pathlib.Path) -> tuple[str, ...]:
    """The part names of a CSV header; ValueError for a malformed header."""
    box = [f for f in fields if f in BOX]
    parts = tuple(f[:-2] for f in fields if f.endswith("_y") and f[:-2] + "_x" in fields)
    known = {"image", "category", *BOX} | {p + s for p in parts for s in ("_y", "_x")}
    unknown = [f for f in fields if f not in known]
    if "image" not in fields or box and len(box) != 4 or unknown:
        raise ValueError(
            f"folder: {path}: columns must be image[,category][,y0,x0,y1,x1][,<part>_y,<part>_x"
            f"...]; got {', '.join(fields)}" + (f" (not understood: {', '.join(unknown)})"
                                                if unknown else ""))
    return parts


def _numbers(row: dict, keys, where: str) -> list[float] | None:
    """The cells `keys` as floats; None if all are empty; ValueError if some are."""
    cells = [(row[k] or "").strip() for k in keys]
    if not any(cells):
        return None
    try:
        values = [float(c) for c in cells]
    except ValueError:
        values = []
    if len(values) != len(cells) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"folder: {where}: {', '.join(keys)} must all be numbers or all be "
                         f"empty, got {', '.join(map(repr, cells))}")
    return values


def _read_csv(root: pathlib.Path, category: str, min_area: float, bad: BadFiles) -> Index:
    path = root / CSV
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        parts = _parse_header(list(reader.fieldnames or []), path)
        rows = list(reader)
    if "category" in (reader.fieldnames or []):
        check_choice("folder", "category", category, sorted({r["category"] for r in rows}))
    counts: dict[str, int] = {}
    entries = []
    for line, row in enumerate(rows, start=2):
        where = f"{path} line {line}"
        name = (row["image"] or "").strip()
        number = counts[name] = counts.get(name, -1) + 1  # object index within its image
        if row.get("category", category) != category:
            continue
        box = _numbers(row, BOX, where) if "y0" in row else None
        if box is not None and (box[2] <= box[0] or box[3] <= box[1]):
            raise ValueError(f"folder: {where}: the box needs y1 > y0 and x1 > x0, got {box}")
        if box is not None and (box[2] - box[0]) * (box[3] - box[1]) < min_area:
            continue
        points = [_numbers(row, (p + "_y", p + "_x"), where) for p in parts]
        image = root / name
        if not image.is_file():
            bad.skip(image, f"listed in {CSV}, not found")
            continue
        entries.append(Entry(f"{_relative_id(image, root)}/{number}", image,
                             None if box is None else tuple(box),
                             np.array([p or (math.nan, math.nan) for p in points]).reshape(-1, 2),
                             np.array([p is not None for p in points], bool)))
    return Index(category, parts, entries)


def index(root, category: str, *, split: str, min_area: float, image_size: int,
          limit: int | None, seed: int, bad: BadFiles, quiet: bool) -> Index:
    """The rows of root/objects.csv of `category`, else every image under root."""
    if root is None:
        raise ValueError("folder: give root, the folder of images")
    require(root, "folder", "give an existing folder of images")
    if (root / CSV).exists():
        return _read_csv(root, category, min_area, bad)
    return Index(category, (), whole_images(root, bad))
