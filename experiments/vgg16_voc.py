"""The paper's experiment end to end: explanatory graph of a VGG-16 on one object category.

    python experiments/vgg16_voc.py                      # embedded synthetic parts data
    python experiments/vgg16_voc.py --category bird --images 200 --name bird

Steps: load the network -> feature maps of N object images and their mirrors (normalised by
the statistics of negative images, stored as uint8 as the original does) -> fit the graph
on conv4_2, conv4_3, conv5_2, conv5_3 with the paper's settings -> location instability of
the nodes against the raw filters -> save. Everything lands in `runs/<name>/`: the graph
(orbax), `metrics.json`, figures; written atomically, so an interrupted run leaves nothing.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_prefer_vector_width=512")

import jax  # noqa: E402

import egjax  # noqa: E402
from egjax import cli, evaluate, runs  # noqa: E402
from egjax.data import synthetic  # noqa: E402
from egjax.features import extract_features, negative_statistics  # noqa: E402
from egjax.models import load  # noqa: E402
from egjax.visualize import figures, pictures  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATASETS = ("synthetic", "voc")


def default_checkpoint(category: str, model: str = "vgg16") -> pathlib.Path:
    """The committed network for `category`: its own one-vs-negatives net where there is
    one, else the multi-class net over all synthetic categories (`_resnet50` for ResNet-50)."""
    suffix = "" if model == "vgg16" else f"_{model}"
    own = ROOT / "checkpoints" / f"synthetic_{category}{suffix}"
    return own if own.is_dir() else ROOT / "checkpoints" / f"synthetic_all{suffix}"


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic", help=f"one of {DATASETS}")
    parser.add_argument("--category", default="quadruped",
                        help=f"synthetic: one of {synthetic.CATEGORIES}")
    parser.add_argument("--images", type=int, default=100, help="object images N (>= 2)")
    parser.add_argument("--negatives", type=int, default=200,
                        help="images without the object, for the normalising statistics")
    parser.add_argument("--model", default="vgg16", choices=("vgg16", "resnet50"),
                        help="the network: VGG-16 (the paper's graph) or ResNet-50 (the "
                        "original's ResNet setting: layer2, layer3, layer4)")
    parser.add_argument("--checkpoint", type=pathlib.Path, default=None,
                        help="network checkpoint (default: checkpoints/synthetic_<category>, else "
                        "checkpoints/synthetic_all; for ResNet-50 with _resnet50 appended)")
    parser.add_argument("--iterations", type=int, default=20, help="EM iterations per layer")
    parser.add_argument("--compat", default="fixed", choices=("fixed", "original"))
    parser.add_argument("--seed", type=int, default=0)
    cli.add_run_arguments(parser, name=None, runs_folder=ROOT / "runs")
    args = parser.parse_args(argv)
    if args.dataset not in DATASETS:
        parser.error(f"--dataset must be one of {DATASETS}, got {args.dataset!r}")
    if args.dataset == "voc":
        parser.exit(2, "egjax: --dataset voc is not available yet: Pascal VOC + Pascal-Part "
                       "loading is a separate piece of work. Use --dataset synthetic.\n")
    if args.category not in synthetic.CATEGORIES:
        parser.error(f"--category must be one of {synthetic.CATEGORIES}, got {args.category!r}")
    if args.images < 2 or args.negatives < 2:
        parser.error("--images and --negatives must be at least 2")
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    args.checkpoint = args.checkpoint or default_checkpoint(args.category, args.model)
    if not args.checkpoint.is_dir():
        parser.error(f"no network checkpoint at {args.checkpoint} (see checkpoints/README.md)")
    try:
        args.network = load(args.model, args.checkpoint)
    except (OSError, ValueError) as error:
        parser.error(f"cannot read the network checkpoint {args.checkpoint}: {error}")
    args.name = args.name or args.category
    args.out = cli.run_folder(parser, args)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    model, params, meta = args.network
    cfg = (egjax.GraphConfig.vgg16(iterations=args.iterations) if args.model == "vgg16" else
           egjax.GraphConfig.resnet50(model.variant, iterations=args.iterations))
    taps = [layer.tap for layer in cfg.layers]
    print(f"egjax {args.dataset} / {args.category}: N={args.images} images (+ mirrors), "
          f"{args.negatives} negatives; network {args.checkpoint.name} ({meta.arch}, width "
          f"{meta.width:g}); layers {', '.join(taps)}; {args.iterations} iterations, "
          f"compat={args.compat}; device {jax.devices()[0].platform} x{len(jax.devices())}")
    started = time.perf_counter()
    batch = synthetic.sample(args.category, args.images, seed=args.seed, image_size=cfg.image_size)
    negatives = synthetic.negatives(args.negatives, seed=args.seed, image_size=cfg.image_size)
    stats = negative_statistics(model, params, meta, negatives, taps, quiet=args.quiet)
    features = extract_features(model, params, meta, batch.images, taps,
                                sd={t: s.sd for t, s in stats.items()}, quantized=True,
                                quiet=args.quiet)
    maps = [features.maps[t] for t in taps]
    flipped = [features.flipped[t] for t in taps]
    fitting = time.perf_counter()
    graph = egjax.fit_graph(maps, cfg, key=jax.random.key(args.seed), flipped_maps=flipped,
                            compat=args.compat, quiet=args.quiet)
    jax.block_until_ready(graph.layers[0].pos)
    fit_seconds = time.perf_counter() - fitting
    metrics = evaluate.compare(graph, maps, batch.landmarks, batch.visible)
    metrics.update(dataset=args.dataset, category=args.category, images=args.images,
                   negatives=args.negatives, iterations=args.iterations, compat=args.compat,
                   checkpoint=str(args.checkpoint), seed=args.seed,
                   fit_seconds=fit_seconds, total_seconds=time.perf_counter() - started)
    with runs.run_directory(args.out, overwrite=args.overwrite) as out:
        graph.save(out / "graph")
        runs.write_json(out / "metrics.json", metrics)
        figures.instability_chart(metrics, out / "instability.png")
        figures.detections(batch.images, graph, out / "detections.png",
                           landmarks=batch.landmarks, visible=batch.visible)
        written = pictures.write(out, graph, batch.images, maps, batch.landmarks, batch.visible,
                                 title=args.name)
    print(f"\n{'layer':10s} {'nodes':>8s} {'filters':>8s} {'ratio':>6s}   (location instability"
          f" / image diagonal; lower is better)")
    for row in metrics["layers"]:
        print(f"{row['tap']:10s} {row['nodes']:8.4f} {row['filters']:8.4f} {row['ratio']:6.2f}")
    print(f"{'mean':10s} {metrics['nodes']:8.4f} {metrics['filters']:8.4f} {metrics['ratio']:6.2f}")
    print(f"\nfit {fit_seconds:.0f} s; wrote {args.out}/ (graph/, metrics.json, "
          f"instability.png, detections.png, {', '.join(written)}: open explorer/index.html "
          f"in a browser)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
