"""Per-category fine-tuning (`egjax.finetune`, `experiments/finetune.py`) on small data: the
new head, the held-out split, the batches, the loss going down, resuming to the very same
result, a published-format weights file fine-tuned on a fake Pascal-Part tree into a network
the main job takes, and the missing-weights message."""

import json
import pathlib
import runpy
import sys
import urllib.error

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egjax import data, finetune, models, train
from egjax.features import extract_features
from egjax.models import load_checkpoint, preprocess
from egjax.models import download
from tests.data_trees import cache_home  # noqa: F401
from test_experiment import write_cow_tree
from vgg_weight_files import torchvision_state_dict, write_torch_zip

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "finetune.py"
MAIN_JOB = ROOT / "experiments" / "vgg16_voc.py"
COMMITTED = ROOT / "checkpoints" / "synthetic_quadruped"
SIZE = 64  # the committed net's GAP head takes any size


def run(script, argv):
    sys.argv = [str(script)] + argv
    return runpy.run_path(str(script), run_name="__main__")


def objects(ids, category="cow", size=8, fill=0):
    n = len(ids)
    return data.ObjectSet(np.full((n, size, size, 3), fill, np.uint8),
                          np.zeros((n, 0, 2), np.float32), np.zeros((n, 0), bool), (),
                          np.zeros((n, 4), np.float32), tuple(ids), category)


def test_examples_and_split_keep_the_objects_of_an_image_together():
    cows = objects([f"im{i // 2}/{i % 2}" for i in range(10)], fill=1)       # 5 images x 2
    negatives = objects([f"neg{i}/0" for i in range(10)], "not cow")
    examples = finetune.examples(cows, negatives)
    np.testing.assert_array_equal(examples.labels, [1] * 10 + [0] * 10)
    train_set, held_out = finetune.split(examples, 0.4, seed=3)
    assert sorted(held_out.labels) == [0] * 4 + [1] * 4          # 2 of 5 images, 4 of 10
    assert not set(train_set.groups) & set(held_out.groups)
    assert all(held_out.groups.count(g) == 2 for g in held_out.groups if g.startswith("+"))
    np.testing.assert_array_equal(held_out.images[:, 0, 0, 0], held_out.labels)
    again = finetune.split(examples, 0.4, seed=3)[1]
    assert again.groups == held_out.groups
    with pytest.raises(ValueError, match="too few object images"):
        finetune.split(finetune.examples(objects(["a/0"]), negatives), 0.5, seed=0)


def test_batches_are_balanced_mirrored_at_random_and_a_function_of_seed_and_step():
    labels = np.array([1] * 3 + [0] * 40)
    indices, mirror = finetune.batch_indices(labels, 8, seed=5, step=7)
    assert (labels[indices] == 1).sum() == 4 and (labels[indices] == 0).sum() == 4
    again = finetune.batch_indices(labels, 8, seed=5, step=7)
    np.testing.assert_array_equal(indices, again[0])
    np.testing.assert_array_equal(mirror, again[1])
    flips = np.concatenate([finetune.batch_indices(labels, 8, 5, k)[1] for k in range(200)])
    assert 0.45 < flips.mean() < 0.55
    assert not np.array_equal(indices, finetune.batch_indices(labels, 8, 5, 8)[0])


def test_two_way_replaces_the_last_layer_only():
    model, params, meta = load_checkpoint(COMMITTED)
    new_model, new_params, new_meta = finetune.two_way(model, params, meta, "cow",
                                                       jax.random.key(0))
    assert new_meta.classes == ("negative", "cow") and new_meta.num_classes == 2
    assert (new_meta.preprocessing, new_meta.width, new_meta.head) == ("torch", 0.25, "gap")
    assert sorted(new_params) == sorted(params)
    for name in params:
        if name != "logits":
            assert new_params[name] is params[name]
    kernel = np.asarray(new_params["logits"]["kernel"])
    assert kernel.shape == (128, 2) and 0.005 < kernel.std() < 0.02
    assert not np.asarray(new_params["logits"]["bias"]).any()


@pytest.fixture(scope="module")
def synthetic_examples():
    cows = data.load("synthetic", None, "quadruped", image_size=SIZE, limit=12, quiet=True)
    negatives = data.negatives("synthetic", None, "quadruped", image_size=SIZE, limit=12,
                               quiet=True, seed=1)
    return finetune.split(finetune.examples(cows, negatives), 0.25, seed=0)


@pytest.fixture(scope="module")
def net():
    """The committed net with a fresh 2-way head, and one optimizer object, so that every
    test here uses one compiled step."""
    model, params, meta = finetune.two_way(*load_checkpoint(COMMITTED), "quadruped",
                                           jax.random.key(0))
    return model, params, meta, finetune.sgd_momentum(1e-3)


def fresh(net):
    model, params, _, optimizer = net
    return train.create_state(model, jax.random.key(0), optimizer, params)


def test_the_step_mirrors_flagged_images(net):
    """The loss of images flagged mirrored equals that of the images flipped by hand and not
    flagged (and differs from the unflipped images' loss)."""
    meta = net[2]
    images = np.random.default_rng(0).integers(0, 255, (8, SIZE, SIZE, 3), dtype=np.uint8)
    flags = np.array([True, False] * 4)
    by_hand = np.where(flags[:, None, None, None], images[:, :, ::-1], images)
    labels = jnp.array([1, 0] * 4)

    def loss(pixels, mirror):   # as `fit` calls the step: a committed copy, an int32 step
        state = jax.device_put(jax.tree.map(jnp.copy, fresh(net).replace(
            step=jnp.asarray(0, jnp.int32))), jax.devices()[0])
        return float(finetune.train_step(state, jnp.asarray(pixels), jnp.asarray(mirror),
                                         labels, meta)[1]["loss"])

    flagged = loss(images, flags)
    assert flagged == pytest.approx(loss(by_hand, np.zeros(8, bool)), rel=1e-6)
    assert flagged != pytest.approx(loss(images, np.zeros(8, bool)), rel=1e-6)


def full_loss(state, examples, meta):
    images = preprocess(jnp.asarray(examples.images), meta)
    return float(train.loss_fn(state.params, state.apply_fn, images,
                               jnp.asarray(examples.labels))[0])


def test_loss_goes_down_and_a_resumed_run_ends_where_an_uninterrupted_one_does(
        net, synthetic_examples, tmp_path):
    training, held_out = synthetic_examples
    model, params, meta, _ = net
    settings = {"lr": 1e-3}
    with finetune.manager(tmp_path / "whole") as saved:
        whole, history = finetune.fit(fresh(net), training, meta, 6, batch_size=8, seed=0,
                                      manager=saved, save_every=2, settings=settings,
                                      quiet=True)
    assert full_loss(whole, training, meta) < 0.8 * full_loss(fresh(net), training, meta)
    with finetune.manager(tmp_path / "split") as saved:
        finetune.fit(fresh(net), training, meta, 3, batch_size=8, seed=0, manager=saved,
                     save_every=2, settings=settings, quiet=True)
        assert saved.latest_step() == 3
    with finetune.manager(tmp_path / "split") as saved:            # as if restarted
        resumed, resumed_history = finetune.fit(fresh(net), training, meta, 6, batch_size=8,
                                                seed=0, manager=saved, save_every=2,
                                                settings=settings, quiet=True)
    assert int(resumed.step) == 6 and resumed_history == history
    for a, b in zip(jax.tree.leaves((whole.params, whole.opt_state)),
                    jax.tree.leaves((resumed.params, resumed.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with finetune.manager(tmp_path / "split") as saved:
        with pytest.raises(ValueError, match="other settings lr: 0.001 there, 0.01 now"):
            finetune.fit(fresh(net), training, meta, 9, batch_size=8, seed=0, manager=saved,
                         settings={"lr": 1e-2}, quiet=True)
    result = finetune.accuracy(model, whole.params, meta, held_out, quiet=True)
    assert result["total"] == len(held_out.labels) == 6


def wilson(k, n, z=1.959963984540054):
    """The Wilson score interval written out (Wilson, 1927)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_script_fine_tunes_a_torchvision_file_into_a_network_the_main_job_takes(tmp_path,
                                                                                capsys):
    weights = tmp_path / "vgg16-narrow.pth"
    write_torch_zip(weights, torchvision_state_dict(1 / 16, num_classes=1000))
    write_cow_tree(tmp_path / "pascal", cows=4, others=4)
    with pytest.raises(SystemExit) as exit_info:
        run(SCRIPT, ["--dataset", "pascal_part", "--data-dir", str(tmp_path / "pascal"),
                     "--category", "cow", "--weights", str(weights), "--steps", "2",
                     "--batch-size", "4", "--held-out", "0.5", "--runs", str(tmp_path / "runs"),
                     "--name", "cow", "--quiet"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "4 cow objects, 4 negative images (pascal_part" in out
    record = json.loads((tmp_path / "runs" / "cow" / "finetune.json").read_text())
    held = record["held_out"]
    assert held["total"] == 4 and held["per_class"]["cow"][1] == 2
    np.testing.assert_allclose(held["wilson95"], wilson(held["correct"], 4), rtol=1e-6)
    assert len(record["loss"]) == 2 and record["settings"]["lr"] == 1e-4
    assert (tmp_path / "runs" / "cow.state").is_dir()              # resumable state kept
    network = tmp_path / "runs" / "cow" / "network"
    model, params, meta = load_checkpoint(network)
    assert meta.classes == ("negative", "cow") and meta.preprocessing == "torch"
    assert meta.head == "fc" and params["logits"]["kernel"].shape == (256, 2)
    # the main job accepts it (flags, network, dataset index) and reads its layers' maps
    args = runpy.run_path(str(MAIN_JOB), run_name="vgg16_voc")["parse"](
        ["--dataset", "pascal_part", "--data-dir", str(tmp_path / "pascal"), "--checkpoint",
         str(network), "--runs", str(tmp_path / "runs"), "--name", "graph", "--quiet"])
    crops = next(iter(args.objects)).images[:2]
    maps = extract_features(*args.network, crops, ["conv4_2", "conv5_3"], quiet=True).maps
    assert maps["conv4_2"].shape == (2, 28, 28, 32) and maps["conv5_3"].shape == (2, 14, 14, 32)


def test_missing_published_weights_say_which_file_to_put_where(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        run(SCRIPT, ["--weights", "keras", "--runs", str(tmp_path / "runs"), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    expected = tmp_path / ".cache" / "egjax" / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    assert f"put it at {expected}" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "finetune_quadruped").exists()


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "ilsvrc_animal_part"], "needs --category; valid: n01443537"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--held-out", "1"], "must be a fraction in (0, 1)"),
    (["--momentum", "1"], "must be in [0, 1)"),
    (["--batch-size", "1"], "at least 2 (half objects, half negatives)"),
    (["--split", "test"], "--split must be one of ('all',) for synthetic"),
    (["--weights", "/nonexistent.h5"], "no weights file /nonexistent.h5"),
])
def test_bad_flags_are_refused_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(SCRIPT, argv + ["--runs", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_script_fine_tunes_a_resnet50_file_with_its_batch_norm(tmp_path, capsys):
    """`--model resnet50` on a torchvision-layout file: loaded for training with batch norm
    unfolded (folded, exactly the inference port), fine-tuned, saved folded as a 2-way
    ResNet-50 whose batch-norm statistics moved toward the cow tree's."""
    from test_resnet import torchvision_state_dict as resnet_state_dict
    weights = tmp_path / "resnet50-narrow.pth"
    write_torch_zip(weights, resnet_state_dict(1 / 16, num_classes=1000))
    model, variables, _ = models.load("resnet50", weights, training=True)
    assert model.batch_norm and set(variables) == {"params", "batch_stats"}
    _, params, _ = models.load("resnet50", weights)
    _, folded = model.fold(variables)
    assert sorted(folded) == sorted(params)
    for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    write_cow_tree(tmp_path / "pascal", cows=4, others=4)
    with pytest.raises(SystemExit) as exit_info:
        run(SCRIPT, ["--model", "resnet50", "--dataset", "pascal_part", "--data-dir",
                     str(tmp_path / "pascal"), "--category", "cow", "--weights", str(weights),
                     "--image-size", "64", "--steps", "2", "--batch-size", "4", "--held-out",
                     "0.5", "--runs", str(tmp_path / "runs"), "--name", "cow", "--quiet"])
    assert exit_info.value.code == 0
    assert "resnet50" in capsys.readouterr().out
    tuned, tuned_params, meta = load_checkpoint(tmp_path / "runs" / "cow" / "network")
    assert (meta.arch, meta.classes, meta.head) == ("resnet50", ("negative", "cow"), "gap")
    assert not tuned.batch_norm and tuned_params["logits"]["kernel"].shape == (128, 2)
    moved = np.abs(np.asarray(tuned_params["conv1"]["bias"]) - np.asarray(params["conv1"]["bias"]))
    assert moved.max() > 1e-2          # lr 1e-4 alone would move it by far less
