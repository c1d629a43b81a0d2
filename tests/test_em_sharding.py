"""Images sharded over 8 simulated CPU devices give the single-device fit, bit for bit (in a
subprocess: the device count is fixed when jax starts)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(r"""
    import json, os, re, sys
    import jax
    jax.config.update("jax_enable_x64", os.environ["COMPAT"] == "original")
    import numpy as np
    sys.path.insert(0, os.environ["TESTS"])
    from test_em_fit import GRAPH, blob_maps
    import egjax
    assert len(jax.devices()) == 8, jax.devices()
    maps = [blob_maps(16, GRAPH.layers[0].map_size, 4, 0), blob_maps(16, GRAPH.layers[1].map_size, 4, 1)]
    flipped = [np.ascontiguousarray(m[:, :, ::-1]) for m in maps]
    fits = {}
    for name, devices in (("one", jax.devices()[:1]), ("eight", None)):
        graph = egjax.fit_graph(maps, GRAPH, key=jax.random.key(0), flipped_maps=flipped,
                                devices=devices, compat=os.environ["COMPAT"])
        fits[name] = [{f: np.asarray(getattr(l, f)).tolist() for f in
                       ("coord", "deform", "parents", "score", "pos", "flip", "candidate_mean")}
                      for l in graph.layers]
        fits[name + "_sharding"] = str(graph.layers[0].score.sharding)
    # The lower layer's compiled fit (cached): the elements of its largest collective.
    from egjax.em import fit as fit_lib
    call = fit_lib.layer_call(maps[0], GRAPH.layers[0], jax.random.key(0), flipped[0],
                              graph.layers[1], None, os.environ["COMPAT"], 8)
    hlo = call.function.lower(*call.args).compile().as_text()
    fits["largest_collective"] = max(
        [sum(int(np.prod([int(d) for d in dims.split(",") if d]))
             for dims in re.findall(r"\w+\[([\d,]*)\]", line.split(op + "(")[0]))
         for line in hlo.splitlines()
         for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute")
         if f" {op}(" in line] + [0])
    fits["record_elements"] = int(np.size(graph.layers[0].score))
    print(json.dumps(fits))
""")


@pytest.mark.parametrize("compat", ["fixed", "original"])
def test_eight_devices_fit_like_one(compat):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               TESTS=os.path.dirname(__file__), COMPAT=compat)
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    fits = json.loads(run.stdout.strip().splitlines()[-1])
    assert "images" in fits["eight_sharding"]
    if compat == "fixed":   # no device gathers a layer's records (16 images: none padded)
        assert 0 < fits["largest_collective"] < fits["record_elements"], fits
    # original: float64, every sum over images added in image order; fixed: float32, the
    # sums over images in float64 (`egjax.em.reduce`)
    for one, eight in zip(fits["one"], fits["eight"]):
        for field in ("coord", "deform", "score", "pos", "parents", "flip", "candidate_mean"):
            np.testing.assert_array_equal(eight[field], one[field], err_msg=field)


PADDED = textwrap.dedent("""
    import json, os, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    sys.path.insert(0, os.environ["TESTS"])
    from test_em_fit import GRAPH, blob_maps
    import egjax
    from egjax.em import fit as fit_lib
    maps = [blob_maps(100, GRAPH.layers[0].map_size, 4, 0),
            blob_maps(100, GRAPH.layers[1].map_size, 4, 1)]
    flipped = [np.ascontiguousarray(m[:, :, ::-1]) for m in maps]
    out = {}
    for compat in ("original",):
        given, given_flipped = maps, flipped
        call = fit_lib.layer_call(given[1], GRAPH.layers[1], jax.random.key(0), given_flipped[1],
                                  None, None, compat, 8)
        data = call.args[2]
        out[compat + "_devices"] = sorted({s.device.id for s in data.addressable_shards})
        out[compat + "_shards"] = sorted({s.data.shape[0] for s in data.addressable_shards})
        for name, devices in (("one", jax.devices()[:1]), ("eight", None)):
            graph = egjax.fit_graph(given, GRAPH, key=jax.random.key(0), flipped_maps=given_flipped,
                                    devices=devices, compat=compat, quiet=True)
            out[compat + name] = [{f: np.asarray(getattr(l, f)).tolist() for f in
                                   ("coord", "deform", "parents", "score", "pos", "flip")}
                                  for l in graph.layers]
        # The records as kept stay split over the 8 devices, padding included; written and
        # read back, they are the 100 images' records.
        out["kept"] = [[l.padding, l.records.score.sharding.is_fully_replicated,
                        sorted({s.data.shape[1] for s in l.records.score.addressable_shards})]
                       for l in graph.layers]
        # So do those of infer_graph on the 100 images, equal to a one-device inference.
        inferred = {name: egjax.infer_graph(graph, given, given_flipped, devices=devices)
                    for name, devices in (("one", jax.devices()[:1]), ("eight", None))}
        out["inferred_kept"] = [[l.padding, l.records.score.sharding.is_fully_replicated,
                                 l.records.pos.sharding.is_fully_replicated,
                                 l.records.flip.sharding.is_fully_replicated,
                                 sorted({s.data.shape[1]
                                         for s in l.records.score.addressable_shards})]
                                for l in inferred["eight"]]
        out["inferred"] = {name: [{f: np.asarray(getattr(l, f)).tolist() for f in
                                   ("score", "pos", "flip")} for l in layers]
                           for name, layers in inferred.items()}
        back = egjax.ExplanatoryGraph.load(graph.save(os.path.join(os.environ["RUNS"], "graph")))
        out["loaded"] = [{f: np.asarray(getattr(l, f)).tolist() for f in
                          ("score", "pos", "flip", "alt_score", "alt_pos")} for l in back.layers]
    # Image order <-> the slots of 4 processes x 2 devices (laid out as if): 24 images, each
    # device sends the others their rows (an all-to-all), none gathers all.
    from jax.sharding import NamedSharding, PartitionSpec as P
    from egjax.em import sharding
    from egjax.em.reduce import Images
    mesh, layout = sharding.image_mesh(None), Images(sharding.AXIS, 24, 4, 6)
    x = np.arange(24 * 3.0).reshape(3, 24)
    slots = np.zeros((3, 24)); slots[:, [(i % 4) * 6 + i // 4 for i in range(24)]] = x
    split = NamedSharding(mesh, P(None, sharding.AXIS))
    to_images = jax.jit(lambda a: sharding.image_order(a, layout, 1, mesh), out_shardings=split)
    to_slots = jax.jit(lambda a: sharding.slot_order(a, layout, 1, mesh), out_shardings=split)
    slots = jax.device_put(slots, split)
    out["moved"] = [bool(np.array_equal(to_images(slots), x)),
                    bool(np.array_equal(to_slots(jax.device_put(x, split)), slots))]
    out["move_collectives"] = sorted({op for line in to_images.lower(slots).compile().as_text()
                                      .splitlines() for op in ("all-gather", "all-reduce",
                                      "all-to-all", "collective-permute") if f" {op}(" in line})
    print(json.dumps(out))
""")


def test_hundred_images_use_all_eight_devices(tmp_path):
    """100 images on 8 devices: 13 per device, the last 4 slots masked padding; the graph
    equals the one-device fit bit for bit (compat="original", float64); its records stay
    split over the devices (13 slots each, 4 of them padding), and read back as saved; so do
    `infer_graph`'s, equal to one device's to float rounding (float64)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               TESTS=os.path.dirname(__file__), RUNS=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", PADDED], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["moved"] == [True, True] and out["move_collectives"] == ["all-to-all"], out
    for compat in ("original",):
        assert out[compat + "_devices"] == list(range(8))
        assert out[compat + "_shards"] == [13]
        for one, eight in zip(out[compat + "one"], out[compat + "eight"]):
            assert len(eight["flip"]) == 100
            for field in ("coord", "deform", "score", "pos", "parents", "flip"):
                np.testing.assert_array_equal(eight[field], one[field], err_msg=field)
    assert out["kept"] == [[4, False, [13]]] * 2, out["kept"]
    assert out["inferred_kept"] == [[4, False, False, False, [13]]] * 2, out["inferred_kept"]
    for one, eight in zip(out["inferred"]["one"], out["inferred"]["eight"]):
        assert eight["flip"] == one["flip"] and len(one["flip"]) == 100
        np.testing.assert_allclose(eight["score"], one["score"], rtol=1e-12)
        np.testing.assert_allclose(eight["pos"], one["pos"], rtol=0, atol=1e-12)
    for loaded, one in zip(out["loaded"], out["originalone"]):
        for field in ("score", "pos", "flip"):
            np.testing.assert_array_equal(loaded[field], one[field], err_msg=field)
        assert np.shape(loaded["alt_score"]) == np.shape(one["score"])
