"""The contract a dataset source meets: a module in `egjax/data/sources/` that indexes objects.

A source module defines
* `DESCRIPTION`: a `Description` (categories, parts, splits, default landmarks, layout);
* `index(root, category, *, split, min_area, image_size, limit, seed, bad, quiet) -> Index`:
  every object of `category` in `split` whose box area is >= min_area, in a fixed order, with
  its part landmarks in source pixels (and, optionally, the object's exact pixel mask, read
  lazily: `Entry.mask`); no pixel is read. It raises ValueError for an unknown
  category (listing the valid ones) and FileNotFoundError for a missing folder or file (naming
  the archive to extract and where); unreadable files go to `bad`. `limit` (None or an int)
  is applied by the caller; a source that generates its objects needs it.
* `negatives(root, category, *, split, image_size, limit, seed, bad, quiet) -> list[Entry]`:
  whole images without the category, or `negatives = None` when the user has to supply a folder.

Generic code (`egjax.data.loading`) shards, batches, reads and crops; adding a dataset is
adding a module.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Mapping, NamedTuple

import numpy as np


class Entry(NamedTuple):
    """One object, indexed: where its pixels are and where its parts are."""

    id: str  # "<image id>/<object index>"
    image: pathlib.Path | Callable[[], np.ndarray]  # an image file, or renders uint8 [H, W, 3]
    box: tuple[float, float, float, float] | None  # (y0, x0, y1, x1) source px; None: whole image
    points: np.ndarray  # float64 [P, 2] (h, w) source pixels; NaN where unknown (not visible)
    visible: np.ndarray  # bool [P]
    mask: Callable[[], np.ndarray] | None = None  # the object's pixels, bool [H, W]; None: unknown


class Index(NamedTuple):
    """The objects of one category of a dataset, before any pixel is read."""

    category: str
    part_names: tuple[str, ...]
    entries: list[Entry]


@dataclasses.dataclass(frozen=True)
class Description:
    """What a dataset offers and how to get it (`egjax.data.describe(name)`)."""

    name: str
    title: str
    categories: tuple[str, ...]  # the named categories (a source may accept others, see notes)
    parts: Mapping[str, tuple[str, ...]]  # fixed part lists per category (others: see notes)
    splits: tuple[str, ...]
    instability: Mapping[str, tuple[str, ...]]  # default landmarks of the instability metric
    instability_default: tuple[str, ...] | None  # for categories not in `instability`
    layout: str  # how to get the data and the folder layout under root
    notes: str = ""

    def instability_parts(self, category: str) -> tuple[str, ...] | None:
        """The parts whose landmarks the location-instability metric uses by default for
        `category` (the authors' choice); None: all of the loaded set's parts."""
        return self.instability.get(category, self.instability_default)

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.title}", f"  splits: {', '.join(self.splits)}",
                 f"  categories: {', '.join(self.categories) or '(see notes)'}"]
        lines += [f"  parts of {who} ({len(parts)}): {', '.join(parts)}"
                  for who, parts in _grouped(self.parts)]
        default = self.instability_default
        lines.append("  instability landmarks: " + "; ".join(
            [f"{who}: {', '.join(parts)}" for who, parts in _grouped(self.instability)]
            + [(", ".join(default) if default else "all parts of the set")
               + (" (other categories)" if self.instability else "")]))
        if self.notes:
            lines += ["  " + line for line in self.notes.strip().splitlines()]
        lines += ["  layout:"] + ["    " + line for line in self.layout.strip().splitlines()]
        return "\n".join(lines)


def _grouped(mapping: Mapping[str, tuple[str, ...]]) -> list[tuple[str, tuple[str, ...]]]:
    """(categories, value) with categories sharing a value named together."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for category, value in mapping.items():
        groups.setdefault(value, []).append(category)
    return [(", ".join(categories) if len(categories) <= 6 else
             f"the other {len(categories)} categories" if len(groups) > 1 else "each category",
             value) for value, categories in groups.items()]


def check_choice(dataset: str, what: str, value, allowed) -> None:
    """ValueError listing `allowed` when `value` is not one of them."""
    if value not in allowed:
        raise ValueError(f"{dataset}: unknown {what} {value!r}; valid: "
                         f"{', '.join(map(str, allowed))}")
