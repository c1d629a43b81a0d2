"""Training: the step learns, is deterministic, uses the extra loss; the committed synthetic
checkpoints load and classify fresh images; bad arguments are refused."""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egjax import contrastive, train
from egjax.data.synthetic import CATEGORIES, sample_mixed
from egjax.models import VGG16, ModelMeta, load_checkpoint
from protocol_models import numpy_init

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = VGG16(width=1 / 16, head="gap", num_classes=2)
TINY_META = ModelMeta(source="test", width=1 / 16, head="gap", num_classes=2,
                      preprocessing="torch")
CHECKPOINTS = {"synthetic_quadruped": ("negative", "quadruped"),
               "synthetic_all": ("negative", *CATEGORIES)}


@pytest.fixture(scope="module")
def tiny_batch():
    """8 images 32 px: class 1 is a bright square on noise, class 0 noise alone."""
    rng = np.random.default_rng(0)
    images = rng.normal(0, 0.5, (8, 32, 32, 3)).astype(np.float32)
    labels = np.array([0, 1] * 4, np.int32)
    images[labels == 1, 8:24, 8:24] += 2.0
    return jnp.asarray(images), jnp.asarray(labels)


def _run(tiny_batch, seed, steps=6, **step_kwargs):
    state = train.create_state(TINY, jax.random.key(seed), train.adamw_cosine(1e-3, steps))
    history = []
    for _ in range(steps):
        state, metrics = train.train_step(state, *tiny_batch, **step_kwargs)
        history.append({k: float(v) for k, v in metrics.items()})
    return state, history


def test_step_decreases_the_loss_and_is_deterministic_by_seed(tiny_batch):
    state, history = _run(tiny_batch, seed=0)
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], [h["loss"] for h in history]
    assert int(state.step) == 6
    again, _ = _run(tiny_batch, seed=0)
    jax.tree.map(np.testing.assert_array_equal, again.params, state.params)
    other, _ = _run(tiny_batch, seed=1)
    assert not np.array_equal(other.params["conv1_1"]["kernel"], state.params["conv1_1"]["kernel"])


def test_he_normal_conv_kernels():
    params = train.he_normal_params(VGG16(width=0.25, head="gap", num_classes=2),
                                    jax.random.key(0))
    kernel = np.asarray(params["conv4_3"]["kernel"])               # fan_in 3 * 3 * 128
    assert kernel.std() == pytest.approx(np.sqrt(2 / (9 * 128)), rel=0.05)
    assert not np.any(np.asarray(params["conv4_3"]["bias"]))


def test_extra_loss_is_added_and_trained(tiny_batch):
    seen = []

    def triplet(outputs, labels):
        seen.append(sorted(outputs))
        return 5.0 * contrastive.triplet_loss(outputs["relu5_3"], labels)

    state, history = _run(tiny_batch, seed=0, steps=1, extra_loss=triplet,
                          extra_taps=("relu5_3",))
    assert seen == [["logits", "relu5_3"]]                         # traced once
    first = history[0]
    assert first["extra"] > 0
    assert first["loss"] == pytest.approx(first["cross_entropy"] + first["extra"], rel=1e-6)
    plain, plain_history = _run(tiny_batch, seed=0, steps=1)
    assert plain_history[0]["extra"] == 0
    assert first["cross_entropy"] == pytest.approx(plain_history[0]["cross_entropy"], rel=1e-6)
    assert not np.allclose(state.params["conv5_3"]["kernel"], plain.params["conv5_3"]["kernel"])


def test_fit_preprocesses_uint8_and_stops_if_batches_run_out():
    rng = np.random.default_rng(1)
    batch = (rng.integers(0, 256, (4, 32, 32, 3), np.uint8), np.array([0, 1, 0, 1], np.int32))
    state = train.create_state(TINY, jax.random.key(0), train.adamw_cosine(1e-3, 2))
    state, history = train.fit(state, [batch, batch], TINY_META, 2, quiet=True)
    assert len(history) == 2 and int(state.step) == 2
    with pytest.raises(ValueError, match="ran out after 2 of 3 steps"):
        train.fit(state, [batch, batch], TINY_META, 3, quiet=True)


def test_fit_until_ends_training_after_the_step_that_runs_while_it_is_asked():
    """`until` sees the history after each step's metrics are read; the step then running
    completes, so `until` true at k recorded steps gives k + 1 steps, all recorded."""
    rng = np.random.default_rng(1)
    batch = (rng.integers(0, 256, (4, 32, 32, 3), np.uint8), np.array([0, 1, 0, 1], np.int32))
    asked = []

    def until(history):
        asked.append(len(history))
        return len(history) == 2

    state = train.create_state(TINY, jax.random.key(0), train.adamw_cosine(1e-3, 9))
    state, history = train.fit(state, [batch] * 9, TINY_META, 9, until=until, quiet=True)
    assert asked == [1, 2] and len(history) == 3 and int(state.step) == 3


def test_wilson_interval_by_hand():
    low, high = train.wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(1.959964**2 / (10 + 1.959964**2), rel=1e-6)
    low, high = train.wilson_interval(1000, 1000)
    assert high == 1 and low == pytest.approx(1000 / (1000 + 1.959964**2), rel=1e-6)
    low, high = train.wilson_interval(50, 100)
    assert (low + high) / 2 == pytest.approx(0.5) and high - low == pytest.approx(0.1918, abs=1e-3)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_committed_checkpoint_loads_and_classifies_fresh_images(name):
    model, params, meta = load_checkpoint(ROOT / "checkpoints" / name)
    classes = CHECKPOINTS[name]
    assert (meta.source, meta.head, meta.preprocessing) == ("synthetic", "gap", "torch")
    assert meta.width <= 0.25 and meta.classes == classes and meta.num_classes == len(classes)
    assert model == VGG16(width=meta.width, head="gap", num_classes=len(classes))
    images, labels = sample_mixed(32, seed=424_242, categories=classes[1:], image_size=224)
    taps = jax.jit(model.apply, static_argnames="taps")(
        {"params": params}, jnp.zeros((1, 224, 224, 3)), taps=("conv4_3", "conv5_3"))
    assert taps["conv4_3"].shape[1:3] == (28, 28) and taps["conv5_3"].shape[1:3] == (14, 14)
    accuracy = np.mean(train.predict(model, params, images, meta, quiet=True) == labels)
    print(f"{name}: {accuracy:.1%} of 32 fresh 224-px images")
    assert accuracy >= 0.9


def test_bad_arguments_are_refused(tiny_batch):
    with pytest.raises(ValueError, match="steps"):
        train.adamw_cosine(1e-3, 0)
    with pytest.raises(ValueError, match="warmup"):
        train.adamw_cosine(1e-3, 10, warmup=10)
    with pytest.raises(ValueError, match="learning_rate"):
        train.adamw_cosine(-1.0, 10)
    with pytest.raises(ValueError, match="correct <= total"):
        train.wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        train.wilson_interval(1, 10, confidence=1.0)
    with pytest.raises(ValueError, match="unknown taps"):
        _run(tiny_batch, seed=0, steps=1, extra_loss=lambda o, y: 0.0, extra_taps=("conv9_9",))


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "train_synthetic", ROOT / "experiments" / "train_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--categories", "cat"], "invalid choice"),
    (["--categories", "bird", "bird"], "repeats"),
    (["--low-size", "32"], "64, 1024"),
    (["--width", "0"], "> 0"),
    (["--steps", "0"], ">= 1"),
    (["--heldout-seed", "5"], "is a training seed"),
])
def test_script_refuses_bad_arguments(script, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_script_defaults(script):
    args = script.parse_args([])
    assert args.categories == ["quadruped"] and args.out.endswith("synthetic_quadruped")
    assert args.size == 224 and args.width <= 0.25
    assert script.parse_args(["--categories", *CATEGORIES]).out.endswith("synthetic_all")


# -- batch norm ------------------------------------------------------------------------------

def test_a_step_moves_batch_norm_statistics_toward_the_batch_by_the_momentum(tiny_batch):
    """ResNet50(batch_norm=True), one step at learning rate 0: conv1's running mean and
    (biased) variance become 0.9 * old + 0.1 * the batch's (torchvision's momentum 0.1),
    the batch's computed here by a numpy convolution; the params stay; every batch norm's
    statistics move; the folded network computes what the unfolded one does at inference."""
    import optax
    from egjax.models import ResNet50

    model = ResNet50(width=1 / 16, head="gap", num_classes=2, batch_norm=True)
    images, labels = tiny_batch
    variables = numpy_init(model, images[:1].shape, seed=0)
    rng = np.random.default_rng(1)
    stats = jax.tree.map(np.asarray, variables["batch_stats"])
    old = {"mean": rng.normal(0, 1, 4).astype(np.float32),
           "var": rng.uniform(0.5, 2.0, 4).astype(np.float32)}
    stats["conv1_bn"] = old
    params = jax.tree.map(np.asarray, variables["params"])
    params["conv1"]["bias"] = rng.normal(0, 0.5, 4).astype(np.float32)
    state = train.create_state(model, jax.random.key(0), optax.sgd(0.0),
                               *jax.tree.map(jnp.asarray, (params, stats)))
    state, _ = train.train_step(state, images, labels)

    x = np.pad(np.asarray(images, np.float64), ((0, 0), (3, 3), (3, 3), (0, 0)))
    kernel = params["conv1"]["kernel"].astype(np.float64)                # [7, 7, 3, 4]
    z = sum(x[:, i:i + 32:2, j:j + 32:2] @ kernel[i, j] for i in range(7) for j in range(7))
    z = z + params["conv1"]["bias"]                                      # [8, 16, 16, 4]
    got = state.batch_stats["conv1_bn"]
    np.testing.assert_allclose(got["mean"], 0.9 * old["mean"] + 0.1 * z.mean((0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["var"], 0.9 * old["var"] + 0.1 * z.var((0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    for name, layer in state.batch_stats.items():
        assert not np.allclose(layer["mean"], stats[name]["mean"]), name
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), b)
    folded_model, folded = train.inference(model, state)
    assert not folded_model.batch_norm and not any(n.endswith("_bn") for n in folded)
    apply = functools.partial(jax.jit, static_argnames="taps")
    want = apply(model.apply)({"params": state.params, "batch_stats": state.batch_stats},
                              images, taps=("logits",))["logits"]
    got = apply(folded_model.apply)({"params": folded}, images, taps=("logits",))["logits"]
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
