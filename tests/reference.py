"""Loading `../shared/reference` (outputs of the original MATLAB learner) in egjax's terms.

The files use MATLAB axis order and 1-based cells; everything here converts to egjax's
conventions: node arrays `[C, K, ...]` or `[C*K, ...]`, 0-based cells, pixels 0-based.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import numpy as np
import pytest

from egjax.config import GraphConfig, LayerConfig

REFERENCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"


class Reference(NamedTuple):
    config: GraphConfig
    maps: list          # bottom to top, [N, S, S, C]
    flipped: list
    init: list          # dict(coord=[C,K,2], deform=[C,K]) per layer, 0-based
    out: list           # dict per layer in egjax layout (see `layer_output`)
    inputs: dict        # the raw input file
    raw: dict           # the raw output file


def available() -> bool:
    return (REFERENCE / "input_small.npz").exists()


def skip_without_reference():
    return pytest.mark.skipif(not available(), reason=f"reference outputs not found at {REFERENCE}")


def layer_configs(inp) -> GraphConfig:
    layers = []
    for l in range(len(inp["map_sizes"])):
        top_n, top_m = int(inp["topN"][l]), int(inp["topM"][l])
        top = top_n == 0
        layers.append(LayerConfig(
            map_size=int(inp["map_sizes"][l]), stride=float(inp["target_stride"][l]),
            center=float(inp["target_center"][l]) - 1, density=float(inp["pattern_density"][l]),
            position_candidates=int(inp["position_cand_num"]),
            search_max_range=float(inp["search_max_range"][l]),
            deform_ratio=float(inp["search_deform_ratio"]),
            init_delta=float(inp["deform_init_delta"]),
            max_delta=float(inp["deform_max_delta"][l]),
            min_delta=float(inp["deform_min_delta"][l]), map_delta=float(inp["map_delta"]),
            tau_rate=float(inp["valid_tau"]), top_n=1 if top else top_n,
            top_m=1 if top else top_m, iterations=int(inp["iter_num"]), eta=float(inp["eta"])))
    return GraphConfig(layers=tuple(layers), image_size=int(inp["img_size"][0]))


def layer_output(out, l: int) -> dict:
    """Layer l (1-based, as the file) in egjax layout."""
    g = lambda f: out[f"L{l}_{f}"]
    c_k = g("coord").shape[1:]
    k, c = c_k
    parents = g("idx_record")
    return {
        "coord": g("coord").transpose(2, 1, 0) - 1,
        "deform": g("deform").reshape(c, k),
        "parents": (parents.T.astype(np.int64) - 1) if parents.size else np.zeros((c * k, 0), int),
        "score": g("prob_record"),
        "pos": g("pos_record").transpose(1, 2, 0) - 1,
        "flip": g("flip_record").astype(bool),
        "alt_score": g("alter_prob_record"),
        "alt_pos": g("alter_pos_record").transpose(1, 2, 0) - 1,
        "init": {"coord": g("init_coord").transpose(2, 1, 0) - 1,
                 "deform": g("init_deform").T},
    }


def load(name: str) -> Reference:
    inp = dict(np.load(REFERENCE / f"input_{name}.npz"))
    raw = dict(np.load(REFERENCE / f"output_{name}.npz"))
    cfg = layer_configs(inp)
    num = len(cfg.layers)
    outs = [layer_output(raw, l + 1) for l in range(num)]
    return Reference(
        config=cfg,
        maps=[inp[f"xq_L{l + 1}"] for l in range(num)],
        flipped=[inp[f"flip_xq_L{l + 1}"] for l in range(num)],
        init=[o["init"] for o in outs], out=outs, inputs=inp, raw=raw)
