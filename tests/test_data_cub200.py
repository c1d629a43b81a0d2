"""cub200 on a small tree of CUB-200-2011's text files: boxes and landmarks by hand, splits,
species, bad files, missing files, negatives."""

from __future__ import annotations

import numpy as np
import pytest

from egjax import data
from tests.data_trees import pattern, truncate, write_cub, write_jpeg

S = 64


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    albatross, laysan = "001.Black_footed_Albatross", "002.Laysan_Albatross"
    write_cub(root, [
        dict(id=1, folder=albatross, pixels=pattern(90, 120, 1), box=(10, 20, 70, 50),
             train=False, parts={1: (50, 30), 6: (75, 25)}),
        dict(id=2, folder=laysan, pixels=pattern(90, 120, 2), box=(0, 0, 40, 40), train=True,
             parts={1: (10, 10)}),
        dict(id=3, folder=laysan, pixels=pattern(90, 120, 3), box=(5, 5, 100, 80), train=False,
             parts={}),
        dict(id=4, folder=albatross, pixels=pattern(90, 120, 4), box=(30, 10, 60, 60),
             train=True, parts={1: (35.5, 12.25)}),
    ])
    truncate(next((root / "CUB_200_2011" / "images" / laysan).glob("*_0003.jpg")))
    return root


def _load(root, category="bird", **kwargs):
    with pytest.warns(data.SkippedFilesWarning, match="skipped 1 .*Laysan_Albatross_0003.jpg"):
        return data.load("cub200", root, category, image_size=S, quiet=True, **kwargs)


def test_boxes_and_landmarks_by_hand(root):
    birds = _load(root, split="test")  # bird 2 is below min_area, bird 3's JPEG is truncated
    assert birds.ids == ("1/0",) and birds.category == "bird"
    assert birds.part_names[:6] == ("back", "beak", "belly", "breast", "crown", "forehead")
    assert birds.part_names[6] == "left_eye" and len(birds.part_names) == 15
    np.testing.assert_array_equal(birds.boxes, [[20, 10, 70, 80]])  # x 10, y 20, w 70, h 50
    # back (x 50, y 30), forehead (x 75, y 25) in box rows 20..69, cols 10..79:
    # h = (y + 0.5 - 20) * 64 / 50 - 0.5, w = (x + 0.5 - 10) * 64 / 70 - 0.5
    np.testing.assert_allclose(birds.landmarks[0, [0, 5]], [[12.94, 36.528571],
                                                             [6.54, 59.385714]], atol=1e-5)
    assert birds.visible[0].tolist() == [i in (0, 5) for i in range(15)]
    assert (birds.landmarks[0, ~birds.visible[0]] == 0).all()


def test_splits_and_species(root):
    assert data.load("cub200", root, "bird", split="train", image_size=S, quiet=True).ids == (
        "4/0",)
    assert _load(root).ids == ("1/0", "4/0")
    assert data.load("cub200", root, "1", image_size=S, quiet=True).ids == ("1/0", "4/0")
    assert data.load("cub200", root, "001.Black_footed_Albatross", image_size=S,
                     quiet=True).ids == ("1/0", "4/0")
    with pytest.raises(ValueError, match="unknown category '999'; valid: bird .*class id 1..2"):
        data.load("cub200", root, "999")
    with pytest.raises(ValueError, match="unknown split 'val'; valid: train, test, all"):
        data.load("cub200", root, "bird", split="val")


def test_negatives_need_a_folder(root, tmp_path):
    with pytest.raises(ValueError, match="cub200 has no negative images.*negatives_dir"):
        data.negatives("cub200", root, "bird")
    write_jpeg(tmp_path / "street.jpg", pattern(40, 50))
    negatives = data.negatives("cub200", root, "bird", negatives_dir=tmp_path, image_size=32,
                               quiet=True)
    assert negatives.ids == ("street/0",) and negatives.images.shape == (1, 32, 32, 3)


def test_missing_files_name_the_archive(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="CUB_200_2011 not found: extract "
                                                "CUB_200_2011.tgz"):
        data.load("cub200", tmp_path, "bird")
    locs = root / "CUB_200_2011" / "parts" / "part_locs.txt"
    saved = locs.read_bytes()
    locs.unlink()
    try:
        with pytest.raises(FileNotFoundError, match="part_locs.txt not found: extract"):
            data.load("cub200", root, "bird")
    finally:
        locs.write_bytes(saved)
