"""Explanation continuity with and without a contrastive loss, on the synthetic 4-class task.

    python experiments/continuity.py                    # defaults: about 57 min, see below
    python experiments/continuity.py --seeds 2 --steps 400 --pairs 48 --heldout 200 \
        --triplets 200 --graph-images 20 --graph-negatives 20 --resamples 1000 \
        --min-accuracy 0 --name short                   # tries the pipeline; not evidence

Wall time of the default, measured: 56.7 min on a 2-core CPU (4 seeds trained, one refused;
about 15 min per seed). The record holds every stage's wall and CPU time, so a run states
its own costs.

Trains `--seeds` pairs of narrow VGG-16s (or `--model resnet50`: ResNet-50s; GAP head) on
negatives + quadruped, bird, vehicle. The two networks of a seed share their
initialisation, their batches and a first phase of plain cross-entropy, trained once, that
lasts until the network has left the cross-entropy's initial plateau (loss near ln 4,
chance accuracy): until the mean training accuracy of its last 20 steps reaches
`--triplet-after`. The plateau lasts from under 100 to over 200 steps depending on the seed;
with the triplet term switched on while still on it, a network can stay at chance for good.
From there one network goes on with cross-entropy, the other with cross-entropy plus a
margin triplet loss on the last conv map relu5_3 (`contrastive.triplet_loss` on the whole
map), both to `--steps`. A seed is refused, and the next one trained in its place (at most
2 x `--seeds` in all), if it has not left the plateau by half of `--steps`, or if either
network is below `--min-accuracy` on its held-out images: a network that has not learnt the
task explains nearly constant maps, and comparing it says nothing. Refused seeds and why
are in the record. Seeds differ in initialisation, batches and held-out images. For each
network it measures, on its seed's held-out images:

* accuracy with a 95% Wilson interval;
* triplet consistency (cosine distance) at relu4_3 and relu5_3, with Wilson intervals;
* explanation continuity (Montavon et al., 2018, sec. 7.1): the ratios
  `||R(x) - R(x')||_1 / ||x - x'||_2` over `--pairs` pairs per kind, their mean and max, of
  LRP (the composite and epsilon), sensitivity analysis, gradient, gradient x input, CAM,
  Grad-CAM (target: the true class) and of an explanatory graph fitted on the network's
  relu5_3 maps of `--graph-images` images of `--graph-category` (node scores and node
  positions of its one layer). Kinds of pairs: a `--shift` px translation, Gaussian noise
  of sd `--noise` (network input units), and each image's nearest same-class image.

Every score gets a 95% interval: the pairs are bootstrapped within each network
(`continuity.pair_bootstrap`, the same resampled pairs for both networks of a seed), and
the seeds' spread gives the interval of their mean (`continuity.seed_interval`: Student's
t over seeds, floored by the pair noise), on the log scale since scores are positive and
skewed (the estimate is the geometric mean over seeds; a score with zeros among its
resamples stays on the linear scale, the JSON says which). The comparison is the ratio
triplet / plain of a score, per seed on the same pairs; the table marks with `*` the
ratios whose interval excludes 1.

The graph has one layer, on relu5_3: the map the GAP head pools and CAM and Grad-CAM read,
so every explainer explains the same map. ResNet-50 takes layer3 and layer4 where VGG-16
takes relu4_3 and relu5_3.

Writes `runs/<name>/continuity.json` (settings, every ratio of every network, the
intervals, timings) and `runs/<name>/continuity.png` (atomically) and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
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
from egjax.cli import image_size, non_negative_int, positive_float, positive_int, proportion
from egjax.data.synthetic import CATEGORIES, mixed_batches, negatives, sample, sample_mixed
from egjax.features import extract_features, negative_statistics
from egjax.geometry import layer_config, receptive_field
from egjax.models import ModelMeta, preprocess
from egjax.progress import Step

VARIANTS = ("plain", "triplet")
LABELS = {"plain": "cross-entropy", "triplet": "+ triplet"}
# per architecture, the taps of triplet consistency; the last one is the map the GAP head
# pools: the triplet loss's, the graph's, CAM's and Grad-CAM's
TAPS = {"vgg16": ("relu4_3", "relu5_3"), "resnet50": ("layer3", "layer4")}
PAIRS = ("shift", "noise", "neighbour")
EXPLAINERS = ("lrp_composite", "lrp_epsilon", "sensitivity", "gradient", "gradient_x_input",
              "cam", "grad_cam", "graph_nodes", "graph_positions")
GRADIENT_GROUP = ("sensitivity", "gradient", "gradient_x_input")   # one backward pass


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_run_arguments(parser, name="continuity", runs_folder="runs")
    parser.add_argument("--seeds", type=positive_int, default=3,
                        help="training runs per arm (each arm trains its own network per seed)")
    parser.add_argument("--model", choices=tuple(TAPS), default="vgg16",
                        help="the architecture each arm trains (default vgg16)")
    parser.add_argument("--width", type=positive_float, default=0.25,
                        help="channel multiplier of the network")
    parser.add_argument("--size", type=image_size, default=64, help="image side (px)")
    parser.add_argument("--steps", type=positive_int, default=1600, help="training steps")
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--lr", type=positive_float, default=2e-3, help="peak AdamW rate")
    parser.add_argument("--triplet-weight", type=positive_float, default=0.1,
                        help="weight of the triplet loss added to the cross-entropy")
    parser.add_argument("--triplet-after", type=proportion, default=0.5,
                        help="the arms branch, and the triplet loss joins, once the mean "
                             "training accuracy of the last 20 shared cross-entropy steps "
                             "reaches this (the network has left the initial plateau); a seed "
                             "still below it after half of --steps is refused")
    parser.add_argument("--min-accuracy", type=proportion, default=0.9,
                        help="a seed whose networks do not both reach this held-out accuracy "
                             "is refused and the next seed is trained instead (at most "
                             "2 x --seeds seeds in all)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="first seed: seed k initialises with seed + k * steps and trains "
                             "on batch seeds seed + k * steps, ... (disjoint between seeds)")
    parser.add_argument("--heldout", type=positive_int, default=400,
                        help="held-out images per run for accuracy and triplet consistency")
    parser.add_argument("--heldout-seed", type=non_negative_int, default=1_000_000,
                        help="run k's held-out images are drawn with heldout-seed + k")
    parser.add_argument("--triplets", type=positive_int, default=400,
                        help="triplets per tap for triplet consistency")
    parser.add_argument("--pairs", type=positive_int, default=200,
                        help="held-out images (equally many per class) paired for continuity, "
                             "i.e. pairs per kind")
    parser.add_argument("--shift", type=positive_float, default=4.0,
                        help="translation (px, horizontal) of the shifted pairs")
    parser.add_argument("--noise", type=positive_float, default=0.05,
                        help="sd of the Gaussian noise pairs (network input units)")
    parser.add_argument("--resamples", type=positive_int, default=2000,
                        help="bootstrap resamples of the pairs")
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
    if args.steps < 4:
        parser.error(f"--steps must be >= 4 (the shared phase takes at most half, and each "
                     f"arm at least one step), got {args.steps}")
    used = range(args.seed, args.seed + max_seeds(args) * args.steps)
    clashes = [s for s in range(args.heldout_seed, args.heldout_seed + max_seeds(args))
               if s in used]
    if clashes:
        parser.error(f"--heldout-seed {args.heldout_seed} gives held-out seed {clashes[0]}, a "
                     f"training seed (training uses {used.start}..{used.stop - 1})")
    classes = len(CATEGORIES) + 1
    if args.pairs < 2 * classes or args.pairs % classes:
        parser.error(f"--pairs must be a multiple of the {classes} classes and >= "
                     f"{2 * classes} (each image needs a same-class neighbour), got "
                     f"{args.pairs}")
    if args.resamples < 2:
        parser.error(f"--resamples must be >= 2, got {args.resamples}")
    if args.graph_images < 2:
        parser.error(f"--graph-images must be >= 2, got {args.graph_images}")
    stride = int(receptive_field(ModelMeta("synthetic", arch=args.model, head="gap").model(),
                                 TAPS[args.model][-1]).stride)
    if args.size % stride:
        parser.error(f"--size must be a multiple of {stride} ({TAPS[args.model][-1]} cells "
                     f"then cover the image exactly), got {args.size}")
    args.out = cli.run_folder(parser, args)
    return args


@functools.lru_cache(maxsize=None)
def triplet_term(weight: float, tap: str):
    """`extra_loss(outputs, labels)` for `train.fit`: `weight` times the batch-hard triplet
    loss on the whole map `tap`. One function object per (weight, tap): `train_step` takes it
    as a static argument, so every seed reuses one compiled step."""
    return lambda outputs, labels: weight * contrastive.triplet_loss(outputs[tap], labels)


def max_seeds(args) -> int:
    """Seeds tried at most: twice `--seeds`, each refused one replaced by the next."""
    return 2 * args.seeds


def left_plateau(accuracy: float):
    """`train.fit`'s `until`: the mean training accuracy of the last 20 steps (fewer at the
    start) has reached `accuracy`."""
    return lambda history: np.mean([h["accuracy"] for h in history[-20:]]) >= accuracy


def refusal(args, shared_steps: int, accuracy: dict) -> str | None:
    """Why a seed's two networks cannot be compared, or None: the shared phase never left
    the plateau (no `accuracy`), or a network is below `--min-accuracy` on held-out images."""
    if not accuracy:
        return (f"still on the initial plateau after {shared_steps} shared steps (mean "
                f"training accuracy of the last 20 below --triplet-after {args.triplet_after:g})")
    low = [LABELS[v] for v in VARIANTS if accuracy[v]["accuracy"] < args.min_accuracy]
    if low:
        return (" and ".join(low) + " below the held-out accuracy floor --min-accuracy "
                f"{args.min_accuracy:g} (" + ", ".join(
                    f"{LABELS[v]} {accuracy[v]['accuracy']:.1%}" for v in VARIANTS) + ")")
    return None


def train_pair(meta: ModelMeta, args, seed: int) -> tuple[int, dict]:
    """`(shared steps, {variant: (params, history, seconds)})` for one seed: cross-entropy
    trained once until the network has left the initial plateau (`--triplet-after`, at most
    half of `--steps`), then each variant's remaining steps from there (the triplet variant
    with the triplet loss added); same key, batches and schedule. The dict is empty if the
    network was still on the plateau. `seconds` is `timed`'s record of the variant's steps
    plus half the shared ones."""
    model = meta.model()
    shared_seconds = {}
    with timed(shared_seconds, "training"):
        state = train.create_state(model, jax.random.key(seed),
                                   train.adamw_cosine(args.lr, args.steps))
        batches = mixed_batches(tuple(CATEGORIES), args.batch, args.size, seed)
        left = []   # asked after each step; the step running then still adds to the history

        def until(history):
            if left_plateau(args.triplet_after)(history):
                left.append(len(history))
            return bool(left)

        state, shared = train.fit(state, batches, meta, args.steps // 2, until=until,
                                  desc=f"seed {seed} shared", quiet=args.quiet)
    start = len(shared)
    if not left:
        return start, {}
    out = {}
    for variant in VARIANTS:
        seconds = {"training": {k: v / 2 for k, v in shared_seconds["training"].items()}}
        with timed(seconds, "training"):
            tap = TAPS[meta.arch][-1]
            extra = None if variant == "plain" else triplet_term(args.triplet_weight, tap)
            batches = mixed_batches(tuple(CATEGORIES), args.batch, args.size, seed + start)
            branch = jax.tree.map(jnp.copy, state)        # train.fit donates its state
            final, part = train.fit(branch, batches, meta, args.steps - start,
                                    extra_loss=extra,
                                    extra_taps=() if extra is None else (tap,),
                                    desc=f"seed {seed} {variant} {start}..{args.steps - 1}",
                                    quiet=args.quiet)
        out[variant] = (final.params, shared + part, seconds)
    return start, out


def graph_config(model, tap: str, size: int, iterations: int) -> egjax.GraphConfig:
    """One graph layer on `tap` of a `size`-px input (the paper's conv5 density; geometry
    derived from `model`)."""
    layer = layer_config(model, tap, size, density=0.1, iterations=iterations)
    return egjax.GraphConfig(layers=(layer,), image_size=size)


def fit_graph(model, params, meta: ModelMeta, args, seed: int):
    """The explanatory graph on the pooled map of `--graph-images` images of
    `--graph-category`, and the sd of the negatives' maps it was normalised with."""
    tap = TAPS[meta.arch][-1]
    taps = (tap,)
    stats = negative_statistics(model, params, meta,
                                negatives(args.graph_negatives, seed=seed,
                                          image_size=args.size),
                                taps, batch_size=args.batch_size, quiet=args.quiet)
    sd = {tap: stats[tap].sd}
    objects = sample(args.graph_category, args.graph_images, seed=seed, image_size=args.size)
    features = extract_features(model, params, meta, objects.images, taps, sd=sd,
                                batch_size=args.batch_size, quiet=args.quiet)
    graph = egjax.fit_graph([features.maps[tap]],
                            graph_config(model, tap, args.size, args.graph_iterations),
                            key=jax.random.key(seed), flipped_maps=[features.flipped[tap]])
    return graph, sd


def pixel_bounds(meta: ModelMeta) -> tuple[jax.Array, jax.Array]:
    """The network inputs of black and of white pixels: LRP's z^B bounds, per channel."""
    extremes = preprocess(np.array([0, 255], np.uint8).repeat(3).reshape(2, 1, 1, 3), meta)
    return extremes[0, 0, 0], extremes[1, 0, 0]


def explainers(model, params, graph, sd, meta: ModelMeta) -> dict:
    """Every explainer, grouped by shared work: `{names: (images, targets) -> [N, len(names),
    ...]}` (the graph ignores the targets); gradient, gradient x input and sensitivity come
    from one backward pass (`saliency.gradient_methods`). The saliency methods vmap over
    the whole batch they get (`batch_size=None`): `continuity.explain_all` already hands
    them `--batch-size` images at a time, and on a CPU their chunked path (`lax.map`) costs
    3-4x the CPU time of one vmap (32 images at 112 px: gradient maps 3.2 vs 0.84 CPU-s,
    LRP composite 3.6 vs 1.2)."""
    scores = graph_explainer.node_scores(model, params, graph, sd)
    positions = graph_explainer.node_positions(model, params, graph, sd)

    def method(function, **kwargs):
        single = functools.partial(function, model, params, batch_size=None, **kwargs)
        return lambda images, targets: single(images, targets)[:, None]

    def gradients(images, targets):
        maps = saliency.gradient_methods(model, params, images, targets, batch_size=None)
        return jnp.stack([maps[name] for name in GRADIENT_GROUP], axis=1)

    tap = TAPS[meta.arch][-1]

    return {
        ("lrp_composite",): method(saliency.lrp, bounds=pixel_bounds(meta)),
        ("lrp_epsilon",): method(saliency.lrp, rule="epsilon"),
        GRADIENT_GROUP: gradients,
        ("cam",): method(saliency.cam, tap=tap),
        ("grad_cam",): method(saliency.grad_cam, tap=tap),
        ("graph_nodes",): lambda images, targets: scores(images)[:, None],
        ("graph_positions",): lambda images, targets: positions(images)[:, None],
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


@contextlib.contextmanager
def timed(seconds: dict, stage: str):
    """Adds the block's wall time and the process's CPU time (all threads) to
    `seconds[stage] = {"wall": ..., "cpu": ...}`: on a shared machine the wall time grows
    with the other jobs' load, the CPU time much less."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    before = seconds.get(stage, {"wall": 0.0, "cpu": 0.0})
    seconds[stage] = {"wall": round(before["wall"] + time.perf_counter() - wall, 2),
                      "cpu": round(before["cpu"] + time.process_time() - cpu, 2)}


def held_out_accuracy(meta: ModelMeta, params, args, heldout, seconds: dict) -> dict:
    """Accuracy of one network on the held-out `(images, labels)`, with its 95% Wilson
    interval; the wall time is added to `seconds`."""
    images_u8, labels = heldout
    with timed(seconds, "accuracy"):
        predicted = train.predict(meta.model(), params, images_u8, meta,
                                  batch_size=args.batch_size, quiet=args.quiet)
    correct = int((predicted == labels).sum())
    low, high = train.wilson_interval(correct, len(labels))
    return {"correct": correct, "images": len(labels), "accuracy": correct / len(labels),
            "wilson95": [low, high]}


def measure(meta: ModelMeta, params, args, heldout, seed: int, seconds: dict) -> dict:
    """Triplet consistency of one network on the held-out `(images, labels)`, and every
    explainer's continuity ratios on `--pairs` of them per kind of pair; the wall time of
    each stage is added to `seconds`."""
    model = meta.model()
    images_u8, labels = heldout
    inputs = preprocess(jnp.asarray(images_u8), meta)
    with timed(seconds, "triplet_consistency"):
        consistency = continuity.triplet_consistency(
            continuity.tap_embedding(model, params, TAPS[meta.arch]), inputs, labels,
            jax.random.key(seed), num_triplets=args.triplets, distance="cosine",
            batch_size=args.batch_size)
    with timed(seconds, "graph_fit"):
        graph, sd = jax.block_until_ready(fit_graph(model, params, meta, args, seed))
    evaluation = balanced(labels, args.pairs // (len(CATEGORIES) + 1))
    images, targets = inputs[evaluation], jnp.asarray(labels[evaluation])
    partners = pairs(images, labels[evaluation], args.shift, args.noise,
                     jax.random.key(seed + 1))
    ratios = {name: {} for name in EXPLAINERS}
    explain = explainers(model, params, graph, sd, meta)
    with Step(len(explain) * (1 + len(partners)), "continuity", "explanation sets",
              quiet=args.quiet) as bar:
        for names, explainer in explain.items():
            with timed(seconds, "+".join(names)):
                originals = continuity.explain_all(explainer, images, targets,
                                                   batch_size=args.batch_size)
                bar.update(1)
                for kind, partner in partners.items():
                    moved = continuity.explain_all(explainer, partner, targets,
                                                   batch_size=args.batch_size)
                    for i, name in enumerate(names):
                        ratios[name][kind] = np.asarray(continuity.continuity_ratios(
                            originals[:, i], moved[:, i], images, partner)).tolist()
                    bar.update(1)
    return {
        "triplet_consistency": {
            tap: {"consistency": float(r.consistency), "wilson95": [float(r.low), float(r.high)],
                  "ties": float(r.ties), "triplets": int(r.count)}
            for tap, r in consistency.items()},
        "graph": {"tap": TAPS[meta.arch][-1], "category": args.graph_category,
                  "images": args.graph_images, "iterations": args.graph_iterations,
                  "nodes": int(graph.layers[0].score.shape[0])},
        "ratios": ratios,
    }


def summarise(runs_by_variant: dict, key: jax.Array, resamples: int) -> dict:
    """Every explainer x kind x statistic: each variant's score over seeds and the ratio
    triplet / plain, each `{"estimate", "low", "high"}` (95%), and the per-seed scores."""
    summary = {}
    for name in EXPLAINERS:
        for kind in PAIRS:
            ratios = np.array([[run["ratios"][name][kind] for run in runs_by_variant[v]]
                               for v in VARIANTS])                       # [2, K, P]
            key, subkey = jax.random.split(key)
            for statistic in continuity.STATISTICS:
                reduce = np.mean if statistic == "mean" else np.max
                scores = reduce(ratios, axis=-1)                         # [2, K]
                boot = np.asarray(continuity.pair_bootstrap(
                    subkey, jnp.asarray(ratios), statistic=statistic,
                    resamples=resamples), np.float64)                    # [B, 2, K]
                cell = {"per_seed": {v: scores[i].tolist() for i, v in enumerate(VARIANTS)}}
                for i, variant in enumerate(VARIANTS):
                    cell[variant] = log_interval(scores[i], boot[:, i])
                with np.errstate(divide="ignore", invalid="ignore"):
                    cell["ratio"] = log_interval(scores[1] / scores[0], boot[:, 1] / boot[:, 0])
                summary.setdefault(name, {}).setdefault(kind, {})[statistic] = cell
    return summary


def log_interval(scores: np.ndarray, boot: np.ndarray) -> dict:
    """`continuity.seed_interval` of per-seed `scores [K]` (bootstrap `[B, K]`) on the log
    scale, mapped back: the estimate is their geometric mean and the interval stays
    positive. Where a score or a resampled score is 0, on the linear scale (arithmetic
    mean); with a non-finite score (a ratio to a zero score), all None."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs, log_boot = np.log(scores), np.log(boot)
    if np.all(np.isfinite(logs)) and np.all(np.isfinite(log_boot)):
        interval = continuity.seed_interval(logs, log_boot.std(axis=0))
        return {**{field: float(np.exp(value)) for field, value in interval._asdict().items()},
                "scale": "log"}
    if np.all(np.isfinite(scores)) and np.all(np.isfinite(boot)):
        interval = continuity.seed_interval(scores, boot.std(axis=0))
        return {**{field: float(value) for field, value in interval._asdict().items()},
                "scale": "linear"}
    return {"estimate": None, "low": None, "high": None, "scale": None}


def _cell(c: dict) -> str:
    if c["estimate"] is None:
        return "n/a"
    return f"{c['estimate']:.3g} ({c['low']:.3g}..{c['high']:.3g})"


def outside(c: dict) -> bool:
    """Whether a ratio's interval excludes 1 (a difference outside its interval)."""
    return c["estimate"] is not None and (c["low"] > 1 or c["high"] < 1)


def tables(record: dict) -> str:
    """The measurements as Markdown tables: accuracy and triplet consistency per variant
    (mean over seeds, range), then continuity (mean and max ratio) with intervals."""
    results, summary = record["results"], record["summary"]
    lines = [f"| measurement (mean over {record['settings']['seeds']} seeds, min..max) | "
             + " | ".join(LABELS[v] for v in VARIANTS) + " |", "|---|---|---|"]

    def spread(values, fmt):
        return f"{fmt.format(np.mean(values))} ({fmt.format(min(values))}.." \
               f"{fmt.format(max(values))})"

    lines.append("| held-out accuracy | " + " | ".join(
        spread([r["accuracy"]["accuracy"] for r in results[v]], "{:.1%}") for v in VARIANTS)
        + " |")
    for tap in TAPS[record["settings"]["model"]]:
        lines.append(f"| triplet consistency {tap} | " + " | ".join(
            spread([r["triplet_consistency"][tap]["consistency"] for r in results[v]],
                   "{:.3f}") for v in VARIANTS) + " |")
    for statistic in continuity.STATISTICS:
        lines += ["", f"Continuity, {statistic} ratio ||R(x)-R(x')||_1 / ||x-x'||_2 (lower is "
                  "more continuous), 95% intervals; `*`: the triplet / plain ratio's interval "
                  "excludes 1", "",
                  f"| explainer | pairs | {LABELS['plain']} | {LABELS['triplet']} | "
                  "triplet / plain |", "|---|---|---|---|---|"]
        for name in EXPLAINERS:
            for kind in PAIRS:
                c = summary[name][kind][statistic]
                mark = " *" if outside(c["ratio"]) else ""
                lines.append(f"| {name} | {kind} | {_cell(c['plain'])} | {_cell(c['triplet'])} "
                             f"| {_cell(c['ratio'])}{mark} |")
    return "\n".join(lines)


def plot(summary: dict, path) -> None:
    """Per kind of pair, each explainer's triplet / plain ratio of the mean continuity ratio
    with its 95% interval (log scale; left of 1: the triplet network is more continuous)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(1, len(PAIRS), figsize=(4.2 * len(PAIRS), 3.8), sharey=True)
    y = np.arange(len(EXPLAINERS))
    for axis, kind in zip(axes, PAIRS):
        cells = [summary[n][kind]["mean"]["ratio"] for n in EXPLAINERS]
        for row, c in zip(y, cells):
            if c["estimate"] is None:
                continue
            colour = "tab:red" if outside(c) else "tab:gray"
            axis.errorbar(c["estimate"], row, xerr=[[c["estimate"] - c["low"]],
                                                    [c["high"] - c["estimate"]]],
                          fmt="o", color=colour, capsize=3)
        axis.axvline(1.0, color="black", lw=0.8)
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_yticks(y, [n.replace("_", " ") for n in EXPLAINERS], fontsize=8)
        axis.set_title(f"pairs: {kind}", fontsize=10)
        axis.set_xlabel("mean ratio, triplet / plain (95% CI)", fontsize=8)
    axes[0].invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    started, cpu_started, loads = time.perf_counter(), time.process_time(), [os.getloadavg()[0]]
    categories = tuple(CATEGORIES)
    meta = ModelMeta(source="synthetic", arch=args.model, width=args.width, head="gap",
                     num_classes=len(categories) + 1, preprocessing="torch",
                     classes=("negative", *categories))
    results, seconds, refused = {v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}, []
    for k in range(max_seeds(args)):
        if len(results["plain"]) == args.seeds:
            break
        seed = args.seed + k * args.steps
        heldout = sample_mixed(args.heldout, seed=args.heldout_seed + k, categories=categories,
                               image_size=args.size)
        start, trained = train_pair(meta, args, seed)
        accuracy = {variant: held_out_accuracy(meta, params, args, heldout, stages)
                    for variant, (params, _, stages) in trained.items()}
        reason = refusal(args, start, accuracy)
        if reason:
            refused.append({"seed": seed, "shared_steps": start, "accuracy": accuracy,
                            "reason": reason})
            loads.append(os.getloadavg()[0])
            print(f"seed {seed} refused: {reason}", file=sys.stderr, flush=True)
            continue
        for variant, (params, history, stages) in trained.items():
            with timed(stages, "measuring"):
                result = measure(meta, params, args, heldout, seed, stages)
            result = {"seed": seed, "shared_steps": start, "accuracy": accuracy[variant],
                      **result,
                      "final_train_loss": float(np.mean([h["loss"] for h in history[-20:]]))}
            results[variant].append(result)
            seconds[variant].append(stages)
            loads.append(os.getloadavg()[0])
            if not args.quiet:
                print(f"seed {seed} {variant}: accuracy {result['accuracy']['accuracy']:.1%}; "
                      f"seconds {stages}", flush=True)
    complete = len(results["plain"]) == args.seeds
    summarising = {}
    if complete:
        with timed(summarising, "summary"):
            summary = summarise(results, jax.random.key(args.seed), args.resamples)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    record = {
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "settings": {k: str(v) if isinstance(v, pathlib.Path) else v
                     for k, v in vars(args).items()},
        "classes": list(meta.classes), "results": results, "refused": refused,
        "summary": summary if complete else None,
        "seconds": {**seconds, **summarising,
                    "total": {"wall": round(total, 1), "cpu": round(cpu, 1)}},
        "machine": {"cpus": os.cpu_count(), "backend": jax.default_backend(),
                    "load_average_1min": {"at start and after each network":
                                          [round(load, 2) for load in loads],
                                          "at the end": round(os.getloadavg()[0], 2)}},
    }
    with runs.run_directory(args.out, overwrite=args.overwrite) as out:
        runs.write_json(out / "continuity.json", record)
        if complete:
            plot(summary, out / "continuity.png")
    usage = (f"total {total / 60:.1f} min wall, {cpu / 60:.1f} min CPU (all threads); 1-min "
             f"load average {min(loads):.1f}..{max(loads):.1f}")
    if not complete:
        print(f"error: only {len(results['plain'])} of {len(refused) + len(results['plain'])} "
              f"seeds passed (--seeds {args.seeds} needed); the refused seeds and their reasons "
              f"are in {args.out}/continuity.json; no comparison made. {usage}",
              file=sys.stderr)
        return 1
    print(tables(record))
    print(f"\n{args.seeds} seeds per arm ({len(refused)} refused and replaced); {args.pairs} "
          f"pairs per kind (shift {args.shift:g} px, noise sd {args.noise:g}, same-class "
          f"nearest neighbour); {args.resamples} bootstrap resamples")
    print(f"{usage}; wrote {args.out}/continuity.json, continuity.png")
    return 0

if __name__ == "__main__":
    cli.end(cli.run(main))
