"""Images sharded across devices: the layer fit inside `shard_map`, statistics `psum`-ed.

Each device holds an equal slice of the images (and of every per-image record); node
parameters are replicated. The reductions over images in the EM (`reduce.py`, the
sufficient statistics, parent affinities) complete themselves across the mesh axis, so the
body is the single-device code with `Setup.axis_name` set. Runs multi-host unchanged after
`jax.distributed.initialize()`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, PartitionSpec as P

from egjax.graph import LayerFit
from egjax.maps import QuantizedMaps

AXIS = "images"


def image_mesh(devices: Sequence | None, num_images: int) -> Mesh | None:
    """A 1-D mesh over the most devices (of `devices`, default all) that divide the images
    evenly; None when that is one device."""
    devices = list(jax.devices() if devices is None else devices)
    count = max(d for d in range(1, len(devices) + 1) if num_images % d == 0)
    if count == 1:
        return None
    return Mesh(np.asarray(devices[:count]), (AXIS,), axis_types=(AxisType.Auto,))


def _maps_spec(quantized: bool):
    return QuantizedMaps(P(AXIS), P(AXIS), P(AXIS)) if quantized else P(AXIS)


def sharded(body, mesh: Mesh, quantized: bool, flips: bool, parent, records_type):
    """`body(coord, deform, maps, flipped, parent)` as one jitted `shard_map` over `mesh`:
    maps and per-image records split along the images, node parameters replicated.
    `parent` is the LayerConfig of the layer above (None for the top layer)."""
    per_image = P(None, AXIS)
    out_specs = (P(), P(), P(), records_type(*[P(AXIS)] * len(records_type._fields)))
    parent_spec = None if parent is None else LayerFit(
        coord=P(), deform=P(), parents=P(), score=per_image, pos=per_image, flip=P(AXIS),
        alt_score=per_image, alt_pos=per_image, config=parent)
    in_specs = (P(), P(), _maps_spec(quantized), _maps_spec(quantized) if flips else None,
                parent_spec)
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                                 check_vma=False))
