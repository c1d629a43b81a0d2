"""A PNG grid of examples per category with landmarks drawn, for people to look at."""

from __future__ import annotations

import os
import tempfile

from egjax.data.synthetic.categories import CATEGORIES, PARTS
from egjax.data.synthetic.sampling import negatives, sample


def render_preview(path: str, *, seed: int = 0, per_row: int = 6, image_size: int = 224) -> None:
    """Write a PNG grid to `path`: one row per category (landmarks: filled = visible, hollow =
    occluded or outside the image), a last row of negatives."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not isinstance(per_row, int) or isinstance(per_row, bool) or per_row < 1:
        raise ValueError(f"per_row must be an int >= 1, got {per_row!r}")
    colours = matplotlib.colormaps["tab10"].colors
    fig = Figure(figsize=(2.2 * per_row + 2.2, 2.2 * (len(CATEGORIES) + 1)))
    axes = fig.subplots(len(CATEGORIES) + 1, per_row, squeeze=False)
    for row, category in enumerate(CATEGORIES):
        batch = sample(category, per_row, seed=seed, image_size=image_size)
        for col, ax in enumerate(axes[row]):
            ax.imshow(batch.images[col])
            for p in range(len(PARTS[category])):
                h, w = batch.landmarks[col, p]
                ax.scatter([w], [h], s=28, linewidths=1.2, edgecolors=colours[p % 10],
                           facecolors=colours[p % 10] if batch.visible[col, p] else "none")
        axes[row, 0].set_ylabel(category)
        handles = [Line2D([], [], marker="o", linestyle="", color=colours[p % 10], label=name)
                   for p, name in enumerate(PARTS[category])]
        axes[row, -1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5),
                             fontsize=7, frameon=False)
    for col, image in enumerate(negatives(per_row, seed=seed, image_size=image_size)):
        axes[-1, col].imshow(image)
    axes[-1, 0].set_ylabel("negatives")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(-0.5, image_size - 0.5)
        ax.set_ylim(image_size - 0.5, -0.5)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".png")
    try:
        with os.fdopen(fd, "wb") as file:
            fig.savefig(file, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
