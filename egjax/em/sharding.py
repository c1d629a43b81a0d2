"""Images sharded across devices and processes: the layer fit in `shard_map`, the one-device
code with `Setup.images` set (`reduce`). Each device holds a slice of the images and records
(padded, `reduce.Images`); each process passes its share, p, p + P, ...; records come back
split over the devices, in image order then zeros (`LayerFit.records`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from egjax.em.reduce import Images
from egjax.graph import LayerFit, Records
from egjax.maps import QuantizedMaps

AXIS = "images"


def image_mesh(devices: Sequence | None) -> Mesh | None:
    """A 1-D mesh over `devices` (default: all, of all processes), grouped by process; None
    for one device. The devices are this process's, or every process's, as many each."""
    devices = sorted(jax.devices() if devices is None else devices,
                     key=lambda d: (d.process_index, d.id))
    if len(devices) == 1:
        return None
    processes = sorted({d.process_index for d in devices})
    if len(processes) > 1 and (len(processes) != jax.process_count() or any(
            sum(d.process_index == p for d in devices) != len(devices) // len(processes)
            for p in processes)):
        raise ValueError("devices must be this process's alone, or those of every process, "
                         "each bringing as many")
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def spans_processes(devices: Sequence | None) -> bool:
    """Whether `devices` (default all) span several processes, each holding its share."""
    if devices is None:
        return jax.process_count() > 1
    return len({d.process_index for d in devices}) > 1


def total_images(local: int, devices: Sequence | None = None) -> int:
    """The images of all processes, from this process's `local` count."""
    if not spans_processes(devices):
        return local
    return int(np.sum(multihost_utils.process_allgather(np.int64(local))))


def check_together(devices: Sequence | None, check, *args) -> None:
    """`check(*args)` (raising ValueError) on this process's share; across processes it
    raises on all where it fails on any (rather than the others waiting in a collective)."""
    error = None
    try:
        check(*args)
    except ValueError as caught:
        error = caught
    if spans_processes(devices):
        failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
        if error is None and failed.any():
            raise ValueError(f"the input of process(es) {np.flatnonzero(failed).tolist()} was "
                             f"refused (their message says why)")
    if error is not None:
        raise error


def image_layout(mesh: Mesh, local: int) -> Images:
    """Where the images lie on `mesh`, given this process's `local` count (its share)."""
    several = spans_processes(list(mesh.devices.flat))
    processes, index = (jax.process_count(), jax.process_index()) if several else (1, 0)
    num = total_images(local, list(mesh.devices.flat))
    images = Images(AXIS, num, processes, 0)
    if local != images.share(index):
        raise ValueError(f"process {index} of {processes} holds {local} of the {num} images; "
                         f"its share is every {processes}-th image from image {index}, "
                         f"{images.share(index)} images (egjax.data.iter_objects(shard="
                         f"(process_index, process_count)))")
    devices = mesh.devices.size // processes
    per_device = -(-max(images.share(p) for p in range(processes)) // devices)
    return images._replace(block=devices * per_device)


def put_images(x, mesh: Mesh, images: Images, dtype=None) -> jax.Array:
    """This process's images `x [n, ...]` as the global array `[slots, ...]`, shard by shard
    onto each device; padding slots repeat the share's first image (masked)."""
    if isinstance(x, QuantizedMaps):
        return QuantizedMaps(*(put_images(part, mesh, images) for part in x))
    n = np.shape(x)[0]
    first = (jax.process_index() if images.processes > 1 else 0) * images.block
    dtype = dtype or x.dtype

    def shard(index):
        start, stop = index[0].indices(images.slots)[:2]
        start, stop = start - first, stop - first
        part = np.asarray(x[start:min(stop, n)], dtype)
        if stop > n:
            pad = np.broadcast_to(np.asarray(x[:1], dtype),
                                  (stop - max(start, n),) + part.shape[1:])
            part = np.concatenate([part, pad])
        return part

    return jax.make_array_from_callback((images.slots,) + tuple(np.shape(x)[1:]),
                                        NamedSharding(mesh, P(AXIS)), shard)


def replicated(x, mesh: Mesh) -> jax.Array:
    """`x` (the same on every process) on every device of `mesh`."""
    return jax.device_put(np.asarray(x), NamedSharding(mesh, P()))


def image_order(x: jnp.ndarray, images: Images, axis: int, mesh: Mesh) -> jnp.ndarray:
    """Per-image `x` in `images`' slots along `axis` -> image order, then zeros (`_exchange`)."""
    slots, num = images.slots, images.num_images
    if images.processes == 1:
        real = (jnp.arange(slots) < num).reshape((-1,) + (1,) * (x.ndim - axis - 1))
        return jnp.where(real, x, jnp.zeros_like(x))
    source = np.concatenate([images.slot_of_image(), np.full(slots - num, slots)])
    return _exchange(x, mesh, source, axis)


def slot_order(x: jnp.ndarray, images: Images, axis: int, mesh: Mesh) -> jnp.ndarray:
    """The inverse of `image_order` (`x` with or without the padding)."""
    slots, num = images.slots, images.num_images
    if x.shape[axis] != slots:   # no padding, or another fit's
        x = jax.lax.slice_in_dim(x, 0, num, axis=axis)
        x = jnp.pad(x, [(0, slots - num) if d == axis else (0, 0) for d in range(x.ndim)])
    if images.processes == 1:
        return x
    at = images.image_at_slot()
    return _exchange(x, mesh, np.where(at < num, at, slots), axis)


def _exchange(x: jnp.ndarray, mesh: Mesh, source: np.ndarray, axis: int) -> jnp.ndarray:
    """`out[j] = x[source[j]]` along `axis` (0 out of range), split evenly over `mesh`: one
    padded `all_to_all`, so no device holds more than its rows and that padding."""
    devices, n_in, n_out = mesh.devices.size, x.shape[axis], len(source)
    rows_in, rows_out = n_in // devices, n_out // devices
    target = np.flatnonzero(source < n_in)
    src, dst = source[target] // rows_in, target // rows_out
    pair = src * devices + dst
    order = np.lexsort((target, pair))
    rank = np.arange(len(order)) - np.searchsorted(pair[order], pair[order])
    chunk = max(1, int(np.bincount(pair, minlength=devices * devices).max(initial=0)))
    send = np.zeros((devices, devices, chunk), np.int32)   # [from, to, c]: local row sent
    send[src[order], dst[order], rank] = source[target][order] % rows_in
    # [to, row]: where the row lies in what `to` receives, from * chunk + c (none: filled 0)
    receive = np.full((devices, rows_out), devices * chunk, np.int32)
    receive[dst[order], target[order] % rows_out] = src[order] * chunk + rank
    send, receive = jnp.asarray(send), jnp.asarray(receive)

    def move(local):
        me = jax.lax.axis_index(AXIS)
        out = jnp.take(local, send[me].reshape(-1), axis=0).reshape(
            (devices, chunk) + local.shape[1:])
        out = jax.lax.all_to_all(out, AXIS, 0, 0).reshape((devices * chunk,) + local.shape[1:])
        return jnp.take(out, receive[me], axis=0, mode="fill", fill_value=0)

    x = jnp.moveaxis(x, axis, 0)
    out = jax.shard_map(move, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS),
                        check_vma=False)(x)
    return jnp.moveaxis(out, 0, axis)


def whole_records(layer: LayerFit) -> LayerFit:
    """`layer` with `score` and `pos` whole on each device, so that sums over the images
    (`parents.candidate_list`) add as one device adds them (compat="original")."""
    def whole(x):
        split = x.sharding
        if isinstance(split, NamedSharding) and not split.is_fully_replicated:
            return jax.jit(lambda a: a, out_shardings=NamedSharding(split.mesh, P()))(x)
        return x

    kept = layer.records
    return dataclasses.replace(layer, records=kept._replace(score=whole(kept.score),
                                                            pos=whole(kept.pos)))


def sharded(body, mesh: Mesh, images: Images, flips: bool, parent):
    """`body(coord, deform, maps, flipped, parent)` as one jitted `shard_map` over `mesh`, maps
    and records split along the images (`parent`: the upper LayerConfig; None: top)."""
    per_image = P(None, AXIS)
    out_specs = (P(), P(), P(), Records(*[P(AXIS)] * len(Records._fields)))
    parent_spec = None if parent is None else LayerFit(
        coord=P(), deform=P(), parents=P(), score=per_image, pos=per_image, flip=P(AXIS),
        alt_score=per_image, alt_pos=per_image, config=parent)
    in_specs = (P(), P(), P(AXIS), P(AXIS) if flips else None, parent_spec)
    fit = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                        check_vma=False)
    out_shardings = (NamedSharding(mesh, P()),) * 3 + (
        Records(*[NamedSharding(mesh, P(AXIS))] * len(Records._fields)),)

    def run(coord, deform, maps, flipped, upper):
        if upper is not None:   # its records as kept (`LayerFit.records`) -> the slots
            kept = upper.records
            upper = LayerFit(coord=upper.coord, deform=upper.deform, parents=upper.parents,
                             **{f: slot_order(getattr(kept, f), images, 0 if f == "flip" else 1,
                                              mesh) for f in kept._fields},
                             config=upper.config)
        coord, deform, parents, rec = fit(coord, deform, maps, flipped, upper)
        rec = jax.tree.map(lambda x: image_order(x, images, 0, mesh), rec)
        return coord, deform, parents, rec

    return jax.jit(run, out_shardings=out_shardings)
