"""Objects/s of loading and cropping (egjax.data.load) per dataset, streaming memory, and the
tensorflow-datasets alternative, on fake trees in the publishers' formats.

The trees (written to a temporary folder) hold VOC-sized 500 x 375 JPEGs: Pascal-Part with two
cows (12 part masks each) and a person per image, CUB-200-2011, ILSVRC Animal-Part (v7.3
.mat) and a `folder` with an objects.csv, one object per image for those. Each load crops to
224 x 224 and is timed `--runs` times; medians are printed with the best run, and objects per
CPU-second (all threads; on a shared machine the wall-clock rate also measures the other
jobs). Pascal-Part and ILSVRC are timed cold (annotation cache emptied first: every .mat
parsed) and warm.

`--memory`: peak RSS (VmHWM) of fresh processes that stream N and 4N objects (N = --images;
cub200, batch 32, batches discarded), and that load them whole, for contrast.
`--tfds`: the import of tensorflow-datasets, and a tfds GeneratorBasedBuilder of Pascal-Part
crops (manual_dir = the tree): prepare time and read speed, against reading directly; and how
far tf.image.crop_and_resize puts pixels from the crop geometry.

    python benchmarks/bench_data.py [--images 150] [--runs 3] [--memory] [--tfds]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from egjax import data  # noqa: E402
from tests import data_trees  # noqa: E402

H, W = 375, 500


def _masks(rng, r0, c0, r1, c1, parts=12):
    """An object mask (an ellipse in the box, rows r0..r1, cols c0..c1) and part masks in it."""
    rows, cols = np.mgrid[:H, :W]
    mask = (((rows - (r0 + r1) / 2) / ((r1 - r0) / 2)) ** 2
            + ((cols - (c0 + c1) / 2) / ((c1 - c0) / 2)) ** 2 <= 1).astype(np.uint8)
    names = ("head", "leye", "reye", "lear", "rear", "muzzle", "torso", "neck", "lfuleg",
             "lflleg", "rfuleg", "tail")[:parts]
    part_list = []
    for name in names:
        a, b = rng.integers(r0, r1 - 20), rng.integers(c0, c1 - 20)
        part_list.append((name, data_trees.rect(H, W, a, b, a + 19, b + 19) & mask))
    return mask, part_list


def write_trees(base: pathlib.Path, images: int) -> dict[str, pathlib.Path]:
    """Fake trees of `images` pictures each; returns their roots."""
    rng = np.random.default_rng(0)
    pictures = [data_trees.pattern(H, W, seed) for seed in range(images)]
    pascal = {}
    for i, pixels in enumerate(pictures):
        cows = [("cow", *_masks(rng, 20, 20 + k * 230, 300, 230 + k * 230)) for k in range(2)]
        person = ("person", data_trees.rect(H, W, 300, 0, 374, 60), [])
        pascal[f"2010_{i:06d}"] = (pixels, cows + [person])
    data_trees.write_pascal_part(base / "pascal_part", pascal, {i: "train" for i in pascal})
    data_trees.write_cub(base / "cub200", [
        dict(id=i + 1, folder="001.Black_footed_Albatross", pixels=pixels,
             box=(40, 30, 300, 250), train=False, parts={1: (100, 80), 6: (200, 60)})
        for i, pixels in enumerate(pictures)])
    data_trees.write_ilsvrc(base / "ilsvrc_animal_part", "n02084071",
                            [(pixels, (41, 340, 31, 280)) for pixels in pictures],
                            [[(50.0, 60.0)] * images, [(180.0, 100.0)] * images])
    folder = base / "folder"
    folder.mkdir()
    for i, pixels in enumerate(pictures):
        data_trees.write_jpeg(folder / f"{i:05d}.jpg", pixels)
    (folder / "objects.csv").write_text("image,y0,x0,y1,x1,head_y,head_x\n" + "".join(
        f"{i:05d}.jpg,30,40,280,340,50,60\n" for i in range(images)))
    return {name: base / name for name in ("pascal_part", "cub200", "ilsvrc_animal_part",
                                           "folder")}


CATEGORY = {"pascal_part": "cow", "cub200": "bird", "ilsvrc_animal_part": "n02084071",
            "folder": "thing"}


def time_load(name: str, root: pathlib.Path, runs: int, cold: bool):
    """(objects, wall seconds per run, CPU seconds per run) of load(name, root, ...) at 224 px."""
    wall, cpu, count = [], [], 0
    for _ in range(runs):
        if cold:
            shutil.rmtree(pathlib.Path(os.environ["XDG_CACHE_HOME"]) / "egjax", ignore_errors=True)
        start, start_cpu = time.perf_counter(), time.process_time()
        count = len(data.load(name, root, CATEGORY[name], quiet=True))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return count, wall, cpu


def memory_run(root: str, n: int, stream: bool) -> None:
    """Streams (batch 32, discarded) or loads the first n birds of a cub200 tree."""
    if stream:
        for _ in data.iter_objects("cub200", root, "bird", limit=n, batch_size=32, quiet=True):
            pass
    else:
        data.load("cub200", root, "bird", limit=n, quiet=True)


def peak_rss_mib(code: str) -> float:
    """Peak RSS (VmHWM) of a fresh Python process running `code`."""
    script = (f"import sys; sys.path.insert(0, {str(pathlib.Path(__file__).parents[1])!r});"
              f"{code};"
              "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]"
              ".split()[1])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def tfds_comparison(root: pathlib.Path, runs: int) -> None:
    """Prepare and read a tfds builder of Pascal-Part cow crops; crop_and_resize's geometry."""
    code = ("import time; t = time.perf_counter(); import tensorflow_datasets; "
            "print(time.perf_counter() - t)")
    seconds = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.split()[-1]) for _ in range(runs)]
    rss = peak_rss_mib("import tensorflow_datasets, tensorflow")
    print(f"import tensorflow_datasets: {statistics.median(seconds):.2f} s (median of {runs}), "
          f"peak RSS {rss:.0f} MiB (egjax.data alone: "
          f"{peak_rss_mib('import egjax.data, PIL.Image, scipy.io, h5py'):.0f} MiB)")
    import tensorflow as tf
    import tensorflow_datasets as tfds

    class PascalPartCows(tfds.core.GeneratorBasedBuilder):
        """Cow crops at 224 px with landmarks, from a Pascal-Part tree in manual_dir."""

        VERSION = tfds.core.Version("0.1.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = "extract VOC 2010 and Pascal-Part into manual_dir"

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(224, 224, 3), dtype=np.uint8),
                "landmarks": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
                "visible": tfds.features.Tensor(shape=(None,), dtype=np.bool_)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(dl_manager.manual_dir)}

        def _generate_examples(self, manual_dir):
            for batch in data.iter_objects("pascal_part", manual_dir, "cow", quiet=True):
                for i, key in enumerate(batch.ids):
                    yield key, {"image": batch.images[i], "landmarks": batch.landmarks[i],
                                "visible": batch.visible[i]}

    prepare, read, count = [], [], 0
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as store:
            builder = PascalPartCows(data_dir=store)
            start = time.perf_counter()
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                manual_dir=str(root)), file_format="array_record")
            prepare.append(time.perf_counter() - start)
            start = time.perf_counter()
            source = builder.as_data_source(split="train")
            count = sum(1 for i in range(len(source)) if source[i]["image"].shape)
            read.append(time.perf_counter() - start)
    print(f"tfds builder, {count} cow crops: prepare {statistics.median(prepare):.2f} s "
          f"(median of {runs}; {count / statistics.median(prepare):.0f} objects/s), then read "
          f"{count / statistics.median(read):.0f} objects/s (array_record data source)")
    rows, cols = np.mgrid[:H, :W]
    ramp = np.stack([rows, cols, 0 * rows], -1).astype(np.float32)[None]
    y0, x0, y1, x1 = 20.0, 30.0, 300.0, 250.0
    box = [[y0 / (H - 1), x0 / (W - 1), (y1 - 1) / (H - 1), (x1 - 1) / (W - 1)]]
    crops = tf.image.crop_and_resize(ramp, box, [0], (224, 224)).numpy()[0]
    u = np.arange(224) + 0.5
    where = np.stack([u * (y1 - y0) / 224 - 0.5 + y0, u * (x1 - x0) / 224 - 0.5 + x0], -1)
    error = np.abs(np.stack([crops[:, 0, 0], crops[0, :, 1]], -1) - where) / np.array(
        [(y1 - y0) / 224, (x1 - x0) / 224])
    print(f"tf.image.crop_and_resize (box in its normalised corner convention) is up to "
          f"{error.max():.2f} crop px off the crop geometry (and does not filter when it "
          "shrinks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=150, help="pictures per tree")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--tfds", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{data.loading.THREADS} decoding threads")
    with tempfile.TemporaryDirectory() as base:
        base = pathlib.Path(base)
        os.environ["XDG_CACHE_HOME"] = str(base / "cache")
        start = time.perf_counter()
        roots = write_trees(base, args.images)
        print(f"wrote the trees ({args.images} pictures each) in "
              f"{time.perf_counter() - start:.0f} s")
        print(f"{'dataset':24s} {'objects':>8s} {'objects/s':>10s} {'[best]':>8s} "
              f"{'objects/CPU-s':>14s}")
        for name, cold in (("pascal_part", True), ("pascal_part", False), ("cub200", False),
                           ("ilsvrc_animal_part", True), ("ilsvrc_animal_part", False),
                           ("folder", False)):
            if not cold:
                time_load(name, roots[name], 1, cold=False)  # fill the cache, warm the disk
            count, wall, cpu = time_load(name, roots[name], args.runs, cold)
            cached = name in ("pascal_part", "ilsvrc_animal_part")
            label = f"{name} ({'cold' if cold else 'warm'})" if cached else name
            print(f"{label:24s} {count:8d} {count / statistics.median(wall):10.0f} "
                  f"{count / min(wall):8.0f} {count / statistics.median(cpu):14.0f}", flush=True)
        if args.memory:
            n = args.images
            data_trees.write_cub(base / "memory", [
                dict(id=i + 1, folder="001.Black_footed_Albatross", box=(40, 30, 300, 250),
                     pixels=data_trees.pattern(H, W, i % 8), train=False, parts={})
                for i in range(4 * n)])
            for what, stream in (("stream", True), ("load", False)):
                peaks = [peak_rss_mib(f"from benchmarks.bench_data import memory_run;"
                                      f"memory_run({str(base / 'memory')!r}, {k}, {stream})")
                         for k in (n, 4 * n)]
                print(f"peak RSS, {what} {n} / {4 * n} objects at 224 px: {peaks[0]:.0f} / "
                      f"{peaks[1]:.0f} MiB", flush=True)
        if args.tfds:
            tfds_comparison(roots["pascal_part"], args.runs)


if __name__ == "__main__":
    main()
