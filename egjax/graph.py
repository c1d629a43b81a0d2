"""The explanatory graph: fitted layers bottom to top, their settings, and checkpoints."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from egjax import checkpoint
from egjax.config import GraphConfig, LayerConfig

FORMAT = "egjax.ExplanatoryGraph/1"
KIND = "explanatory graph"
FIELDS = ("coord", "deform", "parents", "score", "pos", "flip", "alt_score", "alt_pos")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerFit:
    """A fitted graph layer (V = C*K nodes, node v = c*K + k; N images; cells 0-based).

    `coord [C,K,2]` prior positions (h, w); `deform [C,K]` deformation scales (cells);
    `parents [V, top_n]` flat indices into the layer above (`[V, 0]` for the top layer, -1
    where none was selected); `score [V,N]` node scores normalised to mean 1; `pos [V,N,2]`
    inferred positions in the frame of `flip [N]` (True: the mirrored image was used);
    `alt_score`, `alt_pos` the other orientation; `config` the layer's settings.
    """

    coord: jax.Array
    deform: jax.Array
    parents: jax.Array
    score: jax.Array
    pos: jax.Array
    flip: jax.Array
    alt_score: jax.Array
    alt_pos: jax.Array
    config: LayerConfig = dataclasses.field(metadata=dict(static=True))

    @property
    def num_images(self) -> int:
        return self.score.shape[1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExplanatoryGraph:
    """`layers` (LayerFit, bottom to top) fitted with `config`."""

    layers: tuple[LayerFit, ...]
    config: GraphConfig = dataclasses.field(metadata=dict(static=True))

    def save(self, path, *, overwrite: bool = False):
        """Write the graph to the directory `path` (orbax; atomic; with the checksum of every
        array and of the settings, see `egjax.checkpoint`). Returns the path."""
        # orbax stores no zero-size arrays: the top layer's empty parents are implied.
        # Arrays spanning processes stay as they are: each process writes its shards.
        arrays = [{f: checkpoint.storable(getattr(layer, f)) for f in FIELDS
                   if np.size(getattr(layer, f))} for layer in self.layers]
        meta = {"format": FORMAT, "config": _config_to_json(self.config)}
        return checkpoint.save(path, arrays, meta, kind=KIND, overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "ExplanatoryGraph":
        """Read a graph written by `save`; refuses a corrupt or inconsistent checkpoint (a
        file that fails its checksum is named by its array, `<layer>.<field>`)."""
        arrays, meta = checkpoint.load(path, kind=KIND)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not an explanatory graph checkpoint "
                             f"(format {meta.get('format') if isinstance(meta, dict) else None!r},"
                             f" expected {FORMAT!r})")
        try:
            config = _config_from_json(meta["config"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: unreadable graph settings: {error}") from error
        if not isinstance(arrays, list) or len(arrays) != len(config.layers):
            raise ValueError(f"{path}: {len(config.layers)} layers configured but "
                             f"{len(arrays) if isinstance(arrays, list) else 'no'} stored")
        layers = []
        for index, (stored, cfg) in enumerate(zip(arrays, config.layers)):
            if index == len(arrays) - 1 and "parents" not in stored and "score" in stored:
                stored = {**stored, "parents": np.zeros((len(stored["score"]), 0), np.int32)}
            missing = [f for f in FIELDS if f not in stored]
            if missing:
                raise ValueError(f"{path}: layer {index} lacks {missing}")
            layers.append(LayerFit(**{f: stored[f] for f in FIELDS}, config=cfg))
        graph = cls(layers=tuple(layers), config=config)
        validate(graph, str(path))
        return graph


def validate(graph: ExplanatoryGraph, where: str = "graph") -> None:
    """Check shapes and index ranges of every layer against its config; ValueError if off."""
    num_images = graph.layers[0].num_images
    for index, layer in enumerate(graph.layers):
        c, k = np.shape(layer.deform) if np.ndim(layer.deform) == 2 else (None, None)
        cfg = layer.config
        v = None if c is None else c * k
        expected = {"coord": (c, cfg.nodes_per_filter, 2), "deform": (c, cfg.nodes_per_filter),
                    "score": (v, num_images), "pos": (v, num_images, 2), "flip": (num_images,),
                    "alt_score": (v, num_images), "alt_pos": (v, num_images, 2)}
        for name, shape in expected.items():
            if np.shape(getattr(layer, name)) != shape:
                raise ValueError(f"{where}: layer {index} {name} has shape "
                                 f"{np.shape(getattr(layer, name))}, expected {shape}")
        parents = np.asarray(layer.parents)
        top = index == len(graph.layers) - 1
        width = 0 if top else cfg.top_n
        if parents.shape != (v, width):
            raise ValueError(f"{where}: layer {index} parents has shape {parents.shape}, "
                             f"expected {(v, width)}")
        if not top and parents.size:
            upper = graph.layers[index + 1].score.shape[0]
            if parents.min() < -1 or parents.max() >= upper:
                raise ValueError(f"{where}: layer {index} parents index outside the "
                                 f"{upper} nodes of the layer above")


def _config_to_json(config: GraphConfig) -> dict:
    return {"layers": [dataclasses.asdict(layer) for layer in config.layers],
            "image_size": config.image_size}


def _config_from_json(data: dict) -> GraphConfig:
    return GraphConfig(layers=tuple(LayerConfig(**layer) for layer in data["layers"]),
                       image_size=data["image_size"])
