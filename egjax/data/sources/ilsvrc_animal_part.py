"""ilsvrc_animal_part: ILSVRC 2013 DET Animal-Part (Zhang et al.), 30 animal categories.

    root/detanimalpart/<wnid>_obj/img/data.mat         samples(i).obj.bndbox.{xmin,xmax,ymin,ymax}
    root/detanimalpart/<wnid>_obj/img/img/<i:05d>.jpg
    root/interpretableCNN/code/data_input/data_input_DET-2015-subset-ILSVRC2013train/<wnid>/
        truth_part01.mat, truth_part02.mat             truth(i).pHW_center, empty if unannotated

Both .mat files are MATLAB v7.3 (HDF5), index-aligned: entry i is image i, one object each.
The box is read as the original's getI.m reads it, 1-based and inclusive, clipped to the image.
A part's pHW_center is [h; w] in that box's 224 x 224 crop, 1-based (the original compares it
with its 1-based pixel positions); here it is mapped back to source pixels through the crop
geometry. Part 1 is the head and part 2 the front legs: not documented, but every category
has part 1 and the goldfish (n01443537) only part 1, and on the published dog crops part 1
marks heads and part 2 front legs.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
from tqdm import tqdm

from egjax.data.cache import FileCache
from egjax.data.crop import to_source
from egjax.data.files import BadFiles, attempt, open_mat73, require
from egjax.data.source import Description, Entry, Index, check_choice

SYNSETS = {
    "n01443537": "goldfish", "n01503061": "bird", "n01639765": "frog", "n01662784": "turtle",
    "n01674464": "lizard", "n01882714": "koala", "n01982650": "lobster", "n02084071": "dog",
    "n02118333": "fox", "n02121808": "domestic_cat", "n02129165": "lion", "n02129604": "tiger",
    "n02131653": "bear", "n02324045": "rabbit", "n02342885": "hamster", "n02355227": "squirrel",
    "n02374451": "horse", "n02391049": "zebra", "n02395003": "pig", "n02398521": "hippopotamus",
    "n02402425": "cattle", "n02411705": "sheep", "n02419796": "antelope", "n02437136": "camel",
    "n02444819": "otter", "n02454379": "armadillo", "n02484322": "monkey", "n02503517": "elephant",
    "n02509815": "red_panda", "n02510455": "giant_panda",
}
PART_NAMES = ("head", "front_legs")  # truth_part01, truth_part02
PARTS = {wnid: PART_NAMES[:1] if wnid == "n01443537" else PART_NAMES for wnid in SYNSETS}
TRUTH = pathlib.Path("interpretableCNN", "code", "data_input",
                     "data_input_DET-2015-subset-ILSVRC2013train")
CROP = 224  # the size of the crops the parts were annotated on
IMAGES = "git clone https://github.com/zqs1022/detanimalpart"
PARTS_REPO = "git clone https://github.com/zqs1022/interpretableCNN"

DESCRIPTION = Description(
    name="ilsvrc_animal_part",
    title="ILSVRC 2013 DET Animal-Part: 30 animal categories, head and front-leg landmarks",
    categories=tuple(SYNSETS),
    parts=PARTS,
    splits=("all",),
    instability={"n01443537": PART_NAMES[:1]},
    instability_default=PART_NAMES,
    layout=f"in root: {IMAGES}; {PARTS_REPO}\n"
           "root/detanimalpart/<wnid>_obj/img/{data.mat,img/<i:05d>.jpg}\n"
           f"root/{TRUTH.as_posix()}/<wnid>/truth_part0{{1,2}}.mat",
    notes="categories by wnid or name: " + ", ".join(f"{n} {w}" for w, n in SYNSETS.items())
          + ".\nparts: head (truth_part01) and front_legs (truth_part02; the goldfish has "
          "none), named from their positions: the files do not name them.\n"
          "negatives: give negatives_dir, a folder of images without the category.",
)

negatives = None  # the user gives a folder (negatives_dir)


def _scalar(node) -> float:
    return float(np.asarray(node[()]).ravel()[0])


def _read_boxes(file) -> list:
    boxes = []
    for ref in np.asarray(file["samples"]["obj"][()]).ravel():
        obj = file[ref]
        boxes.append(None if "bndbox" not in obj else [
            _scalar(obj["bndbox"][k]) for k in ("xmin", "xmax", "ymin", "ymax")])
    return boxes


def _read_centres(file) -> list:
    centres = []
    for ref in np.asarray(file["truth"]["pHW_center"][()]).ravel():
        node = file[ref]
        centres.append(None if node.attrs.get("MATLAB_empty") else
                       np.asarray(node[()], np.float64).ravel()[:2].tolist())
    return centres


def _parse(path: pathlib.Path, read, what: str, bad: BadFiles) -> list | None:
    """`read(file)` of a v7.3 .mat file, or None (reported to `bad`)."""
    file = open_mat73(path, bad)
    if file is None:
        return None
    with file:
        return attempt(bad, path, read, file, what=what)


def _boxes(path: pathlib.Path, bad: BadFiles) -> list | None:
    """samples(i).obj.bndbox of data.mat as [xmin, xmax, ymin, ymax], None where empty."""
    return _parse(path, _read_boxes, "not a detanimalpart data.mat (samples.obj.bndbox): ", bad)


def _centres(path: pathlib.Path, bad: BadFiles) -> list | None:
    """truth(i).pHW_center of a truth_part file as [h, w], None where empty."""
    return _parse(path, _read_centres, "not a truth_part file (truth.pHW_center): ", bad)


def _header_size(path: pathlib.Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


def _wnid(category: str) -> str:
    names = {name: wnid for wnid, name in SYNSETS.items()}
    check_choice("ilsvrc_animal_part", "category", names.get(category, category), SYNSETS)
    return names.get(category, category)


def index(root, category: str, *, split: str, min_area: float, image_size: int,
          limit: int | None, seed: int, bad: BadFiles, quiet: bool) -> Index:
    """The objects of `category` (wnid or name) whose clipped box area is >= min_area."""
    wnid = _wnid(category)
    if root is None:
        raise ValueError("ilsvrc_animal_part: give root, the folder holding detanimalpart/ and "
                         "interpretableCNN/")
    folder = require(root / "detanimalpart" / f"{wnid}_obj" / "img", "ilsvrc_animal_part",
                     f"{IMAGES} in {root}")
    data = require(folder / "data.mat", "ilsvrc_animal_part", f"{IMAGES} in {root}")
    truths = [require(root / TRUTH / wnid / f"truth_part{k + 1:02d}.mat", "ilsvrc_animal_part",
                      f"{PARTS_REPO} in {root}") for k in range(len(PARTS[wnid]))]
    cache = FileCache("ilsvrc_animal_part", root)
    try:
        boxes = cache.read(data, lambda p: _boxes(p, bad))
        if boxes is None:
            return Index(wnid, PARTS[wnid], [])
        centres = [cache.read(path, lambda p: _centres(p, bad)) or [None] * len(boxes)
                   for path in truths]
    finally:
        cache.save()
    for path, column in zip(truths, centres):
        if len(column) != len(boxes):
            raise ValueError(f"ilsvrc_animal_part: {path} has {len(column)} entries, {data} "
                             f"{len(boxes)}: the files must be index-aligned")
    entries = []
    for i, box in enumerate(tqdm(boxes, desc=f"ilsvrc_animal_part {wnid}: images", unit="image",
                                 disable=quiet, leave=False)):
        image = folder / "img" / f"{i + 1:05d}.jpg"
        size = attempt(bad, image, _header_size, image) if box is not None else None
        if size is None:
            continue
        xmin, xmax, ymin, ymax = box
        clipped = (max(ymin, 1.0) - 1, max(xmin, 1.0) - 1, min(ymax, size[0]), min(xmax, size[1]))
        if (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) < min_area:
            continue
        points = np.array([to_source(np.subtract(c[i], 1.0), clipped, CROP) if c[i] is not None
                           else (math.nan, math.nan) for c in centres]).reshape(-1, 2)
        entries.append(Entry(f"{wnid}/{i + 1:05d}/0", image, clipped, points,
                             np.array([c[i] is not None for c in centres], bool)))
    return Index(wnid, PARTS[wnid], entries)
