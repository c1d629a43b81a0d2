"""The paper's experiment end to end: explanatory graph of a VGG-16 on one object category.

    python experiments/vgg16_voc.py                      # embedded synthetic parts data
    python experiments/vgg16_voc.py --category bird --images 200 --name bird
    python experiments/vgg16_voc.py --dataset pascal_part --data-dir ~/data/pascal \
        --category cow --checkpoint runs/finetune_cow/network   # from experiments/finetune.py
    python experiments/vgg16_voc.py --dataset folder --data-dir ~/my_images \
        --negatives-dir ~/other_images --checkpoint CKPT      # your own images

Datasets: those of `egjax.data` (synthetic, pascal_part, cub200, ilsvrc_animal_part,
folder). Steps: load the network and the category's objects (crops, box area >= 50^2 px)
-> feature maps of the N objects and their mirrors (normalised by the statistics of negative
images, stored as uint8 as the original does) -> fit the graph on conv4_2, conv4_3, conv5_2,
conv5_3 with the paper's settings -> location instability of the nodes against the raw
filters, on the landmarks the authors chose (`--landmarks` others) -> save. Without landmarks
(a folder without objects.csv) the graph, the pictures and the explorer are written and
instability is left out. Everything lands in `runs/<name>/`: the graph (orbax),
`metrics.json`, figures; written atomically, so an interrupted run leaves nothing.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_prefer_vector_width=512")

import jax  # noqa: E402

import egjax  # noqa: E402
from egjax import cli, data, distributed, evaluate, runs  # noqa: E402
from egjax.features import extract_features, negative_statistics  # noqa: E402
from egjax.models import load  # noqa: E402
from egjax.visualize import figures, pictures, summary  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC_IMAGES = 100  # synthetic objects are drawn, so they need a count
DEFAULT_SPLIT = {"cub200": "test"}  # as the original; others: all
NO_LANDMARKS = ("location instability needs landmarks: this set has no parts (give a folder "
                "an objects.csv with <part>_y,<part>_x columns)")


def default_checkpoint(category: str, model: str = "vgg16") -> pathlib.Path:
    """The committed network for `category`: its own one-vs-negatives net where there is
    one, else the multi-class net over all synthetic categories (`_resnet50` for ResNet-50)."""
    suffix = "" if model == "vgg16" else f"_{model}"
    own = ROOT / "checkpoints" / f"synthetic_{category}{suffix}"
    return own if own.is_dir() else ROOT / "checkpoints" / f"synthetic_all{suffix}"


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_data_arguments(parser)
    parser.add_argument("--split", default=None,
                        help="the dataset split (default all; cub200: test, as the original)")
    parser.add_argument("--images", type=int, default=None,
                        help=f"object images N (>= 2): the first N (default all; synthetic "
                        f"{SYNTHETIC_IMAGES})")
    parser.add_argument("--negatives", type=int, default=200,
                        help="images without the object, for the normalising statistics")
    parser.add_argument("--landmarks", default=None,
                        help="comma-separated parts whose landmarks measure location "
                        "instability (default: the authors' choice, "
                        "egjax.data.instability_parts; else all parts)")
    parser.add_argument("--model", default="vgg16", choices=("vgg16", "resnet50"),
                        help="the network: VGG-16 (the paper's graph) or ResNet-50 (the "
                        "original's ResNet setting: layer2, layer3, layer4)")
    parser.add_argument("--checkpoint", type=pathlib.Path, default=None,
                        help="network checkpoint (synthetic default: "
                        "checkpoints/synthetic_<category>, else checkpoints/synthetic_all, "
                        "with _resnet50 appended for ResNet-50; other datasets: the network "
                        "experiments/finetune.py fine-tuned for the category)")
    parser.add_argument("--iterations", type=int, default=20, help="EM iterations per layer")
    parser.add_argument("--compat", default="fixed", choices=("fixed", "original"))
    parser.add_argument("--seed", type=int, default=0)
    cli.add_run_arguments(parser, name=None, runs_folder=ROOT / "runs")
    cli.add_distributed_arguments(parser)
    args = parser.parse_args(argv)
    cli.start_distributed(parser, args)
    args.category = cli.data_category(parser, args)
    args.split = args.split or DEFAULT_SPLIT.get(args.dataset, "all")
    if args.dataset == "synthetic" and args.images is None:
        args.images = SYNTHETIC_IMAGES
    if (args.images is not None and args.images < 2) or args.negatives < 2:
        parser.error("--images and --negatives must be at least 2")
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    if args.checkpoint is None:
        if args.dataset != "synthetic":
            parser.error(f"--dataset {args.dataset} needs --checkpoint: a network fine-tuned "
                         f"for {args.category!r} (experiments/finetune.py)")
        args.checkpoint = default_checkpoint(args.category, args.model)
    if not args.checkpoint.is_dir():
        parser.error(f"no network checkpoint at {args.checkpoint} (see checkpoints/README.md)")
    try:
        args.network = load(args.model, args.checkpoint)
    except (OSError, ValueError) as error:
        parser.error(f"cannot read the network checkpoint {args.checkpoint}: {error}")
    try:  # the index (no pixels yet): unknown category / split, missing folders end here
        args.objects = data.iter_objects(
            args.dataset, args.data_dir, args.category, split=args.split,
            image_size=egjax.GraphConfig.vgg16().image_size, limit=args.images,
            strict=args.strict, quiet=args.quiet, seed=args.seed, shard=distributed.shard())
    except (OSError, ValueError) as error:
        cli.data_error(parser, error)
    args.indexed = distributed.counts(args.objects.total)   # this process's share: every P-th
    if args.indexed.sum() < 2:
        cli.data_error(parser, f"{args.dataset}: {args.indexed.sum()} object of "
                               f"{args.category!r} found; the graph needs at least 2")
    parts = args.objects.part_names
    args.landmarks = ([p.strip() for p in args.landmarks.split(",") if p.strip()]
                      if args.landmarks is not None
                      else data.instability_parts(args.dataset, args.category) or parts)
    unknown = [p for p in args.landmarks if p not in parts]
    if unknown:
        cli.data_error(parser, f"--landmarks: unknown part(s) {', '.join(unknown)} of "
                               f"{args.category!r}; its parts: {', '.join(parts) or 'none'}")
    args.name = args.name or args.category
    args.out = cli.run_folder(parser, args)
    args.parser = parser
    return args


def read_data(args):
    """(this process's share of the objects, uint8 negative images (all of them, read when
    sliced: `egjax.data.StreamImages`)): `egjax.data`'s refusals (a corrupt file with
    --strict, no negatives) end the script with one line."""
    try:
        batches = list(args.objects)
        negatives = data.iter_negatives(
            args.dataset, args.data_dir, args.category, split=args.split,
            image_size=args.objects.image_size, limit=args.negatives,
            negatives_dir=args.negatives_dir, strict=args.strict, quiet=args.quiet,
            seed=args.seed)
    except (OSError, ValueError) as error:
        cli.data_error(args.parser, error)
    read = distributed.counts(sum(len(b) for b in batches))
    if read.sum() < 2:
        cli.data_error(args.parser, f"{args.dataset}: fewer than 2 readable objects of "
                                    f"{args.category!r}")
    if len(read) > 1 and (read != args.indexed).any():
        cli.data_error(args.parser, f"{args.dataset}: unreadable objects were skipped; under "
                                    f"several processes each must read its whole share (every "
                                    f"{len(read)}-th object): remove the files the warning names")
    return data.concatenate(batches), negatives.images


def main(argv=None) -> int:
    args = parse(argv)
    model, params, meta = args.network
    cfg = (egjax.GraphConfig.vgg16(iterations=args.iterations) if args.model == "vgg16" else
           egjax.GraphConfig.resnet50(model.variant, iterations=args.iterations))
    taps = [layer.tap for layer in cfg.layers]
    started = time.perf_counter()
    objects, negatives = read_data(args)   # this process's share of the objects
    landmarks = data.select_parts(objects, args.landmarks) if args.landmarks else None
    images = int(distributed.counts(len(objects)).sum())
    print(f"egjax {args.dataset} / {args.category}: {images} objects (+ mirrors) from "
          f"{args.data_dir or 'the embedded generator'} (split {args.split}), "
          f"{len(negatives)} negatives; landmarks "
          f"{', '.join(args.landmarks) or 'none'}; network "
          f"{args.checkpoint.name} ({meta.arch}, width {meta.width:g}); layers {', '.join(taps)}; "
          f"{args.iterations} iterations, compat={args.compat}; {distributed.describe()}")
    # Every process reads and computes every P-th batch of the negatives, all merge them in
    # batch order (the same statistics, bit for bit, as one process); and its share of the
    # objects.
    try:
        stats = negative_statistics(model, params, meta, negatives, taps, quiet=args.quiet,
                                    same_images=True)
    except ValueError as error:   # a negative unreadable with --strict, or none readable
        cli.data_error(args.parser, error)
    features = extract_features(model, params, meta, objects.images, taps,
                                sd={t: s.sd for t, s in stats.items()}, quantized=True,
                                quiet=args.quiet)
    maps = [features.maps[t] for t in taps]
    flipped = [features.flipped[t] for t in taps]
    fitting = time.perf_counter()
    graph = egjax.fit_graph(maps, cfg, key=jax.random.key(args.seed), flipped_maps=flipped,
                            compat=args.compat, quiet=args.quiet)
    jax.block_until_ready(graph.layers[0].records)
    fit_seconds = time.perf_counter() - fitting
    # Every process writes its shards of the records (orbax), evaluates the images it holds
    # and summarises its records and images for the pictures: only each pattern's best
    # images, exact sums, the images shown, the explorer's JPEGs and heat-map windows are
    # exchanged, never a layer's records or maps. Process 0 moves the graph into the run
    # folder and draws the pictures.
    saved = graph.save(args.out.with_name(f".{args.out.name}.graph-{distributed.agreed_token()}"))
    try:
        marks = distributed.gather_shares(
            None if landmarks is None else (landmarks.landmarks, landmarks.visible))
        metrics = ({"instability": NO_LANDMARKS} if landmarks is None
                   else evaluate.compare(graph, maps, *marks, across_processes=True))
        summaries = summary.summarize(graph, *(marks or (None, None)), across_processes=True)
        model = egjax.ExplanatoryGraph(tuple(layer.without_records() for layer in graph.layers),
                                       graph.config)
        del graph
        prepared = pictures.prepare(model, objects.images, maps, summaries,
                                    across_processes=True)
        return write_run(args, saved, metrics, marks, model, summaries, prepared,
                         stats[taps[0]].count, fit_seconds, started)
    finally:   # left behind only if the run failed before the graph was moved in
        if distributed.is_main():
            shutil.rmtree(saved, ignore_errors=True)


def write_run(args, saved, metrics, marks, graph, summaries, prepared, negatives: int,
              fit_seconds, started) -> int:
    """Process 0: write the run folder, with the graph checkpoint `saved` (moved into it),
    the `metrics` and the pictures of `graph` (its model) from its `summaries` and
    `prepared` (`egjax.visualize.pictures.prepare`); the other processes wait until it is
    written."""
    if not distributed.is_main():
        distributed.leave_together("run written")
        return 0
    has_landmarks, marks = marks is not None, marks or (None, None)
    metrics.update(dataset=args.dataset, data_dir=args.data_dir and str(args.data_dir),
                   split=args.split, category=args.category, images=summaries[0].num_images,
                   landmarks=list(args.landmarks), negatives=negatives,
                   iterations=args.iterations, compat=args.compat, model=args.network[2].arch,
                   checkpoint=str(args.checkpoint), seed=args.seed,
                   fit_seconds=fit_seconds, total_seconds=time.perf_counter() - started)
    with runs.run_directory(args.out, overwrite=args.overwrite) as out:
        os.replace(saved, out / "graph")
        runs.write_json(out / "metrics.json", metrics)
        if has_landmarks:
            figures.instability_chart(metrics, out / "instability.png")
        figures.detections(prepared.images, graph, out / "detections.png",
                           landmarks=marks[0], visible=marks[1], summaries=summaries)
        written = pictures.write(out, graph, None, None, *marks, title=args.name,
                                 summaries=summaries, prepared=prepared)
    if has_landmarks:
        print(f"\n{'layer':10s} {'nodes':>8s} {'filters':>8s} {'ratio':>6s}   (location "
              f"instability / image diagonal; lower is better)")
        for row in metrics["layers"]:
            print(f"{row['tap']:10s} {row['nodes']:8.4f} {row['filters']:8.4f} "
                  f"{row['ratio']:6.2f}")
        print(f"{'mean':10s} {metrics['nodes']:8.4f} {metrics['filters']:8.4f} "
              f"{metrics['ratio']:6.2f}")
    else:
        print(f"\nno instability: {NO_LANDMARKS}")
    print(f"\nfit {fit_seconds:.0f} s; wrote {args.out}/ (graph/, metrics.json, "
          + ("instability.png, " if has_landmarks else "")
          + f"detections.png, {', '.join(written)}: open explorer/index.html in a browser)")
    distributed.leave_together("run written")
    return 0


if __name__ == "__main__":
    cli.end(cli.run(main))
