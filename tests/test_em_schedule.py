"""The loop shapes of a backend (`egjax.em.schedule`) do not change the fit: the accelerator
schedule (chunks of images vmapped, all filters, all children at once) gives on CPU what the
CPU schedule (image by image, filters in groups, children in blocks) gives."""

import dataclasses
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import egjax
from egjax import GraphConfig
from egjax.em import estep
from egjax.em import fit as fit_lib
from egjax.em.rules import FIXED
from egjax.em.schedule import ACCELERATOR, CPU, Schedule, for_backend
from tests.test_em_fit import GRAPH, blob_maps

# The CPU schedule's shapes scaled down to these small layers (4 filters, 28 children), so
# that the groups and blocks are more than one.
SMALL_CPU = Schedule(images=1, filters=2, children=5)


def test_backends_get_their_schedules():
    assert for_backend("cpu") == CPU and for_backend("gpu") == ACCELERATOR


def test_the_accelerator_schedule_fits_as_the_cpu_schedule():
    """In float64, to rounding (the schedules add some terms in other orders), over two
    iterations: parent selection, priors, E-steps, M-steps and records of both layers."""
    graph = GraphConfig(layers=tuple(dataclasses.replace(layer, iterations=2)
                                     for layer in GRAPH.layers), image_size=GRAPH.image_size)
    maps = [blob_maps(7, layer.map_size, 4, seed) for seed, layer in enumerate(graph.layers)]
    flipped = [np.ascontiguousarray(m[:, :, ::-1]) for m in maps]
    with jax.enable_x64(True):
        graphs = [egjax.fit_graph(maps, graph, key=jax.random.key(0), flipped_maps=flipped,
                                  chunk=3, schedule=schedule, quiet=True)
                  for schedule in (SMALL_CPU, ACCELERATOR)]
    for a, b in zip(*(g.layers for g in graphs)):
        for name in ("parents", "flip", "candidates"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        for name in ("coord", "deform", "score", "pos", "alt_score", "alt_pos"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9,
                                       atol=1e-9, err_msg=name)


@pytest.mark.parametrize("schedule", [CPU, ACCELERATOR], ids=["cpu", "accelerator"])
def test_every_candidate_counts_its_own_nodes_prior_inside_a_fit(schedule, monkeypatch):
    """A node's own candidates lie inside its own box, so each one's competing mass is at
    least the node's own prior there (`getOtherProb.cpp` adds u = v too). Checked on every
    competition of a two-layer fit, in the fusions XLA makes of a real one (16 filters),
    where it may compute a candidate's position more than once."""
    shortfalls = []

    def checked(inference, nodes, filters):
        mass = estep.competing_mass(inference, nodes, filters)
        along_h, along_w = estep.split_axes(nodes.prior_axis)
        own = along_w * along_h * inference.scale
        jax.debug.callback(lambda n: shortfalls.append(int(n)), jnp.sum(mass < own))
        return mass

    monkeypatch.setitem(fit_lib.RULES, "fixed", FIXED._replace(competing_mass=checked))
    maps = [blob_maps(7, layer.map_size, 16, seed) for seed, layer in enumerate(GRAPH.layers)]
    flipped = [np.ascontiguousarray(m[:, :, ::-1]) for m in maps]
    egjax.fit_graph(maps, GRAPH, key=jax.random.key(0), flipped_maps=flipped, chunk=3,
                    schedule=schedule, quiet=True)
    assert len(shortfalls) == 30   # 3 iterations: the top layer's one, 7 images x 3 below
    assert sum(shortfalls) == 0


COMPETITION = textwrap.dedent(r"""
    import sys
    import jax, numpy as np
    from egjax.config import GraphConfig
    from egjax.em import estep
    layer = GraphConfig.vgg16().layers[1]                  # conv4_3: 40 nodes x 512 filters
    k, c = layer.nodes_per_filter, 512
    rng = np.random.default_rng(0)
    coord = rng.uniform(2, 25, (2, k, c)).astype(np.float32)
    nodes = estep.nodes(coord, rng.uniform(0.5, 3, (k, c)).astype(np.float32),
                        np.full((k, c), 4.2, np.float32), layer)
    center = coord + rng.normal(0, 1.3, (2, k, c)).astype(np.float32)   # off the lattice
    scale = rng.uniform(0.2, 1, (k, c)).astype(np.float32)
    filters = int(sys.argv[1]) or None
    mass = jax.jit(lambda center, scale: estep.competing_mass(
        estep.Inference(center, scale, None, None), nodes, filters))(center, scale)
    np.save(sys.argv[2], np.asarray(mass))
""")


def test_the_scripts_vector_width_flag_changes_no_competing_mass(tmp_path):
    """The scripts set `--xla_cpu_prefer_vector_width=512` (speed). With it, the competition
    of conv4_3 (40 nodes x 512 filters, off-lattice centres) in `CPU`'s groups of filters
    and in `ACCELERATOR`'s one group of all 512 comes out as without it, bit for bit, and
    no mass is zero (each counts its own node's prior, which is positive)."""
    def competing_mass(flags, filters):
        out = tmp_path / f"{len(flags)}-{filters}.npy"
        env = dict(os.environ, XLA_FLAGS=flags,
                   PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
        subprocess.run([sys.executable, "-c", COMPETITION, str(filters), str(out)], env=env,
                       check=True, timeout=600)
        return np.load(out)

    plain = competing_mass("", CPU.filters)
    assert np.all(plain > 0)
    for filters in (CPU.filters, ACCELERATOR.filters or 0):
        np.testing.assert_array_equal(
            competing_mass("--xla_cpu_prefer_vector_width=512", filters), plain,
            err_msg=f"filters={filters}")
