"""Inference of a fitted explanatory graph on new images: node scores and positions.

The E-step of `learn_explanatoryGraph.m` with the node parameters held fixed
(docs/algorithm.md, "Inference on new images"; Zhang et al.,
AAAI 2018, eq. 3-4: each node's spatial prior pi and evidence F over its candidate
positions; its score `S = sum_cand pi F` and position the candidate maximising `pi F`).
Top layer first: it decides each image's orientation as the fit does (compat "fixed"); each
lower layer's prior is shifted and scaled by its parents' inferred positions in the new
images. The parents' mean positions, against which those deviations are taken, and the
candidate list the parent slots index, are recomputed from the training records stored in
the graph, exactly as the fit computed them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from egjax.config import LayerConfig
from egjax.em import layer as layer_lib
from egjax.em import parents as parents_lib
from egjax.em import windows
from egjax.em.fit import _all_finite, _as_device, _check_evidence, _map_shape, compute_dtype
from egjax.em.reduce import image_mean
from egjax.graph import ExplanatoryGraph, LayerFit
from egjax.maps import QuantizedMaps


class LayerInference(NamedTuple):
    """One graph layer on new images (node v = c*K + k): `score [V, N]` normalised to mean 1
    over these images and nodes (as `LayerFit.score`), `pos [V, N, 2]` cells (h, w) in the
    frame of `flip [N]` (True: the mirrored image was used)."""

    score: jax.Array
    pos: jax.Array
    flip: jax.Array


def infer_graph(graph: ExplanatoryGraph, maps: Sequence, flipped_maps: Sequence | None = None,
                *, chunk: int = 8) -> list[LayerInference]:
    """Node scores and positions of every layer (bottom to top) of `graph` in new images.

    `maps` per layer `[N, S, S, C]` normalised maps (or `QuantizedMaps`) made as those the
    graph was fitted on (same network, tap and negative statistics; `features.normalize`);
    `flipped_maps` those of the mirrored images (None: every image as given). `chunk`
    images share one batch of parent priors.
    """
    _check_inputs(graph, maps, flipped_maps)
    out: list[LayerInference] = [None] * len(graph.layers)
    above, upper = None, None
    for index in reversed(range(len(graph.layers))):
        out[index] = infer_layer(graph.layers[index], maps[index],
                                 None if flipped_maps is None else flipped_maps[index],
                                 upper=upper, above=above, chunk=chunk)
        upper, above = graph.layers[index], out[index]
    return out


def infer_layer(fitted: LayerFit, maps, flipped_maps=None, *, upper: LayerFit | None = None,
                above: LayerInference | None = None, chunk: int = 8) -> LayerInference:
    """One graph layer in new images (`maps`, `flipped_maps` of this layer, as `infer_graph`).

    Top layer: `upper` and `above` None; the orientation is chosen per image. Lower layer:
    `upper` the fitted layer above and `above` its inference in these images, whose
    positions place the parents and whose orientations this layer follows.
    """
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    num = _check_layer_maps("maps", maps, fitted)
    if flipped_maps is not None and _check_layer_maps("flipped_maps", flipped_maps,
                                                      fitted) != num:
        raise ValueError("flipped_maps must hold as many images as maps")
    _check_evidence("maps", maps, flipped_maps)
    if (upper is None) != (above is None):
        raise ValueError("a lower layer needs both upper (the fitted layer above) and above "
                         "(its inference); the top layer neither")
    if upper is not None:
        expected = (upper.score.shape[0], num, 2)
        if np.shape(above.pos) != expected or np.shape(above.flip) != (num,):
            raise ValueError(f"above must hold the layer above in these {num} images: pos "
                             f"{expected}, got {np.shape(above.pos)}")
        if flipped_maps is None and bool(np.any(above.flip)):
            raise ValueError("the layer above used mirrored maps for some images; pass "
                             "flipped_maps too")
    dtype = compute_dtype()
    slots = 0 if upper is None else parents_lib.candidate_slots(upper.score.shape[0],
                                                                fitted.config.top_m)
    setup = layer_lib.Setup(cfg=fitted.config, parent=None if upper is None else upper.config,
                            flips=flipped_maps is not None, original=False,
                            num_images=num, slots=slots, chunk=chunk)
    score, pos, flip = _infer_layer(fitted, upper, None if above is None else above.pos,
                                    None if above is None else above.flip,
                                    _as_device(maps, dtype), _as_device(flipped_maps, dtype),
                                    setup)
    # Done before returning: the call may read the caller's maps in place (`_as_device`).
    return LayerInference(*jax.block_until_ready((score, pos, flip)))


@functools.partial(jax.jit, static_argnames="setup")
def _infer_layer(fitted: LayerFit, upper: LayerFit | None, upper_pos, flip, maps, flipped,
                 setup: layer_lib.Setup):
    """One layer: `(score [V, N], pos [V, N, 2], flip [N])`; `upper_pos [U, N, 2]` the layer
    above's positions in these images (None for the top layer), `flip` its orientations."""
    cfg = setup.cfg
    dtype = fitted.coord.dtype
    c, k = fitted.deform.shape
    coord, deform = jnp.transpose(fitted.coord, (2, 1, 0)), fitted.deform.T
    plain = windows.as_maps(maps, dtype)
    mirrored = None if flipped is None else windows.as_maps(flipped, dtype)
    sigma = jnp.full((k, c), cfg.init_delta * cfg.map_size, dtype)
    weights, deviation, active = None, None, jnp.asarray(False)
    if upper is not None:
        cands = parents_lib.candidates(upper.score, upper.pos, upper.deform.reshape(-1),
                                       setup.slots, cfg, setup.parent, False,
                                       upper.num_images, None)
        slot_parents = _candidate_slot_of(fitted.parents, cands.index, c, k)
        active = jnp.asarray(cfg.iterations >= 2)
        weights = parents_lib.prior_weights(jnp.maximum(slot_parents, 0), cands.deform,
                                            setup.slots, setup.scale_to_child)
        sigma = jnp.where(active, weights.sigma.reshape(k, c), sigma)
        mean = image_mean(upper.pos[cands.index], 1, upper.num_images, None)
        deviation = jnp.swapaxes(upper_pos[cands.index] - mean[:, None], 0, 1)   # [N, M, 2]
    node_q = layer_lib.nodes(coord, deform, sigma, setup)
    score, pos, new_flip = layer_lib.infer_images(plain, mirrored, flip, deviation, node_q,
                                                  weights, active, cfg.iterations, setup)
    norm = jnp.mean(score)
    flip = new_flip if upper is None else flip
    return layer_lib.public_nodes(score / norm), layer_lib.public_nodes(pos), flip


def _candidate_slot_of(parents: jax.Array, index: jax.Array, filters: int, k: int) -> jax.Array:
    """Stored parents `[C*K, T]` (indices into the layer above, -1 for none) -> the candidate
    slots they occupy `[K*C, T]` in the EM's internal node order (-1 stays -1)."""
    slot = jnp.argmax(parents[..., None] == index, axis=-1)
    slot = jnp.where(parents >= 0, slot, -1).astype(jnp.int32)
    return jnp.transpose(slot.reshape(filters, k, -1), (1, 0, 2)).reshape(filters * k, -1)


def _check_inputs(graph: ExplanatoryGraph, maps, flipped_maps) -> None:
    num_layers = len(graph.layers)
    for name, seq in (("maps", maps), ("flipped_maps", flipped_maps)):
        if seq is not None and len(seq) != num_layers:
            raise ValueError(f"{name} needs one entry per graph layer ({num_layers}), "
                             f"got {len(seq)}")
    counts = set()
    for index, fitted in enumerate(graph.layers):
        for name, seq in (("maps", maps), ("flipped_maps", flipped_maps)):
            if seq is not None:
                counts.add(_check_layer_maps(f"layer {index} {name}", seq[index], fitted))
        _check_evidence(f"layer {index} maps", maps[index],
                        None if flipped_maps is None else flipped_maps[index])
        if index + 1 < num_layers:
            _check_parents_are_candidates(index, fitted, graph.layers[index + 1])
    if len(counts) > 1:
        raise ValueError(f"every layer's maps must hold the same images, got counts "
                         f"{sorted(counts)}")


def _check_layer_maps(where: str, maps, fitted: LayerFit) -> int:
    shape = _map_shape(maps)
    cfg: LayerConfig = fitted.config
    filters = np.shape(fitted.deform)[0]
    if len(shape) != 4 or shape[0] < 1:
        raise ValueError(f"{where} must be [N, S, S, C] with N >= 1, got shape {shape}")
    if shape[1:] != (cfg.map_size, cfg.map_size, filters):
        raise ValueError(f"{where} must be [N, S, S, C] (channels last) = [N, {cfg.map_size}, "
                         f"{cfg.map_size}, {filters}] as the graph layer was fitted on, got "
                         f"shape {shape}")
    arrays = (maps.minimum, maps.range) if isinstance(maps, QuantizedMaps) else (maps,)
    if not all(_all_finite(a) for a in arrays):
        raise ValueError(f"{where} contains NaN or Inf")
    return shape[0]


def _check_parents_are_candidates(index: int, fitted: LayerFit, upper: LayerFit) -> None:
    """Every stored parent must be one of the candidates the fit chose from."""
    parents = np.asarray(fitted.parents)
    if fitted.config.iterations < 2 or not parents.size:
        return
    slots = parents_lib.candidate_slots(upper.score.shape[0], fitted.config.top_m)
    cands = parents_lib.candidates(upper.score, upper.pos, upper.deform.reshape(-1), slots,
                                   fitted.config, upper.config, False, upper.num_images, None)
    allowed = np.asarray(cands.index)[np.asarray(cands.valid)]
    if not np.isin(parents, allowed).all():
        raise ValueError(f"layer {index}: parents outside the candidate list of the layer "
                         f"above; the graph was not fitted with compat='fixed' on these "
                         f"layers")
