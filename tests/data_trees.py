"""Small dataset trees in the publishers' real formats, written by the tests (and benchmarks).

Pascal-Part: JPEGs + MATLAB v5 .mat files written with scipy.io.savemat in the layout of
Chen et al.'s annotations (`loadmat(f)['anno'][0, 0]['objects'][0, k]`, parts 0 x 0 when
none) + VOC ImageSets. CUB-200-2011: its text files. ILSVRC Animal-Part: MATLAB v7.3 (HDF5)
files laid out as the published data.mat and truth_part0k.mat (struct fields as object
references into #refs#, empty entries flagged MATLAB_empty).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
CUB_PARTS = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
             "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat")


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """Annotation caches (egjax.data.cache) go to the test's folder, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic test picture: uint8 [H, W, 3], smooth ramps plus coarse noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    noise = np.kron(rng.integers(0, 60, (height // 8 + 1, width // 8 + 1, 3)),
                    np.ones((8, 8, 1)))[:height, :width]
    image = np.stack([rows * 200 / height, cols * 200 / width, (rows + cols) % 64 * 3], -1)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def rect(height: int, width: int, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    """uint8 mask of rows r0..r1 and columns c0..c1 (inclusive)."""
    mask = np.zeros((height, width), np.uint8)
    mask[r0:r1 + 1, c0:c1 + 1] = 1
    return mask


def write_jpeg(path: pathlib.Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95, subsampling=0)


def truncate(path: pathlib.Path) -> None:
    """Cuts a file to half its length (a download that stopped)."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _struct(records: list[tuple], fields: tuple[str, ...]) -> np.ndarray:
    """A MATLAB 1 x K struct array for savemat, or 0 x 0 [] when there are no records."""
    if not records:
        return np.zeros((0, 0))
    array = np.zeros((1, len(records)), dtype=[(f, object) for f in fields])
    for k, record in enumerate(records):
        array[0, k] = record
    return array


def write_pascal_part(root: pathlib.Path, images: dict[str, tuple], splits: dict[str, str]):
    """images: id -> (pixels uint8 [H, W, 3], objects); an object is (class, mask, parts) with
    parts a list of (part name, mask). splits: id -> "train" | "val"."""
    import scipy.io

    voc = root / "VOCdevkit" / "VOC2010"
    (root / "Annotations_Part").mkdir(parents=True, exist_ok=True)
    for image_id, (pixels, objects) in images.items():
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", pixels)
        records = [(name, np.array([[VOC_CLASSES.index(name) + 1]], np.uint8), mask,
                    _struct(list(parts), ("part_name", "mask"))) for name, mask, parts in objects]
        anno = np.zeros((1, 1), dtype=[("imname", object), ("objects", object)])
        anno[0, 0] = (image_id, _struct(records, ("class", "class_ind", "mask", "parts")))
        scipy.io.savemat(root / "Annotations_Part" / f"{image_id}.mat", {"anno": anno},
                         do_compression=True)
    sets = voc / "ImageSets" / "Main"
    sets.mkdir(parents=True, exist_ok=True)
    for name in VOC_CLASSES:
        for split, members in (("train", ("train",)), ("val", ("val",)),
                               ("trainval", ("train", "val"))):
            lines = [f"{i} {1 if any(o[0] == name for o in images[i][1]) else -1:2d}"
                     for i in sorted(images) if splits[i] in members]
            (sets / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")


def write_cub(root: pathlib.Path, birds: list[dict]) -> None:
    """birds: dicts of id, folder (class folder), pixels, box (x, y, w, h), train (bool), parts
    {part id: (x, y)} of the visible parts."""
    base = root / "CUB_200_2011"
    (base / "parts").mkdir(parents=True, exist_ok=True)
    images, boxes, split, locations = [], [], [], []
    for bird in birds:
        path = f"{bird['folder']}/{bird['folder'].split('.')[1]}_{bird['id']:04d}.jpg"
        write_jpeg(base / "images" / path, bird["pixels"])
        images.append(f"{bird['id']} {path}")
        boxes.append(f"{bird['id']} " + " ".join(f"{v:.1f}" for v in bird["box"]))
        split.append(f"{bird['id']} {int(bird['train'])}")
        for part in range(1, len(CUB_PARTS) + 1):
            x, y = bird["parts"].get(part, (0, 0))
            locations.append(f"{bird['id']} {part} {x:.1f} {y:.1f} {int(part in bird['parts'])}")
    for name, lines in (("images.txt", images), ("bounding_boxes.txt", boxes),
                        ("train_test_split.txt", split), ("parts/part_locs.txt", locations),
                        ("parts/parts.txt", [f"{i} {n}" for i, n in enumerate(CUB_PARTS, 1)])):
        (base / name).write_text("\n".join(lines) + "\n")


def _mat73(path: pathlib.Path):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    return h5py.File(path, "w", userblock_size=512)


def _mat73_header(path: pathlib.Path) -> None:
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ."
    with open(path, "r+b") as file:
        file.write(text.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")


def _ref(file, name: str, build):
    """A reference to what `build(#refs# group, name)` creates there."""
    return build(file.require_group("#refs#"), name).ref


def _double(group, name, value):
    data = group.create_dataset(name, data=np.atleast_2d(np.asarray(value, np.float64)))
    data.attrs["MATLAB_class"] = np.bytes_("double")
    return data


def _empty(group, name):
    data = group.create_dataset(name, data=np.zeros(2, np.uint64))
    data.attrs["MATLAB_class"] = np.bytes_("double")
    data.attrs["MATLAB_empty"] = np.uint8(1)
    return data


def _struct_array(file, name: str, fields: dict[str, list]) -> None:
    """A MATLAB N x 1 struct array `name` whose fields are lists of references."""
    import h5py

    group = file.create_group(name)
    group.attrs["MATLAB_class"] = np.bytes_("struct")
    for field, refs in fields.items():
        group.create_dataset(field, data=np.array(refs, dtype=h5py.ref_dtype).reshape(-1, 1))


def write_ilsvrc(root: pathlib.Path, wnid: str, images: list[tuple], truths: list[list]) -> None:
    """images: (pixels, (xmin, xmax, ymin, ymax)) per image, box 1-based inclusive; truths: per
    part, per image (h, w) 1-based in the 224 crop or None."""
    folder = root / "detanimalpart" / f"{wnid}_obj" / "img"
    for i, (pixels, _) in enumerate(images):
        write_jpeg(folder / "img" / f"{i + 1:05d}.jpg", pixels)

    def obj(box):
        def build(refs, name):
            group = refs.create_group(name)
            group.attrs["MATLAB_class"] = np.bytes_("struct")
            bndbox = group.create_group("bndbox")
            bndbox.attrs["MATLAB_class"] = np.bytes_("struct")
            for key, value in zip(("xmin", "xmax", "ymin", "ymax"), box):
                _double(bndbox, key, value)
            return group
        return build

    path = folder / "data.mat"
    with _mat73(path) as file:
        _struct_array(file, "samples", {
            "obj": [_ref(file, f"o{i}", obj(box)) for i, (_, box) in enumerate(images)],
            "class": [_ref(file, f"c{i}", lambda g, n: _double(g, n, 1.0))
                      for i in range(len(images))]})
    _mat73_header(path)
    for k, centres in enumerate(truths):
        path = (root / "interpretableCNN" / "code" / "data_input" / "data_input_DET-2015-subset-"
                "ILSVRC2013train" / wnid / f"truth_part{k + 1:02d}.mat")
        with _mat73(path) as file:
            _struct_array(file, "truth", {
                "pHW_center": [_ref(file, f"p{i}", (lambda g, n, c=c: _double(g, n, [c]))
                                    if c is not None else _empty) for i, c in enumerate(centres)],
                "pHW_scale": [_ref(file, f"s{i}", (lambda g, n: _double(g, n, [[20.0, 20.0]]))
                                   if c is not None else _empty) for i, c in enumerate(centres)],
                "obj": [_ref(file, f"b{i}", obj(box) if c is not None else _empty)
                        for i, ((_, box), c) in enumerate(zip(images, centres))]})
        _mat73_header(path)
