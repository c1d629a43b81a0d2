"""The dataset registry: every module in `egjax/data/sources/` is a dataset named after it."""

from __future__ import annotations

import functools
import importlib
import pkgutil

from egjax.data import sources


@functools.cache
def names() -> tuple[str, ...]:
    """The datasets, sorted."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(sources.__path__)
                        if not m.name.startswith("_")))


def get(name: str):
    """The source module of dataset `name` (see `egjax.data.source`); ValueError listing the
    datasets for an unknown name."""
    if name not in names():
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(names())}")
    return importlib.import_module(f"{sources.__name__}.{name}")
