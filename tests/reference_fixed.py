"""The EM of one graph layer, `compat="fixed"`, written plainly from docs/algorithm.md.

An independent reference for the kernel (`egjax.em`): float64 NumPy, loops over images,
nodes and candidates, each quantity computed as the document defines it, with no
vectorisation, no separability shortcut and no layout of the kernel's. Section names in the
comments are those of docs/algorithm.md. Nodes are indexed `[c, k]` (filter, node of the
filter); records are `[C, K, N, ...]`; cells are 0-based (h, w).

It is slow (pure Python in the inner loops): tests use a few filters and a dozen images.
`offsets(h, cfg, exact=True)` gives the offsets as Fractions; `competing` given such exact
positions decides the ties of "Ties" in exact arithmetic.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from egjax.config import LayerConfig


# ---------------------------------------------------------------- Settings and node state

def round_half_away(x: float) -> int:
    """Round half away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def half_range(deform: float, cfg: LayerConfig) -> int:
    """`h = round(min(search_max_range S / 2, deform_ratio * deform))`."""
    return round_half_away(min(cfg.search_max_range * cfg.map_size / 2,
                               cfg.deform_ratio * deform))


def offsets(h: int, cfg: LayerConfig, exact: bool = False) -> list:
    """`d_i = -h + (2h/P)(i + 1/2) = h (2i + 1 - P) / P`, i = 0..P-1 (correctly rounded)."""
    num = cfg.candidates
    values = [Fraction(h * (2 * i + 1 - num), num) for i in range(num)]
    return values if exact else [float(v) for v in values]


def candidates(cfg: LayerConfig) -> list[tuple[int, int, int]]:
    """`(j, ih, iw)` of every candidate, w-major: `j = iw * P + ih`."""
    num = cfg.candidates
    return [(iw * num + ih, ih, iw) for iw in range(num) for ih in range(num)]


def normal(d: float, sigma: float) -> float:
    """`N(d; 0, sigma)`."""
    return math.exp(-d * d / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)


def smoothing(r2: float, s: float) -> float:
    """`g(r)` from `r^2`: the normal density for `r < 3s`, its value at `3s` beyond."""
    if r2 >= (3 * s) ** 2:
        r2 = (3 * s) ** 2
    return math.exp(-r2 / (2 * s * s)) / (math.sqrt(2 * math.pi) * s)


# ------------------------------------------------------------------------------- E-step

def evidence(x: np.ndarray, centre, h: int, cfg: LayerConfig) -> np.ndarray:
    """`F [J]` of a node in one filter's map `x [S, S]`: window of half-range h around the
    rounded centre, each cell weighed by `g` of its distance to `round(m) + delta_j`."""
    size, s = cfg.map_size, cfg.map_delta * cfg.map_size
    ch, cw = round_half_away(centre[0]), round_half_away(centre[1])
    d = offsets(h, cfg)
    out = np.zeros(cfg.candidates ** 2)
    for j, ih, iw in candidates(cfg):
        total = 0.0
        for qh in range(ch - h, ch + h + 1):
            for qw in range(cw - h, cw + h + 1):
                if 0 <= qh < size and 0 <= qw < size and x[qh, qw] > 0:
                    r2 = (ch + d[ih] - qh) ** 2 + (cw + d[iw] - qw) ** 2
                    total += smoothing(r2, s) * x[qh, qw]
        out[j] = total
    return out


def nearest(point, grid: list) -> int | None:
    """Index of the candidate of `grid` (positions in w-major order) nearest to `point`, the
    first on ties; None if `point` lies outside the grid's box (first to last, inclusive)."""
    (h0, w0), (h1, w1) = grid[0], grid[-1]
    if not (h0 <= point[0] <= h1 and w0 <= point[1] <= w1):
        return None
    best, index = None, None
    for j, (gh, gw) in enumerate(grid):
        dist = (point[0] - gh) ** 2 + (point[1] - gw) ** 2
        if best is None or dist < best:
            best, index = dist, j
    return index


def competing(positions: list, prior: np.ndarray) -> np.ndarray:
    """`Q [C, K, J]`: for candidate j of node (c, v), the sum over the nodes u of filter c
    whose box holds it of u's prior at its candidate nearest to it. `positions[c][k]` the
    candidate positions of node (c, k) (floats or Fractions), `prior [C, K, J]`."""
    c_num, k_num, j_num = prior.shape
    out = np.zeros(prior.shape)
    for c in range(c_num):
        for v in range(k_num):
            for j in range(j_num):
                for u in range(k_num):
                    index = nearest(positions[c][v][j], positions[c][u])
                    if index is not None:
                        out[c, v, j] += prior[c, u, index]
    return out


class EStep(NamedTuple):
    """One image's E-step, per node `[C, K, ...]`: centre, candidate positions `[C,K,J,2]`,
    pi, F, competing mass Q, tau, r, and the statistics A, G, S, V, the inferred candidate,
    position and best."""

    center: np.ndarray
    positions: np.ndarray
    prior: np.ndarray
    evidence: np.ndarray
    competing: np.ndarray
    tau: float
    responsibility: np.ndarray
    mass: np.ndarray
    gradient: np.ndarray
    score: np.ndarray
    spread: np.ndarray
    index: np.ndarray
    pos: np.ndarray
    best: np.ndarray


def e_step(x: np.ndarray, coord, deform, sigma, mu, lam, cfg: LayerConfig) -> EStep:
    """"E-step" in one image with maps `x [S, S, C]`; `coord [C,K,2]`, `deform [C,K]`,
    `sigma [C,K]`, `mu [C,K,2]`, `lam [C,K]` the parent prior in this image."""
    c_num, k_num = deform.shape
    num = cfg.candidates
    cands = candidates(cfg)
    j_num = len(cands)
    center = coord + mu
    prior = np.zeros((c_num, k_num, j_num))
    ev = np.zeros((c_num, k_num, j_num))
    cand_pos = np.zeros((c_num, k_num, j_num, 2))
    for c in range(c_num):
        for k in range(k_num):
            h = half_range(deform[c, k], cfg)
            d = offsets(h, cfg)
            for j, ih, iw in cands:
                prior[c, k, j] = (lam[c, k] * normal(d[ih], sigma[c, k])
                                  * normal(d[iw], sigma[c, k]))
                cand_pos[c, k, j] = center[c, k, 0] + d[ih], center[c, k, 1] + d[iw]
            ev[c, k] = evidence(x[:, :, c], center[c, k], h, cfg)
    rivals = competing([[list(map(tuple, node)) for node in filt] for filt in cand_pos], prior)
    tau = cfg.tau_rate * np.mean([[prior[c, k].sum() for k in range(k_num)]
                                  for c in range(c_num)])
    resp = np.zeros(prior.shape)
    mass, score, spread, best = (np.zeros((c_num, k_num)) for _ in range(4))
    gradient, pos = np.zeros((c_num, k_num, 2)), np.zeros((c_num, k_num, 2))
    index = np.zeros((c_num, k_num), int)
    middle = (num - 1) / 2
    for c in range(c_num):
        for k in range(k_num):
            d = offsets(half_range(deform[c, k], cfg), cfg)
            best[c, k] = -np.inf
            for j, ih, iw in cands:
                resp[c, k, j] = prior[c, k, j] / max(rivals[c, k, j] + tau, 1e-7)
                weighted = resp[c, k, j] * ev[c, k, j]
                joint = prior[c, k, j] * ev[c, k, j]
                mass[c, k] += weighted
                gradient[c, k, 0] += weighted * d[ih] / sigma[c, k] ** 2
                gradient[c, k, 1] += weighted * d[iw] / sigma[c, k] ** 2
                score[c, k] += joint
                spread[c, k] += joint * ((ih - middle) ** 2 + (iw - middle) ** 2)
                if joint > best[c, k]:
                    best[c, k], index[c, k], pos[c, k] = joint, j, cand_pos[c, k, j]
    return EStep(center, cand_pos, prior, ev, rivals, tau, resp, mass, gradient, score, spread,
                 index, pos, best)


# ------------------------------------------------------------------------------ Parents

class Parent(NamedTuple):
    """The fitted layer above as it recorded itself: `score [U, N]`, `pos [U, N, 2]`,
    `deform [U]`, `flip [N]` (node u = c * K + k)."""

    cfg: LayerConfig
    score: np.ndarray
    pos: np.ndarray
    deform: np.ndarray
    flip: np.ndarray


class Candidates(NamedTuple):
    """Candidate parents, best total score first: `index [M]` into the layer above,
    `deviation [M, N, 2]` (parent cells), `deform [M]`."""

    index: np.ndarray
    deviation: np.ndarray
    deform: np.ndarray


def parent_candidates(parent: Parent, child: LayerConfig) -> Candidates:
    """"Candidate parents": score order, the variance cut, the edge cut, M slots."""
    num_nodes, num_images = parent.score.shape
    totals = [sum(parent.score[u]) for u in range(num_nodes)]
    order = sorted(range(num_nodes), key=lambda u: -totals[u])          # stable
    variance = [np.var(parent.pos[u, :, 0], ddof=1) + np.var(parent.pos[u, :, 1], ddof=1)
                for u in range(num_nodes)]
    dropped = set(sorted(range(num_nodes), key=lambda u: variance[u])
                  [:math.ceil(num_nodes / 2)])
    size = parent.cfg.map_size
    for u in range(num_nodes):
        mean = parent.pos[u].mean(axis=0)
        margin = min(min(m + 0.5, size - 0.5 - m) for m in mean)
        if margin < 0.1 * size:
            dropped.add(u)
    index = [u for u in order if u not in dropped][:child.top_m]
    deviation = np.stack([parent.pos[u] - parent.pos[u].mean(axis=0) for u in index])
    return Candidates(np.array(index), deviation, parent.deform[index])


def select_parents(pos: np.ndarray, best: np.ndarray, cands: Candidates, child: LayerConfig,
                   upper: LayerConfig) -> np.ndarray:
    """"Parent selection": `[C, K, T]` slots from the child's records `pos [C,K,N,2]`,
    `best [C,K,N]` of the previous iteration."""
    c_num, k_num, num_images, _ = pos.shape
    slots = range(len(cands.index))
    out = np.zeros((c_num, k_num, child.top_n), int)
    for c in range(c_num):
        for k in range(k_num):
            a = (pos[c, k] - pos[c, k].mean(axis=0)) * child.stride            # [N, 2] px
            dist = {u: [float(np.sum((a[n] - cands.deviation[u, n] * upper.stride) ** 2))
                        for n in range(num_images)] for u in slots}
            mean = np.mean([dist[u][n] for u in slots for n in range(num_images)])
            affinity = {u: sum(best[c, k, n] * math.exp(-dist[u][n] / (2 * mean))
                               for n in range(num_images)) for u in slots}
            ranking = sorted(slots, key=lambda u: -affinity[u])              # stable
            out[c, k] = ranking[:child.top_n]
    return out


def parent_prior(parents: np.ndarray, cands: Candidates, n: int, ratio: float):
    """"Parent prior" in image n: `mu [C,K,2]`, `sigma [C,K]`, `lambda [C,K]`; `ratio` the
    parent's stride over the child's (parent cells -> child cells)."""
    c_num, k_num, top_n = parents.shape
    mu, sigma, lam = np.zeros((c_num, k_num, 2)), np.zeros((c_num, k_num)), np.zeros((c_num, k_num))
    for c in range(c_num):
        for k in range(k_num):
            dev = [cands.deviation[u, n] * ratio for u in parents[c, k]]
            s = [cands.deform[u] * ratio for u in parents[c, k]]
            weights = [1 / (top_n * s_u ** 2) for s_u in s]
            mu[c, k] = sum(w * d for w, d in zip(weights, dev)) / sum(weights)
            sigma[c, k] = (sum(s_u ** -2 for s_u in s) / top_n) ** -0.5
            product = 1.0
            for d, s_u in zip(dev, s):
                product *= math.exp(-np.sum((mu[c, k] - d) ** 2) / (2 * top_n * s_u ** 2)) / s_u
            lam[c, k] = sigma[c, k] * product
    return mu, sigma, lam


# ------------------------------------------------------------------------- One iteration

class Layer(NamedTuple):
    """One layer fit: `maps [N, S, S, C]`, `mirrored` (or None), `parent` (None: top)."""

    cfg: LayerConfig
    maps: np.ndarray
    mirrored: np.ndarray | None
    parent: Parent | None


class State(NamedTuple):
    """Node parameters `coord [C,K,2]`, `deform [C,K]`, `unit [C,K]` (candidate spacing at
    the layer's start); `parents [C,K,T]` slots (None before any selection); the records of
    the latest E-step `pos [C,K,N,2]`, `best`, `score [C,K,N]`, `flip [N]`; and the
    parameters that E-step used, `last` = (coord, deform)."""

    coord: np.ndarray
    deform: np.ndarray
    unit: np.ndarray
    parents: np.ndarray | None
    pos: np.ndarray
    best: np.ndarray
    score: np.ndarray
    flip: np.ndarray
    last: tuple


def init(coord: np.ndarray, deform: np.ndarray, num_images: int, cfg: LayerConfig) -> State:
    c_num, k_num = deform.shape
    unit = np.array([[2 * half_range(deform[c, k], cfg) / cfg.candidates for k in range(k_num)]
                     for c in range(c_num)])
    zeros = np.zeros((c_num, k_num, num_images))
    return State(coord, deform, unit, None, np.zeros((c_num, k_num, num_images, 2)), zeros,
                 zeros, np.zeros(num_images, bool), (coord, deform))


def priors(state: State, layer: Layer, cands: Candidates | None, active: bool):
    """Per image `(mu, sigma, lam)` for the E-step: from the parents where `active`, else
    mu = 0, sigma = init_delta S, lambda = 1."""
    cfg = layer.cfg
    c_num, k_num = state.deform.shape
    num_images = layer.maps.shape[0]
    if not active:
        sigma = np.full((c_num, k_num), cfg.init_delta * cfg.map_size)
        plain = (np.zeros((c_num, k_num, 2)), sigma, np.ones((c_num, k_num)))
        return [plain] * num_images
    ratio = layer.parent.cfg.stride / cfg.stride
    return [parent_prior(state.parents, cands, n, ratio) for n in range(num_images)]


def oriented(layer: Layer, state_params, prior, n: int, flip, t: int):
    """"Orientation": the E-step of image n in its orientation and whether it is mirrored;
    `flip` the given orientation (lower layers) or None: choose it (top layer)."""
    coord, deform = state_params
    mu, sigma, lam = prior
    plain = e_step(layer.maps[n], coord, deform, sigma, mu, lam, layer.cfg)
    if layer.mirrored is None:
        return plain, False
    if flip is None:
        other = e_step(layer.mirrored[n], coord, deform, sigma, mu, lam, layer.cfg)
        detect = lambda e: float(np.sum(e.best))                          # noqa: E731
        flipped = t >= 2 and detect(plain) < detect(other)
        return (other if flipped else plain), flipped
    if flip:
        return e_step(layer.mirrored[n], coord, deform, sigma, mu, lam, layer.cfg), True
    return plain, False


class Iteration(NamedTuple):
    """What one iteration computed: the parents it selected, the priors, the E-steps of
    every image, the sums over images, and the M-step's step size."""

    cands: Candidates | None
    parents: np.ndarray | None
    priors: list
    e_steps: list
    sums: dict
    step: float


def iteration(state: State, t: int, layer: Layer,
              cands: Candidates | None = None) -> tuple[State, Iteration]:
    """"One iteration" t (1-based): parent selection (t >= 2, lower layers), the E-step of
    every image in its orientation, the M-step."""
    cfg = layer.cfg
    top = layer.parent is None
    active = not top and t >= 2
    parents = state.parents
    if active:
        parents = select_parents(state.pos, state.best, cands, cfg, layer.parent.cfg)
        state = state._replace(parents=parents)
    prior = priors(state, layer, cands, active)
    params = (state.coord, state.deform)
    e_steps, flips = [], []
    for n in range(layer.maps.shape[0]):
        flip = None if top else bool(layer.parent.flip[n])
        e, flipped = oriented(layer, params, prior[n], n, flip, t)
        e_steps.append(e)
        flips.append(flipped)
    sums = {name: sum(getattr(e, name) for e in e_steps)
            for name in ("mass", "gradient", "score", "spread")}
    # "M-step"
    sigma_min = min(p[1].min() for p in prior)
    step = cfg.eta * (sigma_min / t ** 0.25) ** 2
    coord = state.coord + step * sums["gradient"] / np.maximum(sums["mass"], 1e-8)[..., None]
    deform = np.zeros(state.deform.shape)
    for c, k in np.ndindex(deform.shape):
        if sums["score"][c, k] == 0:
            deform[c, k] = cfg.min_deform
        else:
            spread = state.unit[c, k] * math.sqrt(sums["spread"][c, k] / sums["score"][c, k])
            deform[c, k] = min(max(spread, cfg.min_deform), cfg.max_deform)
    record = lambda name: np.stack([getattr(e, name) for e in e_steps], axis=2)  # noqa: E731
    new = State(coord, deform, state.unit, parents, record("pos"), record("best"),
                record("score"), np.array(flips), params)
    return new, Iteration(cands, parents, prior, e_steps, sums, step)


# ------------------------------------------------------------------------------ Records

class Records(NamedTuple):
    """`score [C,K,N]` over its mean, `pos [C,K,N,2]`, `flip [N]`, and the other
    orientation's `alt_score`, `alt_pos`, from its E-steps `alt_steps` (one per image)."""

    score: np.ndarray
    pos: np.ndarray
    flip: np.ndarray
    alt_score: np.ndarray
    alt_pos: np.ndarray
    alt_steps: list


def records(state: State, layer: Layer, cands: Candidates | None) -> Records:
    """"Records": scores over their mean over nodes and images; the other orientation's
    E-step with the parameters and parents of the last iteration."""
    norm = state.score.mean()
    if layer.mirrored is None:
        return Records(state.score / norm, state.pos, state.flip, state.score / norm, state.pos,
                       [])
    active = layer.parent is not None and layer.cfg.iterations >= 2
    prior = priors(state._replace(coord=state.last[0], deform=state.last[1]), layer, cands,
                   active)
    alt = [e_step((layer.maps if flip else layer.mirrored)[n], *state.last, prior[n][1],
                  prior[n][0], prior[n][2], layer.cfg) for n, flip in enumerate(state.flip)]
    alt_score = np.stack([e.score for e in alt], axis=2)
    alt_pos = np.stack([e.pos for e in alt], axis=2)
    return Records(state.score / norm, state.pos, state.flip, alt_score / norm, alt_pos, alt)


def fit(layer: Layer, coord: np.ndarray, deform: np.ndarray):
    """The whole EM of one layer from `coord [C,K,2]`, `deform [C,K]`: the state after each
    iteration, what each iteration computed, and the records."""
    cands = None if layer.parent is None else parent_candidates(layer.parent, layer.cfg)
    state = init(coord, deform, layer.maps.shape[0], layer.cfg)
    states, steps = [], []
    for t in range(1, layer.cfg.iterations + 1):
        state, step = iteration(state, t, layer, cands)
        states.append(state)
        steps.append(step)
    return states, steps, records(state, layer, cands)
