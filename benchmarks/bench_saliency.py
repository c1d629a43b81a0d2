"""Seconds per batch of saliency maps on VGG-16: LRP and sensitivity against the gradient.

Full-width VGG-16 with the ImageNet "fc" head (random weights; the speed does not depend
on them), a batch of `--batch` 224-px images, one target each. The methods are timed in
turn, round by round, so that a change of machine load hits them alike; the median of
`--runs` rounds is printed with its ratio to the gradient's (the target for LRP: <= 3x).
Compilation is timed apart (the first call).

    python benchmarks/bench_saliency.py [--batch 8] [--runs 5] [--batch-size N]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import numpy as np

SIDE = 224
METHODS = ("gradient", "lrp_composite", "lrp_epsilon", "sensitivity")


def explainers(batch_size):
    import jax

    from egjax import saliency
    from egjax.models import VGG16, param_shapes

    model = VGG16()
    rng = np.random.default_rng(0)
    params = jax.device_put(jax.tree.map(
        lambda s: (rng.normal(0, np.sqrt(2 / np.prod(s.shape[:-1])), s.shape)
                   if len(s.shape) > 1 else np.zeros(s.shape)).astype(np.float32),
        param_shapes(model)))
    common = dict(batch_size=batch_size)
    return {
        "gradient": functools.partial(saliency.gradient, model, params, **common),
        "lrp_composite": functools.partial(saliency.lrp, model, params, **common),
        "lrp_epsilon": functools.partial(saliency.lrp, model, params, rule="epsilon", **common),
        "sensitivity": functools.partial(saliency.sensitivity, model, params, **common),
    }


def seconds(explain, images, targets) -> float:
    start = time.perf_counter()
    explain(images, targets).block_until_ready()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="chunk size of the methods (default: the whole batch at once)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"backend {jax.default_backend()}, load average {os.getloadavg()[0]:.1f}; "
          f"jax {jax.__version__}")
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.normal(0, 50, (args.batch, SIDE, SIDE, 3)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 1000, args.batch))
    methods = {name: f for name, f in explainers(args.batch_size).items()
               if name in args.methods or name == "gradient"}
    compile_seconds = {name: seconds(f, images, targets) for name, f in methods.items()}
    times = {name: [] for name in methods}
    for _ in range(args.runs):
        for name, explain in methods.items():
            times[name].append(seconds(explain, images, targets))
    base = statistics.median(times["gradient"])
    print(f"VGG-16, {args.batch} images of {SIDE} px, median of {args.runs} rounds "
          f"(load average now {os.getloadavg()[0]:.1f})")
    print(f"{'method':>14} {'s/batch':>8} {'x gradient':>10} {'first call':>10}  runs")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"{name:>14} {median:8.2f} {median / base:10.2f} {compile_seconds[name]:10.1f}  "
              + " ".join(f"{r:.2f}" for r in runs))


if __name__ == "__main__":
    main()
