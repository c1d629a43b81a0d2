"""ilsvrc_animal_part on small MATLAB v7.3 files laid out as the published data.mat and
truth_part0k.mat: boxes (1-based, clipped) and landmarks (224-crop, 1-based) by hand."""

from __future__ import annotations

import numpy as np
import pytest

from egjax import data
from tests.data_trees import cache_home, pattern, truncate, write_ilsvrc  # noqa: F401

DOG, FISH = "n02084071", "n01443537"
TRUTH = ("interpretableCNN/code/data_input/data_input_DET-2015-subset-ILSVRC2013train/"
         f"{DOG}")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ilsvrc")
    images = [(pattern(90, 120, 1), (21, 90, 11, 60)),  # xmin, xmax, ymin, ymax (1-based)
              (pattern(90, 120, 2), (0, 130, 31, 90)),  # reaches out of the 120 px image
              (pattern(90, 120, 3), (1, 100, 1, 80)),  # truncated JPEG
              (pattern(90, 120, 4), (1, 30, 1, 30))]  # below min_area
    write_ilsvrc(root, DOG, images, [[(101.0, 57.0), None, (5.0, 5.0), None],
                                     [None, (224.0, 1.0), None, None]])
    truncate(root / "detanimalpart" / f"{DOG}_obj" / "img" / "img" / "00003.jpg")
    write_ilsvrc(root, FISH, images[:1], [[(1.0, 224.0)]])
    return root


def _load(root, category=DOG, size=64, **kwargs):
    with pytest.warns(data.SkippedFilesWarning, match=f"skipped 1 .*{DOG}_obj/img/img/00003"):
        return data.load("ilsvrc_animal_part", root, category, image_size=size, quiet=True,
                         **kwargs)


def test_boxes_and_landmarks_by_hand(root):
    dogs = _load(root)
    assert dogs.ids == (f"{DOG}/00001/0", f"{DOG}/00002/0") and dogs.category == DOG
    assert dogs.part_names == ("head", "front_legs")
    # 1-based inclusive boxes as getI.m crops them, clipped to the 90 x 120 image
    np.testing.assert_array_equal(dogs.boxes, [[10, 20, 60, 90], [30, 0, 90, 120]])
    # head [101; 57] 1-based in the 224 crop -> 0-based (100, 56) -> at 64: (u + 0.5) * 64 / 224
    # - 0.5 = (28.214286, 15.642857); front legs [224; 1] -> (223, 0) -> (63.357143, -0.357143)
    np.testing.assert_allclose(dogs.landmarks[0, 0], [28.214286, 15.642857], atol=1e-5)
    np.testing.assert_allclose(dogs.landmarks[1, 1], [63.357143, -0.357143], atol=1e-5)
    np.testing.assert_array_equal(dogs.visible, [[True, False], [False, True]])
    at_224 = _load(root, size=224)
    np.testing.assert_allclose(at_224.landmarks[0, 0], [100.0, 56.0], atol=1e-4)


def test_names_and_the_goldfish(root):
    assert _load(root, "dog").ids == _load(root).ids
    fish = data.load("ilsvrc_animal_part", root, "goldfish", image_size=64, quiet=True)
    assert fish.part_names == ("head",) and fish.category == FISH
    np.testing.assert_allclose(fish.landmarks[0, 0], [-0.357143, 63.357143], atol=1e-5)
    with pytest.raises(ValueError, match="unknown category 'n00000000'; valid: n01443537"):
        data.load("ilsvrc_animal_part", root, "n00000000")


def test_a_corrupt_truth_file_leaves_its_part_invisible(root):
    path = root / TRUTH / "truth_part02.mat"
    saved = path.read_bytes()
    path.write_bytes(saved[:600])
    try:
        with pytest.warns(data.SkippedFilesWarning, match="skipped 2 .*truth_part02.mat"):
            dogs = data.load("ilsvrc_animal_part", root, DOG, image_size=64, quiet=True)
        np.testing.assert_array_equal(dogs.visible, [[True, False], [False, False]])
        with pytest.raises(data.CorruptFileError, match="truth_part02.mat") as error:
            data.load("ilsvrc_animal_part", root, DOG, strict=True, quiet=True)
        assert error.value.__context__ is None
    finally:
        path.write_bytes(saved)


def test_missing_repositories_are_named(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="git clone https://github.com/zqs1022/"
                                                "detanimalpart"):
        data.load("ilsvrc_animal_part", tmp_path, DOG)
    (tmp_path / "detanimalpart").symlink_to(root / "detanimalpart")
    with pytest.raises(FileNotFoundError, match="truth_part01.mat not found: git clone "
                                                "https://github.com/zqs1022/interpretableCNN"):
        data.load("ilsvrc_animal_part", tmp_path, DOG)
