"""How the kernel computes the equations: one `Rules`, chosen per fit (`fit.RULES`) and held
by `layer.Setup`: `FIXED`, or `original.rules.ORIGINAL` (docs/algorithm.md, the section on
compat="original"). No other module of `egjax.em` tells the two apart.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from egjax.em import estep, layer, parents


class Rules(NamedTuple):
    """The arithmetic of each step, then the original's quirks (fields as `FIXED` fills them)."""

    nodes: Callable              # (coord, deform, sigma, cfg) -> estep.Nodes
    infer: Callable              # (image, nodes, shift, scale) -> estep.Inference
    competing_mass: Callable     # (inference, nodes, filters) -> Q
    statistics: Callable         # (inference, nodes, Q, tau_rate) -> estep.ImageStats
    per_chunk: Callable          # (summed, valid) -> (chunk's sum, kept per image)
    kept_into: Callable          # state -> buffers for what is kept per image
    image_sums: Callable         # (sum, kept, images) -> layer.Sums
    move: Callable               # (coord, sums, sigma, t, cfg) -> coord (M-step)
    score_mean: Callable         # (score, num_images, images) -> the records' norm
    prior_weights: Callable      # egjax.em.parents
    shift_and_scale: Callable
    select: Callable
    deviation: Callable
    scale_to_child: Callable     # (child, parent) -> parent cells per child cell
    variance: Callable           # as the variance cut orders it
    near_edge: Callable          # (mean, child, parent): the edge cut
    prefers_mirrored: Callable   # (plain, mirrored, t): the flip rule
    alt_pos: Callable            # (alt_pos, pos)
    check_top_m: Callable        # (top_m, available, message): ValueError if unmet
    parent_records: Callable     # the upper LayerFit as the candidate list sums it


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
