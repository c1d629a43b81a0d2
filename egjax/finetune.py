"""Per-category fine-tuning: the paper's networks (DATA.md, "Networks the authors used";
partGraphForCNN `step_fineTune.m`).

An ImageNet network (VGG-16 as in the paper, ResNet-50, any registered one) gets its last
layer replaced by a 2-way classifier {negative, category} and is fine-tuned on object crops
(label 1) and images without the category (label 0), mirrored at random, in the weights' own
preprocessing, with SGD + momentum 0.9 at lr 1e-4:

    model, variables, meta = egjax.models.load("vgg16", "keras", training=True)
    model, params, meta = finetune.two_way(model, variables["params"], meta, "cow", key)
    train_set, held_out = finetune.split(finetune.examples(cows, negatives), 0.2, seed=0)
    state = train.create_state(model, key, finetune.sgd_momentum(), params,
                               variables.get("batch_stats", {}))
    with finetune.manager("runs/cow.state") as saved:            # resumable
        state, history = finetune.fit(state, train_set, meta, steps, batch_size=32, seed=0,
                                      manager=saved, settings={...})
    model, params = train.inference(model, state)               # batch norm folded, if any
    finetune.accuracy(model, params, meta, held_out)             # with a 95% Wilson interval

A network with batch norm (ResNet-50 from a weights file) trains it as Flax does: batch
statistics in each step, the running ones updated (`egjax.train`), folded afterwards.

Training is deterministic by seed: step k's batch (indices and mirror flags) depends only on
(seed, k), so a run resumed from an orbax checkpoint at step k ends where an uninterrupted
run does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import pathlib
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from egjax import train
from egjax.models import ModelMeta, param_shapes, preprocess
from egjax.progress import Step
from egjax.train import TrainState

if TYPE_CHECKING:  # egjax.data needs the data extra (pillow); fine-tuning itself does not
    from egjax.data import ObjectSet

HEAD_INIT_SD = 0.01  # the new 2-way layer: weights N(0, 0.01^2), bias 0 (caffe's fc8 recipe)


class Examples(NamedTuple):
    """Labelled images: `images` uint8 [N, S, S, 3], `labels` int32 [N] (1: the category,
    0: negative), `groups` [N] the source image of each (objects of one image stay together
    when split)."""

    images: np.ndarray
    labels: np.ndarray
    groups: tuple[str, ...]


def examples(objects: ObjectSet, negatives: ObjectSet) -> Examples:
    """Object crops (label 1) followed by negative images (label 0)."""
    if objects.image_size != negatives.image_size:
        raise ValueError(f"objects are {objects.image_size} px but negatives "
                         f"{negatives.image_size} px")
    labels = np.concatenate([np.ones(len(objects), np.int32), np.zeros(len(negatives), np.int32)])
    groups = tuple(f"+{i.rsplit('/', 1)[0]}" for i in objects.ids) + tuple(
        f"-{i.rsplit('/', 1)[0]}" for i in negatives.ids)
    return Examples(np.concatenate([objects.images, negatives.images]), labels, groups)


def split(data: Examples, held_out: float, *, seed: int) -> tuple[Examples, Examples]:
    """(training, held-out) examples: a random `held_out` fraction of the source images of
    each label, drawn with `seed`; all objects of an image fall on the same side."""
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out!r}")
    rng = np.random.default_rng([seed, 1])
    keep_out = np.zeros(len(data.labels), bool)
    for label in (0, 1):
        groups = sorted({g for g, y in zip(data.groups, data.labels) if y == label})
        count = int(round(held_out * len(groups)))
        if len(groups) < 2 or count == 0 or count == len(groups):
            raise ValueError(f"too few {'negative' if label == 0 else 'object'} images "
                             f"({len(groups)}) for a held-out fraction of {held_out}")
        chosen = set(rng.choice(groups, count, replace=False))
        keep_out |= np.array([g in chosen for g in data.groups]) & (data.labels == label)

    def take(mask):
        return Examples(data.images[mask], data.labels[mask],
                        tuple(g for g, m in zip(data.groups, mask) if m))

    return take(~keep_out), take(keep_out)


def two_way(model, params: dict, meta: ModelMeta, category: str,
            key: jax.Array) -> tuple:
    """(model, params, meta) of the network with its last layer (`logits`) replaced by a
    fresh 2-way layer, classes ("negative", category); the architecture and the weights'
    preprocessing are kept (every other field of the module too). A network without a
    classifier head (e.g. "keras-notop") gets global average pooling and the new layer on it."""
    head = meta.head or "gap"
    two = dataclasses.replace(meta, source=f"{meta.source}, fine-tuned: {category} vs negatives",
                              head=head, num_classes=2, classes=("negative", category))
    new_model = model.clone(head=head, num_classes=2)
    shapes = param_shapes(new_model)["logits"]
    params = {name: value for name, value in params.items() if name != "logits"}
    params["logits"] = {
        "kernel": HEAD_INIT_SD * jax.random.normal(key, shapes["kernel"].shape, jnp.float32),
        "bias": jnp.zeros(shapes["bias"].shape, jnp.float32)}
    return new_model, params, two


def sgd_momentum(learning_rate: float = 1e-4,
                 momentum: float = 0.9) -> optax.GradientTransformation:
    """SGD with heavy-ball momentum at a constant rate, as the authors fine-tuned."""
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return optax.sgd(learning_rate, momentum=momentum)


def batch_indices(labels: np.ndarray, batch_size: int, seed: int,
                  step: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices `[B]`, mirror flags bool `[B]`) of step `step`: half the batch objects, half
    negatives (the classes balanced whatever their counts), each mirrored with probability
    1/2; a function of (seed, step) only."""
    rng = np.random.default_rng([seed, 0, step])
    positive, negative = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    half = batch_size // 2
    indices = np.concatenate([rng.choice(positive, batch_size - half),
                              rng.choice(negative, half)])
    return indices, rng.random(batch_size) < 0.5


@functools.partial(jax.jit, static_argnames="meta", donate_argnums=0)
def train_step(state: TrainState, images: jax.Array, mirror: jax.Array, labels: jax.Array,
               meta: ModelMeta) -> tuple[TrainState, dict]:
    """`train.train_step` on uint8 `images [B, S, S, 3]`, those with `mirror` flipped left to
    right, preprocessed by `meta`'s convention (all inside one jit)."""
    images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1], images)
    return train.train_step(state, preprocess(images, meta), labels)


class _SkipEmptyMerge(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


@contextlib.contextmanager
def manager(directory, *, keep: int = 1):
    """An orbax `CheckpointManager` of training states in `directory` (created if missing;
    the last `keep` checkpoints kept; synchronous saves, since the train step donates the
    state's buffers)."""
    quiet = _SkipEmptyMerge()
    logging.getLogger("absl").addFilter(quiet)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    saved = ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options,
                                  item_names=("state", "record"))
    try:
        yield saved
    finally:
        saved.close()
        logging.getLogger("absl").removeFilter(quiet)


def _tree(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "step": state.step}


def restore(saved: ocp.CheckpointManager, state: TrainState,
            settings: dict) -> tuple[TrainState, list[dict]]:
    """`state` and the history at `saved`'s latest step (as they were), or unchanged and []
    when it holds none. ValueError when it was written with other `settings`, naming them."""
    step = saved.latest_step()
    if step is None:
        return state, []
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _tree(state))
    restored = saved.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
    record = restored["record"]
    changed = {k: (record["settings"].get(k), v) for k, v in settings.items()
               if record["settings"].get(k) != v}
    if changed:
        raise ValueError(f"{saved.directory} holds a training run with other settings "
                         + ", ".join(f"{k}: {old!r} there, {new!r} now"
                                     for k, (old, new) in changed.items())
                         + "; use those settings to resume it, or delete the folder")
    tree = restored["state"]
    return state.replace(params=tree["params"], batch_stats=tree["batch_stats"],
                         opt_state=tree["opt_state"], step=tree["step"]), record["history"]


def fit(state: TrainState, data: Examples, meta: ModelMeta, steps: int, *, batch_size: int,
        seed: int, manager: ocp.CheckpointManager | None = None, save_every: int = 100,
        settings: dict | None = None, quiet: bool = False) -> tuple[TrainState, list[dict]]:
    """Train until step `steps` (`batch_indices(..., seed, k)` at step k); with `manager`,
    resume from its latest checkpoint (`restore`, checked against `settings`) and save every
    `save_every` steps and at the end. Returns the state and the per-step metrics (floats)
    of all steps, those before a resume included."""
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 2),
                             ("save_every", save_every, 1)):
        if not (isinstance(value, int) and value >= low):
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not ((data.labels == 1).any() and (data.labels == 0).any()):
        raise ValueError("fine-tuning needs objects (label 1) and negatives (label 0)")
    settings = dict(settings or {}, seed=seed, batch_size=batch_size)
    history: list[dict] = []
    if manager is not None:
        state, history = restore(manager, state, settings)
    # a copy (the step donates its buffers, the caller keeps theirs), committed to the device
    # with an int32 step, as the step returns it: one compilation
    state = jax.device_put(jax.tree.map(jnp.copy, state.replace(
        step=jnp.asarray(state.step, jnp.int32))), jax.devices()[0])
    start = int(state.step)
    if start > steps:
        raise ValueError(f"the saved training run is at step {start}, beyond steps={steps}")
    with Step(steps - start, "fine-tune", "steps", quiet=quiet) as bar:
        for step in range(start, steps):
            indices, mirror = batch_indices(data.labels, batch_size, seed, step)
            state, metrics = train_step(state, data.images[indices], mirror,
                                        data.labels[indices], meta)
            history.append({k: float(v) for k, v in metrics.items()})
            recent = history[-20:]
            bar.describe(note=f"loss {np.mean([h['loss'] for h in recent]):.3f}, accuracy "
                              f"{np.mean([h['accuracy'] for h in recent]):.2f} "
                              f"(last {len(recent)} steps)")
            bar.update(1)
            if manager is not None and ((step + 1) % save_every == 0 or step + 1 == steps):
                manager.save(step + 1, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_tree(state)),
                    record=ocp.args.JsonSave({"settings": settings, "history": history})))
    return state, history


def accuracy(model, params: dict, meta: ModelMeta, data: Examples, *,
             quiet: bool = False) -> dict:
    """Accuracy on `data` (unmirrored), with its 95% Wilson interval and per class."""
    predicted = train.predict(model, params, data.images, meta, quiet=quiet)
    correct = predicted == data.labels
    low, high = train.wilson_interval(int(correct.sum()), len(correct))
    return {"correct": int(correct.sum()), "total": len(correct),
            "accuracy": float(correct.mean()), "wilson95": [low, high],
            "per_class": {name: [int(correct[data.labels == k].sum()),
                                 int((data.labels == k).sum())]
                          for k, name in enumerate(meta.classes)}}
