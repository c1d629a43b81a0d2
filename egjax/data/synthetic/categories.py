"""The object categories: articulated figures built from shapes, with one landmark per part.

A figure is built in its own frame: px at 224-px images and scale 1, facing right (+w), h down,
origin at the torso/body centre; `scene` scales, rotates, places and mirrors it. Each part is a
shape with its own colour attached at a joint of the skeleton; its landmark is a point of that
shape at least ~2 px inside it, so the landmark pixel shows the part when it is not occluded.
Angles below are degrees in the (h, w) convention of `raster`: 0 = forward, -90 = up, 90 = down.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from egjax.data.synthetic import palette
from egjax.data.synthetic.raster import PLAIN, Box, Capsule, Ellipse, Shape, Texture

OUTLINE = 1.3  # px at scale 1

LANDMARKS: dict[str, dict[str, str]] = {  # category -> part -> what its landmark marks
    "quadruped": {
        "head": "centre of the head",
        "eye": "centre of the pupil",
        "ear": "tip of the ear",
        "nose": "centre of the nose at the end of the snout",
        "neck": "point on the neck, 30% of the way from the shoulder to the head",
        "torso": "centre of the torso",
        "front_foot": "centre of the near front paw",
        "hind_foot": "centre of the near hind paw",
        "tail_tip": "centre of the tuft at the end of the tail",
    },
    "bird": {
        "head": "centre of the head",
        "eye": "centre of the pupil",
        "beak": "tip of the beak",
        "crest": "tip of the crest",
        "breast": "centre of the breast patch",
        "wing_tip": "tip of the wing",
        "tail_tip": "tip of the middle tail feather",
        "foot": "centre of the near foot",
    },
    "vehicle": {
        "roof_light": "top of the dome light on the roof",
        "window": "centre of the side window",
        "antenna_tip": "centre of the ball on top of the antenna",
        "headlight": "centre of the headlight",
        "taillight": "centre of the taillight",
        "bumper": "front end of the bumper",
        "front_wheel": "centre of the front wheel hub",
        "rear_wheel": "centre of the rear wheel hub",
    },
}
PARTS: dict[str, tuple[str, ...]] = {c: tuple(parts) for c, parts in LANDMARKS.items()}
CATEGORIES: tuple[str, ...] = tuple(PARTS)
CANONICAL_FACING = "right"


def describe() -> str:
    """The categories and their parts (in landmark order), with what each landmark marks."""
    lines = []
    for category, parts in LANDMARKS.items():
        lines.append(f"{category} ({len(parts)} parts, canonical facing {CANONICAL_FACING}):")
        lines += [f"  {i:2d} {name:12s} {text}" for i, (name, text) in enumerate(parts.items())]
    return "\n".join(lines)


class Figure(NamedTuple):
    """An object in its own frame: shapes in painter's order and its landmarks."""

    shapes: tuple[Shape, ...]
    landmarks: np.ndarray  # [P, 2] (h, w), parts in PARTS order
    owners: np.ndarray  # [P] int, index of the shape each landmark lies on


def polar(origin, length: float, angle: float) -> tuple[float, float]:
    """`origin` moved by `length` in direction `angle` (degrees)."""
    rad = math.radians(angle)
    return origin[0] + length * math.sin(rad), origin[1] + length * math.cos(rad)


def in_frame(centre, angle: float, u: float, v: float) -> tuple[float, float]:
    """The point (u along `angle`, v across it, downwards at angle 0) of a frame at `centre`."""
    rad = math.radians(angle)
    s, c = math.sin(rad), math.cos(rad)
    return centre[0] + u * s + v * c, centre[1] + u * c - v * s


def disc(centre, radius: float, rgb, outline: float = 0.0) -> Capsule:
    """A filled circle."""
    return Capsule(centre, centre, radius, radius, rgb, PLAIN, outline)


class _Builder:
    """Collects shapes in drawing order and landmarks on them."""

    def __init__(self, category: str):
        self.category = category
        self.shapes: list[Shape] = []
        self.points: dict[str, tuple[tuple[float, float], int]] = {}

    def add(self, shape: Shape, part: str | None = None, point=None) -> None:
        self.shapes.append(shape)
        if part is not None:
            self.points[part] = (point, len(self.shapes) - 1)

    def figure(self) -> Figure:
        parts = PARTS[self.category]
        return Figure(
            tuple(self.shapes),
            np.array([self.points[p][0] for p in parts], np.float32),
            np.array([self.points[p][1] for p in parts], np.int64),
        )


def coat(rng: np.random.Generator, period: float) -> Texture:
    """Plain, striped or spotted fur/feathers/paint (equally likely), period ~`period` px."""
    kind = rng.integers(3)
    freq = 2 * math.pi / (period * rng.uniform(0.8, 1.25))
    if kind == 1:
        return Texture(stripe_amp=rng.uniform(0.1, 0.18), stripe_freq=freq,
                       stripe_phase=rng.uniform(0, 2 * math.pi))
    if kind == 2:
        return Texture(spot_amp=rng.uniform(0.1, 0.18), spot_freq=freq)
    return PLAIN


def quadruped(rng: np.random.Generator) -> Figure:
    """A dog/fox-like animal: four two-segment legs with paws, neck, head with snout, nose,
    ear and eye, a two-segment tail with a tuft."""
    fig = _Builder("quadruped")
    body = palette.pick(rng, ("brown", "tan", "grey", "orange", "charcoal", "cream"), 0.12)
    fur = coat(rng, 11.0)
    paw = palette.pick(rng, ("charcoal", "brown", "cream"))
    muzzle = palette.pick(rng, ("cream", "tan", "white", "grey"))
    tuft = palette.pick(rng, ("cream", "white", "charcoal", "orange"))
    tilt = rng.uniform(-6, 6)
    length = rng.uniform(0.92, 1.08)

    def leg(hip, colour, paw_colour, part=None):
        knee = polar(hip, 22, 90 + rng.uniform(-25, 25))
        ankle = polar(knee, 19, 90 + rng.uniform(-20, 20))
        fig.add(Capsule(hip, knee, 7.0, 5.5, colour, PLAIN, OUTLINE))
        fig.add(Capsule(knee, ankle, 5.5, 4.5, colour, PLAIN, OUTLINE))
        centre = polar(ankle, 2.5, 0)
        fig.add(Ellipse(centre, 7.5, 4.8, 0.0, paw_colour, PLAIN, OUTLINE), part, centre)

    far, far_paw = palette.scaled(body, 0.72), palette.scaled(paw, 0.72)
    leg(in_frame((0, 0), tilt, 29 * length, 6), far, far_paw)
    leg(in_frame((0, 0), tilt, -19 * length, 6), far, far_paw)

    base = in_frame((0, 0), tilt, -37 * length, -6)
    angle = rng.uniform(140, 235)
    joint = polar(base, 20, angle)
    tip = polar(joint, 18, angle + rng.uniform(-30, 30))
    fig.add(Capsule(base, joint, 5.5, 4.5, body, PLAIN, OUTLINE))
    fig.add(Capsule(joint, tip, 4.5, 3.5, body, PLAIN, OUTLINE))
    fig.add(disc(tip, 6.0, tuft, OUTLINE), "tail_tip", tip)

    fig.add(Ellipse((0.0, 0.0), 40 * length, 19, math.radians(tilt), body, fur, OUTLINE),
            "torso", (0.0, 0.0))
    leg(in_frame((0, 0), tilt, 24 * length, 9), body, paw, "front_foot")
    leg(in_frame((0, 0), tilt, -24 * length, 9), body, paw, "hind_foot")

    shoulder = in_frame((0, 0), tilt, 28 * length, -9)
    head = polar(shoulder, 26, rng.uniform(-65, -35))
    neck = (0.7 * shoulder[0] + 0.3 * head[0], 0.7 * shoulder[1] + 0.3 * head[1])
    fig.add(Capsule(shoulder, head, 10.0, 9.0, body, PLAIN, OUTLINE), "neck", neck)
    look = rng.uniform(-20, 25)
    ear_base = polar(head, 7, look - 105)
    ear_tip = polar(ear_base, 20, look - 105 + rng.uniform(-20, 20))
    fig.add(Capsule(ear_base, ear_tip, 7.0, 3.6, palette.scaled(body, 0.8), PLAIN, OUTLINE),
            "ear", ear_tip)
    fig.add(Ellipse(head, 15, 13, math.radians(look), body, PLAIN, OUTLINE), "head", head)
    nose = polar(head, 21, look + 6)
    fig.add(Capsule(polar(head, 10, look), nose, 7.5, 6.0, muzzle, PLAIN, OUTLINE))
    fig.add(disc(nose, 4.6, palette.pick(rng, ("charcoal",))), "nose", nose)
    eye = polar(head, 8, look - 60)
    fig.add(disc(eye, 5.5, palette.PALETTE["white"], OUTLINE))
    pupil = polar(eye, 1.0, look)
    fig.add(disc(pupil, 3.1, palette.pick(rng, ("charcoal", "brown"), 0.05)), "eye", pupil)
    return fig.figure()


def bird(rng: np.random.Generator) -> Figure:
    """A perching bird: two thin legs with toes and feet, a fan of three tail feathers, body
    with a breast patch and a wing, neck, head with crest, beak and eye."""
    fig = _Builder("bird")
    body = palette.pick(rng, ("blue", "red", "grey", "brown", "yellow", "green", "purple"), 0.12)
    wing = palette.scaled(body, rng.uniform(0.6, 0.8))
    breast = palette.pick(rng, ("cream", "orange", "red", "white", "yellow"))
    legs = palette.pick(rng, ("orange", "pink", "yellow", "charcoal"))
    tilt = rng.uniform(-28, -12)

    def leg(hip, colour, part=None):
        ankle = polar(hip, 24, 90 + rng.uniform(-15, 15))
        fig.add(Capsule(hip, ankle, 2.8, 2.3, colour))
        fig.add(Capsule(ankle, polar(ankle, 10, rng.uniform(0, 15)), 2.0, 1.6, colour))
        fig.add(Capsule(ankle, polar(ankle, 8, rng.uniform(150, 170)), 2.0, 1.6, colour))
        fig.add(disc(ankle, 3.8, colour), part, ankle)

    leg(in_frame((0, 0), tilt, -6, 15), palette.scaled(legs, 0.72))
    leg(in_frame((0, 0), tilt, 3, 16), legs, "foot")

    base = in_frame((0, 0), tilt, -24, 2)
    spread = 180 + tilt + rng.uniform(-20, 25)
    feather = Texture(stripe_amp=0.14, stripe_freq=2 * math.pi / 8)
    for offset in (-14, 14):
        fig.add(Capsule(base, polar(base, 34, spread + offset), 7.0, 5.2, wing, feather, OUTLINE))
    tail = polar(base, 38, spread)
    fig.add(Capsule(base, tail, 7.0, 5.2, wing, feather, OUTLINE), "tail_tip", tail)

    fig.add(Ellipse((0.0, 0.0), 30, 20, math.radians(tilt), body, coat(rng, 9.0), OUTLINE))
    breast_centre = in_frame((0, 0), tilt, 15, 7)
    fig.add(Ellipse(breast_centre, 13, 10, math.radians(tilt), breast), "breast", breast_centre)
    shoulder = in_frame((0, 0), tilt, 4, -5)
    tip = polar(shoulder, 40, 180 + tilt + rng.uniform(-45, 8))
    fig.add(Capsule(shoulder, tip, 12.0, 5.2, wing, feather._replace(stripe_freq=2 * math.pi / 7),
                    OUTLINE), "wing_tip", tip)

    neck = in_frame((0, 0), tilt, 20, -8)
    head = polar(neck, 16, tilt - 60 + rng.uniform(-15, 15))
    fig.add(Capsule(neck, head, 10.0, 9.0, body, PLAIN, OUTLINE))
    look = rng.uniform(-20, 20)
    crest = palette.pick(rng, ("red", "orange", "yellow", "blue"))
    small = polar(head, 9, look - 135)
    fig.add(Capsule(small, polar(small, 10, look - 150), 4.0, 2.5, crest, PLAIN, OUTLINE))
    crest_base = polar(head, 9, look - 95)
    crest_tip = polar(crest_base, 14, look - 110 + rng.uniform(-15, 15))
    fig.add(Capsule(crest_base, crest_tip, 5.0, 3.6, crest, PLAIN, OUTLINE), "crest", crest_tip)
    fig.add(Ellipse(head, 14, 13, math.radians(look), body, PLAIN, OUTLINE), "head", head)
    beak = polar(head, 28, look + rng.uniform(0, 12))
    beak_colour = palette.pick(rng, ("yellow", "orange", "charcoal"))
    fig.add(Capsule(polar(head, 10, look), beak, 6.5, 3.6, beak_colour, PLAIN, OUTLINE),
            "beak", beak)
    eye = polar(head, 7.5, look - 55)
    fig.add(disc(eye, 5.0, palette.pick(rng, ("yellow", "orange", "white")), OUTLINE))
    pupil = polar(eye, 0.8, look)
    fig.add(disc(pupil, 2.9, palette.pick(rng, ("charcoal",), 0.05)), "eye", pupil)
    return fig.figure()


def vehicle(rng: np.random.Generator) -> Figure:
    """A car: body, cabin with a side window, dome light and antenna on the roof, head- and
    taillight, bumper, two wheels with rotating spoked hubs."""
    fig = _Builder("vehicle")
    paint = palette.pick(rng, ("red", "blue", "yellow", "green", "white", "charcoal", "orange",
                               "purple"), 0.12)
    tilt = rng.uniform(-4, 4)
    length = rng.uniform(0.9, 1.1)
    cabin_u = rng.uniform(-12, 4)
    cabin_hu = 28 * rng.uniform(0.85, 1.1)

    def frame(u, v):
        return in_frame((0, 0), tilt, u, v)

    mast = frame(cabin_u - cabin_hu + 7, -34)
    ball = polar(mast, 26, tilt - 90 - rng.uniform(15, 55))
    fig.add(Capsule(mast, ball, 1.5, 1.5, palette.PALETTE["charcoal"]))
    fig.add(disc(ball, 3.8, palette.pick(rng, ("red", "orange", "yellow"))), "antenna_tip", ball)
    dome_u = cabin_u + rng.uniform(-10, 10)
    fig.add(disc(frame(dome_u, -37), 6.5, palette.pick(rng, ("orange", "blue", "red", "yellow"))),
            "roof_light", frame(dome_u, -40.5))
    fig.add(Box(frame(cabin_u, -24), cabin_hu, 13, math.radians(tilt), 8, paint, PLAIN, OUTLINE))
    fig.add(Box(frame(0, 0), 60 * length, 16, math.radians(tilt), 7, paint, PLAIN, OUTLINE))
    window = frame(cabin_u, -25)
    glint = Texture(stripe_amp=0.12, stripe_freq=2 * math.pi / 12, stripe_phase=rng.uniform(0, 6.3))
    fig.add(Box(window, cabin_hu - 6, 8, math.radians(tilt), 4,
                palette.pick(rng, ("sky", "grey")), glint, OUTLINE), "window", window)
    headlight = frame(55 * length, -6)
    fig.add(Ellipse(headlight, 4.5, 6, math.radians(tilt),
                    palette.pick(rng, ("cream", "yellow", "white"))), "headlight", headlight)
    taillight = frame(-57 * length, -6)
    fig.add(Box(taillight, 2.8, 5, math.radians(tilt), 1.5, palette.pick(rng, ("red", "orange"))),
            "taillight", taillight)
    bumper = frame(63 * length, 11)
    fig.add(Capsule(frame(51 * length, 13), bumper, 4.0, 4.0,
                    palette.pick(rng, ("charcoal", "grey")), PLAIN, OUTLINE), "bumper", bumper)
    radius = 15 * rng.uniform(0.9, 1.1)
    hub = palette.pick(rng, ("grey", "white", "yellow"))
    for part, u in (("rear_wheel", -36), ("front_wheel", 36)):
        centre = frame(u * length, 15 + rng.uniform(-2, 2))
        fig.add(disc(centre, radius, palette.pick(rng, ("charcoal",), 0.05), OUTLINE))
        fig.add(disc(centre, 0.48 * radius, hub))
        spin = rng.uniform(0, 90)
        for angle in (spin, spin + 90):
            spoke = (polar(centre, 0.42 * radius, angle), polar(centre, 0.42 * radius, angle + 180))
            fig.add(Capsule(*spoke, 1.4, 1.4, palette.scaled(hub, 0.55)))
        fig.add(disc(centre, 2.7, hub), part, centre)
    return fig.figure()


BUILDERS = {"quadruped": quadruped, "bird": bird, "vehicle": vehicle}
