"""Time the explanatory-graph EM at VGG-16 scale on synthetic feature maps.

    python benchmarks/bench_em.py --images 500 [--maps dense] [--cpu-devices 2]

Fits the paper's four layers (conv4_2, conv4_3, conv5_2, conv5_3 of a 224-px input: 512
filters, maps 28/28/14/14, 20 iterations each) top-down, on uint8 maps (as the original
stores them) with mirrored maps. Prints compile time and run time per layer separately,
seconds per image-iteration per layer, seconds per image for the whole graph, and the
peak resident memory. `--maps blob` (default): sparse blobs at a few positions per filter,
so that nodes have something to fit and shrink their search windows. `--maps dense`: about
30% of the cells positive, gamma-distributed, -1 elsewhere, as VGG-16's conv4/conv5 maps
are after `features.normalize`; nothing to fit, so windows stay wide (the EM reads more
cells per node: its cost depends on the data through the windows). `--cpu-devices N`: the
CPU as N JAX devices, over which the fit splits the images as over any devices; on a 2-core
CPU one device leaves part of the second core idle.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_prefer_vector_width=512")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from egjax.cli import positive_int  # noqa: E402
from egjax.config import GraphConfig  # noqa: E402
from egjax.em import fit as fit_lib  # noqa: E402
from egjax.maps import QuantizedMaps, host_empty  # noqa: E402


def synthetic_maps(num: int, size: int, channels: int, seed: int) -> QuantizedMaps:
    """uint8 maps, mostly at the minimum (-1 after decoding), with 1-3 Gaussian blobs per
    filter per image near filter-specific positions."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, (channels, 3, 2)) * size
    data = host_empty((num, size, size, channels), np.uint8)   # as `features` allocates
    grid = np.arange(size)
    for n in range(num):
        jitter = rng.normal(0, 0.05 * size, (channels, 3, 2))
        active = rng.random((channels, 3)) < 0.6
        c = centres + jitter
        blob_h = np.exp(-(grid[None, None, :] - c[..., 0, None]) ** 2 / 4)   # [C, 3, S]
        blob_w = np.exp(-(grid[None, None, :] - c[..., 1, None]) ** 2 / 4)
        field = np.einsum("ckh,ckw,ck->hwc", blob_h, blob_w, active)
        data[n] = np.clip(field * 255, 0, 255).astype(np.uint8)
    minimum = np.full((num, channels), -1.0, np.float32)
    return QuantizedMaps(data, minimum, np.full((num, channels), 4.0, np.float32))


def dense_maps(num: int, size: int, channels: int, seed: int,
               positive: float = 0.3) -> QuantizedMaps:
    """uint8 maps of normalised activations: a fraction `positive` of the cells
    Gamma(1.5, 1)-distributed, the others -1 (`features.normalize`), quantised per image and
    filter as `maps.quantize` does."""
    rng = np.random.default_rng(seed)
    data = host_empty((num, size, size, channels), np.uint8)
    minimum = np.full((num, channels), -1.0, np.float32)
    span = np.empty((num, channels), np.float32)
    for n in range(num):
        x = np.where(rng.random((size, size, channels)) < positive,
                     rng.gamma(1.5, 1.0, (size, size, channels)), -1.0).astype(np.float32)
        span[n] = x.max(axis=(0, 1)) + 1
        data[n] = ((x + 1) * (255 / span[n])).astype(np.uint8)
    return QuantizedMaps(data, minimum, span)


MAPS = {"blob": synthetic_maps, "dense": dense_maps}


def mirrored(maps: QuantizedMaps) -> QuantizedMaps:
    data = host_empty(maps.data.shape, np.uint8)
    data[...] = maps.data[:, :, ::-1]
    return QuantizedMaps(data, maps.minimum, maps.range)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="N images (default 500)")
    parser.add_argument("--channels", type=int, default=512, help="filters per layer")
    parser.add_argument("--iterations", type=int, default=20, help="EM iterations per layer")
    parser.add_argument("--chunk", type=int, default=8, help="images per batch of parent priors")
    parser.add_argument("--maps", choices=sorted(MAPS), default="blob",
                        help="synthetic maps: sparse blobs (default) or dense gamma values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-devices", type=positive_int, default=None,
                        help="split the CPU into N JAX devices (jax_num_cpu_devices); the "
                        "EM splits the images over them (default: JAX's, one)")
    args = parser.parse_args(argv)
    if args.images < 2 or args.channels < 1 or args.iterations < 1 or args.chunk < 1:
        parser.error("--images must be >= 2; --channels, --iterations, --chunk >= 1")
    if args.cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)

    cfg = GraphConfig.vgg16(iterations=args.iterations)
    print(f"egjax EM benchmark: N={args.images} images, {args.channels} filters, "
          f"{args.iterations} iterations/layer, chunk {args.chunk}, {args.maps} maps, "
          f"{len(jax.devices())} {jax.devices()[0].platform} device(s), "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}")
    total_run = total_compile = 0.0
    fits = []   # every fitted layer is kept, as `fit_graph` keeps them; maps one layer at a time
    for index in reversed(range(len(cfg.layers))):
        layer = cfg.layers[index]
        maps = MAPS[args.maps](args.images, layer.map_size, args.channels, args.seed + index)
        call = fit_lib.layer_call(maps, layer, jax.random.key(index), mirrored(maps),
                                  fits[-1] if fits else None, None, "fixed", args.chunk)
        del maps
        start = time.perf_counter()
        compiled = call.function.lower(*call.args).compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        fits.append(fit_lib.layer_fit(jax.block_until_ready(compiled(*call.args)), call))
        run_s = time.perf_counter() - start
        del call, compiled
        total_run, total_compile = total_run + run_s, total_compile + compile_s
        per_iteration = run_s / args.images / args.iterations
        print(f"  {layer.tap}: compile {compile_s:6.1f} s, run {run_s:7.1f} s, "
              f"{per_iteration * 1e3:6.2f} ms per image-iteration", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"whole graph: {total_run / args.images:.3f} s per image (run), "
          f"compile {total_compile:.1f} s, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    sys.exit(main())
