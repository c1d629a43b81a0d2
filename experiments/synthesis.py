"""Pattern-based image synthesis on the embedded set: images reconstructed from one layer's
maps, whole, through the graph's strongest 10% of patterns, and through a random 10%.

    python experiments/synthesis.py                       # 20 quadrupeds, conv4_2
    python experiments/synthesis.py --images 40 --layer conv5_2 --keep 0.2 --name c52

Steps: load the network (default: the committed synthetic quadruped VGG-16) and `--images`
synthetic quadrupeds with their exact object masks (`ObjectSet.masks`) -> maps of the images
and their mirrors, normalised by the statistics of `--negatives` negative images -> fit the
graph's layers from `--layer` up (the paper's VGG-16 layers and settings,
`GraphConfig.vgg16`; a layer's inference depends only on the layers above it) ->
`egjax.synthesis.synthesize` (inversion, Mahendran & Vedaldi 2015) -> the foreground share of
each reconstruction: the fraction of its gradient energy inside the object's mask.

Writes `runs/<name>/synthesis.json` (`foreground_share` means per variant and of the
originals, per-image values, the patterns - random difference with a bootstrap 95% interval,
settings, timings) and `runs/<name>/synthesis.png` (original, from all maps, from the top
patterns, from a random selection; the object's outline on the original) and
`runs/<name>/reconstructions.npz` (uint8 originals and reconstructions, bool masks),
atomically.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_prefer_vector_width=512")

import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import egjax  # noqa: E402
from egjax import cli, data, runs, synthesis  # noqa: E402
from egjax.cli import non_negative_int, positive_int  # noqa: E402
from egjax.features import extract_features, negative_statistics  # noqa: E402
from egjax.models import load  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CATEGORY = "quadruped"
LAYERS = tuple(layer.tap for layer in egjax.GraphConfig.vgg16().layers)
SHOWN = 5  # images in the figure
RESAMPLES = 10000


def keep_fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=positive_int, default=20,
                        help="synthetic quadrupeds to fit the graph on and reconstruct (>= 2)")
    parser.add_argument("--negatives", type=positive_int, default=100,
                        help="negative images for the normalising statistics")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--layer", default="conv4_2", choices=LAYERS,
                        help="the layer whose maps are inverted")
    parser.add_argument("--keep", type=keep_fraction, default=0.1,
                        help="fraction of the layer's nodes kept per image (highest scores)")
    parser.add_argument("--steps", type=positive_int, default=synthesis.Settings().steps,
                        help="Adam steps of the inversion")
    parser.add_argument("--iterations", type=positive_int, default=10,
                        help="EM iterations per graph layer")
    parser.add_argument("--checkpoint", type=pathlib.Path,
                        default=ROOT / "checkpoints" / f"synthetic_{CATEGORY}",
                        help="network checkpoint (default: the committed synthetic quadruped "
                        "VGG-16)")
    cli.add_run_arguments(parser, name="synthesis", runs_folder=ROOT / "runs")
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error("--images must be at least 2 (the graph needs 2 images)")
    if not args.checkpoint.is_dir():
        parser.error(f"no network checkpoint at {args.checkpoint} (see checkpoints/README.md)")
    try:
        args.network = load("vgg16", args.checkpoint)
    except (OSError, ValueError) as error:
        parser.error(f"cannot read the network checkpoint {args.checkpoint}: {error}")
    args.out = cli.run_folder(parser, args)
    return args


def fit(args, objects):
    """The graph's layers from `--layer` up, fitted on the objects; the negatives' sd."""
    model, params, meta = args.network
    cfg = egjax.GraphConfig.vgg16(iterations=args.iterations)
    cfg = egjax.GraphConfig(layers=cfg.layers[LAYERS.index(args.layer):],
                            image_size=cfg.image_size)
    taps = [layer.tap for layer in cfg.layers]
    negatives = data.negatives("synthetic", None, CATEGORY, limit=args.negatives,
                               seed=args.seed, quiet=args.quiet)
    stats = negative_statistics(model, params, meta, negatives.images, taps, quiet=args.quiet)
    sd = {t: s.sd for t, s in stats.items()}
    features = extract_features(model, params, meta, objects.images, taps, sd=sd,
                                quantized=True, quiet=args.quiet)
    graph = egjax.fit_graph([features.maps[t] for t in taps], cfg,
                            key=jax.random.key(args.seed),
                            flipped_maps=[features.flipped[t] for t in taps], quiet=args.quiet)
    return graph, sd


def bootstrap(values: np.ndarray, seed: int) -> list[float]:
    """95% percentile interval of the mean of `values` over images resampled with replacement."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (RESAMPLES, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def stretched(image: np.ndarray) -> np.ndarray:
    """`image` uint8 with its 0.5-99.5 percentile range stretched to 0..1, for display."""
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / max(high - low, 1.0), 0.0, 1.0)


def figure(objects, result, shares: dict, path, title: str) -> None:
    """Rows: the first images; columns: original (object outlined), all, patterns, random
    (each contrast-stretched). Saved as a 256-colour PNG (reconstructions are noisy and
    compress badly)."""
    rows = min(SHOWN, len(objects))
    columns = [("original", objects.images), *[(v, result.images[v]) for v in synthesis.VARIANTS]]
    labels = {"original": "original", "all": "from all maps",
              "patterns": "from the top patterns", "random": "from random cells"}
    fig, axes = plt.subplots(rows, 4, figsize=(6.4, 1.6 * rows + 0.55), dpi=72, squeeze=False)
    for col, (name, images) in enumerate(columns):
        axes[0, col].set_title(f"{labels[name]}\nforeground share {shares[name].mean():.2f}",
                               fontsize=8)
        for row in range(rows):
            ax = axes[row, col]
            ax.imshow(images[row] if name == "original" else stretched(images[row]))
            if name == "original":
                ax.contour(objects.masks[row], levels=[0.5], colors="w", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(256).save(path, optimize=True)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    model, params, meta = args.network
    objects = data.load("synthetic", None, CATEGORY, limit=args.images, seed=args.seed,
                        quiet=args.quiet)
    print(f"egjax synthesis: {len(objects)} synthetic {CATEGORY} images, network "
          f"{args.checkpoint.name}; graph layers {args.layer} and up, {args.iterations} EM "
          f"iterations; inversion of {args.layer}, keep {args.keep:g}, {args.steps} steps")
    graph, sd = fit(args, objects)
    fitted = time.perf_counter()
    settings = synthesis.Settings(steps=args.steps)
    result = synthesis.synthesize(model, params, meta, graph, sd, objects.images,
                                  layer=args.layer, key=jax.random.key(args.seed),
                                  keep=args.keep, settings=settings, quiet=args.quiet)
    inverted = time.perf_counter()
    shares = {"original": synthesis.foreground_share(objects.images, objects.masks)}
    shares.update({v: synthesis.foreground_share(result.images[v], objects.masks)
                   for v in synthesis.VARIANTS})
    difference = shares["patterns"] - shares["random"]
    cells = {v: float(result.masks[v].mean()) for v in synthesis.VARIANTS}
    report = {
        "foreground_share": {v: float(shares[v].mean()) for v in synthesis.VARIANTS},
        "images": len(objects),
        "original_foreground_share": float(shares["original"].mean()),
        "object_area": float(objects.masks.mean()),
        "patterns_minus_random": {"mean": float(difference.mean()),
                                  "bootstrap95": bootstrap(difference, args.seed),
                                  "images_higher": int(np.sum(difference > 0))},
        "per_image": {name: values.tolist() for name, values in shares.items()},
        "cells_kept": cells,
        "final_objective": {v: float(result.losses[v][-1]) for v in synthesis.VARIANTS},
        "settings": {"category": CATEGORY, "layer": args.layer, "keep": args.keep,
                     "nodes_kept": int(result.kept[0].sum()), "nodes": result.kept.shape[1],
                     "seed": args.seed, "negatives": args.negatives,
                     "iterations": args.iterations, "checkpoint": str(args.checkpoint),
                     **settings._asdict()},
        "seconds": {"graph": fitted - started, "inversion": inverted - fitted,
                    "total": time.perf_counter() - started},
    }
    title = (f"{args.layer}: top {args.keep:.0%} of {result.kept.shape[1]} nodes per image "
             f"({cells['patterns']:.0%} of the cells kept); {args.steps} Adam steps\n"
             f"shares: means over {len(objects)} images; reconstructions contrast-stretched")
    with runs.run_directory(args.out, overwrite=args.overwrite) as out:
        runs.write_json(out / "synthesis.json", report)
        figure(objects, result, shares, out / "synthesis.png", title)
        np.savez_compressed(out / "reconstructions.npz", original=objects.images,
                            masks=objects.masks, **result.images)
    low, high = report["patterns_minus_random"]["bootstrap95"]
    print(f"\nforeground share (of the gradient energy; the object covers "
          f"{report['object_area']:.0%} of the pixels): original "
          f"{report['original_foreground_share']:.3f}, "
          + ", ".join(f"{v} {report['foreground_share'][v]:.3f}" for v in synthesis.VARIANTS)
          + f"\npatterns - random: {difference.mean():+.3f} (95% bootstrap interval "
          f"{low:+.3f} .. {high:+.3f}; higher in {int(np.sum(difference > 0))} of "
          f"{len(objects)} images)")
    print(f"\n{report['seconds']['total']:.0f} s; wrote {args.out}/ (synthesis.json, "
          f"synthesis.png, reconstructions.npz)")
    return 0


if __name__ == "__main__":
    cli.end(cli.run(main))
