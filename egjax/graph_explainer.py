"""The explanatory graph as an explainer for `continuity.explanation_continuity`.

An explanatory graph (Zhang et al., AAAI 2018) explains an image by which of its nodes
fire (node scores, `S = sum_cand pi F`) and where (inferred positions). For network input
images `[N, H, W, 3]` (preprocessed floats, as the saliency methods take them) the network
runs forward and mirrored, its maps at the graph's taps are normalised with the negative
statistics the graph was fitted with (`features.normalize`), and `em.infer_graph` infers
every layer top-down. Two explainers read one layer of it:

* `node_scores`: the node activation vector `[N, V]`, each image's scores divided by their
  mean over the layer's nodes (so an image's vector does not depend on the batch);
* `node_positions`: each node's inferred position `[N, V, 2]` in input pixels (h, w) of
  the image as given, `px = center + cell * stride`; positions found in the mirrored image
  are mirrored back in pixels (`geometry.cells_to_pixels`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from egjax import geometry
from egjax.em.inference import LayerInference, infer_graph
from egjax.features import normalize
from egjax.graph import ExplanatoryGraph


def graph_inference(model, params, graph: ExplanatoryGraph, sd: Mapping[str, jax.Array],
                    layer: int) -> Callable[[jax.Array], LayerInference]:
    """`images [N, H, W, 3] -> LayerInference` of graph layer `layer` (an index into
    `graph.layers`); `sd` `{tap: [S, S, C]}` the negative statistics' sd per graph tap."""
    taps = tuple(cfg.tap for cfg in graph.config.layers)
    if None in taps:
        raise ValueError("every graph layer needs its tap (LayerConfig.tap) to be explained")
    missing = [tap for tap in taps if tap not in sd]
    if missing:
        raise ValueError(f"sd lacks the graph taps {missing}")
    if not -len(taps) <= layer < len(taps):
        raise ValueError(f"layer must index the graph's {len(taps)} layers, got {layer}")
    sd = {tap: jnp.asarray(sd[tap]) for tap in taps}

    def infer(images):
        maps, flipped = _normalised_maps(model, params, jnp.asarray(images), sd, taps)
        return infer_graph(graph, [maps[t] for t in taps], [flipped[t] for t in taps])[layer]

    return infer


def node_scores(model, params, graph: ExplanatoryGraph, sd: Mapping[str, jax.Array], *,
                layer: int = -1) -> Callable[[jax.Array], jax.Array]:
    """Explainer `images -> [N, V]`: the layer's node scores, each image's over their mean."""
    infer = graph_inference(model, params, graph, sd, layer)

    def explain(images):
        score = infer(images).score.T
        mean = jnp.mean(score, axis=1, keepdims=True)
        return score / jnp.where(mean > 0, mean, 1.0)

    return explain


def node_positions(model, params, graph: ExplanatoryGraph, sd: Mapping[str, jax.Array], *,
                   layer: int = -1) -> Callable[[jax.Array], jax.Array]:
    """Explainer `images -> [N, V, 2]`: the layer's inferred node positions in input pixels."""
    infer = graph_inference(model, params, graph, sd, layer)
    cfg = graph.config.layers[layer]

    def explain(images):
        inferred = infer(images)
        pos = jnp.swapaxes(inferred.pos, 0, 1)                       # [N, V, 2] cells
        return geometry.cells_to_pixels(pos, cfg, inferred.flip[:, None], images.shape[2])

    return explain


@functools.partial(jax.jit, static_argnums=(0, 4))
def _normalised_maps(model, params, images, sd, taps):
    both = jnp.concatenate([images, images[:, :, ::-1]])
    maps = model.apply({"params": params}, both, taps=taps)
    n = images.shape[0]
    normalised = {tap: normalize(maps[tap], sd[tap]) for tap in taps}
    return ({tap: m[:n] for tap, m in normalised.items()},
            {tap: m[n:] for tap, m in normalised.items()})
