"""The explanatory graph: fitted layers bottom to top, their settings, and checkpoints."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import numpy as np

from egjax import checkpoint
from egjax.config import GraphConfig, LayerConfig

FORMAT = "egjax.ExplanatoryGraph/3"
WITHOUT_CANDIDATES = "egjax.ExplanatoryGraph/1"   # read from the records
OLD_FORMATS = (WITHOUT_CANDIDATES, "egjax.ExplanatoryGraph/2")   # /2: records never padded
KIND = "explanatory graph"
MODEL = ("coord", "deform", "parents", "candidates", "candidate_mean")
RECORDS = ("score", "pos", "flip", "alt_score", "alt_pos")
FIELDS = MODEL + RECORDS


class Records(NamedTuple):
    """The records of a layer's training images as a `LayerFit` keeps them (`records`):
    along the image axis (1; 0 for `flip`) the N images in image order, then
    `LayerFit.padding` slots of zeros, where the fit split the images evenly over its
    devices (a `jax.Array` splits only evenly); read them through `LayerFit.score` etc.
    `LayerInference` keeps those of new images so, without `alt_score` and `alt_pos`
    (None)."""

    score: jax.Array
    pos: jax.Array
    flip: jax.Array
    alt_score: jax.Array
    alt_pos: jax.Array


class Kept:
    """Per-image records kept as `records` (`Records`: image order, then `padding` zero
    slots, split over the devices that made them), read in image order: `score`, `pos`,
    `flip` (`LayerFit`, and `LayerInference` of new images)."""

    records: Records | None
    padding: int

    def _image_order(self, name: str):
        if self.records is None:
            return None
        kept = getattr(self.records, name)
        if not self.padding or kept is None:
            return kept
        axis = 0 if name == "flip" else 1
        return jax.lax.slice_in_dim(kept, 0, kept.shape[axis] - self.padding, axis=axis)

    score = property(lambda self: self._image_order("score"), doc="`[V, N]`")
    pos = property(lambda self: self._image_order("pos"), doc="`[V, N, 2]`")
    flip = property(lambda self: self._image_order("flip"), doc="`[N]`")

    @property
    def num_images(self) -> int | None:
        """Images recorded (None without records)."""
        return None if self.records is None else self.records.score.shape[1] - self.padding


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerFit(Kept):
    """A fitted graph layer (V = C*K nodes, node v = c*K + k; N images; cells 0-based).

    The model, all that inference on new images needs: `coord [C,K,2]` prior positions
    (h, w); `deform [C,K]` deformation scales (cells); `parents [V, top_n]` flat indices into
    the layer above (`[V, 0]` for the top layer, -1 where none was selected); `config` the
    layer's settings; and the one summary of the training records that the parent prior
    needs, the candidate parents the fit chose from: `candidates [M]` indices into the layer
    above (-1 for an empty slot; `[0]` for the top layer) and `candidate_mean [M, 2]` their
    mean positions over the training images (None in a layer built by hand: then they are
    recomputed from the records of the layer above, as the fit computed them).

    The records of the training images (None when the graph was saved without them), in
    image order: `score [V,N]` node scores normalised to mean 1; `pos [V,N,2]` inferred
    positions in the frame of `flip [N]` (True: the mirrored image was used); `alt_score`,
    `alt_pos` the other orientation. They are built from, and kept as, `records`: the same
    followed by `padding` zero slots where N does not divide by the fit's device count, so
    that they stay split over its devices (and processes) until written; reading `score`
    etc. outside `jax.jit` then puts them whole on every device.
    """

    coord: jax.Array
    deform: jax.Array
    parents: jax.Array
    records: Records | None
    config: LayerConfig = dataclasses.field(metadata=dict(static=True))
    candidates: jax.Array | None = None
    candidate_mean: jax.Array | None = None
    padding: int = dataclasses.field(default=0, metadata=dict(static=True))

    def __init__(self, coord, deform, parents, score=None, pos=None, flip=None, alt_score=None,
                 alt_pos=None, *, config, candidates=None, candidate_mean=None, records=None,
                 padding=0):
        """The records given as `score`, `pos`, `flip`, `alt_score`, `alt_pos` (image
        order), or as `records` with `padding`; fields given both ways replace those of
        `records` (`dataclasses.replace`), which are then unpadded."""
        given = {name: value for name, value in zip(
            RECORDS, (score, pos, flip, alt_score, alt_pos)) if value is not None}
        if given:
            if padding and len(given) < len(RECORDS):
                raise ValueError(f"the records of this layer hold {padding} padding slots: "
                                 f"replace all of {RECORDS} at once, got {tuple(given)}")
            base = records if records is not None else Records(*[None] * len(RECORDS))
            records, padding = base._replace(**given), 0
        if not isinstance(padding, int) or padding < 0 or (padding and records is None):
            raise ValueError(f"padding must be an int >= 0 (0 without records), got {padding!r}")
        for name, value in (("coord", coord), ("deform", deform), ("parents", parents),
                            ("records", records), ("config", config),
                            ("candidates", candidates), ("candidate_mean", candidate_mean),
                            ("padding", padding)):
            object.__setattr__(self, name, value)

    alt_score = property(lambda self: self._image_order("alt_score"), doc="`[V, N]`")
    alt_pos = property(lambda self: self._image_order("alt_pos"), doc="`[V, N, 2]`")

    @property
    def num_nodes(self) -> int:
        return int(np.size(self.deform))

    @property
    def has_records(self) -> bool:
        return self.records is not None

    def without_records(self) -> "LayerFit":
        return dataclasses.replace(self, records=None, padding=0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExplanatoryGraph:
    """`layers` (LayerFit, bottom to top) fitted with `config`."""

    layers: tuple[LayerFit, ...]
    config: GraphConfig = dataclasses.field(metadata=dict(static=True))

    @property
    def has_records(self) -> bool:
        return all(layer.has_records for layer in self.layers)

    def require_records(self, what: str) -> None:
        """ValueError unless the graph holds the training records, which `what` needs."""
        if not self.has_records:
            raise ValueError(f"{what} needs the graph's records of its training images, and "
                             f"this graph was saved without them (`save(path, "
                             f"records=False)`); use a graph saved with its records")

    def save(self, path, *, records: bool = True, overwrite: bool = False):
        """Write the graph to the directory `path` (orbax; atomic; with the checksum of every
        array and of the settings, see `egjax.checkpoint`). Returns the path.
        `records=False` writes the model only (what inference on new images needs: see
        `LayerFit`), not the records of the training images (most of the size)."""
        if records and not self.has_records:
            raise ValueError("this graph holds no records (it was saved without them); save "
                             "it with records=False")
        fields = FIELDS if records else MODEL
        layers = self.layers
        if any(layer.candidates is None for layer in layers[:-1]):
            from egjax.em.inference import with_candidates   # the em package imports this one
            layers = with_candidates(self).layers
        # orbax stores no zero-size arrays: the top layer's empty parents are implied.
        # Arrays spanning processes stay as they are: each process writes its shards. The
        # records are written as kept, with their padding (`LayerFit.records`).
        def kept(layer, f):
            return getattr(layer.records, f) if f in RECORDS else getattr(layer, f)

        arrays = [{f: checkpoint.storable(kept(layer, f)) for f in fields
                   if kept(layer, f) is not None and np.size(kept(layer, f))}
                  for layer in layers]
        meta = {"format": FORMAT, "config": _config_to_json(self.config), "records": records,
                "padding": [layer.padding if records else 0 for layer in layers]}
        return checkpoint.save(path, arrays, meta, kind=KIND, overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "ExplanatoryGraph":
        """Read a graph written by `save`; refuses a corrupt or inconsistent checkpoint (a
        file that fails its checksum is named by its array, `<layer>.<field>`)."""
        arrays, meta = checkpoint.load(path, kind=KIND)
        if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *OLD_FORMATS):
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
        old, records = meta["format"] == WITHOUT_CANDIDATES, meta.get("records", True)
        padding = meta.get("padding", [0] * len(arrays))
        layers = []
        for index, (stored, cfg) in enumerate(zip(arrays, config.layers)):
            top = index == len(arrays) - 1
            if top and "parents" not in stored and "deform" in stored:   # zero-size arrays
                v = int(np.size(stored["deform"]))
                stored = {"parents": np.zeros((v, 0), np.int32),
                          "candidates": np.zeros(0, np.int32),
                          "candidate_mean": np.zeros((0, 2)), **stored}
            needed = ((MODEL[:3] if old else MODEL) + (RECORDS if records or old else ()))
            missing = [f for f in needed if f not in stored]
            if missing:
                raise ValueError(f"{path}: layer {index} lacks {missing}")
            def unpadded(f, axis):   # on this process's device: the padding cut off
                x = stored.get(f)
                return None if x is None else x[(slice(None),) * axis + (
                    slice(0, np.shape(x)[axis] - padding[index]),)]

            layers.append(LayerFit(**{f: stored.get(f) for f in MODEL},
                                   **{f: unpadded(f, 0 if f == "flip" else 1) for f in RECORDS},
                                   config=cfg))
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
        expected = {"coord": (c, cfg.nodes_per_filter, 2), "deform": (c, cfg.nodes_per_filter)}
        if layer.has_records or num_images is not None:
            expected.update({"score": (v, num_images), "pos": (v, num_images, 2),
                             "flip": (num_images,), "alt_score": (v, num_images),
                             "alt_pos": (v, num_images, 2)})
        if layer.candidates is not None:
            m = np.shape(layer.candidates)[:1]
            expected.update({"candidates": m, "candidate_mean": (*m, 2)})
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
            upper = graph.layers[index + 1].num_nodes
            for name in ("parents", "candidates"):
                values = getattr(layer, name)
                if values is not None and np.size(values) and (
                        np.min(values) < -1 or np.max(values) >= upper):
                    raise ValueError(f"{where}: layer {index} {name} index outside the "
                                     f"{upper} nodes of the layer above")


def _config_to_json(config: GraphConfig) -> dict:
    return {"layers": [dataclasses.asdict(layer) for layer in config.layers],
            "image_size": config.image_size}


def _config_from_json(data: dict) -> GraphConfig:
    return GraphConfig(layers=tuple(LayerConfig(**layer) for layer in data["layers"]),
                       image_size=data["image_size"])
