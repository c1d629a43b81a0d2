"""Inference of a fitted graph on new images: the E-step with the node parameters held fixed,
top layer first (docs/algorithm.md, "Inference on new images"; AAAI 2018, eq. 3-4). It reads
the model alone: node parameters, parents, candidate parents and their mean positions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from egjax.em import layer as layer_lib
from egjax.em import parents as parents_lib
from egjax.em import inputs, layout, sharding, windows
from egjax.em.ieee import divide
from egjax.em.rules import FIXED
from egjax.em.schedule import for_devices
from egjax.graph import ExplanatoryGraph, Kept, LayerFit, Records


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerInference(Kept):
    """One graph layer on new images (node v = c*K + k): `score [V, N]` normalised to mean 1,
    `pos [V, N, 2]` cells (h, w) in the frame of `flip [N]` (True: mirrored). Given so, or as
    `records` and `padding`, split over devices as `LayerFit.records`."""

    records: Records
    padding: int = dataclasses.field(default=0, metadata=dict(static=True))

    def __init__(self, score=None, pos=None, flip=None, *, records=None, padding=0):
        if records is None:
            records = Records(score, pos, flip, None, None)
        elif score is not None or pos is not None or flip is not None:
            raise ValueError("give the records either as score, pos, flip or as records")
        object.__setattr__(self, "records", records)
        object.__setattr__(self, "padding", padding)


def infer_graph(graph: ExplanatoryGraph, maps: Sequence, flipped_maps: Sequence | None = None,
                *, chunk: int = 8, devices=None) -> list[LayerInference]:
    """Node scores and positions of every layer (bottom to top) of `graph` in new images.

    `maps` per layer `[N, S, S, C]` (or `QuantizedMaps`), normalised as the graph's were;
    `flipped_maps` of the mirrored images (None: as given); `chunk`, `devices` as `fit_graph`.
    """
    sharding.check_together(devices, _check_inputs, graph, maps, flipped_maps)
    for index in range(len(graph.layers) - 1):   # on records that may span processes
        _check_parents_are_candidates(index, graph.layers[index], graph.layers[index + 1])
    out: list[LayerInference] = [None] * len(graph.layers)
    above, upper = None, None
    for index in reversed(range(len(graph.layers))):
        out[index] = infer_layer(graph.layers[index], maps[index],
                                 None if flipped_maps is None else flipped_maps[index],
                                 upper=upper, above=above, chunk=chunk, devices=devices)
        upper, above = graph.layers[index], out[index]
    return out


def infer_layer(fitted: LayerFit, maps, flipped_maps=None, *, upper: LayerFit | None = None,
                above: LayerInference | None = None, chunk: int = 8,
                devices=None) -> LayerInference:
    """One graph layer in new images (as `infer_graph`); lower layers: `upper` the fitted layer
    above and `above` its inference in these images (top: None)."""
    sharding.check_together(devices, _check_layer_call, fitted, maps, flipped_maps, upper,
                            above, chunk)
    mesh = sharding.image_mesh(devices)
    local = inputs.map_shape(maps)[0]
    images = None if mesh is None else sharding.image_layout(mesh, local)
    num = local if images is None else images.num_images
    slots = 0
    if upper is not None:   # above read as kept: split over the devices (zeros in the padding)
        got = (np.shape(above.records.pos)[0], above.num_images)
        if got != (upper.num_nodes, num) or np.shape(above.records.pos)[2:] != (2,):
            raise ValueError(f"above must hold the layer above in these {num} images: pos "
                             f"{(upper.num_nodes, num, 2)}, got {np.shape(above.pos)}")
        if flipped_maps is None and bool(jnp.any(above.records.flip)):
            raise ValueError("the layer above used mirrored maps for some images; pass "
                             "flipped_maps too")
        slots = parents_lib.candidate_slots(upper.num_nodes, fitted.config.top_m)
        fitted = with_candidates_of(fitted, upper)
        upper = upper.without_records()
    fitted = fitted.without_records()
    setup = layer_lib.Setup(cfg=fitted.config, parent=None if upper is None else upper.config,
                            flips=flipped_maps is not None, rules=FIXED,
                            num_images=num, slots=slots, images=images, chunk=chunk,
                            schedule=for_devices(devices))
    maps, flipped_maps = (inputs.placed(m, inputs.compute_dtype(), mesh, images)
                          for m in (maps, flipped_maps))
    if above is not None:   # one device: in image order; several: as kept (`slot_order`)
        above = ((above.pos, above.flip) if mesh is None else
                 (above.records.pos, above.records.flip))
    score, pos, flip = _infer_layer(fitted, upper, *(above or (None, None)), maps, flipped_maps,
                                    setup, mesh)
    # Done before returning: the call may read the caller's maps in place (`inputs.device_array`).
    return LayerInference(records=Records(*jax.block_until_ready((score, pos, flip)), None, None),
                          padding=0 if images is None else images.slots - num)


@functools.partial(jax.jit, static_argnames=("setup", "mesh"))
def _infer_layer(fitted: LayerFit, upper: LayerFit | None, upper_pos, flip, maps, flipped,
                 setup: layer_lib.Setup, mesh=None):
    """`(score [V, N], pos [V, N, 2], flip [N])` given the upper layer's `upper_pos [U, N, 2]`
    and `flip` (None: top); sharded along `mesh` as `LayerFit.records` (None: one device)."""
    cfg = setup.cfg
    dtype = fitted.coord.dtype
    c, k = fitted.deform.shape
    coord, deform = layout.params_in(fitted.coord, fitted.deform)
    plain = windows.as_maps(maps, dtype)
    mirrored = None if flipped is None else windows.as_maps(flipped, dtype)
    prior = layer_lib.parent_prior(None, None, False, (k, c), dtype, setup)
    deviation = None
    if upper is not None:
        index = jnp.maximum(fitted.candidates, 0)
        slot_parents = layout.rows_in(_candidate_slot_of(fitted.parents, index), c)
        prior = layer_lib.parent_prior(slot_parents, upper.deform.reshape(-1)[index],
                                       cfg.iterations >= 2, (k, c), dtype, setup)
        deviation = upper_pos[index] - fitted.candidate_mean[:, None]
        deviation = jnp.swapaxes(deviation, 0, 1)                                # [N, M, 2]
    node_q = layer_lib.nodes(coord, deform, prior.sigma, setup)

    def on_device(plain, mirrored, flip, deviation, node_q, prior):
        score, pos, flip = layer_lib.infer_images(plain, mirrored, flip, deviation, node_q,
                                                  prior, cfg.iterations, setup)
        return score, pos, flip, setup.rules.score_mean(score, setup.num_images, setup.images)

    images = setup.images
    if mesh is None:
        score, pos, flip, norm = on_device(plain, mirrored, flip, deviation, node_q, prior)
    else:   # image order -> the sharded slots and back (`sharding.sharded`)
        slot_flip, slot_deviation = jax.tree.map(lambda x: sharding.slot_order(x, images, 0, mesh),
                                                 (flip, deviation))
        split, whole = jax.sharding.PartitionSpec(sharding.AXIS), jax.sharding.PartitionSpec()
        args = (plain, mirrored, slot_flip, slot_deviation, node_q, prior)
        in_specs = tuple(None if x is None else spec
                         for x, spec in zip(args, (split,) * 4 + (whole,) * 2))
        score, pos, new_flip, norm = jax.shard_map(
            on_device, mesh=mesh, in_specs=in_specs, out_specs=(split, split, split, whole),
            check_vma=False)(*args)
        score, pos, flip = jax.tree.map(   # image order, then padding (`LayerFit.records`)
            lambda x: sharding.image_order(x, images, 0, mesh), (score, pos, new_flip))
    out = layout.records_out(divide(score, norm)), layout.records_out(pos), flip
    if mesh is not None:   # split over the images, as a sharded fit keeps its records
        split = lambda axis: jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec(*[None] * axis, sharding.AXIS))
        out = jax.lax.with_sharding_constraint(out, (split(1), split(1), split(0)))
    return out


def _candidate_slot_of(parents: jax.Array, index: jax.Array) -> jax.Array:
    """Stored parents (upper-layer indices, -1: none) -> their candidate slots (-1: none)."""
    slot = jnp.argmax(parents[..., None] == index, axis=-1)
    return jnp.where(parents >= 0, slot, -1).astype(jnp.int32)


def _check_layer_call(fitted: LayerFit, maps, flipped_maps, upper, above, chunk) -> None:
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    _check_layer_maps(fitted, maps, flipped_maps)
    if (upper is None) != (above is None):
        raise ValueError("a lower layer needs both upper (the fitted layer above) and above "
                         "(its inference); the top layer neither")


def _check_inputs(graph: ExplanatoryGraph, maps, flipped_maps) -> None:
    inputs.check_per_layer(len(graph.layers), maps=maps, flipped_maps=flipped_maps)
    inputs.check_same_images([
        _check_layer_maps(fitted, maps[index], None if flipped_maps is None else
                          flipped_maps[index], where=f"layer {index} ")
        for index, fitted in enumerate(graph.layers)])


def _check_layer_maps(fitted: LayerFit, maps, flipped_maps, where: str = "") -> int:
    """`inputs.check_maps` against the layer as it was fitted; returns N."""
    return inputs.check_maps(maps, flipped_maps, fitted.config, where=where,
                             filters=np.shape(fitted.deform)[0])


def with_candidates_of(fitted: LayerFit, upper: LayerFit) -> LayerFit:
    """`fitted` with its candidate parents: as stored, or (a layer built without them)
    computed from the records of `upper` as a fit with compat "fixed" computes them."""
    if fitted.candidates is not None:
        return fitted
    if not upper.has_records:
        raise ValueError("a layer without its candidate parents needs the records of the "
                         "layer above")
    slots = parents_lib.candidate_slots(upper.num_nodes, fitted.config.top_m)
    index, mean = parents_lib.candidate_list(upper, slots, fitted.config, FIXED)
    return dataclasses.replace(fitted, candidates=index, candidate_mean=mean)


def with_candidates(graph: ExplanatoryGraph) -> ExplanatoryGraph:
    """`graph` with the candidate parents of every layer (`with_candidates_of`)."""
    layers = [with_candidates_of(low, up) for low, up in zip(graph.layers, graph.layers[1:])]
    return dataclasses.replace(graph, layers=(*layers, graph.layers[-1]))


def _check_parents_are_candidates(index: int, fitted: LayerFit, upper: LayerFit) -> None:
    """Every stored parent must be one of the candidates the fit chose from."""
    if fitted.config.iterations < 2 or not fitted.parents.size:
        return
    fitted = with_candidates_of(fitted, upper)
    if not bool(_parents_are_candidates(fitted.parents, fitted.candidates)):
        raise ValueError(f"layer {index}: parents outside the candidate list of the layer "
                         f"above (a graph fitted with compat='original' stored without its "
                         f"candidates, or built by hand)")


@jax.jit
def _parents_are_candidates(parents, candidates):
    """Whether every stored parent is a valid candidate (one replicated bool)."""
    allowed = jnp.where(candidates >= 0, candidates, -2)
    return jnp.all(jnp.any(parents[..., None] == allowed, axis=-1))
