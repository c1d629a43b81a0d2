"""Explanation continuity with and without a contrastive loss, on the synthetic 4-class task.

    python experiments/continuity.py                    # defaults: ~20 min on 2 CPU cores
    python experiments/continuity.py --steps 50 --name quick

Trains a narrow VGG-16 (GAP head) on negatives + quadruped, bird, vehicle twice, with the
same seed, batches and budget: plain cross-entropy, and cross-entropy plus, from step
`--triplet-start` on, a margin triplet loss on the last conv map relu5_3
(`contrastive.triplet_loss` on the whole map; the
class-region variant `contrastive.cam_masked_triplet_loss` needs the head's kernel, which
`train.fit`'s `extra_loss` does not see). Both runs share the first `--triplet-start` steps:
with the triplet term from step 0 the network never left the cross-entropy's initial
plateau (loss ln 4, chance accuracy; measured at the default budget), while after it the
two terms train together. For each network it measures, on held-out images:

* accuracy with a 95% Wilson interval;
* triplet consistency (cosine distance) at relu4_3 and relu5_3, with Wilson intervals;
* explanation continuity (Montavon et al., 2018, sec. 7.1: max and mean over pairs of
  `||R(x) - R(x')||_1 / ||x - x'||_2`) of gradient, gradient x input, CAM, Grad-CAM (target:
  the true class) and of an explanatory graph fitted on the network's relu5_3 maps of
  `--graph-images` images of `--graph-category` (node scores and node positions of its one
  layer, inferred on each image), over pairs: a `--shift` px translation, Gaussian noise of
  sd `--noise` (network input units), and each image's nearest same-class image.

The graph has one layer, on relu5_3: the map the GAP head pools and CAM and Grad-CAM read,
so every explainer explains the same map; lower graph layers are inferred from it top-down
and would not change its nodes.

Writes `runs/<name>/continuity.json` and `runs/<name>/continuity.png` (atomically) and
prints a table.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import egjax
from egjax import cli, continuity, contrastive, graph_explainer, runs, saliency, train
from egjax.cli import image_size, non_negative_int, positive_float, positive_int
from egjax.data.synthetic import CATEGORIES, mixed_batches, negatives, sample, sample_mixed
from egjax.features import extract_features, negative_statistics
from egjax.models import ModelMeta, preprocess
from egjax.progress import Step

VARIANTS = ("plain", "triplet")
TRIPLET_TAPS = ("relu4_3", "relu5_3")
GRAPH_TAP = "relu5_3"
PAIRS = ("shift", "noise", "neighbour")
EXPLAINERS = ("gradient", "gradient_x_input", "cam", "grad_cam", "graph_nodes",
              "graph_positions")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_run_arguments(parser, name="continuity", runs_folder="runs")
    parser.add_argument("--width", type=positive_float, default=0.25,
                        help="channel multiplier of VGG-16")
    parser.add_argument("--size", type=image_size, default=112, help="image side (px)")
    parser.add_argument("--steps", type=positive_int, default=800, help="training steps")
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--lr", type=positive_float, default=2e-3, help="peak AdamW rate")
    parser.add_argument("--triplet-weight", type=positive_float, default=0.1,
                        help="weight of the triplet loss added to the cross-entropy")
    parser.add_argument("--triplet-start", type=non_negative_int, default=100,
                        help="training step at which the triplet loss joins")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="initialisation key; training batches use seeds seed, seed + 1, ...")
    parser.add_argument("--heldout", type=positive_int, default=400,
                        help="held-out images for accuracy and triplet consistency")
    parser.add_argument("--heldout-seed", type=non_negative_int, default=1_000_000)
    parser.add_argument("--triplets", type=positive_int, default=400,
                        help="triplets per tap for triplet consistency")
    parser.add_argument("--pairs", type=positive_int, default=48,
                        help="held-out images (equally many per class) paired for continuity")
    parser.add_argument("--shift", type=positive_float, default=4.0,
                        help="translation (px, horizontal) of the shifted pairs")
    parser.add_argument("--noise", type=positive_float, default=0.05,
                        help="sd of the Gaussian noise pairs (network input units)")
    parser.add_argument("--graph-category", choices=CATEGORIES, default="quadruped")
    parser.add_argument("--graph-images", type=positive_int, default=40,
                        help="images the explanatory graph is fitted on")
    parser.add_argument("--graph-negatives", type=positive_int, default=40,
                        help="negative images for the maps' normalisation statistics")
    parser.add_argument("--graph-iterations", type=positive_int, default=5,
                        help="EM iterations of the graph")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="images per batch of the measurements")
    args = parser.parse_args(argv)
    if args.triplet_start >= args.steps:
        parser.error(f"--triplet-start must be below --steps ({args.steps}), got "
                     f"{args.triplet_start}")
    used = range(args.seed, args.seed + args.steps)
    if args.heldout_seed in used:
        parser.error(f"--heldout-seed {args.heldout_seed} is a training seed "
                     f"(training uses {used.start}..{used.stop - 1})")
    classes = len(CATEGORIES) + 1
    if args.pairs < 2 * classes or args.pairs % classes:
        parser.error(f"--pairs must be a multiple of the {classes} classes and >= "
                     f"{2 * classes} (each image needs a same-class neighbour), got "
                     f"{args.pairs}")
    if args.graph_images < 2:
        parser.error(f"--graph-images must be >= 2, got {args.graph_images}")
    if args.size % 16:
        parser.error(f"--size must be a multiple of 16 (relu5_3 cells then cover the image "
                     f"exactly), got {args.size}")
    args.out = cli.run_folder(parser, args)
    return args


def triplet_term(weight: float):
    """`extra_loss(outputs, labels)` for `train.fit`: `weight` times the batch-hard triplet
    loss on the whole relu5_3 map."""
    return lambda outputs, labels: weight * contrastive.triplet_loss(outputs["relu5_3"], labels)


def train_network(meta: ModelMeta, args, extra_loss, desc: str):
    """Params, per-step history and seconds of one training run: `--triplet-start` steps of
    cross-entropy, then the rest with `extra_loss` added (None: cross-entropy throughout).
    Every variant starts from the same key and sees the same batches."""
    model = meta.model()
    started = time.perf_counter()
    state = train.create_state(model, jax.random.key(args.seed),
                               train.adamw_cosine(args.lr, args.steps))
    history = []
    phases = ((0, args.triplet_start, None), (args.triplet_start, args.steps, extra_loss))
    for first, stop, extra in phases:
        if stop == first:
            continue
        batches = mixed_batches(tuple(CATEGORIES), args.batch, args.size, args.seed + first)
        state, part = train.fit(state, batches, meta, stop - first, extra_loss=extra,
                                extra_taps=() if extra is None else ("relu5_3",),
                                desc=f"{desc} {first}..{stop - 1}", quiet=args.quiet)
        history += part
    return state.params, history, time.perf_counter() - started


def graph_config(size: int, iterations: int) -> egjax.GraphConfig:
    """One graph layer on relu5_3 of a `size`-px input (stride 16, the paper's conv5 density)."""
    layer = egjax.LayerConfig(map_size=size // 16, stride=16, center=7.5, density=0.1,
                              iterations=iterations, tap=GRAPH_TAP)
    return egjax.GraphConfig(layers=(layer,), image_size=size)


def fit_graph(model, params, meta: ModelMeta, args):
    """The explanatory graph on relu5_3 of `--graph-images` images of `--graph-category`,
    and the sd of the negatives' maps it was normalised with."""
    taps = (GRAPH_TAP,)
    stats = negative_statistics(model, params, meta,
                                negatives(args.graph_negatives, seed=args.seed,
                                          image_size=args.size),
                                taps, batch_size=args.batch_size, quiet=args.quiet)
    sd = {GRAPH_TAP: stats[GRAPH_TAP].sd}
    objects = sample(args.graph_category, args.graph_images, seed=args.seed,
                     image_size=args.size)
    features = extract_features(model, params, meta, objects.images, taps, sd=sd,
                                batch_size=args.batch_size, quiet=args.quiet)
    graph = egjax.fit_graph([features.maps[GRAPH_TAP]],
                            graph_config(args.size, args.graph_iterations),
                            key=jax.random.key(args.seed),
                            flipped_maps=[features.flipped[GRAPH_TAP]])
    return graph, sd


def explainers(model, params, graph, sd, batch_size: int) -> dict:
    """Every explainer as `(images, targets) -> [N, ...]` (the graph ignores the targets)."""
    scores = graph_explainer.node_scores(model, params, graph, sd)
    positions = graph_explainer.node_positions(model, params, graph, sd)
    return {
        "gradient": functools.partial(saliency.gradient, model, params, batch_size=batch_size),
        "gradient_x_input": functools.partial(saliency.gradient_x_input, model, params,
                                              batch_size=batch_size),
        "cam": functools.partial(saliency.cam, model, params, batch_size=batch_size),
        "grad_cam": functools.partial(saliency.grad_cam, model, params, batch_size=batch_size),
        "graph_nodes": lambda images, targets: scores(images),
        "graph_positions": lambda images, targets: positions(images),
    }


def balanced(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` items of every class, class by class."""
    picked = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    if min(len(p) for p in picked) < per_class:
        raise ValueError(f"the held-out set holds fewer than {per_class} images of some class; "
                         f"raise --heldout or lower --pairs")
    return np.concatenate(picked)


def pairs(images: jax.Array, labels: np.ndarray, shift: float, noise: float, key) -> dict:
    """The partner of every image for each kind of nearly equivalent input."""
    return {"shift": continuity.shift_images(images, (0.0, shift)),
            "noise": continuity.add_noise(key, images, noise),
            "neighbour": images[np.asarray(continuity.same_class_neighbours(images, labels))]}


def measure(meta: ModelMeta, params, args, heldout, evaluation) -> dict:
    """Accuracy and triplet consistency of one network on the held-out `(images, labels)`,
    and explanation continuity on the held-out images at indices `evaluation`."""
    model = meta.model()
    images_u8, labels = heldout
    predicted = train.predict(model, params, images_u8, meta, batch_size=args.batch_size,
                              quiet=args.quiet)
    correct = int((predicted == labels).sum())
    low, high = train.wilson_interval(correct, len(labels))
    inputs = preprocess(jnp.asarray(images_u8), meta)
    consistency = continuity.triplet_consistency(
        continuity.tap_embedding(model, params, TRIPLET_TAPS), inputs, labels,
        jax.random.key(args.seed), num_triplets=args.triplets, distance="cosine",
        batch_size=args.batch_size)
    graph, sd = fit_graph(model, params, meta, args)
    images, targets = inputs[evaluation], jnp.asarray(labels[evaluation])
    partners = pairs(images, labels[evaluation], args.shift, args.noise,
                     jax.random.key(args.seed + 1))
    scores = {}
    explain = explainers(model, params, graph, sd, args.batch_size)
    with Step(len(explain) * len(partners), "continuity", "measurements",
              quiet=args.quiet) as bar:
        for name, explainer in explain.items():
            scores[name] = {}
            for kind, partner in partners.items():
                result, _ = continuity.explanation_continuity(
                    explainer, images, partner, targets, batch_size=args.batch_size)
                scores[name][kind] = {"max": float(result.max), "mean": float(result.mean),
                                      "pairs": int(result.count)}
                bar.update(1)
    return {
        "accuracy": {"correct": correct, "images": len(labels),
                     "accuracy": correct / len(labels), "wilson95": [low, high]},
        "triplet_consistency": {
            tap: {"consistency": float(r.consistency), "wilson95": [float(r.low), float(r.high)],
                  "ties": float(r.ties), "triplets": int(r.count)}
            for tap, r in consistency.items()},
        "graph": {"tap": GRAPH_TAP, "category": args.graph_category,
                  "images": args.graph_images, "iterations": args.graph_iterations,
                  "nodes": int(graph.layers[0].score.shape[0])},
        "continuity": scores,
    }


def table(results: dict) -> str:
    """The measurements as a Markdown table (rows: metric, columns: the two networks)."""
    lines = [f"| measurement | {' | '.join(VARIANTS)} |", "|---|" + "---|" * len(VARIANTS)]

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(results[v]) for v in VARIANTS) + " |")

    row("held-out accuracy (95% CI)", lambda r: "{:.1%} ({:.1%}..{:.1%})".format(
        r["accuracy"]["accuracy"], *r["accuracy"]["wilson95"]))
    for tap in TRIPLET_TAPS:
        row(f"triplet consistency {tap} (95% CI)", lambda r, tap=tap: "{:.3f} ({:.3f}..{:.3f})"
            .format(r["triplet_consistency"][tap]["consistency"],
                    *r["triplet_consistency"][tap]["wilson95"]))
    for name in EXPLAINERS:
        for kind in PAIRS:
            row(f"{name}, {kind}: max / mean ratio", lambda r, n=name, k=kind: "{:.4g} / {:.4g}"
                .format(r["continuity"][n][k]["max"], r["continuity"][n][k]["mean"]))
    return "\n".join(lines)


def plot(results: dict, path) -> None:
    """Grouped bars per explainer (mean ratio; a tick at the max), one panel per kind of pair,
    plain vs triplet-trained network; log scale, since explainers differ in units."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PAIRS), figsize=(4.2 * len(PAIRS), 3.6), sharey=False)
    x, width = np.arange(len(EXPLAINERS)), 0.38
    for axis, kind in zip(axes, PAIRS):
        for offset, variant, colour in ((-width / 2, "plain", "tab:blue"),
                                        (width / 2, "triplet", "tab:orange")):
            scores = results[variant]["continuity"]
            mean = [scores[n][kind]["mean"] for n in EXPLAINERS]
            top = [scores[n][kind]["max"] for n in EXPLAINERS]
            label = "cross-entropy" if variant == "plain" else "+ triplet loss"
            axis.bar(x + offset, mean, width, color=colour, label=label)
            axis.scatter(x + offset, top, marker="_", s=120, color="black", zorder=3)
        axis.set_yscale("log")
        axis.set_xticks(x, [n.replace("_", " ") for n in EXPLAINERS], rotation=35, ha="right",
                        fontsize=8)
        axis.set_title(f"pairs: {kind}", fontsize=10)
    axes[0].set_ylabel("||R(x)-R(x')||_1 / ||x-x'||_2\n(bar: mean, tick: max)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    started, load_before = time.perf_counter(), os.getloadavg()
    categories = tuple(CATEGORIES)
    meta = ModelMeta(source="synthetic", width=args.width, head="gap",
                     num_classes=len(categories) + 1, preprocessing="torch",
                     classes=("negative", *categories))
    heldout = sample_mixed(args.heldout, seed=args.heldout_seed, categories=categories,
                           image_size=args.size)
    evaluation = balanced(heldout[1], args.pairs // (len(categories) + 1))
    results, seconds = {}, {}
    for variant in VARIANTS:
        extra = None if variant == "plain" else triplet_term(args.triplet_weight)
        params, history, train_seconds = train_network(meta, args, extra, f"train {variant}")
        measuring = time.perf_counter()
        results[variant] = measure(meta, params, args, heldout, evaluation)
        results[variant]["final_train_loss"] = float(np.mean([h["loss"] for h in history[-20:]]))
        seconds[variant] = {"training": round(train_seconds, 1),
                            "measuring": round(time.perf_counter() - measuring, 1)}
    total = time.perf_counter() - started
    record = {
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "settings": {k: str(v) if isinstance(v, pathlib.Path) else v
                     for k, v in vars(args).items()},
        "classes": list(meta.classes), "results": results,
        "seconds": {**seconds, "total": round(total, 1)},
        "machine": {"cpus": os.cpu_count(), "backend": jax.default_backend(),
                    "load_average_1min": [round(load_before[0], 2),
                                          round(os.getloadavg()[0], 2)]},
    }
    with runs.run_directory(args.out, overwrite=args.overwrite) as out:
        runs.write_json(out / "continuity.json", record)
        plot(results, out / "continuity.png")
    print(table(results))
    print(f"\nexplanation continuity: lower is more continuous; {args.pairs} pairs per kind "
          f"(shift {args.shift:g} px, noise sd {args.noise:g}, same-class nearest neighbour)")
    print(f"total {total / 60:.1f} min; wrote {args.out}/continuity.json, "
          f"continuity.png")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
