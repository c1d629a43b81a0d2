"""Two processes on localhost under `jax.distributed` (gloo), 2 CPU devices each, each
holding every other image: `fit_graph`, `infer_graph`, feature extraction, the negative
statistics, the evaluation and what the pictures read (`visualize.summary`,
`pictures.prepare`) give what one process gives on all images; the main job reads
only its share of the objects, and of the negatives those of the batches it runs; a graph
whose records are sharded over both processes is written by both and reads back whole; a
process that dies makes the other exit with a message."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

WORKER = textwrap.dedent("""
    import dataclasses, json, os, runpy, sys
    process, port = int(sys.argv[1]), sys.argv[2]
    from egjax import distributed
    distributed.initialize(f"localhost:{port}", 2, process, timeout=120)
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from jax.experimental import multihost_utils
    sys.path.insert(0, os.environ["TESTS"])
    from test_em_fit import GRAPH, blob_maps
    from vgg_weight_files import random_params
    import egjax
    from egjax import features
    from egjax.maps import quantize
    from egjax.models import VGG16, ModelMeta

    def everything(x):   # the whole of a global array, on every process (test only)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    out = {"describe": distributed.describe(), "shard": list(distributed.shard())}
    one = jax.local_devices()[:1]   # one-device references: the original fit on process 1,
                                    # the rest on process 0
    maps = [blob_maps(10, GRAPH.layers[0].map_size, 4, 0), blob_maps(10, GRAPH.layers[1].map_size, 4, 1)]
    flipped = [np.ascontiguousarray(m[:, :, ::-1]) for m in maps]
    share = lambda seq: [jax.tree.map(lambda x: x[process::2], m) for m in seq]
    fields = ("coord", "deform", "parents", "score", "pos", "flip", "alt_score", "alt_pos")

    graph = egjax.fit_graph(share(maps), GRAPH, key=jax.random.key(0), flipped_maps=share(flipped),
                            compat="original", quiet=True)
    got = [{f: everything(getattr(l, f)) for f in fields} for l in graph.layers]
    out["sharding"] = str(graph.layers[0].score.sharding)
    kept = graph.layers[0].records.score   # as kept: 10 images + 2 padding, 3 on each device
    out["kept"] = [kept.sharding.is_fully_replicated,
                   [s.data.shape[1] for s in kept.addressable_shards]]
    # Evaluated where the records lie (each process its images), equal to one process's.
    rng = np.random.default_rng(2)
    landmarks, visible = rng.uniform(0, 64, (10, 3, 2)), rng.random((10, 3)) < 0.8
    metrics = egjax.evaluate.compare(graph, share(maps), landmarks, visible,
                                     across_processes=True)
    from egjax.visualize import pictures, summary   # what the pictures read, where it lies
    summaries = summary.summarize(graph, landmarks, visible, across_processes=True)
    pixels = np.random.default_rng(3).integers(0, 256, (10, 96, 96, 3), dtype=np.uint8)
    model = egjax.ExplanatoryGraph(tuple(l.without_records() for l in graph.layers), GRAPH)
    prepared = pictures.prepare(model, pixels[process::2], share(maps), summaries,
                                across_processes=True)
    if process == 1:
        ref = egjax.fit_graph(maps, GRAPH, key=jax.random.key(0), flipped_maps=flipped,
                              compat="original", devices=one, quiet=True)
        out["original_equal"] = {f"{i} {f}": bool(np.array_equal(got[i][f], np.asarray(getattr(l, f))))
                                 for i, l in enumerate(ref.layers) for f in fields}
        out["original_equal"]["metrics"] = metrics == egjax.evaluate.compare(ref, maps, landmarks,
                                                                            visible)
        ref_summaries = summary.summarize(ref, landmarks, visible)
        out["original_equal"]["summaries"] = all(
            np.array_equal(a, b, equal_nan=True) for got_layer, ref_layer
            in zip(summaries, ref_summaries) for a, b in zip(got_layer, ref_layer))
        alone = pictures.prepare(ref, pixels, maps, ref_summaries)
        rows = alone.images.indices
        out["original_equal"]["prepared"] = (
            rows == prepared.images.indices
            and all(np.array_equal(prepared.images[n], alone.images[n]) for n in rows)
            and all(np.array_equal(a, b) for a, b in zip(prepared.maps, alone.maps))
            and prepared.explorer == alone.explorer and len(alone.explorer.jpegs) == 10)

    quantized = [jax.tree.map(np.asarray, quantize(m)) for m in maps]
    quantized_flipped = [jax.tree.map(np.asarray, quantize(m)) for m in flipped]
    graph = egjax.fit_graph(share(quantized), GRAPH, key=jax.random.key(0),
                            flipped_maps=share(quantized_flipped), quiet=True)
    inferred = egjax.infer_graph(graph, share(quantized), share(quantized_flipped))
    got = [{f: everything(getattr(l, f)) for f in ("pos", "score")} for l in graph.layers]
    got_inferred = [{f: everything(getattr(l, f)) for f in ("pos", "score", "flip")} for l in inferred]
    out["inferred_kept"] = [[l.padding, l.records.score.sharding.is_fully_replicated,
                             [s.data.shape[1] for s in l.records.score.addressable_shards]]
                            for l in inferred]
    if process == 0:
        ref = egjax.fit_graph(quantized, GRAPH, key=jax.random.key(0), flipped_maps=quantized_flipped,
                              devices=one, quiet=True)
        ref_inferred = egjax.infer_graph(ref, quantized, quantized_flipped, devices=one)
        out["fixed"] = [float(np.max(np.abs(g[f] - np.asarray(getattr(l, f)))))
                        for g, l in zip(got, ref.layers) for f in ("pos", "score")]
        out["inferred_pos"] = [float(np.max(np.abs(g["pos"] - np.asarray(l.pos))))
                               for g, l in zip(got_inferred, ref_inferred)]
        out["inferred_score"] = [float(np.max(np.abs(g["score"] - np.asarray(l.score))))
                                 for g, l in zip(got_inferred, ref_inferred)]
        out["inferred_flip"] = [bool(np.array_equal(g["flip"], np.asarray(l.flip)))
                                for g, l in zip(got_inferred, ref_inferred)]

    model = VGG16(width=0.125, head=None)
    meta = ModelMeta(source="test", width=0.125, head=None, preprocessing="caffe")
    params = random_params(model, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (7, 48, 48, 3), dtype=np.uint8)
    stats = features.negative_statistics(model, params, meta, images[process::2], ["conv5_3"],
                                         batch_size=2, quiet=True)["conv5_3"]
    batched = features.negative_statistics(model, params, meta, images, ["conv5_3"], batch_size=2,
                                           quiet=True, same_images=True)["conv5_3"]
    mine = features.extract_features(model, params, meta, images[process::2], ["conv5_3"],
                                     sd={"conv5_3": stats.sd}, batch_size=2, quiet=True)
    mine = np.asarray(mine.maps["conv5_3"])
    theirs = np.asarray(multihost_utils.process_allgather(np.resize(mine, (4,) + mine.shape[1:])))
    if process == 0:
        ref_stats = features.negative_statistics(model, params, meta, images, ["conv5_3"],
                                                 batch_size=2, quiet=True,
                                                 across_processes=False)["conv5_3"]
        out["stats_count"] = stats.count
        out["batched_equal"] = [batched.count == 7,
                                 bool(np.array_equal(batched.mean, ref_stats.mean)),
                                 bool(np.array_equal(batched.sd, ref_stats.sd))]
        out["stats_sd"] = float(np.max(np.abs(stats.sd - ref_stats.sd) / np.maximum(ref_stats.sd, 1e-6)))
        ref_maps = features.extract_features(model, params, meta, images, ["conv5_3"],
                                             sd={"conv5_3": stats.sd}, batch_size=2,
                                             quiet=True).maps["conv5_3"]
        out["features_equal"] = bool(np.array_equal(theirs[0][:4], ref_maps[0::2])
                                     and np.array_equal(theirs[1][:3], ref_maps[1::2]))

    # The graph's records of images 0..7 split over the 4 devices of both processes: each
    # process writes its shards; read back whole, they are what both hold together.
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("images",))
    def first8(x, axis):
        spec = jax.sharding.PartitionSpec(*[None] * axis, "images")
        cut = (slice(None),) * axis + (slice(0, 8),)
        return jax.jit(lambda a: a[cut], out_shardings=jax.sharding.NamedSharding(mesh, spec))(x)
    axes = {"score": 1, "pos": 1, "flip": 0, "alt_score": 1, "alt_pos": 1}
    split = egjax.ExplanatoryGraph(tuple(dataclasses.replace(l, **{f: first8(getattr(l, f), a)
                                                                   for f, a in axes.items()})
                                         for l in graph.layers), graph.config)
    whole = [{f: everything(getattr(l, f)) for f in fields} for l in split.layers]
    out["saved_spec"] = str(split.layers[0].score.sharding.spec)
    path = split.save(os.path.join(os.environ["RUNS"], "graph"))
    back = egjax.ExplanatoryGraph.load(path)
    out["saved_equal"] = all(np.array_equal(np.asarray(getattr(b, f)), w[f])
                             for b, w in zip(back.layers, whole) for f in fields)

    # The main job's data path: each process reads only its share of the 5 objects.
    from egjax.data import loading
    read, reader = [], loading._read_group
    loading._read_group = lambda group, *rest: read.extend(e.id for e in group) or reader(group, *rest)
    script = runpy.run_path(os.environ["SCRIPT"], run_name="vgg16_voc")
    args = script["parse"](["--images", "5", "--negatives", "2", "--runs", os.environ["RUNS"],
                            "--quiet"])
    objects, negatives = script["read_data"](args)
    out["objects_read"] = len(read)
    # The negatives are read where their batches run: one of the 2 on each process.
    network = args.network
    count = features.negative_statistics(*network, negatives, ["conv5_3"], batch_size=1,
                                         quiet=True, same_images=True)["conv5_3"].count
    out["negatives_read"] = [len(read) - out["objects_read"], count]
    out["ids"] = list(objects.ids)
    together = distributed.gather_shares(objects.images)
    if process == 0:
        alone = script["data"].load("synthetic", None, "quadruped", limit=5, quiet=True)
        out["all_ids"] = list(alone.ids)
        out["images_equal"] = bool(np.array_equal(together, alone.images))
    print(json.dumps(out))
""")

DYING = textwrap.dedent("""
    import os, signal, sys
    process, port = int(sys.argv[1]), sys.argv[2]
    from egjax import distributed
    distributed.initialize(f"localhost:{port}", 2, process, timeout=5)
    import numpy as np
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("started")
    if process == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    for _ in range(1000):
        multihost_utils.process_allgather(np.int32(1))
    print("never here")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(script: str, devices: int, **env) -> list[subprocess.Popen]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               TESTS=os.path.dirname(__file__), JAX_PLATFORMS="cpu", **env)
    port = str(free_port())
    return [subprocess.Popen([sys.executable, "-c", script, str(i), port], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def test_two_processes_equal_one(tmp_path):
    processes = start(WORKER, devices=2, RUNS=str(tmp_path),
                      SCRIPT=os.path.join(os.path.dirname(__file__), "..", "experiments",
                                          "vgg16_voc.py"))
    outputs = [p.communicate(timeout=900) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(e[-2000:] for _, e in outputs)
    out, other = (json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs)
    out.update(original_equal=other["original_equal"])
    other_ids = other["ids"]
    assert out["describe"] == "4 cpu devices in 2 processes" and out["shard"] == [0, 2]
    assert "spec=P()" in out["sharding"]   # 10 images on 4 devices: read whole, in image order
    assert out["kept"] == other["kept"] == [False, [3, 3]], out   # kept split: no host has all
    print(json.dumps(out))
    assert all(out["original_equal"].values()), out["original_equal"]   # bit for bit
    # compat="fixed" in float64 here: its sums over images are plain float64 sums, whose order
    # may change the last bit (in float32, the default, they are bit for bit: test_em_sharding)
    assert max(out["fixed"]) < 1e-12, out["fixed"]
    assert max(out["inferred_pos"]) < 1e-12 and max(out["inferred_score"]) < 1e-12, out
    assert all(out["inferred_flip"])
    assert out["inferred_kept"] == other["inferred_kept"] == [[2, False, [3, 3]]] * 2, out
    assert out["stats_count"] == 7 and out["stats_sd"] < 1e-5, out
    assert out["batched_equal"] == [True, True, True], out   # every other batch each: bit for bit
    assert out["features_equal"]
    assert out["saved_spec"] == "P(None, 'images')" and out["saved_equal"]
    assert [out["objects_read"], other["objects_read"]] == [3, 2]   # every other of 5
    assert out["negatives_read"] == other["negatives_read"] == [1, 2]
    assert out["ids"] == out["all_ids"][0::2] and other_ids == out["all_ids"][1::2]
    assert out["images_equal"]


def test_a_dead_process_stops_the_other():
    processes = start(DYING, devices=1)
    outputs = [p.communicate(timeout=120) for p in processes]
    assert processes[1].returncode == -9
    assert processes[0].returncode != 0
    assert "never here" not in outputs[0][0]
    assert "another task died" in outputs[0][1], outputs[0][1][-3000:]


def test_no_coordinator_is_a_clear_error():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", "from egjax import distributed; "
                          f"distributed.initialize('localhost:{free_port()}', 2, 1, timeout=2)"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1
    assert "cannot reach the coordinator" in run.stderr.splitlines()[-1]


CPU_DEVICES = textwrap.dedent("""
    import argparse, sys
    from egjax import cli, distributed
    parser = argparse.ArgumentParser(prog="script")
    cli.add_distributed_arguments(parser)
    args = parser.parse_args(sys.argv[1:])
    cli.start_distributed(parser, args)
    print(distributed.describe())
""")


def test_cpu_devices_split_the_cpu():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)

    def run(*flags):
        return subprocess.run([sys.executable, "-c", CPU_DEVICES, *flags], capture_output=True,
                              text=True, env=env, timeout=120)

    assert run("--cpu-devices", "3").stdout.strip() == "3 cpu devices in 1 process"
    assert run().stdout.strip() == "1 cpu device in 1 process"
    refused = run("--cpu-devices", "0")
    assert refused.returncode == 2 and "--cpu-devices" in refused.stderr, refused.stderr
