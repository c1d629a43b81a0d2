"""ObjectSet: object crops with their part landmarks (and object masks where the source knows
them), the one thing every dataset yields."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ObjectSet:
    """N objects of one category, each box cropped and resized to S x S (anisotropic).

    Geometry (`egjax.data.crop`): a source pixel centre r in a box spanning rows y0 .. y1-1
    lands at `(r + 0.5 - y0) * S / (y1 - y0) - 0.5` in the crop, likewise for columns.
    """

    images: np.ndarray  # uint8 [N, S, S, 3]
    landmarks: np.ndarray  # float32 [N, P, 2] (h, w) crop pixels, 0-based; 0 where unknown
    visible: np.ndarray  # bool [N, P]: the part is annotated on this object
    part_names: tuple[str, ...]  # [P]
    boxes: np.ndarray  # float32 [N, 4] (y0, x0, y1, x1) source-image pixels, y1 / x1 exclusive
    ids: tuple[str, ...]  # [N] "<image id>/<object index>", the index as in the source annotation
    category: str
    masks: np.ndarray | None = None  # bool [N, S, S] the object's crop pixels; None: unknown

    def __post_init__(self):
        n = len(self.ids)
        parts = len(self.part_names)
        expected = {"images": ((n, None, None, 3), np.uint8),
                    "landmarks": ((n, parts, 2), np.float32), "visible": ((n, parts), np.bool_),
                    "boxes": ((n, 4), np.float32)}
        if self.masks is not None:
            expected["masks"] = ((n, self.images.shape[1], self.images.shape[2]), np.bool_)
        for field, (shape, dtype) in expected.items():
            value = getattr(self, field)
            if value.dtype != dtype or value.ndim != len(shape) or any(
                    want is not None and got != want for got, want in zip(value.shape, shape)):
                raise ValueError(f"ObjectSet.{field} must be {np.dtype(dtype).name} {list(shape)} "
                                 f"(None: any), got {value.dtype} {list(value.shape)}")
        if self.images.shape[1] != self.images.shape[2]:
            raise ValueError(f"ObjectSet.images must be square, got {list(self.images.shape)}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_size(self) -> int:
        return self.images.shape[1]


def empty(category: str, part_names: Sequence[str], image_size: int) -> ObjectSet:
    """An ObjectSet of no objects."""
    parts = len(part_names)
    return ObjectSet(np.zeros((0, image_size, image_size, 3), np.uint8),
                     np.zeros((0, parts, 2), np.float32), np.zeros((0, parts), bool),
                     tuple(part_names), np.zeros((0, 4), np.float32), (), category)


def concatenate(sets: Sequence[ObjectSet]) -> ObjectSet:
    """The objects of `sets` in order; they must share category, parts and image size (masks
    are kept if every set has them)."""
    first = sets[0]
    for other in sets[1:]:
        if (other.category, other.part_names, other.image_size) != (
                first.category, first.part_names, first.image_size):
            raise ValueError("ObjectSets to concatenate must share category, parts and image size")
    return ObjectSet(np.concatenate([s.images for s in sets]),
                     np.concatenate([s.landmarks for s in sets]),
                     np.concatenate([s.visible for s in sets]), first.part_names,
                     np.concatenate([s.boxes for s in sets]),
                     tuple(i for s in sets for i in s.ids), first.category,
                     None if any(s.masks is None for s in sets)
                     else np.concatenate([s.masks for s in sets]))


def mirror(objects: ObjectSet) -> ObjectSet:
    """The objects flipped left-right: images and masks W-reversed, landmarks w -> S - 1 - w
    (boxes and ids stay those of the source object)."""
    landmarks = objects.landmarks.copy()
    landmarks[..., 1] = objects.image_size - 1 - landmarks[..., 1]
    masks = None if objects.masks is None else np.ascontiguousarray(objects.masks[:, :, ::-1])
    return dataclasses.replace(objects, images=np.ascontiguousarray(objects.images[:, :, ::-1]),
                               landmarks=landmarks, masks=masks)


def select_parts(objects: ObjectSet, names: Sequence[str]) -> ObjectSet:
    """The same objects with only the parts `names`, in that order (e.g. the landmarks of the
    instability metric); an unknown name is a ValueError listing the set's parts."""
    unknown = [name for name in names if name not in objects.part_names]
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(map(repr, unknown))} for "
                         f"{objects.category!r}; its parts are: {', '.join(objects.part_names)}")
    columns = [objects.part_names.index(name) for name in names]
    return dataclasses.replace(objects, landmarks=objects.landmarks[:, columns],
                               visible=objects.visible[:, columns], part_names=tuple(names))
