"""pascal_part: Pascal-Part (Chen et al., CVPR 2014) part masks on PASCAL VOC 2010 images.

    root/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2010/ImageSets/Main/<class>_{train,val,trainval}.txt
    root/Annotations_Part/<id>.mat      anno.objects(k): class, class_ind, mask, parts(j)

The images that VOC's ImageSets list as holding the class (label 1, or 0 for difficult only)
are read; in each, the objects of the class: box = bounding box of the object's mask; the
landmark of a part = centre of the bounding box of its mask (of the union of its masks when a
name has several). An object without parts is kept, its parts invisible. The object index in
ids counts anno.objects from 0. Negatives: the images VOC lists without the class (label -1).
"""

from __future__ import annotations

import math
import pathlib
import warnings

import numpy as np
from tqdm import tqdm

from egjax.data.cache import FileCache
from egjax.data.crop import box_centre, mask_box
from egjax.data.files import BadFiles, attempt, read_mat, require
from egjax.data.source import Description, Entry, Index, check_choice

CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
           "train", "tvmonitor")
_COW = ("head", "leye", "reye", "lear", "rear", "muzzle", "lhorn", "rhorn", "torso", "neck",
        "lfuleg", "lflleg", "rfuleg", "rflleg", "lbuleg", "lblleg", "rbuleg", "rblleg", "tail")
_CAT = ("head", "leye", "reye", "lear", "rear", "nose", "torso", "neck", "lfleg", "lfpa", "rfleg",
        "rfpa", "lbleg", "lbpa", "rbleg", "rbpa", "tail")
PARTS = {  # Chen et al.'s part2ind.m, in its order; other classes: the names their objects carry
    "bird": ("head", "leye", "reye", "beak", "torso", "neck", "lwing", "rwing", "lleg", "lfoot",
             "rleg", "rfoot", "tail"),
    "cat": _CAT,
    "cow": _COW,
    "dog": _CAT + ("muzzle",),
    "horse": tuple(p for p in _COW if p not in ("lhorn", "rhorn")) + ("lfho", "rfho", "lbho",
                                                                        "rbho"),
    "sheep": _COW,
}
SPLITS = {"train": "train", "val": "val", "all": "trainval"}
VOC = "VOCtrainval_03-May-2010.tar (host.robots.ox.ac.uk/pascal/VOC/voc2010/)"
PARTS_ARCHIVE = ("trainval.tar.gz of Pascal-Part (www.stat.ucla.edu/~xianjie.chen/"
                 "pascal_part_dataset/trainval.tar.gz)")

DESCRIPTION = Description(
    name="pascal_part",
    title="Pascal-Part part masks on PASCAL VOC 2010 trainval (the paper's six animals: bird, "
          "cat, cow, dog, horse, sheep)",
    categories=CLASSES,
    parts=PARTS,
    splits=tuple(SPLITS),
    instability={c: ("head", "neck", "torso") for c in PARTS},
    instability_default=None,
    layout=f"extract {VOC} and {PARTS_ARCHIVE} into root:\n"
           "root/VOCdevkit/VOC2010/JPEGImages/<id>.jpg\n"
           "root/VOCdevkit/VOC2010/ImageSets/Main/<class>_{train,val,trainval}.txt\n"
           "root/Annotations_Part/<id>.mat",
    notes="parts of the other classes: the part names their objects carry, sorted.\n"
          "splits: VOC 2010's train, val, and all = trainval.\n"
          "negatives: the VOC images without the category.",
)


def _paths(root) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    if root is None:
        raise ValueError("pascal_part: give root, the folder holding VOCdevkit/ and "
                         "Annotations_Part/")
    voc = root / "VOCdevkit" / "VOC2010"
    images = require(voc / "JPEGImages", "pascal_part", f"extract {VOC} into {root}")
    sets = require(voc / "ImageSets" / "Main", "pascal_part", f"extract {VOC} into {root}")
    annotations = require(root / "Annotations_Part", "pascal_part",
                          f"extract {PARTS_ARCHIVE} into {root}")
    return images, sets, annotations


def _image_labels(sets: pathlib.Path, category: str, split: str) -> list[tuple[str, int]]:
    """(image id, VOC label) of ImageSets/Main/<class>_<set>.txt: 1 has the class, 0 only
    difficult ones, -1 none."""
    path = require(sets / f"{category}_{SPLITS[split]}.txt", "pascal_part",
                   f"extract {VOC} into {sets.parents[3]}")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        return [(image, int(label)) for image, label in rows]
    except ValueError:
        raise ValueError(f"pascal_part: {path}: lines must be '<image id> <1|0|-1>'") from None


def _summary(mat: dict) -> list:
    """[class, object box, {part: box}] per object of a Pascal-Part annotation (boxes r0, c0,
    r1, c1 inclusive, None for an empty mask; a part's masks united)."""
    objects = mat["anno"][0, 0]["objects"]
    summary = []
    for k in range(objects.size):
        obj = objects.flat[k]
        parts: dict[str, list[int]] = {}
        for j in range(obj["parts"].size):
            part = obj["parts"].flat[j]
            name, box = str(part["part_name"].flat[0]), mask_box(part["mask"])
            if box is not None:
                old = parts.get(name, box)
                parts[name] = [min(old[0], box[0]), min(old[1], box[1]), max(old[2], box[2]),
                               max(old[3], box[3])]
        summary.append([str(obj["class"].flat[0]), mask_box(obj["mask"]), parts])
    return summary


def _parse(path: pathlib.Path, bad: BadFiles) -> list | None:
    """The `_summary` of one annotation file, or None (reported to `bad`)."""
    if not path.is_file():
        bad.skip(path, "no such annotation file")
        return None
    mat = read_mat(path, bad)
    return None if mat is None else attempt(
        bad, path, _summary, mat, what="not a Pascal-Part annotation (anno.objects(k).class, "
                                       "mask, parts): ")


def index(root, category: str, *, split: str, min_area: float, image_size: int,
          limit: int | None, seed: int, bad: BadFiles, quiet: bool) -> Index:
    """The objects of `category` in the images VOC lists as holding it."""
    check_choice("pascal_part", "category", category, CLASSES)
    images, sets, annotations = _paths(root)
    candidates = [image for image, label in _image_labels(sets, category, split) if label >= 0]
    cache = FileCache("pascal_part", root)
    found = []  # (image id, object index, box, parts)
    try:
        for image in tqdm(candidates, desc=f"pascal_part {category}: annotations", unit="file",
                          disable=quiet, leave=False):
            summary = cache.read(annotations / f"{image}.mat", lambda p: _parse(p, bad))
            for k, (name, box, parts) in enumerate(summary or ()):
                if (name == category and box is not None
                        and (box[2] + 1 - box[0]) * (box[3] + 1 - box[1]) >= min_area):
                    found.append((image, k, box, parts))
    finally:
        cache.save()
    named = {name for *_, parts in found for name in parts}
    part_names = PARTS.get(category, tuple(sorted(named)))
    unknown = named - set(part_names)
    if unknown:
        warnings.warn(f"pascal_part: {category} parts not in Chen et al.'s list ignored: "
                      f"{', '.join(sorted(unknown))}", stacklevel=3)
    entries = []
    for image, k, box, parts in found:
        centres = [box_centre(parts[p]) if p in parts else (math.nan, math.nan)
                   for p in part_names]
        entries.append(Entry(f"{image}/{k}", images / f"{image}.jpg",
                             (box[0], box[1], box[2] + 1.0, box[3] + 1.0),
                             np.array(centres, np.float64).reshape(-1, 2),
                             np.array([p in parts for p in part_names], bool)))
    return Index(category, part_names, entries)


def negatives(root, category: str, *, split: str, image_size: int, limit: int | None, seed: int,
              bad: BadFiles, quiet: bool) -> list[Entry]:
    """The whole images VOC lists without `category`."""
    check_choice("pascal_part", "category", category, CLASSES)
    images, sets, _ = _paths(root)
    none = np.zeros((0, 2)), np.zeros(0, bool)
    return [Entry(f"{image}/0", images / f"{image}.jpg", None, *none)
            for image, label in _image_labels(sets, category, split) if label < 0]
