"""Train a narrow VGG-16 or ResNet-50 (GAP head) on the embedded synthetic parts images.

    python experiments/train_synthetic.py                          # quadruped vs negatives
    python experiments/train_synthetic.py --categories quadruped bird vehicle   # 4 classes
    python experiments/train_synthetic.py --model resnet50         # ResNet-50 (v1.5)

ResNet-50 has no batch norm here (folded for inference): it starts with every block's last
conv zeroed (`train.initial_params`, `models.resnet.zero_residual`), so each block starts as
the identity.

One category: that category vs negatives (the paper's setting, label 0 = negative). Several:
one class per category plus negatives. Every batch is fresh: training step k draws
`sample_mixed(batch, seed=seed + k)`, first `--low-steps` steps at `--low-size` px (the conv
trunk and GAP head do not depend on the input size), then `--steps` steps at `--size` px.
Held-out accuracy is measured on `--heldout` images drawn with `--heldout-seed`, a seed no
training step uses, with a 95% Wilson interval. Writes the checkpoint and, beside it,
`<out>.json` with the settings, timings and accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import jax
import numpy as np

from egjax import checkpoint, cli, runs, train
from egjax.cli import image_size, non_negative_int, positive_float, positive_int
from egjax.data.synthetic import CATEGORIES, mixed_batches, sample_mixed
from egjax.models import ModelMeta, load_checkpoint, save_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", nargs="+", choices=CATEGORIES, default=["quadruped"],
                        help="one: that category vs negatives; several: one class each + negatives")
    parser.add_argument("--model", choices=("vgg16", "resnet50"), default="vgg16")
    parser.add_argument("--out", help="checkpoint directory (default "
                        "checkpoints/synthetic_<category> or checkpoints/synthetic_all, with "
                        "_resnet50 appended for ResNet-50)")
    parser.add_argument("--width", type=positive_float, default=0.25,
                        help="channel multiplier of the network")
    parser.add_argument("--low-size", type=image_size, default=112,
                        help="image side (px) of the first phase")
    parser.add_argument("--low-steps", type=non_negative_int, default=800)
    parser.add_argument("--low-batch", type=positive_int, default=32)
    parser.add_argument("--low-lr", type=positive_float, default=1e-3,
                        help="peak AdamW learning rate of the first phase")
    parser.add_argument("--size", type=image_size, default=224,
                        help="image side (px) of the second phase and of the held-out test")
    parser.add_argument("--steps", type=positive_int, default=200,
                        help="steps of the second phase")
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--lr", type=positive_float, default=2e-4,
                        help="peak AdamW learning rate of the second phase")
    parser.add_argument("--clip", type=positive_float, default=1.0,
                        help="gradients are clipped to this global norm")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="initialisation key; training batches use seeds seed, seed + 1, ...")
    parser.add_argument("--init", help="start from this checkpoint's parameters (same width and "
                        "classes) instead of He-normal ones, e.g. to train a saved net further")
    parser.add_argument("--heldout", type=positive_int, default=1000, help="held-out images")
    parser.add_argument("--heldout-seed", type=non_negative_int, default=1_000_000)
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (the one-line summary of each step remains)")
    args = parser.parse_args(argv)
    if len(set(args.categories)) != len(args.categories):
        parser.error(f"--categories repeats a name: {' '.join(args.categories)}")
    used = range(args.seed, args.seed + args.low_steps + args.steps)
    if args.heldout_seed in used:
        parser.error(f"--heldout-seed {args.heldout_seed} is a training seed "
                     f"(training uses {used.start}..{used.stop - 1})")
    if args.out is None:
        name = args.categories[0] if len(args.categories) == 1 else "all"
        suffix = "" if args.model == "vgg16" else f"_{args.model}"
        args.out = os.path.join("checkpoints", f"synthetic_{name}{suffix}")
    try:      # before training: --out must be writable, and replace a checkpoint if anything
        runs.check_writable(checkpoint.check_target(args.out, overwrite=True).parent)
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: --out {args.out}: {error}\n")
    return args


def initial_params(path: str | None, meta: ModelMeta) -> dict | None:
    """The parameters of the checkpoint at `path` (None: none), which must be a net of
    `meta`'s width, head and classes."""
    if path is None:
        return None
    try:
        _, params, saved = load_checkpoint(path)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot read --init {path}: {error}") from None
    if (saved.arch, saved.width, saved.head, saved.classes) != (meta.arch, meta.width,
                                                                meta.head, meta.classes):
        raise SystemExit(f"error: --init {path} is a {saved.arch} of width {saved.width:g} "
                         f"{saved.head} of classes {saved.classes}, not a {meta.arch} of width "
                         f"{meta.width:g} {meta.head} of {meta.classes}")
    return params


def init_record(path: str | None) -> dict | None:
    """Where training started: the `--init` checkpoint and the record of the run that wrote
    it (kept here, since this run may overwrite both)."""
    if path is None:
        return None
    record_path = f"{os.path.normpath(path)}.json"
    record = None
    if os.path.isfile(record_path):
        with open(record_path) as file:
            record = json.load(file)
    return {"checkpoint": path, "record": record}


def main(argv=None) -> None:
    args = parse_args(argv)
    start, load_before = time.perf_counter(), os.getloadavg()
    categories = tuple(args.categories)
    classes = ("negative", *categories)
    meta = ModelMeta(source="synthetic", arch=args.model, width=args.width, head="gap",
                     num_classes=len(classes), preprocessing="torch", classes=classes)
    model = meta.model()
    params, started_from, phases = initial_params(args.init, meta), init_record(args.init), []
    if params is None:
        params = train.initial_params(model, jax.random.key(args.seed))
    schedule = [("low", args.low_size, args.low_steps, args.low_batch, args.low_lr, args.seed),
                ("high", args.size, args.steps, args.batch, args.lr, args.seed + args.low_steps)]
    for name, size, steps, batch, lr, first_seed in schedule:
        if steps == 0:
            continue
        phase_start = time.perf_counter()
        state = train.create_state(model, jax.random.key(args.seed),
                                   train.adamw_cosine(lr, steps, clip_norm=args.clip),
                                   params)
        state, history = train.fit(state, mixed_batches(categories, batch, size, first_seed), meta,
                                   steps, desc=f"{size} px", quiet=args.quiet)
        params = state.params
        last = history[-50:]
        phases.append({"phase": name, "image_size": size, "steps": steps, "batch": batch,
                       "peak_lr": lr, "clip_norm": args.clip, "seeds": [first_seed, first_seed + steps - 1],
                       "final_loss": float(np.mean([h["loss"] for h in last])),
                       "final_accuracy": float(np.mean([h["accuracy"] for h in last])),
                       "seconds": round(time.perf_counter() - phase_start, 1)})
    train_seconds = time.perf_counter() - start

    images, labels = sample_mixed(args.heldout, seed=args.heldout_seed, categories=categories,
                                  image_size=args.size)
    predicted = train.predict(model, params, images, meta, quiet=args.quiet)
    correct = int((predicted == labels).sum())
    low, high = train.wilson_interval(correct, args.heldout)
    path = save_checkpoint(args.out, params, meta)
    total_seconds = time.perf_counter() - start
    record = {
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "meta": meta.to_dict(), "init": started_from, "phases": phases,
        "heldout": {"seed": args.heldout_seed, "image_size": args.size, "images": args.heldout,
                    "correct": correct, "accuracy": correct / args.heldout,
                    "wilson95": [low, high],
                    "per_class": {c: [int(((predicted == labels) & (labels == k)).sum()),
                                      int((labels == k).sum())] for k, c in enumerate(classes)}},
        "seconds": {"training": round(train_seconds, 1), "total": round(total_seconds, 1)},
        "machine": {"cpus": os.cpu_count(), "backend": jax.default_backend(),
                    "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
    }
    runs.write_json(f"{path}.json", record)
    print(f"held-out accuracy {correct}/{args.heldout} = {correct / args.heldout:.2%} "
          f"(95% Wilson interval {low:.2%}..{high:.2%}); training {train_seconds / 60:.1f} min, "
          f"total {total_seconds / 60:.1f} min")
    print(f"checkpoint: {path}\nrecord: {path}.json")


if __name__ == "__main__":
    cli.end(cli.run(main))
