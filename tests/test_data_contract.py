"""The dataset contract: crop geometry and resampling, ObjectSet, the registry and its
descriptions, bad arguments, the synthetic set and the folder source through the contract."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from egjax import data
from egjax.data import crop, synthetic
from tests.data_trees import pattern, truncate, write_jpeg


def test_crop_geometry_by_hand():
    box = (10, 20, 60, 90)  # rows 10..59, cols 20..89
    # (16.5 + 0.5 - 10) * 64 / 50 - 0.5 = 8.46, (77.5 + 0.5 - 20) * 64 / 70 - 0.5 = 52.528571
    np.testing.assert_allclose(crop.to_crop([[16.5, 77.5], [10, 20]], box, 64),
                               [[8.46, 52.528571], [0.14, -0.042857]], atol=1e-5)
    points = np.array([[3.25, -1.0], [59.0, 89.0]])
    np.testing.assert_allclose(crop.to_source(crop.to_crop(points, box, 64), box, 64), points,
                               atol=1e-4)
    assert crop.box_centre((12, 70, 21, 85)) == (16.5, 77.5)
    mask = np.zeros((9, 9), bool)
    mask[2, 3] = mask[6, 1] = True
    assert crop.mask_box(mask) == (2, 1, 6, 3) and crop.mask_box(mask & False) is None


@pytest.mark.parametrize("box, size", [((8, 20, 88, 100), 40),    # shrink by 2
                                       ((30, 30, 50, 50), 40),    # enlarge by 2
                                       ((13, 17, 83, 103), 64)])  # anisotropic, fractional
def test_resampling_puts_each_pixel_where_the_geometry_says(box, size):
    """On ramps (value = 2 x source row / column) the crop's value at pixel u is 2 x the source
    coordinate of u's centre: bilinear resampling of a linear ramp is exact, so any
    misalignment (half a pixel is a value off by 1 or more) shows."""
    rows, cols = np.mgrid[:110, :120]
    ramp = np.stack([2 * rows, 2 * cols, np.zeros_like(rows)], -1).astype(np.uint8)
    pixels = crop.crop_image(Image.fromarray(ramp), box, size).astype(float)
    y0, x0, y1, x1 = box
    u = np.arange(size, dtype=float)[:, None]  # crop pixel centre -> source pixel centre:
    where = (u + 0.5) * np.array([y1 - y0, x1 - x0]) / size - 0.5 + np.array([y0, x0])
    inner = slice(2, -2)  # the filter reaches out of the box at the border: ramps are exact inside
    assert np.abs(pixels[inner, 5, 0] - 2 * where[inner, 0]).max() <= 0.6
    assert np.abs(pixels[5, inner, 1] - 2 * where[inner, 1]).max() <= 0.6


def test_a_landmark_lands_on_the_pixel_that_shows_it():
    image = np.zeros((90, 120, 3), np.uint8)
    image[33, 57] = 255
    box, size = (10, 20, 60, 90), 200
    pixels = crop.crop_image(Image.fromarray(image), box, size)[..., 0].astype(float)
    rows, cols = np.mgrid[:size, :size]
    centre = np.array([(rows * pixels).sum(), (cols * pixels).sum()]) / pixels.sum()
    np.testing.assert_allclose(centre, crop.to_crop([33, 57], box, size), atol=0.05)


def _objects(n=3, parts=("a", "b")):
    return data.ObjectSet(np.arange(n * 4 * 4 * 3, dtype=np.uint8).reshape(n, 4, 4, 3),
                          np.arange(n * len(parts) * 2, dtype=np.float32).reshape(n, -1, 2),
                          np.ones((n, len(parts)), bool), parts, np.zeros((n, 4), np.float32),
                          tuple(f"i{k}/0" for k in range(n)), "thing")


def test_object_set_checks_fields_and_helpers_work():
    objects = _objects()
    assert len(objects) == 3 and objects.image_size == 4
    with pytest.raises(ValueError, match=r"ObjectSet.landmarks must be float32 \[3, 2, 2\]"):
        data.ObjectSet(objects.images, objects.landmarks[:, :1], objects.visible,
                       objects.part_names, objects.boxes, objects.ids, "thing")
    flipped = data.mirror(objects)
    np.testing.assert_array_equal(flipped.images, objects.images[:, :, ::-1])
    np.testing.assert_array_equal(flipped.landmarks[..., 1], 3 - objects.landmarks[..., 1])
    np.testing.assert_array_equal(data.mirror(flipped).landmarks, objects.landmarks)
    only_b = data.select_parts(objects, ["b"])
    np.testing.assert_array_equal(only_b.landmarks[:, 0], objects.landmarks[:, 1])
    with pytest.raises(ValueError, match="unknown part.*'c'.*its parts are: a, b"):
        data.select_parts(objects, ["c"])
    both = data.concatenate([objects, objects])
    assert len(both) == 6 and both.ids[3] == "i0/0"
    with pytest.raises(ValueError, match="must share category, parts and image size"):
        data.concatenate([objects, only_b])


def test_registry_descriptions_and_default_landmarks():
    assert data.names() == ("cub200", "folder", "ilsvrc_animal_part", "pascal_part", "synthetic")
    expected = {("pascal_part", "cow"): ("head", "neck", "torso"),
                ("cub200", "bird"): ("back", "forehead", "tail"),
                ("ilsvrc_animal_part", "n02084071"): ("head", "front_legs"),
                ("ilsvrc_animal_part", "n01443537"): ("head",),
                ("synthetic", "bird"): None, ("folder", "x"): None}
    for (name, category), parts in expected.items():
        assert data.instability_parts(name, category) == parts
        if parts:
            assert set(parts) <= set(data.describe(name).parts[category])
    text = str(data.describe("pascal_part"))
    assert "VOCtrainval_03-May-2010.tar" in text and "Annotations_Part/<id>.mat" in text
    assert "parts of cow, sheep (19): head, leye" in text


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="voc"), "unknown dataset 'voc'; valid: cub200, folder, ilsvrc_animal_part"),
    (dict(category="cat"), "synthetic: unknown category 'cat'; valid: quadruped, bird, vehicle"),
    (dict(split="train"), "synthetic: unknown split 'train'; valid: all"),
    (dict(shard=(2, 2)), r"shard must be \(index, count\) with 0 <= index < count"),
    (dict(limit=0), "limit must be an int >= 1"),
    (dict(limit=None), "synthetic: images are drawn on demand; give limit"),
])
def test_bad_arguments_are_named(kwargs, message):
    arguments = dict(name="synthetic", root=None, category="bird", limit=2) | kwargs
    with pytest.raises(ValueError, match=message):
        data.load(**arguments)


def test_synthetic_through_the_contract_is_the_embedded_set():
    objects = data.load("synthetic", None, "bird", limit=4, image_size=64, seed=3, quiet=True)
    batch = synthetic.sample("bird", 4, seed=3, image_size=64)
    np.testing.assert_array_equal(objects.images, batch.images)
    np.testing.assert_array_equal(objects.landmarks, batch.landmarks)
    np.testing.assert_array_equal(objects.visible, batch.visible)
    assert objects.part_names == synthetic.PARTS["bird"] and objects.ids[1] == "seed3-000001/0"
    negatives = data.negatives("synthetic", None, "bird", limit=3, image_size=64, seed=3,
                               quiet=True)
    np.testing.assert_array_equal(negatives.images, synthetic.negatives(3, seed=3, image_size=64))
    lazy = data.iter_negatives("synthetic", None, "bird", limit=3, image_size=64, seed=3,
                               quiet=True).images   # read when sliced
    assert lazy.shape == (3, 64, 64, 3) and lazy.dtype == np.uint8
    np.testing.assert_array_equal(lazy[1:3], negatives.images[1:3])
    batches = list(data.iter_objects("synthetic", None, "bird", limit=4, image_size=64, seed=3,
                                     batch_size=3, quiet=True))
    assert [len(b) for b in batches] == [3, 1]
    np.testing.assert_array_equal(data.concatenate(batches).images, objects.images)


@pytest.fixture
def folder(tmp_path):
    write_jpeg(tmp_path / "a.jpg", pattern(90, 120, 1))
    (tmp_path / "sub").mkdir()
    Image.fromarray(pattern(60, 80, 2)).save(tmp_path / "sub" / "b.png")
    return tmp_path


def test_folder_without_csv_is_one_whole_image_per_file(folder):
    write_jpeg(folder / "c.jpg", pattern(40, 40, 3))
    truncate(folder / "c.jpg")
    with pytest.warns(data.SkippedFilesWarning, match="skipped 1 .*c.jpg"):
        objects = data.load("folder", folder, "mine", image_size=32, quiet=True)
    assert objects.ids == ("a/0", "sub/b/0") and objects.part_names == ()
    assert objects.category == "mine" and objects.landmarks.shape == (2, 0, 2)
    np.testing.assert_array_equal(objects.boxes, [[0, 0, 90, 120], [0, 0, 60, 80]])


def test_folder_csv_boxes_and_landmarks_by_hand(folder):
    (folder / "objects.csv").write_text(
        "image,category,y0,x0,y1,x1,head_y,head_x,tail_y,tail_x\n"
        "a.jpg,cat,10,20,60,90,16.5,77.5,,\n"
        "a.jpg,dog,0,0,90,120,45,60,10,10\n"
        "a.jpg,cat,,,,,30,40,80,100\n"
        "sub/b.png,cat,5,5,15,15,,,,\n"
        "missing.jpg,cat,,,,,,,,\n")
    with pytest.warns(data.SkippedFilesWarning, match="skipped 1 .*missing.jpg"):
        cats = data.load("folder", folder, "cat", image_size=64, quiet=True)
    assert cats.ids == ("a/0", "a/2") and cats.part_names == ("head", "tail")  # b: too small
    np.testing.assert_array_equal(cats.boxes, [[10, 20, 60, 90], [0, 0, 90, 120]])
    # a/0 as in test_crop_geometry_by_hand; a/2, the whole 90 x 120 image:
    # (30.5 * 64 / 90 - 0.5, 40.5 * 64 / 120 - 0.5), (80.5 * 64 / 90 - 0.5, 100.5 * 64 / 120 - 0.5)
    np.testing.assert_allclose(cats.landmarks, [[[8.46, 52.528571], [0, 0]],
                                                [[21.188889, 21.1], [56.744444, 53.1]]],
                               atol=1e-5)
    np.testing.assert_array_equal(cats.visible, [[True, False], [True, True]])
    assert data.load("folder", folder, "dog", image_size=64, quiet=True).ids == ("a/1",)
    with pytest.raises(ValueError, match="unknown category 'bird'; valid: cat, dog"):
        data.load("folder", folder, "bird")


@pytest.mark.parametrize("csv, message", [
    ("image,head_h\na.jpg,3\n", "columns must be image.*not understood: head_h"),
    ("image,y0,x0\na.jpg,1,2\n", "columns must be image"),
    ("image,head_y,head_x\na.jpg,5,\n", "line 2: head_y, head_x must all be numbers or all"),
    ("image,y0,x0,y1,x1\na.jpg,5,5,5,9\n", "line 2: the box needs y1 > y0"),
])
def test_folder_csv_errors_name_the_problem(folder, csv, message):
    (folder / "objects.csv").write_text(csv)
    with pytest.raises(ValueError, match=message):
        data.load("folder", folder, "x")


def test_missing_root_and_empty_results_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere not found"):
        data.load("folder", tmp_path / "nowhere", "x")
    with pytest.raises(ValueError, match="folder: no objects of 'x'"):
        data.load("folder", tmp_path, "x")
