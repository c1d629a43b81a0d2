"""Fine-tune an ImageNet VGG-16 or ResNet-50 for one category: the explained network.

    python experiments/finetune.py --dataset pascal_part --data-dir ~/data/pascal \\
        --category cow --weights keras                     # VGG-16, the paper's network
    python experiments/vgg16_voc.py --dataset pascal_part --data-dir ~/data/pascal \\
        --category cow --checkpoint runs/finetune_cow/network
    python experiments/finetune.py --model resnet50 --weights torchvision ...   # ResNet-50

The network's last layer is replaced by a 2-way classifier {negative, category}
(`egjax.finetune.two_way`); it is trained on the category's object crops and on images
without it (pascal_part: VOC images without the category; others: `--negatives-dir`),
mirrored at random, in the weights' own preprocessing, with SGD + momentum (0.9, lr 1e-4, as
the authors did). A random `--held-out` fraction of the source images (objects of one image
stay together) is kept out of training; its accuracy is reported with a 95% Wilson interval.
ResNet-50 from a weights file trains with its batch norm unfolded, as Flax does (batch
statistics, the running ones updated each step); the saved network has it folded again.

Training states are saved every `--save-every` steps by an orbax CheckpointManager in
`--state` (default `runs/<name>.state/`): rerunning the same command resumes there, and ends
exactly where an uninterrupted run would (step k's batch depends only on --seed and k); a
larger `--steps` continues a finished run. `runs/<name>/` gets `network/` (a network
checkpoint for `--checkpoint` of the other scripts) and `finetune.json` (settings, loss per
step, held-out accuracy).

`--weights`: a published name of `--model` (vgg16: keras, the original Oxford/caffe weights
the paper used, keras-notop, torchvision, timm; resnet50: keras, keras-notop, torchvision,
torchvision-v2, timm), a weights file (.h5, .pth, .safetensors), or an egjax network
checkpoint folder of that architecture. Published weights are downloaded into ~/.cache/egjax
on first use; without a network the error says which file to put where.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys
import time

import jax
import numpy as np

from egjax import cli, data, finetune, runs, train
from egjax.cli import positive_float, positive_int
from egjax.models import load, save_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC_IMAGES = 200  # synthetic objects are drawn, so they need a count


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text}")
    return value


def momentum(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def parse(argv) -> argparse.Namespace:
    """Every flag checked, the weights read and the run folder checked, before training."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_data_arguments(parser)
    parser.add_argument("--model", choices=("vgg16", "resnet50"), default="vgg16",
                        help="the network's architecture (default vgg16)")
    parser.add_argument("--weights", default="keras",
                        help="a published name of --model (downloaded to ~/.cache/egjax; see "
                        "above), a weights file, or an egjax network checkpoint folder "
                        "(default keras)")
    parser.add_argument("--split", default="all",
                        help="the dataset split the objects come from (default all)")
    parser.add_argument("--images", type=positive_int, default=None,
                        help=f"use the first N objects (default all; synthetic "
                        f"{SYNTHETIC_IMAGES})")
    parser.add_argument("--negatives", type=positive_int, default=1000,
                        help="negative images (default 1000, as the authors)")
    parser.add_argument("--image-size", type=cli.image_size, default=224,
                        help="crop side in px (224; the fc head of ImageNet VGG-16 needs it)")
    parser.add_argument("--held-out", type=fraction, default=0.2,
                        help="fraction of the source images kept out of training to measure "
                        "the accuracy (default 0.2)")
    parser.add_argument("--steps", type=positive_int, default=1000, help="SGD steps")
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="images per step, half objects and half negatives")
    parser.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate")
    parser.add_argument("--momentum", type=momentum, default=0.9)
    parser.add_argument("--seed", type=cli.non_negative_int, default=0,
                        help="the new layer's initialisation, the held-out split, the batches")
    parser.add_argument("--save-every", type=positive_int, default=100,
                        help="save the training state every N steps")
    parser.add_argument("--state", type=pathlib.Path, default=None,
                        help="folder of the resumable training state (default "
                        "<runs>/<name>.state)")
    cli.add_run_arguments(parser, name=None, runs_folder=ROOT / "runs")
    args = parser.parse_args(argv)
    args.category = cli.data_category(parser, args)
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (half objects, half negatives)")
    if args.dataset == "synthetic" and args.images is None:
        args.images = SYNTHETIC_IMAGES
    if args.split not in data.describe(args.dataset).splits:
        parser.error(f"--split must be one of {data.describe(args.dataset).splits} for "
                     f"{args.dataset}, got {args.split!r}")
    args.name = args.name or f"finetune_{args.category}"
    args.out = cli.run_folder(parser, args)
    args.state = (args.state or args.runs / f"{args.name}.state").absolute()
    try:
        args.network = load(args.model, args.weights, quiet=args.quiet, training=True)
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: --weights {args.weights}: {error}\n")
    args.parser = parser
    return args


def read_data(args) -> finetune.Examples:
    """The category's objects and the negatives as examples; `egjax.data`'s refusals end
    the script with one line."""
    try:
        objects = data.load(args.dataset, args.data_dir, args.category, split=args.split,
                            image_size=args.image_size, limit=args.images, strict=args.strict,
                            quiet=args.quiet, seed=args.seed)
        negatives = data.negatives(args.dataset, args.data_dir, args.category, split=args.split,
                                   image_size=args.image_size, limit=args.negatives,
                                   negatives_dir=args.negatives_dir, strict=args.strict,
                                   quiet=args.quiet, seed=args.seed + 1)
    except (OSError, ValueError) as error:
        cli.data_error(args.parser, error)
    print(f"{len(objects)} {args.category} objects, {len(negatives)} negative images "
          f"({args.dataset}, {args.data_dir or 'drawn here'})")
    return finetune.examples(objects, negatives)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    model, variables, meta = args.network
    print(f"egjax fine-tuning {args.dataset} / {args.category}: {meta.arch} ({meta.source}, "
          f"width {meta.width:g}, {meta.preprocessing} preprocessing) -> 2-way; {args.steps} steps "
          f"of {args.batch_size}, SGD lr {args.lr:g} momentum {args.momentum:g}, seed "
          f"{args.seed}; device {jax.devices()[0].platform}")
    try:
        training, held_out = finetune.split(read_data(args), args.held_out, seed=args.seed)
    except ValueError as error:
        cli.data_error(args.parser, error)
    model, params, meta = finetune.two_way(model, variables["params"], meta, args.category,
                                           jax.random.key(args.seed))
    state = train.create_state(model, jax.random.key(args.seed),
                               finetune.sgd_momentum(args.lr, args.momentum), params,
                               variables.get("batch_stats", {}))
    settings = {"dataset": args.dataset, "data_dir": args.data_dir and str(args.data_dir),
                "category": args.category, "split": args.split, "images": args.images,
                "negatives": args.negatives,
                "negatives_dir": args.negatives_dir and str(args.negatives_dir),
                "image_size": args.image_size, "held_out": args.held_out,
                "model": args.model, "weights": args.weights, "lr": args.lr,
                "momentum": args.momentum}
    print(f"training on {len(training.labels)} images ({int(training.labels.sum())} objects),"
          f" {len(held_out.labels)} held out; state in {args.state}")
    try:
        with finetune.manager(args.state) as saved:
            resumed = saved.latest_step()
            state, history = finetune.fit(state, training, meta, args.steps,
                                          batch_size=args.batch_size, seed=args.seed,
                                          manager=saved, save_every=args.save_every,
                                          settings=settings, quiet=args.quiet)
    except ValueError as error:
        cli.data_error(args.parser, error)
    model, params = train.inference(model, state)        # batch norm folded, if any
    result = finetune.accuracy(model, params, meta, held_out, quiet=args.quiet)
    low, high = result["wilson95"]
    last = history[-50:]
    record = {"command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
              "settings": {**settings, "steps": args.steps, "batch_size": args.batch_size,
                           "seed": args.seed},
              "meta": meta.to_dict(), "resumed_from_step": resumed,
              "train_images": {"objects": int(training.labels.sum()),
                               "negatives": int((training.labels == 0).sum())},
              "held_out": result,
              "final_loss": float(np.mean([h["loss"] for h in last])),
              "loss": [h["loss"] for h in history],
              "seconds": round(time.perf_counter() - started, 1)}
    with runs.run_directory(args.out, overwrite=args.overwrite) as out:
        save_checkpoint(out / "network", params, meta)
        runs.write_json(out / "finetune.json", record)
    print(f"held-out accuracy {result['correct']}/{result['total']} = {result['accuracy']:.2%} "
          f"(95% Wilson interval {low:.2%}..{high:.2%}); per class "
          + ", ".join(f"{c} {k}/{n}" for c, (k, n) in result["per_class"].items()))
    print(f"wrote {args.out}/ (network/, finetune.json); next:\n  python experiments/"
          f"vgg16_voc.py --dataset {args.dataset}"
          + (f" --data-dir {args.data_dir}" if args.data_dir else "")
          + f" --category {args.category} --model {args.model} --checkpoint "
          f"{args.out / 'network'}")
    return 0


if __name__ == "__main__":
    cli.end(cli.run(main))
