"""`fit_layer` and `fit_graph`, the EM's entry points (`learn_explanatoryGraph.m`): inputs
checked before any work, each layer's iterations inside one jit."""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from egjax.config import GraphConfig, LayerConfig
from egjax.em import layer as layer_lib
from egjax.em import parents as parents_lib
from egjax.em import inputs, layout, windows
from egjax.em import sharding
from egjax.em.original.rules import ORIGINAL
from egjax.em.rules import FIXED, Rules
from egjax.em.schedule import Schedule, for_devices
from egjax.graph import ExplanatoryGraph, LayerFit, Records
from egjax.progress import Step, duration

# The one place where `compat` is read: how the kernel computes (`egjax.em.rules`).
RULES = {"fixed": FIXED, "original": ORIGINAL}


def random_init(key: jax.Array, cfg: LayerConfig, channels: int, dtype=None) -> dict:
    """Each filter's K nodes at K distinct random cells, deformation `init_delta * S`
    (`initializeModel.m`). Returns `dict(coord=[C,K,2], deform=[C,K])`."""
    dtype = dtype or inputs.compute_dtype()
    s, k = cfg.map_size, cfg.nodes_per_filter
    cells = jax.vmap(lambda kk: jax.random.permutation(kk, s * s)[:k])(
        jax.random.split(key, channels))
    coord = jnp.stack([cells % s, cells // s], -1).astype(dtype)
    deform = jnp.full((channels, k), cfg.init_delta * s, dtype)
    return {"coord": coord, "deform": deform}


def _check_layer_inputs(maps, cfg, flipped_maps, parent, init, compat) -> None:
    if compat not in RULES:
        raise ValueError(f"compat must be one of {tuple(RULES)}, got {compat!r}")
    inputs.check_maps(maps, flipped_maps, cfg, min_images=2)
    c = inputs.map_shape(maps)[-1]
    if parent is not None and not isinstance(parent, LayerFit):
        raise ValueError(f"parent must be the LayerFit of the layer above, got {type(parent)}")
    if init is not None:
        k = cfg.nodes_per_filter
        coord, deform = np.shape(init.get("coord")), np.shape(init.get("deform"))
        if coord != (c, k, 2) or deform != (c, k):
            raise ValueError(f"init needs coord [{c}, {k}, 2] and deform [{c}, {k}], got "
                             f"{coord} and {deform}")
        if not (np.all(np.isfinite(init["coord"])) and np.all(np.asarray(init["deform"]) > 0)):
            raise ValueError("init coord must be finite and deform > 0")


@functools.partial(jax.jit, static_argnames=("child", "rules"))
def _survivor_count(parent: LayerFit, child, rules):
    _, kept = parents_lib.survivors(parent.score, parent.pos, child, parent.config, rules,
                                    parent.num_images, None)
    return jnp.sum(kept)


def _candidate_slots(parent: LayerFit, cfg: LayerConfig, rules: Rules) -> int:
    """Check that enough candidate parents survive; return the number of candidate slots."""
    survived = int(_survivor_count(parent, cfg, rules))
    here, above = cfg.tap or "this layer", parent.config.tap or "the layer above"
    cuts = (f"{survived} of the {parent.score.shape[0]} nodes of {above} survive as candidate "
            f"parents of {here} (the variance cut drops the half that move least over the "
            f"images, the edge cut those near the border)")
    rules.check_top_m(cfg.top_m, survived, f"{cuts}, fewer than top_m={cfg.top_m} (the original "
                      f"learner would crash here): lower top_m of {here} or use compat='fixed'")
    if survived < cfg.top_n:
        raise ValueError(f"only {cuts}, fewer than top_n={cfg.top_n}: lower top_n of {here}, "
                         f"or give {above} more nodes (a higher density, or more filters)")
    return parents_lib.candidate_slots(parent.score.shape[0], cfg.top_m)


def fit_body(coord, deform, maps, flipped, parent, setup: layer_lib.Setup):
    """The whole EM of one layer: candidates, `iterations` x (E-step, M-step), records."""
    dtype = coord.dtype
    cands, flip = None, None
    if parent is not None:
        cands = parents_lib.candidates(parent.score, parent.pos, parent.deform.reshape(-1),
                                       setup.slots, setup.cfg, setup.parent, setup.rules,
                                       setup.num_images, setup.images)
        flip = parent.flip
    data = layer_lib.LayerData(windows.as_maps(maps, dtype),
                               None if flipped is None else windows.as_maps(flipped, dtype),
                               flip, cands)
    state = layer_lib.init(coord, deform, data.maps.values.shape[0], setup)
    steps = jnp.arange(1, setup.cfg.iterations + 1, dtype=dtype)
    state, _ = jax.lax.scan(lambda s, t: (layer_lib.iteration(s, t, data, setup), None),
                            state, steps)
    rec = layer_lib.records(state, data, setup)
    _, k, c = state.coord.shape
    parents = jnp.zeros((k * c, 0), jnp.int32)
    if cands is not None:
        parents = jnp.where(state.parents >= 0, cands.index[state.parents], -1)
    return *layout.params_out(state.coord, state.deform), layout.rows_out(parents, c), rec


class LayerCall(NamedTuple):
    """One layer fit: a jitted `function` and its `args` (inputs checked); `call.fit()`, or
    `call.function.lower(*call.args).compile()` ahead of time."""

    function: Callable
    args: tuple
    cfg: LayerConfig
    candidates: tuple | None = None   # `parents.candidate_list` (None in the top layer)
    padding: int = 0                  # slots after the images in the records (`LayerFit`)

    def fit(self) -> LayerFit:
        """The fitted layer, done before it returns (it may read the caller's maps in place)."""
        return layer_fit(jax.block_until_ready(self.function(*self.args)), self)


@functools.lru_cache(maxsize=None)
def compiled_fit(setup: layer_lib.Setup, mesh) -> Callable:
    """The jitted layer fit of `setup` (cached), sharded along `mesh` (None: one device)."""
    body = functools.partial(fit_body, setup=setup)
    if mesh is None:
        return jax.jit(body)
    return sharding.sharded(body, mesh, setup.images, setup.flips, setup.parent)


def fit_layer(maps, cfg: LayerConfig, *, key: jax.Array, flipped_maps=None,
              parent: LayerFit | None = None, init: dict | None = None,
              compat: str = "fixed", chunk: int = 8, devices=None,
              schedule: Schedule | None = None) -> LayerFit:
    """Fit one graph layer by EM (`learn_explanatoryGraph.m`, one `layerID`).

    `maps [N,S,S,C]` normalised maps (`features.normalize`); `flipped_maps` of the mirrored
    images (the top layer picks per image, lower layers follow `parent`, the fitted layer
    above); `init dict(coord=[C,K,2], deform=[C,K])` in cells, else drawn with `key`;
    `compat="original"`: the released learner. `chunk` images share a batch of parent priors.
    The images are sharded over `devices` (default: all, of all processes, each passing its
    share; `egjax.em.sharding`), and so are the records. `schedule`: default the backend's.
    """
    sharding.check_together(devices, _check_layer_inputs, maps, cfg, flipped_maps, parent,
                            init, compat)
    if parent is not None:   # on records that may span processes: after the local checks
        n = sharding.total_images(inputs.map_shape(maps)[0], devices)
        if parent.num_images != n:
            raise ValueError(f"parent was fitted on {parent.num_images} images, maps has {n}")
        if flipped_maps is None and bool(jnp.any(parent.records.flip)):
            raise ValueError("the layer above used mirrored maps for some images; pass "
                             "flipped_maps too")
    return layer_call(maps, cfg, key, flipped_maps, parent, init, compat, chunk, devices,
                      schedule).fit()


def layer_call(maps, cfg, key, flipped_maps, parent, init, compat, chunk,
               devices=None, schedule: Schedule | None = None) -> LayerCall:
    """The jitted call that fits one layer, and its arguments (inputs already checked)."""
    rules = RULES[compat]
    dtype = inputs.compute_dtype()
    n, _, _, c = inputs.map_shape(maps)
    slots, candidates = 0, None
    if parent is not None:
        upper = rules.parent_records(parent)
        slots = _candidate_slots(upper, cfg, rules)
        candidates = parents_lib.candidate_list(upper, slots, cfg, rules)
    if init is None:
        init = random_init(key, cfg, c, dtype)
    coord, deform = layout.params_in(np.asarray(init["coord"], dtype),
                                     np.asarray(init["deform"], dtype))
    mesh = sharding.image_mesh(devices)
    images = None if mesh is None else sharding.image_layout(mesh, n)
    setup = layer_lib.Setup(cfg=cfg, parent=None if parent is None else parent.config,
                            flips=flipped_maps is not None, rules=rules,
                            num_images=n if images is None else images.num_images,
                            slots=slots, images=images, chunk=chunk,
                            schedule=schedule or for_devices(devices))
    function = compiled_fit(setup, mesh)
    params = ((jnp.asarray(coord), jnp.asarray(deform)) if mesh is None else
              (sharding.replicated(coord, mesh), sharding.replicated(deform, mesh)))
    args = (*params, *(inputs.placed(m, dtype, mesh, images) for m in (maps, flipped_maps)),
            parent)
    return LayerCall(function, args, cfg, candidates,
                     0 if images is None else images.slots - images.num_images)


_records_out = jax.jit(layout.records_out)


def layer_fit(outputs, call: LayerCall) -> LayerFit:
    """The LayerFit of `call`'s `outputs` (pass them unreferenced): records moved to the graph's
    layout outside the fit, one at a time, so that the move needs room for one record more."""
    coord, deform, parents, records = outputs
    del outputs
    records = records._asdict()
    public = {name: _records_out(records.pop(name)) if name != "flip" else records.pop(name)
              for name in list(records)}
    candidates = call.candidates
    if candidates is None:   # the top layer
        candidates = (jnp.zeros(0, jnp.int32), jnp.zeros((0, 2), coord.dtype))
    return LayerFit(coord=coord, deform=deform, parents=parents, config=call.cfg,
                    records=Records(**public), padding=call.padding,
                    candidates=candidates[0], candidate_mean=candidates[1])


def _check_graph_inputs(maps, cfg: GraphConfig, flipped_maps, init, compat) -> None:
    inputs.check_per_layer(len(cfg.layers), maps=maps, flipped_maps=flipped_maps, init=init)
    inputs.check_same_images(inputs.map_shape(m)[0] for m in maps
                             if len(inputs.map_shape(m)) == 4)
    for index, layer_cfg in enumerate(cfg.layers):
        try:
            _check_layer_inputs(maps[index], layer_cfg,
                                None if flipped_maps is None else flipped_maps[index], None,
                                None if init is None else init[index], compat)
        except ValueError as error:
            raise ValueError(f"layer {index} ({layer_cfg.tap or 'untapped'}): {error}") from None
    for index in range(len(cfg.layers) - 1):
        top_m = cfg.layers[index].top_m
        nodes = inputs.map_shape(maps[index + 1])[-1] * cfg.layers[index + 1].nodes_per_filter
        slots = parents_lib.candidate_slots(nodes, top_m)
        RULES[compat].check_top_m(
            top_m, slots, f"layer {index}: top_m={top_m} exceeds the {slots} candidate parents "
            f"that can survive the variance cut of the {nodes} nodes above (the original "
            f"learner would crash); lower top_m or use compat='fixed'")


def fit_graph(maps: Sequence, cfg: GraphConfig, *, key: jax.Array,
              flipped_maps: Sequence | None = None, init: Sequence | None = None,
              compat: str = "fixed", chunk: int = 8, devices=None,
              quiet: bool = False, schedule: Schedule | None = None) -> ExplanatoryGraph:
    """Fit every layer, top first; `maps`, `flipped_maps`, `init` per layer, bottom to top, as
    in `fit_layer`, all checked first. A progress bar counts the layers (`quiet`: none)."""
    sharding.check_together(devices, _check_graph_inputs, maps, cfg, flipped_maps, init, compat)
    fits = [None] * len(cfg.layers)
    parent = None
    times = []
    with Step(len(cfg.layers), "fit", "layers", quiet=quiet) as bar:
        for index in reversed(range(len(cfg.layers))):
            name = cfg.layers[index].tap or f"layer {index}"
            bar.describe(desc=f"fit {name}")
            started = time.perf_counter()
            try:
                call = layer_call(maps[index], cfg.layers[index], jax.random.fold_in(key, index),
                                  None if flipped_maps is None else flipped_maps[index], parent,
                                  None if init is None else init[index], compat, chunk, devices,
                                  schedule)
            except ValueError as error:
                raise ValueError(f"layer {index} ({cfg.layers[index].tap or 'untapped'}): "
                                 f"{error}") from None
            fits[index] = parent = call.fit()
            times.append(f"{name} {duration(time.perf_counter() - started)}")
            bar.describe(note=", ".join(times))
            bar.update(1)
    return ExplanatoryGraph(layers=tuple(fits), config=cfg)
