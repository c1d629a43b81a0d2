"""How the kernel computes docs/algorithm.md's equations: one `Rules` value, chosen once per
fit (`fit.RULES`, from `compat`) and held by `layer.Setup`.

`FIXED` is the kernel's own: the corrected learner, computed as XLA likes, except that its
sums over images are taken in float64 and the arithmetic around them kept from XLA's
rewrites (`egjax.em.reduce`, `egjax.em.ieee`), so that a fit does not depend on the order or
split of the images.
`egjax.em.original.rules.ORIGINAL` is the released learner, its quirks included, computed
with its arithmetic (glibc's `exp`, sums in its order, products rounded before adding, true
divisions, its 1-based frame). No other module of `egjax.em` tells the two apart.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from egjax.em import estep, layer, parents


class Rules(NamedTuple):
    """Arithmetic: `nodes(coord, deform, sigma, cfg) -> estep.Nodes`; `infer(image, nodes,
    shift, scale) -> estep.Inference`; `competing_mass(inference, nodes, filters)`;
    `statistics(inference, nodes, competing, tau_rate) -> estep.ImageStats`; how the
    statistics add over images: `per_chunk(summed, valid) -> (chunk sum, kept per image)`,
    `kept_into(state)` (buffers for what is kept), `image_sums(sum, kept, images)`;
    `move(coord, sums, sigma, t, cfg)` (M-step); `score_mean(score, num_images, images)`
    (records normalised); `prior_weights`, `shift_and_scale`, `select` and
    `deviation` (`egjax.em.parents`).
    Quirks: `scale_to_child(child, parent)` (parent cells -> child cells); `variance(v)` as
    the variance cut orders it; `near_edge(mean, child, parent)` (the edge cut);
    `prefers_mirrored(plain, mirrored, t)` (the flip rule); `alt_pos(alt_pos, pos)`;
    `check_top_m(top_m, available, message)` (ValueError where top_m cannot be met);
    `parent_records(layer)` (the upper layer's records as the candidate list sums them)."""

    nodes: Callable
    infer: Callable
    competing_mass: Callable
    statistics: Callable
    per_chunk: Callable
    kept_into: Callable
    image_sums: Callable
    move: Callable
    score_mean: Callable
    prior_weights: Callable
    shift_and_scale: Callable
    select: Callable
    deviation: Callable
    scale_to_child: Callable
    variance: Callable
    near_edge: Callable
    prefers_mirrored: Callable
    alt_pos: Callable
    check_top_m: Callable
    parent_records: Callable


FIXED = Rules(
    nodes=estep.nodes, infer=estep.infer, competing_mass=estep.competing_mass,
    statistics=estep.statistics, per_chunk=layer.per_chunk, kept_into=lambda state: (),
    image_sums=layer.image_sums, move=layer.move, score_mean=layer.score_mean,
    prior_weights=parents.prior_weights,
    shift_and_scale=parents.shift_and_scale, select=parents.select,
    deviation=parents.deviation,
    scale_to_child=lambda child, parent: parent.stride / child.stride,
    variance=lambda variance: variance, near_edge=parents.near_edge,
    prefers_mirrored=layer.prefers_mirrored, alt_pos=lambda alt_pos, pos: alt_pos,
    check_top_m=lambda top_m, available, message: None,
    parent_records=lambda layer: layer)
