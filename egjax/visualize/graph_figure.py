"""A picture of part of the graph: layers bottom to top, nodes grouped by filter, edges to
parents labelled with their mean spatial offsets."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from egjax import evaluate  # noqa: E402
from egjax.visualize.figures import LAYER_COLOURS  # noqa: E402


def pixels(fit) -> np.ndarray:
    """`[V, N, 2]` node positions in pixels in the graph's own frame (image n mirrored where
    `flip[n]`), the frame in which the EM relates children to parents."""
    return fit.config.center + np.asarray(fit.pos, np.float64) * fit.config.stride


def edge_offsets(lower, upper) -> np.ndarray:
    """`[V, top_n, 2]` mean over images of parent position minus child position (pixels, h
    and w, in the graph's own frame) for each parent of each node of `lower`; NaN where
    there is no parent (-1). `upper` is the layer above."""
    parents = np.asarray(lower.parents)
    child, parent = pixels(lower), pixels(upper)
    mean_parent = parent.mean(axis=1)[np.maximum(parents, 0)]               # [V, n, 2]
    offsets = mean_parent - child.mean(axis=1)[:, None, :]
    return np.where((parents >= 0)[..., None], offsets, np.nan)


def figure_nodes(graph, per_layer: int) -> list[np.ndarray]:
    """Nodes to draw per layer (bottom to top): the top layer's `per_layer` best nodes by
    score, then in each layer below its best nodes with a parent among those drawn above
    (topped up with its best other nodes)."""
    size = graph.config.image_size
    chosen = [None] * len(graph.layers)
    above = None
    for index in reversed(range(len(graph.layers))):
        fit = graph.layers[index]
        order = evaluate.ranked(evaluate.node_detections(fit, size))
        if above is not None:
            linked = np.isin(np.asarray(fit.parents), above).any(axis=1)
            order = np.concatenate([order[linked[order]], order[~linked[order]]])
        chosen[index] = above = order[:per_layer]
    return chosen


def graph_figure(graph, path, *, per_layer: int = 8) -> None:
    """PNG of `figure_nodes`: one row per layer (bottom layer at the bottom), nodes sorted
    and boxed by filter (`f<c>`, node `k` inside), an edge from each drawn node to each of
    its drawn parents labelled with the mean offset `(dh, dw)` px from child to parent."""
    chosen = figure_nodes(graph, per_layer)
    place = {}
    fig, ax = plt.subplots(figsize=(1.25 * per_layer + 1.6, 2.1 * len(graph.layers)), dpi=110)
    for index, (fit, nodes) in enumerate(zip(graph.layers, chosen)):
        k = np.shape(fit.deform)[1]
        nodes = sorted(nodes.tolist())
        filters = [v // k for v in nodes]
        slots = np.arange(len(nodes)) + 0.6 * np.cumsum([0] + [a != b for a, b in
                                                              zip(filters, filters[1:])])
        xs = slots / max(slots[-1], 1) * (per_layer - 1)
        colour = LAYER_COLOURS[index % len(LAYER_COLOURS)]
        for f in sorted(set(filters)):
            group = [x for x, g in zip(xs, filters) if g == f]
            ax.add_patch(plt.Rectangle((min(group) - 0.32, index - 0.2),
                                       max(group) - min(group) + 0.64, 0.4, fill=False,
                                       edgecolor="#999999", linewidth=0.8, linestyle=":"))
            ax.text(np.mean(group), index - 0.3, f"f{f}", ha="center", va="top", fontsize=7,
                    color="#555555", zorder=2, bbox=dict(boxstyle="round,pad=0.1", fc="white",
                                                         ec="none"))
        for x, v in zip(xs, nodes):
            place[index, v] = x
            ax.scatter([x], [index], s=260, color=colour, alpha=0.85, zorder=3)
            ax.text(x, index, str(v % k), ha="center", va="center", fontsize=7,
                    color="white", zorder=4)
        ax.text(-1.1, index, fit.config.tap or f"layer {index}", ha="right", va="center",
                fontsize=9, color=colour, fontweight="bold")
    for index in range(len(graph.layers) - 1):
        lower, upper = graph.layers[index], graph.layers[index + 1]
        offsets = edge_offsets(lower, upper)
        edges = [(place[index, v], place[index + 1, p], offsets[v, slot])
                 for v in chosen[index]
                 for slot, p in enumerate(np.asarray(lower.parents)[v])
                 if (index + 1, p) in place]
        for number, (x0, x1, (dh, dw)) in enumerate(sorted(edges, key=lambda e: e[:2])):
            y0, y1 = index + 0.13, index + 0.87
            ax.plot([x0, x1], [y0, y1], color="#777777", linewidth=0.7, alpha=0.7, zorder=1)
            t = 0.15 + 0.7 * ((number * 0.618) % 1)       # spread the labels along the edges
            ax.text(x0 + t * (x1 - x0), y0 + t * (y1 - y0), f"({dh:+.0f},{dw:+.0f})",
                    fontsize=5.5, color="#333333", ha="center", va="center", zorder=2,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    ax.set_xlim(-2.0, per_layer - 0.3)
    ax.set_ylim(-0.6, len(graph.layers) - 0.5)
    ax.set_axis_off()
    ax.set_title(f"Explanatory graph: {per_layer} nodes per layer, edges to parents with the "
                 "mean offset (dh, dw) px child -> parent", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
