"""Multi-shot part localisation: find a part from a few annotated objects, with the graph and
against baselines (Zhang et al., AAAI 2018; DATA.md, "Multi-shot part localisation").

    python experiments/part_localization.py                   # synthetic quadruped, every part
    python experiments/part_localization.py --part head --repeats 20 --name head20
    python experiments/part_localization.py --graph runs/quadruped/graph   # reuse a graph
    python experiments/part_localization.py --dataset pascal_part --data-dir ~/data/pascal \
        --category cow --checkpoint runs/finetune_cow/network    # head, 3 shots (the authors')
    python experiments/part_localization.py --dataset cub200 --data-dir ~/data/cub \
        --negatives-dir ~/data/no_birds --checkpoint runs/finetune_bird/network

Fits an explanatory graph on `--images` training objects of the category (or loads
`--graph`), then draws `--repeats` random sets of `--shots` annotated training objects per
part and localises the part in the held-out objects with four methods on the same shots:

* graph:   `egjax.localize` with graph nodes (each selected node votes at its position plus
           its mean offset to the part; the argmax of the summed votes);
* filters: the same voting with each raw filter's argmax cell in place of nodes;
* nearest: the part centre of the most similar shot (or of its mirror), by the cosine of the
           network's pooled top-layer features (fc7 with the fc head, the GAP vector with
           the GAP head of the synthetic networks);
* prior:   the mean part centre of the shots, no image at all.

The graph and filters share the voting settings (`--nodes`, `--layers`, `--min-score`,
`--sigma`) and each image's orientation (the graph's). Prints a table of the normalised
distance (lower is better; mean over the repeats and its 95% t-interval) and writes
`runs/<name>/`: `localization.json`, `localization.png` (true and predicted centres on
example held-out images), `parts/<part>/` (the graph's part model of the first repeat,
`egjax.localize.PartModel.load`) and `graph/` (when fitted here). `--split validation`
measures on validation objects instead of the test objects: the defaults were chosen that
way, never on test objects.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import time
from typing import NamedTuple

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_prefer_vector_width=512")

import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

import egjax  # noqa: E402
from egjax import cli, data, localize, runs  # noqa: E402
from egjax.cli import non_negative_int, positive_float, positive_int  # noqa: E402
from egjax.data import synthetic  # noqa: E402
from egjax.features import extract_features, negative_statistics  # noqa: E402
from egjax.models import load_checkpoint  # noqa: E402
from egjax.progress import Step  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATASETS = ("synthetic", "pascal_part", "cub200")
TEST_SPLIT = {"pascal_part": "val", "cub200": "test"}     # the datasets' own held-out splits
DEFAULT_PARTS = {"pascal_part": ["head"]}        # the authors' setting; others: every part
SPLITS = ("test", "validation")
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}   # synthetic: seed offset per split
METHODS = ("graph", "filters", "nearest", "prior")
COLOURS = {"graph": "#377eb8", "filters": "#ff7f00", "nearest": "#4daf4a", "prior": "#984ea3"}


class Objects(NamedTuple):
    """Object crops with one landmark per part: `images` uint8 [N, S, S, 3], `landmarks`
    [N, P, 2] (h, w) px, `visible` bool [N, P], `parts` the P names."""

    images: np.ndarray
    landmarks: np.ndarray
    visible: np.ndarray
    parts: tuple[str, ...]


def load_data(args, *, image_size: int):
    """The one place that reads data: (`args.images` training objects of the category: the
    graph's objects and the shots; `args.test_images` held-out objects of `args.split`;
    uint8 `args.negatives` images without the object). Synthetic splits are disjoint draws,
    seeds `seed` + 0 (train), 1 (validation), 2 (test). pascal_part and cub200: training
    objects from the train split, test objects from the dataset's own held-out split (VOC
    val, CUB test), validation objects from the train split after the training ones."""
    if args.dataset == "synthetic":
        def objects(split: str, count: int) -> Objects:
            batch = synthetic.sample(args.category, count, seed=args.seed + SPLIT_SEEDS[split],
                                     image_size=image_size)
            return Objects(batch.images, batch.landmarks, batch.visible,
                           synthetic.PARTS[args.category])

        return (objects("train", args.images), objects(args.split, args.test_images),
                synthetic.negatives(args.negatives, seed=args.seed, image_size=image_size))

    def load(split: str, count: int) -> Objects:
        found = data.load(args.dataset, args.data_dir, args.category, split=split,
                          image_size=image_size, limit=count, strict=args.strict,
                          quiet=args.quiet)
        return Objects(found.images, found.landmarks, found.visible, found.part_names)

    if args.split == "test":
        train, held_out = load("train", args.images), load(TEST_SPLIT[args.dataset],
                                                           args.test_images)
    else:
        pool = load("train", args.images + args.test_images)
        train, held_out = (Objects(*(f[:args.images] for f in pool[:3]), pool.parts),
                           Objects(*(f[args.images:] for f in pool[:3]), pool.parts))
        if not len(held_out.images):
            raise ValueError(f"{args.dataset}: only {len(pool.images)} training objects of "
                             f"{args.category!r}, none left for validation after --images "
                             f"{args.images}")
    negatives = data.negatives(args.dataset, args.data_dir, args.category,
                               image_size=image_size, limit=args.negatives,
                               negatives_dir=args.negatives_dir, strict=args.strict,
                               quiet=args.quiet, seed=args.seed)
    return train, held_out, negatives.images


def default_checkpoint(category: str) -> pathlib.Path:
    own = ROOT / "checkpoints" / f"synthetic_{category}"
    return own if own.is_dir() else ROOT / "checkpoints" / "synthetic_all"


def parse(argv) -> argparse.Namespace:
    """Every flag, checked before any work starts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_data_arguments(parser, DATASETS)
    parser.add_argument("--part", nargs="+", default=None,
                        help="parts to localise (default: every part; head on pascal_part)")
    parser.add_argument("--shots", type=positive_int, default=3,
                        help="annotated training objects per shot set")
    parser.add_argument("--repeats", type=positive_int, default=10,
                        help="random shot sets per part")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--checkpoint", type=pathlib.Path, default=None,
                        help="network checkpoint (default: checkpoints/synthetic_<category>, "
                        "else checkpoints/synthetic_all)")
    parser.add_argument("--graph", type=pathlib.Path, default=None,
                        help="reuse this fitted graph (from the same network, negatives and "
                        "seed, e.g. runs/quadruped/graph of vgg16_voc.py) instead of fitting")
    parser.add_argument("--images", type=positive_int, default=100,
                        help="training objects: the graph is fitted on them, shots come "
                        "from them")
    parser.add_argument("--test-images", type=positive_int, default=100,
                        help="held-out objects the parts are localised in")
    parser.add_argument("--split", default="test", choices=SPLITS,
                        help="held-out objects: the test objects, or validation objects "
                        "(for choosing settings)")
    parser.add_argument("--negatives", type=positive_int, default=200,
                        help="images without the object, for the maps' normalisation")
    parser.add_argument("--iterations", type=positive_int, default=20,
                        help="EM iterations per graph layer")
    parser.add_argument("--nodes", type=positive_int, default=localize.NODES,
                        help="voting patterns per part (graph nodes; filters for the "
                        "baseline)")
    parser.add_argument("--layers", nargs="+", default=None,
                        help="graph layers (taps) the patterns come from (default: all)")
    parser.add_argument("--min-score", type=float, default=localize.MIN_SCORE,
                        help="a pattern fires on a shot where its score is at least this")
    parser.add_argument("--sigma", type=positive_float, default=None,
                        help="the votes' Gaussian, px (default: 70 px at 224, scaled)")
    cli.add_run_arguments(parser, name=None, runs_folder=ROOT / "runs")
    args = parser.parse_args(argv)
    args.category = cli.data_category(parser, args)
    if args.dataset == "synthetic" and args.category not in synthetic.CATEGORIES:
        parser.error(f"--category must be one of {synthetic.CATEGORIES}, got {args.category!r}")
    args.part = args.part or DEFAULT_PARTS.get(args.dataset)          # None: every part
    if args.part and len(set(args.part)) != len(args.part):
        parser.error(f"--part names must be distinct, got {args.part}")
    if args.dataset == "synthetic" and args.part:
        known = synthetic.PARTS[args.category]
        unknown = [p for p in args.part if p not in known]
        if unknown:
            parser.error(f"--part {unknown} unknown; {args.category} parts: {', '.join(known)}")
    if args.images < max(2, args.shots):
        parser.error(f"--images must be at least 2 and --shots ({args.shots}), got "
                     f"{args.images}")
    if args.negatives < 2:
        parser.error("--negatives must be at least 2")
    if not math.isfinite(args.min_score):
        parser.error(f"--min-score must be finite, got {args.min_score}")
    args.checkpoint = args.checkpoint or default_checkpoint(args.category)
    try:
        args.network = load_checkpoint(args.checkpoint)
    except (OSError, ValueError) as error:
        parser.error(f"cannot read the network checkpoint {args.checkpoint}: {error}")
    if args.graph is not None:
        try:
            args.loaded_graph = egjax.ExplanatoryGraph.load(args.graph)
        except (OSError, ValueError) as error:
            parser.error(f"cannot read the graph {args.graph}: {error}")
        config = args.loaded_graph.config
    else:
        args.loaded_graph = None
        config = egjax.GraphConfig.vgg16(iterations=args.iterations)
    taps = [layer.tap for layer in config.layers]
    channels = {layer.name: layer.features for layer in args.network[0].layers}
    if args.loaded_graph is not None and [channels.get(t) for t in taps] != [
            np.shape(fit.deform)[0] for fit in args.loaded_graph.layers]:
        parser.error(f"the graph {args.graph} was not fitted on this network's maps "
                     f"({args.checkpoint}): its layers {taps} have "
                     f"{[np.shape(f.deform)[0] for f in args.loaded_graph.layers]} filters")
    if args.layers is not None:
        unknown = [t for t in args.layers if t not in taps]
        if unknown or len(set(args.layers)) != len(args.layers):
            parser.error(f"--layers must be distinct graph taps from {taps}, got {args.layers}")
        args.layer_indices = [taps.index(t) for t in args.layers]
    else:
        args.layer_indices = None
    args.name = args.name or f"localize_{args.category}"
    args.out = cli.run_folder(parser, args)
    args.parser = parser
    return args


class Prepared(NamedTuple):
    """What the methods read, for the training (shot) objects and the held-out ones."""

    graph: tuple[list, list]          # localize.Patterns per layer (nodes): train, held out
    filters: tuple[list, list]        # the same, raw filters
    pooled: tuple[np.ndarray, np.ndarray, np.ndarray]   # train, train mirrored, held out


def pooled_tap(model) -> str:
    """The network's pooled top-layer features: fc7 with the fc head, else the GAP vector."""
    return "fc7" if model.head == "fc" else "gap"


def prepare(args, train: Objects, held_out: Objects, negatives: np.ndarray):
    """The graph (fitted on `train` or loaded) and every method's inputs."""
    model, params, meta = args.network
    graph = args.loaded_graph
    config = graph.config if graph is not None else egjax.GraphConfig.vgg16(
        iterations=args.iterations)
    taps = [layer.tap for layer in config.layers]
    sd = {t: s.sd for t, s in negative_statistics(model, params, meta, negatives, taps,
                                                  quiet=args.quiet).items()}
    maps = []
    for objects in (train, held_out):
        found = extract_features(model, params, meta, objects.images, taps, sd=sd,
                                 quantized=True, quiet=args.quiet)
        maps.append(([found.maps[t] for t in taps], [found.flipped[t] for t in taps]))
    fit_seconds = 0.0
    if graph is None:
        started = time.perf_counter()
        graph = egjax.fit_graph(maps[0][0], config, key=jax.random.key(args.seed),
                                flipped_maps=maps[0][1], quiet=args.quiet)
        fit_seconds = time.perf_counter() - started
    nodes, filters = [], []
    for plain, mirrored in maps:
        inference = egjax.infer_graph(graph, plain, mirrored)
        nodes.append(localize.node_patterns(graph, inference))
        filters.append(localize.filter_patterns(config, plain, mirrored, inference[-1].flip))
    tap = pooled_tap(model)
    shots = extract_features(model, params, meta, train.images, [tap], quiet=args.quiet)
    tests = extract_features(model, params, meta, held_out.images, [tap], flip=False,
                             quiet=args.quiet)
    pooled = (shots.maps[tap], shots.flipped[tap], tests.maps[tap])
    return graph, Prepared(tuple(nodes), tuple(filters), pooled), fit_seconds


def shots_of(patterns, shots) -> list:
    return [localize.Patterns(p.score[:, shots], p.px[:, shots], p.flip[shots])
            for p in patterns]


def localize_part(args, data: Prepared, train: Objects, held_out: Objects, part: int,
                  shots: np.ndarray, size: int) -> tuple[dict, localize.PartModel]:
    """Each method's predictions `[N, 2]` for part `part` from `shots`, and the graph's
    part model."""
    landmarks, visible = train.landmarks[shots, part], train.visible[shots, part]
    settings = dict(nodes=args.nodes, layers=args.layer_indices, min_score=args.min_score,
                    sigma=args.sigma)
    predicted, models = {}, {}
    for method in ("graph", "filters"):
        shot_patterns, test_patterns = getattr(data, method)
        models[method] = localize.fit_patterns(shots_of(shot_patterns, shots), landmarks,
                                               visible, size, **settings)
        predicted[method] = localize.predict_patterns(models[method], test_patterns)
    plain, mirrored, tests = data.pooled
    predicted["nearest"] = localize.nearest(plain[shots], mirrored[shots], landmarks, visible,
                                            tests, size)
    predicted["prior"] = localize.prior(landmarks, visible, len(held_out.images))
    return predicted, models["graph"]


def interval(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the mean over repeats (None bounds for one repeat).

    The table compares means over shot sets, so the interval is the mean's (Student t, n - 1
    degrees of freedom), not the spread of single shot sets (percentiles of 10 repeats would
    be their minimum and maximum). It covers the choice of shots only: the graph and the
    held-out objects are the same in every repeat."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return mean, float(mean - half), float(mean + half)


def summary(distances: dict) -> dict:
    out = {}
    for part, methods in distances.items():
        out[part] = {}
        for method, values in methods.items():
            mean, low, high = interval(values)
            out[part][method] = {"mean": mean, "low": low, "high": high,
                                 "repeats": [float(v) for v in values]}
    return out


def table(results: dict, repeats: int) -> str:
    """The normalised distances as text: a row per part (and their mean), a column per method;
    `*` marks each row's lowest mean."""
    def cell(entry, best=False):
        text = f"{entry['mean']:.4f}"
        if entry["low"] is not None:
            text += f" [{entry['low']:.4f}, {entry['high']:.4f}]"
        return (text + (" *" if best else "")).ljust(27)

    rows = dict(results)
    if len(results) > 1:
        rows["mean"] = {}
        for m in METHODS:
            per_repeat = np.mean([results[p][m]["repeats"] for p in results], axis=0)
            rows["mean"][m] = dict(zip(("mean", "low", "high"), interval(per_repeat)))
    lines = [f"{'part':12s} " + "".join(m.ljust(27) for m in METHODS)]
    for part, methods in rows.items():
        best = min(METHODS, key=lambda m: methods[m]["mean"])
        lines.append(f"{part:12s} " + "".join(cell(methods[m], m == best) for m in METHODS))
    lines.append(f"(normalised distance, lower is better: mean over {repeats} shot sets "
                 f"[95% t-interval of the mean]; * lowest)")
    return "\n".join(line.rstrip() for line in lines)


def figure(path, held_out: Objects, parts: list[str], examples: dict, count: int = 5) -> None:
    """One row per part: `count` held-out images showing it, with the true centre (white
    ring) and each method's prediction (one colour per method) of the first shot set."""
    fig, axes = plt.subplots(len(parts), count, figsize=(1.9 * count, 2.0 * len(parts) + 0.4),
                             dpi=100, squeeze=False)
    for row, name in zip(axes, parts):
        index = held_out.parts.index(name)
        shown = np.flatnonzero(held_out.visible[:, index])[:count]
        for ax, n in zip(row, shown):
            ax.imshow(held_out.images[n])
            h, w = held_out.landmarks[n, index]
            ax.scatter([w], [h], s=90, facecolors="none", edgecolors="white", linewidths=2.2)
            for method in METHODS:
                ph, pw = examples[name][method][n]
                ax.scatter([pw], [ph], s=28, marker="x", color=COLOURS[method], linewidths=2.2)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name, fontsize=9)
    handles = [plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                          markeredgecolor="black", label="true centre")]
    handles += [plt.Line2D([], [], marker="x", linestyle="", color=COLOURS[m], label=m)
                for m in METHODS]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False,
               fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    model, _, meta = args.network
    size = (args.loaded_graph.config.image_size if args.loaded_graph is not None
            else egjax.GraphConfig.vgg16().image_size)
    try:
        train, held_out, negatives = load_data(args, image_size=size)
    except (OSError, ValueError) as error:   # egjax.data's refusals, on one line
        cli.data_error(args.parser, error)
    names = args.part or list(train.parts)
    unknown = [p for p in names if p not in train.parts]
    if unknown:
        sys.exit(f"egjax: --part {unknown} unknown; {args.category} parts: "
                 f"{', '.join(train.parts)}")
    print(f"egjax part localisation, {args.dataset} / {args.category}: {args.shots} shots x "
          f"{args.repeats} repeats from {len(train.images)} training objects, "
          f"{len(held_out.images)} {args.split} objects; network {args.checkpoint.name} "
          f"(pooled features: {pooled_tap(model)}); graph "
          f"{args.graph or 'fitted here'}; device {jax.devices()[0].platform}")
    graph, data, fit_seconds = prepare(args, train, held_out, negatives)
    parts = [train.parts.index(p) for p in names]
    distances = {p: {m: [] for m in METHODS} for p in names}
    examples, models = {}, {}
    with Step(len(parts) * args.repeats, "localisation", "shot sets", quiet=args.quiet) as bar:
        for part, name in zip(parts, names):
            showing = np.flatnonzero(train.visible[:, part])
            if len(showing) < args.shots:
                sys.exit(f"egjax: only {len(showing)} training objects show {name}; "
                         f"--shots is {args.shots}")
            for repeat in range(args.repeats):
                rng = np.random.default_rng([args.seed, repeat, part])
                shots = rng.choice(showing, args.shots, replace=False)
                predicted, model_part = localize_part(args, data, train, held_out, part,
                                                      shots, size)
                for method, where in predicted.items():
                    distances[name][method].append(localize.normalized_distance(
                        where, held_out.landmarks[:, part], held_out.visible[:, part], size))
                if repeat == 0:
                    examples[name], models[name] = predicted, model_part
                bar.update(1)
    results = summary(distances)
    report = {"parts": results, "shots": args.shots, "repeats": args.repeats,
              "images": {"train": len(train.images), args.split: len(held_out.images)},
              "split": args.split, "dataset": args.dataset, "category": args.category,
              "interval": "95% t-interval of the mean over repeats (shot sets)",
              "settings": {"nodes": args.nodes, "layers": args.layers or "all",
                           "min_score": args.min_score,
                           "sigma": args.sigma or localize.default_sigma(size)},
              "network": str(args.checkpoint), "pooled_features": pooled_tap(model),
              "graph": str(args.graph) if args.graph else "graph/", "seed": args.seed,
              "seconds": {"graph_fit": fit_seconds,
                          "total": time.perf_counter() - started}}
    with runs.run_directory(args.out, overwrite=args.overwrite) as out:
        if args.graph is None:
            graph.save(out / "graph")
        (out / "parts").mkdir()
        for name, part_model in models.items():
            part_model.save(out / "parts" / name)
        runs.write_json(out / "localization.json", report)
        figure(out / "localization.png", held_out, names, examples)
    print("\n" + table(results, args.repeats))
    print(f"\n{report['seconds']['total']:.0f} s; wrote {args.runs / args.name}/ "
          f"(localization.json, localization.png, parts/"
          f"{', graph/' if args.graph is None else ''})")
    return 0


if __name__ == "__main__":
    cli.end(cli.run(main))
