"""A PNG grid of examples per category with landmarks drawn, for people to look at."""

from __future__ import annotations

import os
import tempfile

from egjax.data.synthetic.categories import CATEGORIES, PARTS
from egjax.data.synthetic.sampling import negatives, sample


def render_preview(path: str, *, seed: int = 0, per_row: int = 6, image_size: int = 224) -> None:
    """Write a PNG grid to `path`: one row per category (landmarks: filled = visible, hollow =
    occluded or outside), a last row of negatives."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(CATEGORIES) + 1
    fig, axes = plt.subplots(rows, per_row, figsize=(2.2 * per_row + 2.2, 2.2 * rows),
                             squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for row, category in enumerate(CATEGORIES):
        batch = sample(category, per_row, seed=seed, image_size=image_size)
        for col, ax in enumerate(axes[row]):
            ax.imshow(batch.images[col])
            for p, name in enumerate(PARTS[category]):
                h, w = batch.landmarks[col, p]
                ax.scatter([w], [h], s=28, marker="o", linewidths=1.2, edgecolors=colours[p % 10],
                           facecolors=colours[p % 10] if batch.visible[col, p] else "none",
                           label=name if col == 0 else None)
        axes[row, 0].set_ylabel(category)
        handles, labels = axes[row, 0].get_legend_handles_labels()
        axes[row, -1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5),
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
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp.name, path)
