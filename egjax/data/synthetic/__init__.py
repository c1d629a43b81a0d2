"""Procedural images with exact part landmarks: objects, negatives, classifier batches."""

from egjax.data.synthetic.categories import CATEGORIES, PARTS, describe
from egjax.data.synthetic.preview import render_preview
from egjax.data.synthetic.sampling import (Batch, mirror, mixed_batches, negatives, sample,
                                             sample_mixed)

__all__ = ["CATEGORIES", "PARTS", "Batch", "describe", "mirror", "mixed_batches", "negatives",
           "render_preview", "sample", "sample_mixed"]
