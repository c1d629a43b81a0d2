"""Summary figures of a run: instability per layer, and where the stablest nodes fire."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from egjax import evaluate  # noqa: E402

LAYER_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628")


def instability_chart(metrics: dict, path) -> None:
    """Bar chart: location instability of nodes and raw filters per layer (`evaluate.compare`)."""
    rows = metrics["layers"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=120)
    ax.bar(x - 0.2, [r["filters"] for r in rows], 0.4, label="raw filters", color="#bbbbbb")
    ax.bar(x + 0.2, [r["nodes"] for r in rows], 0.4, label="graph nodes", color="#377eb8")
    for i, r in enumerate(rows):
        ax.text(i + 0.2, r["nodes"], f"{r['ratio']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [r["tap"] or f"layer {i}" for i, r in enumerate(rows)])
    ax.set_ylabel("instability / image diagonal")
    ax.set_title("Location instability (lower is better)", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def stable_nodes(fit, image_size: int, count: int) -> np.ndarray:
    """Indices of the `count` nodes with the highest mean of their top-20 image scores (the
    nodes the instability metric looks at first)."""
    return evaluate.ranked(evaluate.node_detections(fit, image_size))[:count]


def detections(images: np.ndarray, graph, path, *, images_shown: int = 6,
               nodes_per_layer: int = 6) -> None:
    """Images with the positions of each layer's stablest nodes (one colour per layer;
    marker size grows with the node's score in that image)."""
    size = graph.config.image_size
    shown = min(images_shown, len(images))
    fig, axes = plt.subplots(1, shown, figsize=(2.2 * shown, 2.5), dpi=110, squeeze=False)
    chosen = [(fit, stable_nodes(fit, size, nodes_per_layer)) for fit in graph.layers]
    found = [evaluate.node_detections(fit, size) for fit in graph.layers]
    for n, ax in enumerate(axes[0]):
        ax.imshow(images[n])
        for colour, (_, nodes), det in zip(LAYER_COLOURS, chosen, found):
            score = det.score[nodes, n]
            ax.scatter(det.px[nodes, n, 1], det.px[nodes, n, 0], s=12 + 18 * score / (
                score.max() + 1e-9), facecolors="none", edgecolors=colour, linewidths=1.2)
        ax.set_axis_off()
    handles = [plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                          markeredgecolor=c, label=fit.config.tap or f"layer {i}")
               for i, (c, (fit, _)) in enumerate(zip(LAYER_COLOURS, chosen))]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
    fig.suptitle(f"Stablest {nodes_per_layer} nodes per layer", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)
