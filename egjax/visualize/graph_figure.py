"""A picture of a connected piece of the graph: strong top-layer nodes, their children,
grandchildren and so on down the layers, with an edge from each drawn node to each of its
drawn parents, labelled with their mean spatial offset."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from egjax import evaluate, geometry  # noqa: E402
from egjax.visualize import selection, summary  # noqa: E402
from egjax.visualize.figures import LAYER_COLOURS  # noqa: E402

SLOT = 120             # px along a row per node
ROW = 150              # px per layer
LABEL_WIDTH = 90       # px left of the first slot, for the layer names
TITLE_HEIGHT = 64      # px above the top row
RADIUS = 12            # px, a node's disc
EDGE_COLOUR = "#444444"
OTHER_EDGE_COLOUR = "#c8c8c8"
DPI = 100


def pixels(fit) -> np.ndarray:
    """`[V, N, 2]` node positions in pixels in the graph's own frame (image n mirrored where
    `flip[n]`), the frame in which the EM relates children to parents."""
    return geometry.to_pixels(np.asarray(fit.pos, np.float64), fit.config.stride,
                              fit.config.center)


def edge_offsets(lower, upper, summaries=None) -> np.ndarray:
    """`[V, top_n, 2]` mean over images of parent position minus child position (pixels, h
    and w, in the graph's own frame: `pixels`) for each parent of each node of `lower`; NaN
    where there is no parent (-1). `upper` is the layer above. Means of exact sums
    (`summary.exact_mean`), or the layers' `summary.LayerSummary.position` (`summaries`: the
    two, if already made)."""
    child, parent = ([s.position for s in summaries] if summaries else
                     [np.stack([summary.exact_mean(pixels(fit)[..., i]) for i in range(2)], -1)
                      for fit in (lower, upper)])
    parents = np.asarray(lower.parents)
    mean_parent = parent[np.maximum(parents, 0)]                             # [V, n, 2]
    offsets = mean_parent - child[:, None, :]
    return np.where((parents >= 0)[..., None], offsets, np.nan)


def figure_nodes(graph, roots: int = 3, per_layer: int = 8,
                 summaries=None) -> tuple[list, list]:
    """Nodes to draw per layer (bottom to top), each layer in drawing order (left to right),
    and per node the parent through which it was taken (-1 in the top layer).

    Only nodes that reach the bottom layer are drawn: live nodes (`selection`) of the
    bottom layer, and live nodes above that are a parent of such a node in the layer below.
    Top layer: the `roots` highest-scoring of them, best first. Each layer below: up to
    `per_layer` of them with a parent among those drawn above, taken in rounds: each drawn
    node above in turn (left to right) takes its highest-scoring child not yet taken; drawn
    in the order of the parents that took them, each parent's in the order taken.
    `summaries`: the graph's `summary.summarize`, if already made."""
    summaries = summaries or summary.summarize(graph)
    reach, eligible = None, []
    for fit, det in zip(graph.layers, summaries):
        ranked = selection.strongest(det, np.shape(det.score)[0])
        if reach is not None:
            ranked = ranked[np.isin(ranked, reach)]
        eligible.append(ranked)
        reach = np.asarray(fit.parents)[ranked]
    top = eligible[-1][:roots]
    chosen = [None] * (len(graph.layers) - 1) + [top]
    via = [None] * (len(graph.layers) - 1) + [np.full(len(top), -1)]
    for index in reversed(range(len(graph.layers) - 1)):
        above = chosen[index + 1].tolist()
        ranked = eligible[index]
        parents = np.asarray(graph.layers[index].parents)[ranked]
        queues = [ranked[(parents == p).any(axis=1)].tolist() for p in above]
        taken = {}                                                   # child -> parent slot
        while len(taken) < per_layer and any(queues):
            for slot, queue in enumerate(queues):
                while queue and queue[0] in taken:
                    queue.pop(0)
                if queue and len(taken) < per_layer:
                    taken[queue.pop(0)] = slot
        order = sorted(taken, key=taken.get)                    # stable: the order taken
        chosen[index] = np.asarray(order, np.int64)
        via[index] = np.asarray([above[taken[v]] for v in order], np.int64)
    return chosen, via


def layout(chosen: list[np.ndarray]) -> dict:
    """`{(layer, node): (x, y)}` pixel centres in the figure (x from the left, y from the
    top): layer l's row at `y = TITLE_HEIGHT + (L - 1 - l + 1/2) ROW` (top layer first); the
    i-th of its n nodes at `x = LABEL_WIDTH + (widest - n) SLOT / 2 + (i + 1/2) SLOT`."""
    widest = max(len(nodes) for nodes in chosen)
    return {(index, v): (LABEL_WIDTH + (widest - len(nodes)) * SLOT / 2 + (i + 0.5) * SLOT,
                         TITLE_HEIGHT + (len(chosen) - 1 - index + 0.5) * ROW)
            for index, nodes in enumerate(chosen) for i, v in enumerate(nodes.tolist())}


def graph_figure(graph, path, *, roots: int = 3, per_layer: int = 8, summaries=None) -> None:
    """PNG of `figure_nodes` at the pixels of `layout` (`DPI` dots per inch, 1 figure unit
    = 1 px): a disc of `RADIUS` px per node in its layer's colour (`LAYER_COLOURS`), its
    name `f<filter>·<node>` and score below it; a line from each drawn node to each of its
    drawn parents: `EDGE_COLOUR`, labelled with the parent's mean position minus the
    child's `(dh, dw)` px in the graph's frame (`edge_offsets`), to the parent through
    which it was taken; `OTHER_EDGE_COLOUR`, unlabelled, to the others. `summaries`: the
    graph's `summary.summarize`, if already made."""
    summaries = summaries or summary.summarize(graph)
    chosen, via = figure_nodes(graph, roots, per_layer, summaries)
    place = layout(chosen)
    width = LABEL_WIDTH + max(len(nodes) for nodes in chosen) * SLOT
    height = TITLE_HEIGHT + len(graph.layers) * ROW
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    for index, (fit, nodes) in enumerate(zip(graph.layers, chosen)):
        colour = LAYER_COLOURS[index % len(LAYER_COLOURS)]
        per_filter = np.shape(fit.deform)[1]
        score = selection.strength(summaries[index])
        y = TITLE_HEIGHT + (len(chosen) - 1 - index + 0.5) * ROW
        ax.text(8, y, fit.config.tap or f"layer {index}", ha="left", va="center", fontsize=10,
                color=colour, fontweight="bold")
        for v in nodes.tolist():
            x, y = place[index, v]
            ax.add_patch(plt.Circle((x, y), RADIUS, color=colour, zorder=3, linewidth=0))
            ax.text(x, y + RADIUS + 3, f"f{v // per_filter}·{v % per_filter}\n{score[v]:.1f}",
                    ha="center", va="top", fontsize=7, color="#333333", zorder=4)
    for index in range(len(graph.layers) - 1):
        lower = graph.layers[index]
        offsets = edge_offsets(lower, graph.layers[index + 1], summaries[index:index + 2])
        for v, through in zip(chosen[index].tolist(), via[index].tolist()):
            parents = np.asarray(lower.parents)[v].tolist()
            for p in dict.fromkeys(parents):                 # each parent once, first slot
                if (index + 1, p) not in place:
                    continue
                (x0, y0), (x1, y1) = place[index, v], place[index + 1, p]
                main = p == through
                ax.plot([x0, x1], [y0, y1], color=EDGE_COLOUR if main else OTHER_EDGE_COLOUR,
                        linewidth=1.2 if main else 0.8, zorder=2 if main else 1)
                if main:
                    dh, dw = offsets[v, parents.index(p)]
                    ax.text(x0 + 0.35 * (x1 - x0), y0 + 0.35 * (y1 - y0),
                            f"({dh:+.0f},{dw:+.0f})", fontsize=6.5, color="#222222",
                            ha="center", va="center", zorder=2,
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none"))
    top = graph.layers[-1].config.tap or f"layer {len(graph.layers) - 1}"
    ax.text(8, 6, "\n".join([
        f"A connected piece of the explanatory graph: the {roots} highest-scoring {top} nodes, "
        f"and in each layer below up to {per_layer} of the highest-scoring children",
        "of the nodes drawn above (each in turn takes its best one); only nodes with "
        "descendants down to the bottom layer, no dead ones (score 0 in every image).",
        f"Under each node: f<filter>·<node> and its score, the mean of its top-"
        f"{evaluate.TOP_IMAGES} image scores. Dark edge: to the parent that took the node,",
        "labelled with the parent's mean position minus the child's, (dh, dw) px in the "
        "graph's frame. Light edges: to its other drawn parents."]),
        ha="left", va="top", fontsize=8, color="#222222")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
