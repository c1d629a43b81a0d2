"""One image: background, distractor shapes, optionally an object placed in pose, occluders;
its rendering and the visibility of its landmarks."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from egjax.data.synthetic import backgrounds, categories, palette
from egjax.data.synthetic.raster import (PLAIN, Box, Capsule, Ellipse, Shape, Texture, bounds,
                                         coverage, distance_at, draw)

SCALE_RANGE = (0.78, 1.2)  # object scale at 224 px (x image_size / 224)
MAX_ROTATION = 20.0  # degrees
TRUNCATED = 0.2  # fraction of object images with the object cut by the border
OCCLUDED = 0.3  # fraction of object images with occluders drawn over the object
# px: a shape drawn later and closer than this to a landmark occludes it; one farther away cannot
# touch the landmark's pixel (its centre is <= 0.71 px away, anti-aliasing reaches 0.5 px out)
OCCLUSION_MARGIN = 1.5


class Scene(NamedTuple):
    """Everything needed to render one image (canonical facing)."""

    background: backgrounds.Background
    shapes: tuple[Shape, ...]  # painter's order: distractors, object, occluders
    landmarks: np.ndarray  # [P, 2] float32 (h, w) px; P = 0 without an object
    owners: np.ndarray  # [P] int, index into shapes of the shape each landmark lies on
    figure: range = range(0)  # indices into shapes of the object's shapes (empty: no object)


def _transform(shape: Shape, scale: float, angle: float, shift) -> Shape:
    """`shape` scaled by `scale`, rotated by `angle` (rad) about the origin, moved by `shift`."""
    s, c = math.sin(angle), math.cos(angle)

    def point(p):
        return (shift[0] + scale * (p[0] * c + p[1] * s), shift[1] + scale * (p[1] * c - p[0] * s))

    tex = shape.texture
    if tex is not PLAIN:
        tex = tex._replace(stripe_freq=tex.stripe_freq / scale, spot_freq=tex.spot_freq / scale)
    if isinstance(shape, Capsule):
        return shape._replace(a=point(shape.a), b=point(shape.b), ra=shape.ra * scale,
                              rb=shape.rb * scale, texture=tex, outline=shape.outline * scale)
    common = dict(centre=point(shape.centre), angle=shape.angle + angle, texture=tex,
                  outline=shape.outline * scale)
    if isinstance(shape, Ellipse):
        return shape._replace(ru=shape.ru * scale, rv=shape.rv * scale, **common)
    return shape._replace(hu=shape.hu * scale, hv=shape.hv * scale, corner=shape.corner * scale,
                          **common)


def _clutter(rng: np.random.Generator, size: int, centre, kinds: str) -> list[Shape]:
    """One distractor near `centre` (px): a part look-alike or a generic shape, of a kind
    chosen from `kinds` (e eye, l leg, w wheel, c cone, f feather, b blob, r box, s stick)."""
    k = size / 224 * rng.uniform(0.7, 1.3)
    angle = rng.uniform(-180, 180)
    colour = palette.pick(rng, amount=0.15)
    outline = categories.OUTLINE * k if rng.random() < 0.7 else 0.0
    kind = kinds[rng.integers(len(kinds))]
    if kind == "e":
        r = rng.uniform(4, 9) * k
        white = palette.pick(rng, ("white", "cream", "yellow"))
        return [categories.disc(centre, r, white, outline),
                categories.disc(centre, 0.55 * r, palette.pick(rng, ("charcoal", "brown")))]
    if kind == "l":
        end = categories.polar(centre, rng.uniform(25, 55) * k, angle)
        return [Capsule(centre, end, 6.5 * k, 4.8 * k, colour, PLAIN, outline),
                Ellipse(end, 7.5 * k, 4.8 * k, math.radians(angle + 90), palette.pick(rng), PLAIN,
                        outline)]
    if kind == "w":
        r = rng.uniform(10, 20) * k
        return [categories.disc(centre, r, palette.PALETTE["charcoal"], outline),
                categories.disc(centre, 0.48 * r, palette.pick(rng, ("grey", "white", "yellow")))]
    if kind == "c":
        end = categories.polar(centre, rng.uniform(14, 30) * k, angle)
        ra, rb = rng.uniform(5, 9) * k, rng.uniform(2, 4) * k
        return [Capsule(centre, end, ra, rb, colour, PLAIN, outline)]
    if kind == "f":
        end = categories.polar(centre, rng.uniform(25, 45) * k, angle)
        tex = Texture(stripe_amp=0.14, stripe_freq=2 * math.pi / (7 * k))
        return [Capsule(centre, end, rng.uniform(6, 12) * k, 5 * k, colour, tex, outline)]
    if kind == "b":
        ru = rng.uniform(8, 40) * k
        return [Ellipse(centre, ru, ru * rng.uniform(0.4, 1.0), math.radians(angle), colour,
                        categories.coat(rng, rng.uniform(6, 16) * k), outline)]
    if kind == "r":
        hu = rng.uniform(6, 30) * k
        hv = hu * rng.uniform(0.3, 1.0)
        return [Box(centre, hu, hv, math.radians(angle), rng.uniform(0, hv), colour,
                    categories.coat(rng, rng.uniform(6, 16) * k), outline)]
    end = categories.polar(centre, rng.uniform(40, 140) * k, angle)
    r = rng.uniform(1.2, 3.5) * k
    return [Capsule(centre, end, r, r, colour, PLAIN, outline)]


def _place(rng: np.random.Generator, figure: categories.Figure, size: int):
    """Scale, rotation and shift putting `figure` in the image, cut by the border sometimes."""
    scale = size / 224 * rng.uniform(*SCALE_RANGE)
    angle = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    boxes = np.array([bounds(s) for s in figure.shapes])
    h, w = np.meshgrid([boxes[:, 0].min(), boxes[:, 1].max()],
                       [boxes[:, 2].min(), boxes[:, 3].max()])
    s, c = math.sin(angle), math.cos(angle)
    placed = scale * np.stack([(h * c + w * s).ravel(), (w * c - h * s).ravel()])  # box corners
    lo, hi = placed.min(axis=1), placed.max(axis=1)
    free = (size - 1) - (hi - lo)
    shift = -lo + np.maximum(free, 0.0) * rng.random(2) + np.minimum(free, 0.0) / 2
    if rng.random() < TRUNCATED:
        axis, side = rng.integers(2), rng.integers(2)
        beyond = (hi - lo)[axis] * rng.uniform(0.12, 0.4)
        shift[axis] = (size - 1 + beyond - hi[axis]) if side else (-beyond - lo[axis])
    return scale, angle, (float(shift[0]), float(shift[1]))


def make_scene(rng: np.random.Generator, category: str | None, size: int) -> Scene:
    """A random scene of `category` (None: no object), for images `size` px square."""
    background = backgrounds.make_background(rng)
    shapes: list[Shape] = []
    for _ in range(int(rng.integers(5, 13))):
        shapes += _clutter(rng, size, tuple(rng.uniform(-0.05, 1.05, 2) * size), "elwcfbrs")
    if category is None:
        return Scene(background, tuple(shapes), np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    figure = categories.BUILDERS[category](rng)
    scale, angle, shift = _place(rng, figure, size)
    owners = figure.owners + len(shapes)
    placed = range(len(shapes), len(shapes) + len(figure.shapes))
    shapes += [_transform(s, scale, angle, shift) for s in figure.shapes]
    s, c = math.sin(angle), math.cos(angle)
    local = figure.landmarks
    landmarks = np.stack([shift[0] + scale * (local[:, 0] * c + local[:, 1] * s),
                          shift[1] + scale * (local[:, 1] * c - local[:, 0] * s)], axis=1)
    if rng.random() < OCCLUDED:
        for _ in range(int(rng.integers(1, 3))):
            target = landmarks[rng.integers(len(landmarks))] + rng.normal(0, 12, 2) * scale
            shapes += _clutter(rng, size, tuple(target), "bbrs")
    return Scene(background, tuple(shapes), landmarks.astype(np.float32), owners, placed)


def render(scene: Scene, canvas: np.ndarray) -> None:
    """Paint `scene` over all of `canvas` (float32 [3, S, S]), values in [0, 255]."""
    backgrounds.render(scene.background, canvas)
    for shape in scene.shapes:
        draw(canvas, shape)


def object_mask(scene: Scene, size: int) -> np.ndarray:
    """bool [S, S]: the pixels the object shows in, exactly as `render` paints them: covered
    by one of its shapes (alpha > 0) and not wholly covered (alpha = 1) by a shape drawn later."""
    mask = np.zeros((size, size), bool)
    for index in scene.figure:
        covered = coverage(scene.shapes[index], size, size)
        if covered is not None:
            (h0, h1, w0, w1), alpha = covered
            mask[h0:h1, w0:w1] |= alpha > 0.0
    for shape in scene.shapes[scene.figure.stop:] if scene.figure else ():
        covered = coverage(shape, size, size)
        if covered is not None:
            (h0, h1, w0, w1), alpha = covered
            mask[h0:h1, w0:w1] &= alpha < 1.0
    return mask


def visibility(scene: Scene, size: int) -> np.ndarray:
    """bool [P]: landmark inside the image and no later shape within OCCLUSION_MARGIN of it."""
    points = scene.landmarks
    visible = np.all((points >= -0.5) & (points < size - 0.5), axis=1)
    for index in range(int(scene.owners.min(initial=len(scene.shapes))) + 1, len(scene.shapes)):
        lo_h, hi_h, lo_w, hi_w = bounds(scene.shapes[index])
        m = OCCLUSION_MARGIN
        near = (visible & (scene.owners < index)
                & (points[:, 0] > lo_h - m) & (points[:, 0] < hi_h + m)
                & (points[:, 1] > lo_w - m) & (points[:, 1] < hi_w + m))
        if near.any():
            visible[near] = distance_at(scene.shapes[index], points[near]) >= OCCLUSION_MARGIN
    return visible
