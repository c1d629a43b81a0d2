"""pascal_part on a small tree in the real formats (JPEGs, Chen et al.'s .mat via savemat, VOC
ImageSets): boxes and landmarks against hand-computed values, bad files, negatives, cache."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from egjax import data
from tests.data_trees import (cache_home, pattern, rect, truncate,  # noqa: F401
                              write_pascal_part)

H, W, S = 90, 120, 64


def _cow_image(seed: int):
    """An image with several objects of several classes: a cow with a head (one mask plus a
    stray pixel) and a torso annotated as two masks, a person without parts, a cow below the
    minimum area, a cow without parts."""
    hole = rect(H, W, 10, 20, 59, 89)
    hole[30:35, 40:45] = 0  # the box is the mask's bounding box, not its mean or extent
    head = rect(H, W, 12, 70, 18, 85)
    head[21, 75] = 1
    torso = [rect(H, W, 25, 30, 40, 50), rect(H, W, 30, 45, 55, 70)]
    objects = [("cow", hole, [("head", head)] + [("torso", m) for m in torso]),
               ("person", rect(H, W, 0, 100, 89, 119), []),
               ("cow", rect(H, W, 70, 0, 79, 9), [("head", rect(H, W, 70, 0, 72, 2))]),
               ("cow", rect(H, W, 40, 60, 89, 119), [])]
    return pattern(H, W, seed), objects


def _mirrored(image):
    pixels, objects = image
    return (np.ascontiguousarray(pixels[:, ::-1]),
            [(name, mask[:, ::-1], [(p, m[:, ::-1]) for p, m in parts])
             for name, mask, parts in objects])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pascal")
    cow = _cow_image(0)
    images = {
        "2010_000001": cow,
        "2010_000002": _mirrored(cow),
        "2010_000003": (pattern(H, W, 3), [("cow", rect(H, W, 0, 0, 59, 59), [])]),
        "2010_000004": (pattern(H, W, 4), [("cow", rect(H, W, 0, 0, 59, 59), [])]),
        "2010_000005": (pattern(H, W, 5), [("dog", rect(H, W, 5, 5, 80, 100),
                                            [("head", rect(H, W, 5, 5, 20, 20))])]),
        "2010_000006": (pattern(H, W, 6), [("car", rect(H, W, 10, 10, 80, 110),
                                            [("wheel_2", rect(H, W, 60, 80, 80, 100)),
                                             ("wheel_1", rect(H, W, 60, 10, 80, 30)),
                                             ("door_1", rect(H, W, 20, 40, 60, 70))])]),
    }
    write_pascal_part(root, images, {i: ("train" if int(i[-1]) % 2 else "val") for i in images})
    truncate(root / "VOCdevkit" / "VOC2010" / "JPEGImages" / "2010_000003.jpg")
    (root / "Annotations_Part" / "2010_000004.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    return root


def _load(root, category="cow", **kwargs):
    with pytest.warns(data.SkippedFilesWarning) as record:
        objects = data.load("pascal_part", root, category, image_size=S, quiet=True, **kwargs)
    return objects, str(record[0].message)


def test_written_annotation_has_pascal_parts_nesting(root):
    anno = scipy.io.loadmat(root / "Annotations_Part" / "2010_000001.mat")["anno"][0, 0]
    assert anno["imname"][0] == "2010_000001"
    cow, person = anno["objects"][0, 0], anno["objects"][0, 1]
    assert cow["class"][0] == "cow" and cow["class_ind"][0, 0] == 10
    assert cow["mask"].shape == (H, W) and cow["parts"].shape == (1, 3)
    assert cow["parts"][0, 2]["part_name"][0] == "torso"
    assert person["parts"].shape == (0, 0)


def test_boxes_and_landmarks_by_hand(root):
    objects, _ = _load(root)
    # object 2 is below min_area (10 x 10 px); image 3's JPEG is truncated, image 4's .mat corrupt
    assert objects.ids == ("2010_000001/0", "2010_000001/3", "2010_000002/0", "2010_000002/3")
    assert objects.part_names == data.describe("pascal_part").parts["cow"]
    assert objects.images.shape == (4, S, S, 3) and objects.images.dtype == np.uint8
    # boxes (y0, x0, y1, x1), exclusive: mask rows 10..59, cols 20..89; mirrored: 30..99
    np.testing.assert_array_equal(objects.boxes, [[10, 20, 60, 90], [40, 60, 90, 120],
                                                  [10, 30, 60, 100], [40, 0, 90, 60]])
    head, torso = (objects.part_names.index(p) for p in ("head", "torso"))
    # head: rows 12..21 (stray pixel), cols 70..85 -> centre (16.5, 77.5); torso: union of two
    # masks, rows 25..55, cols 30..70 -> (40, 50). Crop: (r + 0.5 - y0) * 64 / 50 - 0.5 and
    # (c + 0.5 - x0) * 64 / 70 - 0.5: head (8.46, 52.528571), torso (38.54, 27.385714)
    np.testing.assert_allclose(objects.landmarks[0, [head, torso]],
                               [[8.46, 52.528571], [38.54, 27.385714]], atol=1e-5)
    # the mirrored object: centres at columns 119 - 77.5 and 119 - 50 in box 30..99, which is
    # w -> 63 - w: (8.46, 10.471429), (38.54, 35.614286)
    np.testing.assert_allclose(objects.landmarks[2, [head, torso]],
                               [[8.46, 10.471429], [38.54, 35.614286]], atol=1e-5)
    expected = np.zeros(len(objects.part_names), bool)
    expected[[head, torso]] = True
    np.testing.assert_array_equal(objects.visible, [expected, ~np.ones_like(expected)] * 2)


def test_mirrored_object_crops_to_the_mirror(root):
    objects, _ = _load(root)
    difference = np.abs(objects.images[2].astype(int) - objects.images[0, :, ::-1].astype(int))
    assert difference.max() <= 3  # JPEG of a flipped picture vs the flipped JPEG


def test_unreadable_files_are_counted_and_named(root):
    _, message = _load(root)
    assert "skipped 2 unreadable file(s)" in message
    assert "2010_000003.jpg" in message and "2010_000004.mat" in message


def test_strict_stops_at_the_first_unreadable_file_with_our_error(root):
    with pytest.raises(data.CorruptFileError, match="2010_000004.mat") as error:
        data.load("pascal_part", root, "cow", image_size=S, quiet=True, strict=True)
    assert error.value.__context__ is None and error.value.__cause__ is None
    with pytest.raises(data.CorruptFileError, match="2010_000003.jpg"):
        data.load("pascal_part", root, "cow", split="train", image_size=S, quiet=True,
                  strict=True)


def test_splits_are_vocs(root):
    train, _ = _load(root, split="train")
    assert train.ids == ("2010_000001/0", "2010_000001/3")
    val, _ = _load(root, split="val")
    assert val.ids == ("2010_000002/0", "2010_000002/3")


def test_other_classes_carry_the_part_names_found(root):
    car = data.load("pascal_part", root, "car", image_size=S, quiet=True)
    assert car.part_names == ("door_1", "wheel_1", "wheel_2") and car.visible.all()


def test_negatives_are_the_images_without_the_category(root):
    negatives = data.negatives("pascal_part", root, "cow", image_size=32, quiet=True)
    assert negatives.ids == ("2010_000005/0", "2010_000006/0")
    assert negatives.images.shape == (2, 32, 32, 3) and negatives.landmarks.shape == (2, 0, 2)
    np.testing.assert_array_equal(negatives.boxes, [[0, 0, H, W]] * 2)


def test_the_annotation_cache_is_used_until_a_file_changes(root, monkeypatch):
    first, _ = _load(root)

    def fail(*args, **kwargs):
        raise AssertionError("parsed again")

    monkeypatch.setattr(scipy.io, "loadmat", fail)
    again, _ = _load(root)  # the corrupt file is still reported: it was never cached
    np.testing.assert_array_equal(again.landmarks, first.landmarks)
    assert again.ids == first.ids
    path = root / "Annotations_Part" / "2010_000002.mat"
    saved = path.read_bytes()
    try:
        path.write_bytes(saved + b"\0")
        with pytest.warns(data.SkippedFilesWarning, match="2010_000002.mat.*parsed again"):
            data.load("pascal_part", root, "cow", image_size=S, quiet=True)
    finally:
        path.write_bytes(saved)


def test_missing_archives_are_named(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="VOCtrainval_03-May-2010.tar"):
        data.load("pascal_part", tmp_path, "cow")
    (tmp_path / "VOCdevkit").symlink_to(root / "VOCdevkit")
    with pytest.raises(FileNotFoundError, match="Pascal-Part.*trainval.tar.gz"):
        data.load("pascal_part", tmp_path, "cow")
    with pytest.raises(ValueError, match="unknown category 'cows'; valid: aeroplane"):
        data.load("pascal_part", root, "cows")


def test_streams_shards_and_load_agree(root):
    with pytest.warns(data.SkippedFilesWarning):
        whole = data.load("pascal_part", root, "cow", image_size=S, quiet=True)
    shards = []
    for index in range(2):
        stream = data.iter_objects("pascal_part", root, "cow", image_size=S, batch_size=1,
                                   shard=(index, 2), quiet=True)
        with pytest.warns(data.SkippedFilesWarning):
            batches = list(stream)
        assert all(len(b) == 1 for b in batches)
        shards.append(data.concatenate(batches))
    assert not set(shards[0].ids) & set(shards[1].ids)
    assert sorted(shards[0].ids + shards[1].ids) == sorted(whole.ids)
    together = {i: image for s in shards for i, image in zip(s.ids, s.images)}
    np.testing.assert_array_equal(np.stack([together[i] for i in whole.ids]), whole.images)
