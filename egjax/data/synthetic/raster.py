"""Analytic shapes (capsule, ellipse, rounded box) and their anti-aliased, textured rasterisation.

Coordinates are pixels (h, w), pixel centres at integers. Angles are radians; a direction at
angle `a` is `(sin a, cos a)` in (h, w), so 0 points right (+w) and pi/2 points down (+h).
Canvases are float32 `[3, S, S]` (channel-first: numpy broadcasts fastest that way); each shape
is drawn only inside its bounding box, which is what makes per-image rendering fast.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import numpy as np

OUTLINE_DARKEN = 0.65  # an outline is the fill colour times (1 - OUTLINE_DARKEN)
_PIXELS = np.arange(4096, dtype=np.float32)


class Texture(NamedTuple):
    """Brightness factor in a shape's own frame (u along its axis, v across), px units:
    `1 + stripe_amp * sin(stripe_freq * u + stripe_phase) + spot_amp * sin(spot_freq * u) *
    sin(spot_freq * v)`."""

    stripe_amp: float = 0.0
    stripe_freq: float = 0.0
    stripe_phase: float = 0.0
    spot_amp: float = 0.0
    spot_freq: float = 0.0

    @property
    def amplitude(self) -> float:
        """Largest deviation of the factor from 1."""
        return abs(self.stripe_amp) + abs(self.spot_amp)


PLAIN = Texture()


class Capsule(NamedTuple):
    """Segment a -> b (h, w) thickened by a radius growing linearly from `ra` (at a) to `rb`."""

    a: tuple[float, float]
    b: tuple[float, float]
    ra: float
    rb: float
    rgb: tuple[float, float, float]
    texture: Texture = PLAIN
    outline: float = 0.0


class Ellipse(NamedTuple):
    """Ellipse with semi-axes `ru` along direction `angle` and `rv` across it."""

    centre: tuple[float, float]
    ru: float
    rv: float
    angle: float
    rgb: tuple[float, float, float]
    texture: Texture = PLAIN
    outline: float = 0.0


class Box(NamedTuple):
    """Rectangle with half sizes `hu` along direction `angle` and `hv` across, corners rounded
    by `corner` (<= min(hu, hv))."""

    centre: tuple[float, float]
    hu: float
    hv: float
    angle: float
    corner: float
    rgb: tuple[float, float, float]
    texture: Texture = PLAIN
    outline: float = 0.0


Shape = Union[Capsule, Ellipse, Box]


def bounds(shape: Shape) -> tuple[float, float, float, float]:
    """(h_min, h_max, w_min, w_max) of the shape, in px."""
    if isinstance(shape, Capsule):
        (ah, aw), (bh, bw), ra, rb = shape.a, shape.b, shape.ra, shape.rb
        return (min(ah - ra, bh - rb), max(ah + ra, bh + rb),
                min(aw - ra, bw - rb), max(aw + ra, bw + rb))
    if isinstance(shape, Ellipse):
        su, cu = math.sin(shape.angle), math.cos(shape.angle)
        eh = math.hypot(shape.ru * su, shape.rv * cu)
        ew = math.hypot(shape.ru * cu, shape.rv * su)
    else:
        su, cu = abs(math.sin(shape.angle)), abs(math.cos(shape.angle))
        eh = shape.hu * su + shape.hv * cu
        ew = shape.hu * cu + shape.hv * su
    ch, cw = shape.centre
    return ch - eh, ch + eh, cw - ew, cw + ew


def signed_distance(shape: Shape, hh: np.ndarray, ww: np.ndarray):
    """(d, u, v) at points (hh, ww) (broadcastable float32 arrays): d < 0 inside, ~px from
    the edge; u, v: the point in the shape's own frame (px, broadcastable to d), for textures.

    Written for few numpy calls: shapes are small, so call overhead dominates.
    """
    if isinstance(shape, Capsule):
        (ah, aw), (bh, bw) = shape.a, shape.b
        dh, dw = hh - ah, ww - aw
        length = math.hypot(bh - ah, bw - aw)
        if length <= 1e-6:
            return np.sqrt(dh * dh + dw * dw) - shape.ra, dw, dh
        eh, ew = (bh - ah) / length, (bw - aw) / length
        u = dh * eh + dw * ew
        v = dw * eh - dh * ew
        t = np.clip(u * (1.0 / length), 0.0, 1.0)
        along = u - t * length
        d = np.sqrt(along * along + v * v)
        if shape.rb == shape.ra:
            d -= shape.ra
        else:
            d -= t * (shape.rb - shape.ra) + shape.ra
        return d, u, v
    sa, ca = math.sin(shape.angle), math.cos(shape.angle)
    dh, dw = hh - shape.centre[0], ww - shape.centre[1]
    u = dh * sa + dw * ca
    v = dh * ca - dw * sa
    if isinstance(shape, Ellipse):
        iu, iv = 1.0 / shape.ru, 1.0 / shape.rv
        pu, pv = u * iu, v * iv
        k = np.sqrt(pu * pu + pv * pv)
        # first-order distance (k - 1) / |grad k|; the eps makes the centre -min(ru, rv)
        gu, gv = pu * iu, pv * iv
        grad = np.sqrt(gu * gu + gv * gv)
        grad += 1e-4 / min(shape.ru, shape.rv)
        d = k - 1.0
        d *= k + 1e-4
        d /= grad
        return d, u, v
    r = shape.corner
    qu = np.abs(u) - (shape.hu - r)
    qv = np.abs(v) - (shape.hv - r)
    ou, ov = np.maximum(qu, 0.0), np.maximum(qv, 0.0)
    d = np.sqrt(ou * ou + ov * ov)
    d += np.minimum(np.maximum(qu, qv), 0.0)
    d -= r
    return d, u, v


def distance_at(shape: Shape, points: np.ndarray) -> np.ndarray:
    """Signed distance (px) of the shape at `points` [m, 2] (h, w) -> [m]."""
    pts = np.asarray(points, np.float32)
    return signed_distance(shape, pts[:, 0], pts[:, 1])[0]


def _window(shape: Shape, size_h: int, size_w: int) -> tuple[int, int, int, int] | None:
    """(h0, h1, w0, w1): the pixels a shape may touch in a size_h x size_w canvas (None: none)."""
    lo_h, hi_h, lo_w, hi_w = bounds(shape)
    h0, h1 = max(int(lo_h) - 1, 0), min(int(hi_h) + 2, size_h)
    w0, w1 = max(int(lo_w) - 1, 0), min(int(hi_w) + 2, size_w)
    return None if h0 >= h1 or w0 >= w1 else (h0, h1, w0, w1)


def coverage(shape: Shape, size_h: int, size_w: int):
    """(window (h0, h1, w0, w1), alpha float32 [h1 - h0, w1 - w0]): the weight `draw` gives
    the shape's colour at each pixel of its window; None if the shape misses the canvas."""
    window = _window(shape, size_h, size_w)
    if window is None:
        return None
    h0, h1, w0, w1 = window
    d = signed_distance(shape, _PIXELS[h0:h1, None], _PIXELS[None, w0:w1])[0]
    return window, np.clip(0.5 - d, 0.0, 1.0)


def draw(canvas: np.ndarray, shape: Shape) -> None:
    """Composite `shape` onto `canvas` float32 [3, S, S] in place (anti-aliased over 1 px,
    textured, its outline band darkened)."""
    _, size_h, size_w = canvas.shape
    window = _window(shape, size_h, size_w)
    if window is None:
        return
    h0, h1, w0, w1 = window
    d, u, v = signed_distance(shape, _PIXELS[h0:h1, None], _PIXELS[None, w0:w1])
    alpha = 0.5 - d
    np.clip(alpha, 0.0, 1.0, out=alpha)
    tex = shape.texture
    shade = None
    if tex.stripe_amp:
        shade = np.sin(u * tex.stripe_freq + tex.stripe_phase)
        shade *= tex.stripe_amp
        shade += 1.0
    if tex.spot_amp:
        spots = np.sin(u * tex.spot_freq) * np.sin(v * tex.spot_freq)
        spots *= tex.spot_amp
        shade = spots + (1.0 if shade is None else shade)
    if shape.outline:
        band = d + (shape.outline + 0.5)
        np.clip(band, 0.0, 1.0, out=band)
        band *= -OUTLINE_DARKEN
        band += 1.0
        shade = band if shade is None else shade * band
    rgb = np.asarray(shape.rgb, np.float32)[:, None, None]
    patch = canvas[:, h0:h1, w0:w1]
    patch += alpha * ((rgb if shade is None else rgb * shade) - patch)
