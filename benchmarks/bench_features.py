"""Images/s of feature extraction at 224 px: egjax (jitted Flax) vs tf.keras, VGG-16 or ResNet-50.

Both compute the graph's taps (VGG-16: the paper's conv4_2, conv4_3, conv5_2, conv5_3;
ResNet-50: the original's layer2, layer3, layer4, Keras's v1 variant on both sides) for each
image and its horizontal mirror, from uint8 RGB input (caffe preprocessing), and return numpy
arrays.
Random weights (the speed does not depend on them). The two are timed alternately, batch by
batch size, and the medians of `--runs` timed runs are printed with their ratio. `--memory`
also prints the peak RSS of extracting N and 4N images in fresh processes (it should not grow
with N).

    python benchmarks/bench_features.py [--model vgg16|resnet50] [--batches 1 8 32] [--runs 5]
                                        [--memory]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TAPS = {"vgg16": ("conv4_2", "conv4_3", "conv5_2", "conv5_3"),
        "resnet50": ("layer2", "layer3", "layer4")}
KERAS_TAPS = {"vgg16": ("block4_conv2", "block4_conv3", "block5_conv2", "block5_conv3"),
              "resnet50": ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")}
SIDE = 224


def egjax_model(name: str):
    """(module, meta) of `name` without a head: VGG-16, or ResNet-50 v1 (as Keras's)."""
    from egjax.models import ModelMeta
    arch = {"vgg16": "vgg16", "resnet50": "resnet50_v1"}[name]
    meta = ModelMeta(source="random", arch=arch, head=None)
    return meta.model(), meta


def egjax_extractor(name: str, batch_size: int):
    import jax

    from egjax import features
    from egjax.models import param_shapes

    model, meta = egjax_model(name)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: (rng.normal(0, np.sqrt(2 / np.prod(s.shape[:-1])), s.shape)
                   if len(s.shape) > 1 else np.zeros(s.shape)).astype(np.float32),
        param_shapes(model))
    params = jax.device_put(params)

    def run(images):
        return features.extract_features(model, params, meta, images, TAPS[name], flip=True,
                                         batch_size=batch_size, quiet=True)
    return run


def keras_extractor(name: str):
    import tensorflow as tf

    build = {"vgg16": tf.keras.applications.VGG16, "resnet50": tf.keras.applications.ResNet50}
    net = build[name](weights=None, include_top=False, input_shape=(SIDE, SIDE, 3))
    probe = tf.keras.Model(net.input, [net.get_layer(n).output for n in KERAS_TAPS[name]])
    mean = tf.constant([103.939, 116.779, 123.68])

    @tf.function(jit_compile=False)
    def taps(images):
        x = tf.cast(images, tf.float32)[..., ::-1] - mean
        x = tf.concat([x, x[:, :, ::-1]], axis=0)
        return probe(x, training=False)

    def run(images):
        return [t.numpy() for t in taps(images)]
    return run


def seconds(run, images) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one run."""
    start, cpu = time.perf_counter(), time.process_time()
    run(images)
    return time.perf_counter() - start, time.process_time() - cpu


def peak_rss_mib(name: str, n: int, batch_size: int) -> float:
    """Peak RSS of a fresh process that extracts the taps of n images (outputs discarded)."""
    code = (
        "import sys; sys.path.insert(0, '.');"
        "from benchmarks.bench_features import egjax_memory_run;"
        f"egjax_memory_run({name!r}, {n}, {batch_size});"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024  # VmHWM, KiB (ru_maxrss survives exec)


def egjax_memory_run(name: str, n: int, batch_size: int) -> None:
    import jax

    from egjax import features
    from egjax.models import param_shapes

    model, meta = egjax_model(name)
    params = jax.tree.map(lambda s: np.full(s.shape, 0.01, np.float32), param_shapes(model))
    rng = np.random.default_rng(0)
    batches = (rng.integers(0, 256, (batch_size, SIDE, SIDE, 3), dtype=np.uint8)
               for _ in range(n // batch_size))
    for _ in features.iter_features(model, params, meta, batches, TAPS[name],
                                    batch_size=batch_size, quiet=True):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(TAPS), default="vgg16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()

    import jax
    import tensorflow as tf
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; jax {jax.__version__}, tf {tf.__version__}; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    keras = keras_extractor(args.model)
    print(f"{args.model}, taps {', '.join(TAPS[args.model])}")
    print("images/s (each image and its mirror): median of the runs [best run]; last column: "
          "the ratio of process CPU seconds per image (tf.keras / egjax), which a loaded "
          "machine disturbs less than the wall clock")
    print(f"{'batch':>5} {'egjax':>14} {'tf.keras':>14} {'ratio':>6} {'cpu':>6}")
    for batch in args.batches:
        images = np.random.default_rng(batch).integers(0, 256, (batch, SIDE, SIDE, 3), np.uint8)
        ours = egjax_extractor(args.model, batch)
        ours(images), keras(images)  # compile, warm up
        ours_runs, keras_runs = [], []
        for _ in range(args.runs):  # alternate, so both see the same machine load
            ours_runs.append(seconds(ours, images))
            keras_runs.append(seconds(keras, images))
        ours_times, ours_cpu = zip(*ours_runs)
        keras_times, keras_cpu = zip(*keras_runs)
        ours_rate = batch / statistics.median(ours_times)
        keras_rate = batch / statistics.median(keras_times)
        ours_best, keras_best = batch / min(ours_times), batch / min(keras_times)
        cpu_ratio = statistics.median(keras_cpu) / statistics.median(ours_cpu)
        print(f"{batch:>5} {ours_rate:>6.2f} [{ours_best:>5.2f}] {keras_rate:>6.2f} "
              f"[{keras_best:>5.2f}] {ours_rate / keras_rate:>6.2f} {cpu_ratio:>6.2f}",
              flush=True)
    if args.memory:
        batch = 8
        for n in (2 * batch, 8 * batch, 32 * batch):
            print(f"peak RSS extracting {n} images (batch {batch}): "
                  f"{peak_rss_mib(args.model, n, batch):.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
