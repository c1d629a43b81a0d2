"""A margin triplet loss on conv features, to add to a classification loss.

    out = model.apply({"params": params}, images, taps=("relu5_3", "logits"))
    ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()
    loss = ce + weight * triplet_loss(out["relu5_3"], labels)

For the class region only, `cam_masked_triplet_loss(out["relu5_3"], labels,
params["logits"]["kernel"])` compares the maps' mean vectors over their class activation
regions instead of the whole maps.

Why a margin triplet loss rather than supervised InfoNCE (Khosla et al., 2020): its hinge
`max(0, d(a, p) - d(a, n) + margin)` is zero exactly when a triplet is consistent with a
margin, so it trains the quantity `continuity.triplet_consistency` measures, with the same
(cosine-equivalent) distance, and it works at the small batches a VGG-16 allows;
InfoNCE needs many negatives per batch and a temperature, and optimises a softmax ranking
of all pairs rather than the triplet order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from egjax.continuity import cam_mask, masked_mean

MININGS = ("hard", "random")


def triplet_loss(features: jax.Array, labels: jax.Array, *, margin: float = 0.2,
                 mining: str = "hard", key: jax.Array | None = None) -> jax.Array:
    """Mean `max(0, d(a, p) - d(a, n) + margin)` over the anchors of a batch (Schroff et al., 2015).

    features `[B, ...]` (flattened), labels int `[B]` -> scalar. Each row is scaled to unit
    length, so `d` is the chord distance `sqrt(2 - 2 cos)` in [0, 2] (ordered as the
    cosine distance), the margin is in the same units and scaling features cannot lower
    the loss. Every anchor gets one positive (same label, not itself) and one negative:
    `"hard"` takes the farthest positive and the nearest negative (batch-hard, Hermans et
    al., 2017); `"random"` draws them uniformly with `key`. Anchors without a positive or
    a negative in the batch are left out; with none left the loss is 0. Jit-safe.
    """
    if mining not in MININGS:
        raise ValueError(f"mining must be one of {MININGS}, got {mining!r}")
    if (mining == "random") != (key is not None):
        raise ValueError("mining='random' needs a key and 'hard' takes none")
    labels = jnp.asarray(labels)
    if features.ndim < 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be [B, ...] and labels [B], got {features.shape} "
                         f"and {labels.shape}")
    flat = features.reshape(features.shape[0], -1)
    unit = flat / jnp.maximum(jnp.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    distances = jnp.sqrt(jnp.maximum(2.0 - 2.0 * unit @ unit.T, 1e-12))
    same = labels[:, None] == labels[None, :]
    positive = same & ~jnp.eye(len(labels), dtype=bool)
    negative = ~same
    valid = positive.any(axis=1) & negative.any(axis=1)
    if mining == "hard":
        d_ap = jnp.max(jnp.where(positive, distances, -jnp.inf), axis=1)
        d_an = jnp.min(jnp.where(negative, distances, jnp.inf), axis=1)
    else:
        key_positive, key_negative = jax.random.split(key)
        rows = jnp.arange(len(labels))
        d_ap = distances[rows, jax.random.categorical(key_positive,
                                                      jnp.where(positive, 0.0, -jnp.inf))]
        d_an = distances[rows, jax.random.categorical(key_negative,
                                                      jnp.where(negative, 0.0, -jnp.inf))]
    hinge = jax.nn.relu(jnp.where(valid, d_ap - d_an, -margin) + margin)
    return hinge.sum() / jnp.maximum(valid.sum(), 1)


def cam_masked_triplet_loss(features: jax.Array, labels: jax.Array, kernel: jax.Array, *,
                            frac: float = 0.2, margin: float = 0.2, mining: str = "hard",
                            key: jax.Array | None = None) -> jax.Array:
    """`triplet_loss` of the class regions: each map `[B, h, w, C]` is summarised by its mean
    vector over the cells where the CAM of its label (Zhou et al., 2016), with the GAP
    head's `kernel [C, num_classes]`, reaches `frac` of its maximum (`continuity.cam_mask`).

    The mask is boolean, so no gradient flows through it: the loss moves the features in
    the region, not the region. Objects at different places are compared region to region.
    """
    if features.ndim != 4 or kernel.ndim != 2 or kernel.shape[0] != features.shape[-1]:
        raise ValueError(f"features must be [B, h, w, C] and kernel [C, classes], got "
                         f"{features.shape} and {kernel.shape}")
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"frac must be in [0, 1], got {frac!r}")
    labels = jnp.asarray(labels)
    regions = masked_mean(features, cam_mask(features, kernel, labels, frac))
    return triplet_loss(regions, labels, margin=margin, mining=mining, key=key)
