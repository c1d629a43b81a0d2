"""Feature maps at tap layers: jitted batched extraction, negative statistics, normalisation,
horizontal flips and the uint8 cache, as the original prepares them (`getRoughCNN.m`,
`roughCNN_compress.m`; docs/algorithm.md, "Feature preprocessing").

Images come as uint8 RGB `[N, H, W, 3]`: an array or anything sliceable with a `.shape` (a
memmap, an h5py dataset), or for `iter_features` / `negative_statistics` also an iterable of
such batches. They travel to the device as uint8, in batches of `batch_size` (the last one
padded, so each function compiles once); memory is bounded by the batch, not by N.
Maps are `[N, S, S, C]` float32. The flipped maps are those of the mirrored image (W reversed
before the network), left in mirrored order and normalised with the unflipped sd.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from egjax.maps import QuantizedMaps, divide, host_empty, quantize
from egjax.models.contract import param_shapes, prepare
from egjax.models.meta import ModelMeta, preprocess
from egjax.progress import Step


class NegativeStats(NamedTuple):
    """Per-element moments of a tap's raw maps over negative images: `[S, S, C]` float32."""

    mean: np.ndarray
    sd: np.ndarray
    count: int


class Features(NamedTuple):
    """Maps per tap, `[N, S, S, C]` (float32 or `QuantizedMaps`); `flipped` None without flips."""

    maps: dict
    flipped: dict | None


def normalize(maps: jax.Array, sd: jax.Array) -> jax.Array:
    """x / sd, with -1 wherever the raw x <= 0 (docs/algorithm.md, "Feature preprocessing", step 2).

    maps [..., S, S, C], sd [S, S, C]. An element whose sd is 0 (it never varied over the
    negatives) also becomes -1: it carries no evidence (the E-step uses max(x, 0)) instead of
    the infinity of x / 0 (the original's NaN/Inf).
    """
    maps = jnp.asarray(maps, jnp.float32)
    active = (maps > 0) & (sd > 0)
    return jnp.where(active, divide(maps, jnp.where(sd > 0, sd, 1.0)), -1.0)


def _check_images(batch, where: str) -> None:
    shape = getattr(batch, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise ValueError(f"{where}: images must be [N, H, W, 3] uint8 RGB with N >= 1, "
                         f"got shape {shape}")
    if getattr(batch, "dtype", None) != np.uint8:
        raise ValueError(f"{where}: images must be uint8 RGB (0..255), got {batch.dtype}")


def _is_array(images) -> bool:
    return hasattr(images, "shape") and hasattr(images, "__getitem__")


def _batches(images, batch_size: int, read=None) -> Iterator[np.ndarray | None]:
    """uint8 numpy batches of at most `batch_size` images from an array or an iterable; from
    an array, None for a batch whose number `read(number)` refuses (it is not sliced: an
    array read when sliced, `egjax.data.StreamImages`, reads nothing)."""
    if _is_array(images):
        for start in range(0, images.shape[0], batch_size):
            wanted = read is None or read(start // batch_size)
            yield np.asarray(images[start:start + batch_size]) if wanted else None
        return
    for batch in images:
        batch = np.asarray(batch)
        _check_images(batch, "a batch of images")
        for start in range(0, batch.shape[0], batch_size):
            yield batch[start:start + batch_size]


def _padded(batch: np.ndarray, batch_size: int) -> np.ndarray:
    if batch.shape[0] == batch_size:
        return batch
    pad = np.zeros((batch_size - batch.shape[0], *batch.shape[1:]), batch.dtype)
    return np.concatenate([batch, pad])


def _apply(model, variables: dict, images: jax.Array, taps: tuple) -> dict:
    """`model.apply` at `taps`; on CPU one image at a time (`lax.map`), whose activations stay
    in the caches where a whole batch's do not (~1.3x faster for VGG-16 at 224 px), unless
    the model says a whole batch runs faster (`cpu_whole_batch`, ResNet-50's small maps)."""
    if jax.default_backend() != "cpu" or getattr(model, "cpu_whole_batch", False):
        return model.apply(variables, images, taps=taps)
    maps = jax.lax.map(lambda image: model.apply(variables, image[None], taps=taps), images)
    return {tap: m[:, 0] for tap, m in maps.items()}


_prepare = jax.jit(prepare, static_argnums=0)
_last_prepared: dict = {}   # key: (model, treedef, weak references to the leaves); variables


def _variables(model, params) -> dict:
    """The model's variables: params and what `model.prepare` derives from them (the model
    contract; VGG-16's Winograd kernels), computed once per run of batches, not in every
    batch. Those of the last params given as jax arrays (immutable) are kept while the arrays
    live, so that runs of one image each, on the same params, do not compute them again."""
    leaves, treedef = jax.tree.flatten(params)
    key = _last_prepared.get("key")
    if (key is not None and key[:2] == (model, treedef)
            and all(ref() is leaf for ref, leaf in zip(key[2], leaves))):
        return {"params": params, **_last_prepared["variables"]}
    prepared = _prepare(model, params)
    if leaves and all(isinstance(leaf, jax.Array) for leaf in leaves):
        _last_prepared.clear()
        _last_prepared.update(key=(model, treedef, [weakref.ref(leaf) for leaf in leaves]),
                              variables=prepared)
        weakref.finalize(leaves[0], _forget_dead_variables)
    return {"params": params, **prepared}


def _forget_dead_variables() -> None:
    """Drop the kept variables once their params are gone (not those of newer params)."""
    key = _last_prepared.get("key")
    if key is not None and key[2][0]() is None:
        _last_prepared.clear()


@functools.lru_cache(maxsize=32)
def _map_function(model, meta: ModelMeta, taps: tuple, flip: bool, normalized: bool,
                  quantized: bool):
    """jit(`_variables`, uint8 batch, sd) -> (maps, flipped maps or None), one compile per
    shape."""

    def run(variables, images, sd):
        x = preprocess(images, meta)
        n = x.shape[0]
        if flip:
            x = jnp.concatenate([x, x[:, :, ::-1]])
        maps = _apply(model, variables, x, taps)
        if normalized:
            maps = {t: normalize(m, sd[t]) for t, m in maps.items()}
        if quantized:
            maps = {t: quantize(m) for t, m in maps.items()}
        unflipped = jax.tree.map(lambda a: a[:n], maps)
        flipped = jax.tree.map(lambda a: a[n:], maps) if flip else None
        return unflipped, flipped

    return jax.jit(run)


@functools.lru_cache(maxsize=32)
def _moment_function(model, meta: ModelMeta, taps: tuple):
    """jit(`_variables`, uint8 batch, valid) -> {tap: (mean, centred sum of squares)} of the
    first `valid` images."""

    def run(variables, images, valid):
        maps = _apply(model, variables, preprocess(images, meta), taps)
        weight = (jnp.arange(images.shape[0]) < valid).astype(jnp.float32)[:, None, None, None]
        count = valid.astype(jnp.float32)
        moments = {}
        for tap, x in maps.items():
            mean = jnp.sum(x * weight, axis=0) / count
            moments[tap] = (mean, jnp.sum(weight * (x - mean) ** 2, axis=0))
        return moments

    return jax.jit(run)


def _check_setup(model, images, taps, batch_size: int) -> tuple:
    taps = model.check_taps(taps)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if _is_array(images):
        _check_images(images, "images")
    return taps


@functools.lru_cache(maxsize=32)
def _map_shapes(model, image_size: tuple[int, int], taps: tuple) -> dict:
    """{tap: (S, S, C)} for images of `image_size` (traces the model once, computes nothing)."""
    probe = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)

    def apply(params, images):
        return model.apply({"params": params}, images, taps=taps)

    shapes = jax.eval_shape(apply, param_shapes(model), probe)
    return {t: s.shape[1:] for t, s in shapes.items()}


def _check_sd(sd, shapes: dict) -> dict:
    if set(sd) != set(shapes):
        raise ValueError(f"sd must have one array per tap {sorted(shapes)}, got {sorted(sd)}")
    checked = {}
    for tap, shape in shapes.items():
        values = np.asarray(sd[tap], np.float32)
        if values.shape != tuple(shape):
            raise ValueError(f"sd[{tap!r}] has shape {values.shape}, maps are {tuple(shape)}")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"sd[{tap!r}] must be finite and >= 0")
        checked[tap] = jnp.asarray(values)
    return checked


def iter_features(model, params, meta: ModelMeta, images, taps: Sequence[str], *,
                  sd: dict | None = None, flip: bool = True, quantized: bool = False,
                  batch_size: int = 32, quiet: bool = False) -> Iterator[tuple[int, Features]]:
    """Yields (first image index, Features of the batch) as numpy, batch by batch.

    `sd` ({tap: [S, S, C]}, e.g. from `negative_statistics`): normalise (`normalize`); None:
    raw maps. `flip`: also the mirrored images' maps. `quantized`: `QuantizedMaps` (uint8).
    """
    taps = _check_setup(model, images, taps, batch_size)
    if sd is not None and _is_array(images):
        sd = _check_sd(sd, _map_shapes(model, tuple(images.shape[1:3]), taps))
    function = _map_function(model, meta, taps, flip, sd is not None, quantized)
    variables = _variables(model, params)
    total = images.shape[0] if _is_array(images) else None
    start = 0
    with Step(total, "features", "images", quiet=quiet) as bar:
        for batch in _batches(images, batch_size):
            if start == 0 and sd is not None and not _is_array(images):
                sd = _check_sd(sd, _map_shapes(model, tuple(batch.shape[1:3]), taps))
            n = batch.shape[0]
            maps, flipped = function(variables, _padded(batch, batch_size), sd)
            maps, flipped = jax.tree.map(lambda a: np.asarray(a)[:n], (maps, flipped))
            yield start, Features(maps, flipped)
            start += n
            bar.update(n)


def extract_features(model, params, meta: ModelMeta, images, taps: Sequence[str], *,
                     sd: dict | None = None, flip: bool = True, quantized: bool = False,
                     batch_size: int = 32, quiet: bool = False) -> Features:
    """All maps of `images` (an array-like [N, H, W, 3] uint8) at `taps`, in preallocated arrays.

    Arguments as `iter_features`; returns Features with `[N, S, S, C]` numpy arrays (or
    `QuantizedMaps` of numpy arrays) per tap.
    """
    if not _is_array(images):
        raise ValueError("extract_features needs an array-like of images with a .shape; "
                         "use iter_features for an iterable of batches")
    taps = _check_setup(model, images, taps, batch_size)
    shapes = _map_shapes(model, tuple(images.shape[1:3]), taps)
    n = images.shape[0]

    def allocate():
        if quantized:
            return {t: QuantizedMaps(host_empty((n, *s), np.uint8),
                                     np.empty((n, s[-1]), np.float32),
                                     np.empty((n, s[-1]), np.float32)) for t, s in shapes.items()}
        return {t: host_empty((n, *s), np.float32) for t, s in shapes.items()}

    out = Features(allocate(), allocate() if flip else None)
    for start, batch in iter_features(model, params, meta, images, taps, sd=sd, flip=flip,
                                      quantized=quantized, batch_size=batch_size, quiet=quiet):
        stop = start + next(iter(jax.tree.leaves(batch.maps))).shape[0]
        for target, source in ((out.maps, batch.maps), (out.flipped, batch.flipped)):
            if target is None:
                continue
            for tap in taps:
                for whole, part in zip(jax.tree.leaves(target[tap]), jax.tree.leaves(source[tap])):
                    whole[start:stop] = part
    return out


def negative_statistics(model, params, meta: ModelMeta, images, taps: Sequence[str], *,
                        batch_size: int = 32, quiet: bool = False,
                        across_processes: bool = True,
                        same_images: bool = False) -> dict[str, NegativeStats]:
    """Per-element mean and sd (`sqrt(E[x^2] - E[x]^2)`, over images) of the raw maps at `taps`.

    Streams: each batch's mean and centred sum of squares are computed on the device (float32)
    and merged on the host in float64, batch after batch (Chan et al.'s parallel update), so
    nothing N-sized is held and a constant element gets sd exactly 0 (`getRoughCNN.m`,
    `getAvgResponse`). Under several processes (`egjax.distributed`) each passes its share of
    the negatives and all get the statistics of all of them (merged in process order), unless
    `across_processes=False` (this process's images only); or, `same_images=True`, every
    process passes all the negatives, computes every P-th batch (process p: batches p, p + P,
    ...) and all merge every batch's moments in batch order: bit for bit the one-process
    statistics. An array read when sliced (`egjax.data.StreamImages`) is read only where a
    batch is computed (an unreadable image skipped there leaves its batch short).
    """
    taps = _check_setup(model, images, taps, batch_size)
    function = _moment_function(model, meta, taps)
    variables = _variables(model, params)
    split = same_images and across_processes and jax.process_count() > 1
    index, processes = (jax.process_index(), jax.process_count()) if split else (0, 1)
    state, batches, mine, shapes = (0, {}, {}), 0, [], None
    total = images.shape[0] if _is_array(images) else None
    with Step(total, "negative statistics", "images", quiet=quiet) as bar:
        runs = lambda number: number % processes == index   # noqa: E731
        for number, batch in enumerate(_batches(images, batch_size, runs)):
            batches += 1
            if split and shapes is None:   # for a process that computes no batch
                shape = (batch_size,) + (images.shape if batch is None else batch.shape)[1:]
                shapes = jax.eval_shape(function, variables,
                                        jax.ShapeDtypeStruct(shape, np.uint8), jnp.int32(0))
            if batch is None:   # another process's, not read
                bar.update(min(batch_size, total - number * batch_size))
                continue
            n = batch.shape[0]
            moments = (function(variables, _padded(batch, batch_size), jnp.int32(n))
                       if n and runs(number) else None)
            if split and runs(number):   # kept (float32, as computed) until every batch is in
                mine.append((n, jax.device_get(moments)))
            elif moments is not None:
                state = _merge_batch(state, n, moments)
            bar.update(n)
    if split and batches:
        for n, moments in _batches_in_order(mine, batches, shapes):
            state = _merge_batch(state, n, moments) if n else state
    count, mean, m2 = state
    if across_processes and not split and jax.process_count() > 1:
        count, mean, m2 = _merge_processes(count, mean, m2, taps)
    if count == 0:
        raise ValueError("negative_statistics got no images")
    return {t: NegativeStats(mean[t].astype(np.float32), np.sqrt(m2[t] / count).astype(np.float32),
                             count) for t in taps}


def _merge_batch(state: tuple, n: int, moments: dict) -> tuple:
    """`(count, mean, m2)` with one more batch of `n` images and its float32 `moments`
    (`{tap: (mean, centred sum of squares)}`) merged in, in float64 (Chan et al.)."""
    count, mean, m2 = state
    mean, m2 = dict(mean), dict(m2)
    for tap, (batch_mean, batch_m2) in moments.items():
        batch_mean = np.asarray(batch_mean, np.float64)
        batch_m2 = np.asarray(batch_m2, np.float64)
        if count == 0:
            mean[tap], m2[tap] = batch_mean, batch_m2
            continue
        delta = batch_mean - mean[tap]
        merged = count + n
        mean[tap] = mean[tap] + delta * (n / merged)
        m2[tap] = m2[tap] + batch_m2 + delta**2 * (count * n / merged)
    return count + n, mean, m2


def _batches_in_order(mine: list, batches: int, shapes: dict) -> list[tuple[int, dict]]:
    """Every batch's `(size, moments)`, in batch order, on every process, from this
    process's (its every P-th batch, `mine`, moments None where it held no image; `shapes`
    those of one batch's): exchanged as computed (float32), so merged bit for bit as one
    process merges them."""
    processes = jax.process_count()
    most = -(-batches // processes)
    sizes = np.zeros(most, np.int32)
    sizes[:len(mine)] = [n for n, _ in mine]
    sizes = np.asarray(multihost_utils.process_allgather(sizes))   # [P, most]
    out = [(int(sizes[b % processes, b // processes]), {}) for b in range(batches)]
    for tap, parts in shapes.items():
        for part, shape in enumerate(parts):   # the mean, the centred sum of squares
            local = np.zeros((most,) + shape.shape, shape.dtype)
            for number, (n, moments) in enumerate(mine):
                if n:
                    local[number] = moments[tap][part]
            every = np.asarray(multihost_utils.process_allgather(local))   # [P, most, ...]
            for number in range(batches):
                out[number][1].setdefault(tap, [None, None])[part] = every[number % processes,
                                                                          number // processes]
    return out


def _merge_processes(count: int, mean: dict, m2: dict, taps) -> tuple[int, dict, dict]:
    """Every process's `(count, mean, m2)` merged in process order (Chan et al.), float64
    exchanged bit for bit (as uint32 pairs: jax arrays may hold no float64)."""
    def gather(x):
        bits = np.ascontiguousarray(x, np.float64).view(np.uint32)
        return np.asarray(multihost_utils.process_allgather(bits)).view(np.float64)

    counts = np.asarray(multihost_utils.process_allgather(np.int32(count)))
    if not counts.all():
        raise ValueError(f"negative_statistics: process(es) {np.flatnonzero(counts == 0).tolist()} "
                         f"got no images; give every process a share of the negatives")
    total, merged_mean, merged_m2 = 0, {}, {}
    for tap in taps:
        means, m2s = gather(mean[tap]), gather(m2[tap])
        total = 0
        for n, part_mean, part_m2 in zip(counts, means, m2s):
            if total == 0:
                merged_mean[tap], merged_m2[tap] = part_mean, part_m2
            else:
                delta = part_mean - merged_mean[tap]
                merged = total + n
                merged_mean[tap] = merged_mean[tap] + delta * (n / merged)
                merged_m2[tap] = merged_m2[tap] + part_m2 + delta**2 * (total * n / merged)
            total += int(n)
    return total, merged_mean, merged_m2
