"""Training a classifier with optax, and its held-out accuracy.

    state = train.create_state(model, jax.random.key(0), train.adamw_cosine(3e-4, steps))
    for images, labels in batches:                   # float (preprocessed) images, int labels
        state, metrics = train.train_step(state, images, labels)

or, with uint8 batches, their preprocessing and a progress bar,
`state, history = train.fit(state, batches, meta, steps)`; then
`train.predict(model, state.params, images, meta)` and `train.wilson_interval(correct, n)`.

The step minimises softmax cross-entropy on the `"logits"` tap plus an optional extra term on
other taps, e.g. a contrastive loss on conv features (see `egjax.contrastive`):

    def triplet(outputs, labels):                    # outputs: {tap: array} of extra_taps + logits
        return 0.1 * contrastive.triplet_loss(outputs["relu5_3"], labels)

    state, metrics = train.train_step(state, images, labels, extra_loss=triplet,
                                      extra_taps=("relu5_3",))

`extra_loss` and `extra_taps` are static: pass the same function object every step, or each
call compiles anew. Any model following the egjax protocol trains
(`apply({"params": p}, images, taps=names) -> {name: array}` with a `"logits"` tap).

A network with batch norm (e.g. `ResNet50(batch_norm=True)`, from `egjax.models.load(...,
training=True)`) trains as Flax's do: the state keeps its `batch_stats`, each step applies it
with `train=True, mutable=["batch_stats"]` (normalised by the batch's statistics, the running
ones moved toward them) and keeps the updated statistics; `inference(model, state)` then
folds them into the network that `predict`, features and checkpoints take.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from egjax import continuity
from egjax.models import ModelMeta, preprocess
from egjax.progress import Step

ExtraLoss = Callable[[dict, jax.Array], jax.Array]


class TrainState(train_state.TrainState):
    """Flax's `TrainState` and the model's `batch_stats` ({} for a network without batch
    norm)."""

    batch_stats: Any = struct.field(default_factory=dict)


def he_normal_params(model, key: jax.Array, image_shape=(1, 224, 224, 3)) -> dict:
    """`model`'s parameters (initialised on zeros of `image_shape`) with every conv kernel
    drawn He-normal (variance 2 / fan_in; He et al., 2015), which keeps activations at one
    scale through ReLU stacks without batch norm; Dense layers and biases keep the model's
    own initialisation (flax: LeCun normal, zeros)."""
    init_key, conv_key = jax.random.split(key)
    images = jnp.zeros(image_shape, jnp.float32)
    params = dict(model.init(init_key, images, taps=("logits",))["params"])
    he_normal = jax.nn.initializers.he_normal()
    for name, layer_key in zip(sorted(params), jax.random.split(conv_key, len(params))):
        kernel = params[name].get("kernel")
        if kernel is not None and kernel.ndim == 4:
            params[name] = {**params[name], "kernel": he_normal(layer_key, kernel.shape)}
    return params


def adamw_cosine(learning_rate: float, steps: int, *, warmup: int | None = None,
                 weight_decay: float = 1e-4,
                 clip_norm: float | None = 1.0) -> optax.GradientTransformation:
    """Gradients clipped to global norm `clip_norm` (None: not clipped), then AdamW whose
    learning rate rises linearly over `warmup` steps (default 5% of `steps`) and decays to
    zero along a cosine (Loshchilov & Hutter, 2017 and 2019)."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    warmup = steps // 20 if warmup is None else warmup
    if not (isinstance(warmup, int) and 0 <= warmup < steps):
        raise ValueError(f"warmup must be an int in [0, steps) = [0, {steps}), got {warmup!r}")
    if clip_norm is not None and not (isinstance(clip_norm, (int, float)) and clip_norm > 0):
        raise ValueError(f"clip_norm must be None or > 0, got {clip_norm!r}")
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, steps)
    adamw = optax.adamw(schedule, weight_decay=weight_decay)
    return adamw if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adamw)


def initial_params(model, key: jax.Array, image_shape=(1, 224, 224, 3)) -> dict:
    """Parameters to train `model` from scratch: `he_normal_params`, then the model's own
    `initialize(params)` where it defines one (ResNet-50: every block starts as the identity)."""
    params = he_normal_params(model, key, image_shape)
    initialize = getattr(model, "initialize", None)
    return params if initialize is None else initialize(params)


def create_state(model, key: jax.Array, optimizer: optax.GradientTransformation,
                 params: dict | None = None, batch_stats: dict | None = None) -> TrainState:
    """A `TrainState` of `model` at step 0: `params`, or `initial_params` drawn with `key`;
    `batch_stats` (a network with batch norm), or those of a fresh init of `model`."""
    if params is None:
        params = initial_params(model, key)
    if batch_stats is None:
        batch_stats = _initial_batch_stats(model, key)
    return TrainState.create(apply_fn=model.apply, params=params, tx=optimizer,
                             batch_stats=batch_stats)


def _initial_batch_stats(model, key: jax.Array) -> dict:
    """`model`'s `batch_stats` as `init` makes them ({} for a network without batch norm)."""
    init = functools.partial(model.init, taps=("logits",))
    images = jnp.zeros((1, 224, 224, 3), jnp.float32)
    if "batch_stats" not in jax.eval_shape(init, key, images):
        return {}
    return init(key, images)["batch_stats"]


def inference(model, state: TrainState) -> tuple[object, dict]:
    """(model, params) to use after training: with batch statistics, the model's
    `fold(variables)` (batch norm folded with its running statistics), else as trained."""
    if not state.batch_stats:
        return model, state.params
    return model.fold({"params": state.params, "batch_stats": state.batch_stats})


def loss_fn(params, apply_fn, images: jax.Array, labels: jax.Array, *,
            batch_stats: dict | None = None, extra_loss: ExtraLoss | None = None,
            extra_taps: Sequence[str] = ()) -> tuple[jax.Array, tuple[dict, dict]]:
    """(loss, (metrics, batch_stats)): mean softmax cross-entropy of the logits (+
    `extra_loss(outputs, labels)` on the taps `extra_taps` and the logits); images
    `[B, H, W, 3]`, labels int `[B]`. With `batch_stats`, the model runs in train mode
    (batch statistics) and the updated running statistics come back; else {}."""
    taps = (*extra_taps, "logits")
    if batch_stats:
        outputs, updates = apply_fn({"params": params, "batch_stats": batch_stats}, images,
                                    taps=taps, train=True, mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
    else:
        outputs, batch_stats = apply_fn({"params": params}, images, taps=taps), {}
    logits = outputs["logits"]
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    extra = jnp.zeros(()) if extra_loss is None else extra_loss(outputs, labels)
    metrics = {"cross_entropy": cross_entropy, "extra": extra,
               "accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == labels)}
    return cross_entropy + extra, (metrics, batch_stats)


@functools.partial(jax.jit, static_argnames=("extra_loss", "extra_taps"), donate_argnums=0)
def train_step(state: TrainState, images: jax.Array, labels: jax.Array, *,
               extra_loss: ExtraLoss | None = None,
               extra_taps: tuple[str, ...] = ()) -> tuple[TrainState, dict]:
    """One optimiser step on `loss_fn` (and the batch statistics updated, if any); returns
    the new state and the batch's metrics (`loss`, `cross_entropy`, `extra`, `accuracy`, all
    before the update)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (metrics, batch_stats)), grads = grad_fn(
        state.params, state.apply_fn, images, labels, batch_stats=state.batch_stats,
        extra_loss=extra_loss, extra_taps=extra_taps)
    state = state.apply_gradients(grads=grads).replace(batch_stats=batch_stats)
    return state, {"loss": loss, **metrics}


def fit(state: TrainState, batches: Iterable, meta: ModelMeta, steps: int, *,
        extra_loss: ExtraLoss | None = None, extra_taps: Sequence[str] = (),
        until: Callable[[list[dict]], bool] | None = None,
        desc: str = "train", quiet: bool = False) -> tuple[TrainState, list[dict]]:
    """At most `steps` calls of `train_step` on (uint8 images `[B, H, W, 3]`, int labels
    `[B]`) pairs from `batches`, preprocessed by `meta`'s convention; returns the state and
    per-step metrics (floats). `until(history)`, where given, ends training early: it is
    asked after each step's metrics are read, which happens while the next step runs, so
    that step still completes and is recorded. The progress bar shows the mean loss and
    accuracy of recent steps."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    extra_taps = tuple(extra_taps)
    history, pending = [], None
    batches = iter(batches)
    with Step(steps, desc, "steps", quiet=quiet) as bar:
        for _ in range(steps):
            try:
                images, labels = next(batches)
            except StopIteration:
                raise ValueError(f"batches ran out after {len(history) + (pending is not None)}"
                                 f" of {steps} steps") from None
            state, metrics = train_step(state, _prepare(images, meta), jnp.asarray(labels),
                                        extra_loss=extra_loss, extra_taps=extra_taps)
            if pending is not None:  # read the previous step while this one runs
                history.append(_record(pending, history, bar))
            pending = metrics
            if until is not None and history and until(history):
                break
        history.append(_record(pending, history, bar))
    return state, history


def _prepare(images, meta: ModelMeta) -> jax.Array:
    return _preprocess_jit(jnp.asarray(images), meta)


@functools.partial(jax.jit, static_argnums=1)
def _preprocess_jit(images, meta):
    return preprocess(images, meta)


def _record(metrics: dict, history: list, bar: Step) -> dict:
    """The step's metrics as floats; shows the mean of the last 20 steps on the bar (and in
    its summary line)."""
    record = {name: float(value) for name, value in metrics.items()}
    recent = [*history[-19:], record]
    loss = sum(r["loss"] for r in recent) / len(recent)
    accuracy = sum(r["accuracy"] for r in recent) / len(recent)
    bar.describe(note=f"loss {loss:.3f}, accuracy {accuracy:.2f} (last {len(recent)} steps)")
    bar.update(1)
    return record


def predict(model, params: dict, images, meta: ModelMeta, *, batch_size: int = 64,
            quiet: bool = False) -> np.ndarray:
    """Predicted classes int `[N]` of uint8 images `[N, H, W, 3]` (argmax of the logits);
    a network trained with batch norm: `inference(model, state)` first."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    images = np.asarray(images)
    out = []
    with Step(len(images), "predict", "images", quiet=quiet) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            out.append(np.asarray(_predict_jit(model, params, _prepare(chunk, meta))))
            bar.update(len(chunk))
    return np.concatenate(out)


@functools.partial(jax.jit, static_argnums=0)
def _predict_jit(model, params, images):
    return jnp.argmax(model.apply({"params": params}, images, taps=("logits",))["logits"], -1)


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy `correct / total` (`continuity.wilson_interval`)."""
    if not (isinstance(total, (int, np.integer)) and total >= 1
            and isinstance(correct, (int, np.integer)) and 0 <= correct <= total):
        raise ValueError(f"need ints 0 <= correct <= total, total >= 1; got {correct}, {total}")
    low, high = continuity.wilson_interval(np.float64(correct / total), np.float64(total),
                                           confidence)
    return float(low), float(high)
