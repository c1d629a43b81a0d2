"""cub200: Caltech-UCSD Birds-200-2011, one bird per image, 15 part locations.

    root/CUB_200_2011/images.txt                <image id> <class folder>/<file>
    root/CUB_200_2011/bounding_boxes.txt        <image id> <x> <y> <width> <height>
    root/CUB_200_2011/train_test_split.txt      <image id> <is_train>
    root/CUB_200_2011/parts/parts.txt           <part id> <part name>
    root/CUB_200_2011/parts/part_locs.txt       <image id> <part id> <x> <y> <visible>
    root/CUB_200_2011/images/<class folder>/<file>

Box (y, x, y + height, x + width) in source pixels; a part's landmark is its (y, x), visible as
part_locs.txt says. Part names are parts.txt's, spaces made underscores. Category `bird` is
every species (the original's choice); a class id (1..200) or class folder name is one.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np

from egjax.data.files import BadFiles, require
from egjax.data.source import Description, Entry, Index

ARCHIVE = "CUB_200_2011.tgz (data.caltech.edu/records/65de6-vzc84)"
PARTS = ("back", "beak", "belly", "breast", "crown", "forehead", "left_eye", "left_leg",
         "left_wing", "nape", "right_eye", "right_leg", "right_wing", "tail", "throat")
SPLITS = ("train", "test", "all")

DESCRIPTION = Description(
    name="cub200",
    title="Caltech-UCSD Birds-200-2011: 11,788 birds of 200 species, 15 part locations",
    categories=("bird",),
    parts={"bird": PARTS},
    splits=SPLITS,
    instability={},
    instability_default=("back", "forehead", "tail"),
    layout=f"extract {ARCHIVE} into root:\n"
           "root/CUB_200_2011/{images,bounding_boxes,train_test_split}.txt\n"
           "root/CUB_200_2011/parts/{parts,part_locs}.txt\n"
           "root/CUB_200_2011/images/<class folder>/<file>.jpg",
    notes="categories: bird (all species), or one species by class id 1..200 or class folder "
          "name (e.g. 001.Black_footed_Albatross).\nThe original uses split test.\n"
          "negatives: give negatives_dir, a folder of images without birds.",
)

negatives = None  # the user gives a folder (negatives_dir)


def _table(path: pathlib.Path, columns: int, fmt: str) -> list[list[str]]:
    """The whitespace-separated rows of a CUB text file (the last column takes the rest)."""
    rows = [line.split(maxsplit=columns - 1) for line in path.read_text().splitlines()
            if line.strip()]
    if any(len(row) != columns for row in rows):
        raise ValueError(f"cub200: {path}: every line must be '{fmt}'")
    return rows


def _species(category, images: list[list[str]]) -> set[str] | None:
    """The class folders of `category` (None: every species); ValueError if unknown."""
    if category == "bird":
        return None
    folders = {path.split("/")[0] for _, path in images}
    by_id = {folder.split(".")[0].lstrip("0"): folder for folder in folders}
    folder = by_id.get(str(category).lstrip("0"), category if category in folders else None)
    if folder is None:
        raise ValueError(f"cub200: unknown category {category!r}; valid: bird (all species), a "
                         f"class id 1..{len(folders)} or a class folder name such as "
                         f"{min(folders)}")
    return {folder}


def index(root, category, *, split: str, min_area: float, image_size: int,
          limit: int | None, seed: int, bad: BadFiles, quiet: bool) -> Index:
    """The birds of `category` in `split` whose box area is >= min_area, by image id."""
    if root is None:
        raise ValueError("cub200: give root, the folder holding CUB_200_2011/")
    base = require(root / "CUB_200_2011", "cub200", f"extract {ARCHIVE} into {root}")
    files = {name: require(base / name, "cub200", f"extract {ARCHIVE} into {root}")
             for name in ("images.txt", "bounding_boxes.txt", "train_test_split.txt",
                          "parts/parts.txt", "parts/part_locs.txt")}
    images = _table(files["images.txt"], 2, "<image id> <path>")
    species = _species(category, images)
    boxes = dict((row[0], row[1:]) for row in _table(
        files["bounding_boxes.txt"], 5, "<image id> <x> <y> <width> <height>"))
    is_train = dict(_table(files["train_test_split.txt"], 2, "<image id> <is_train>"))
    parts = _table(files["parts/parts.txt"], 2, "<part id> <name>")
    part_names = tuple(name.replace(" ", "_") for _, name in parts)
    column = {pid: j for j, (pid, _) in enumerate(parts)}
    locations: dict[str, list] = {}
    for image, pid, x, y, visible in _table(files["parts/part_locs.txt"], 5,
                                            "<image id> <part id> <x> <y> <visible>"):
        if visible == "1":
            locations.setdefault(image, []).append((column.get(pid), float(y), float(x)))
    wanted = {"train": "1", "test": "0"}.get(split)
    entries = []
    for image, path in images:
        if ((wanted is not None and is_train.get(image) != wanted)
                or (species is not None and path.split("/")[0] not in species)):
            continue
        if image not in boxes:
            raise ValueError(f"cub200: {files['bounding_boxes.txt']} has no box for image {image}")
        x, y, width, height = map(float, boxes[image])
        if width * height < min_area:
            continue
        points = np.full((len(part_names), 2), math.nan)
        for j, h, w in locations.get(image, ()):
            if j is None:
                raise ValueError(f"cub200: {files['parts/part_locs.txt']}: image {image} has a "
                                 "part id not in parts.txt")
            points[j] = h, w
        entries.append(Entry(f"{image}/0", base / "images" / path, (y, x, y + height, x + width),
                             points, ~np.isnan(points[:, 0])))
    return Index(str(category), part_names, entries)
