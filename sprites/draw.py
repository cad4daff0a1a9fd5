"""Low-level drawing of sprite-world images (numpy, float32 HxWx3 in [0, 1]).

Everything is drawn with hard-edged flat shapes: a background of a few flat
regions, a body with a dark outline, a pattern in a darker shade of the body
colour, eyes and an accessory.  Geometry is in pixel units on a 32x32 canvas;
pixel (row y, column x) has its centre at (y + 0.5, x + 0.5).
"""

from __future__ import annotations

import numpy as np

from .attributes import ATTRIBUTES, Context, Identity

SIZE = 32

_YS, _XS = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def _rgb(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.float32) / 255.0


BODY_COLORS = np.stack([
    _rgb(225, 30, 30),    # red
    _rgb(255, 140, 0),    # orange
    _rgb(255, 230, 0),    # yellow
    _rgb(40, 190, 40),    # green
    _rgb(0, 215, 235),    # cyan
    _rgb(40, 70, 235),    # blue
    _rgb(150, 40, 210),   # purple
    _rgb(255, 110, 190),  # pink
])
SHADE = 0.3             # pattern colour = SHADE * body colour; darker survives the 4x VAE better
OUTLINE = _rgb(25, 25, 25)
WHITE = _rgb(255, 255, 255)
BLACK = _rgb(10, 10, 10)

POSITION_X = (9.0, 16.0, 23.0)   # body centre x per position
BODY_Y = 19.0                   # body centre y
BODY_R = 7.0                    # body half size
HORIZON = 20                    # row where the ground starts


# ----------------------------------------------------------------- backgrounds
def _sky_ground(img: np.ndarray, sky, ground, horizon: int) -> None:
    img[:horizon] = sky
    img[horizon:] = ground


def _background(img: np.ndarray, background: int, horizon: int) -> None:
    name = ATTRIBUTES["background"][background]
    if name == "beach":
        _sky_ground(img, _rgb(140, 210, 255), _rgb(240, 215, 150), horizon)
        img[horizon - 4:horizon] = _rgb(20, 110, 200)              # sea
    elif name == "forest":
        _sky_ground(img, _rgb(20, 95, 45), _rgb(110, 70, 30), horizon)
        for x0 in (3, 13, 24):                                      # tree trunks
            img[horizon - 7:horizon, x0:x0 + 3] = _rgb(70, 45, 20)
    elif name == "snow":
        _sky_ground(img, _rgb(175, 200, 225), _rgb(250, 250, 250), horizon)
    elif name == "night":
        _sky_ground(img, _rgb(15, 20, 65), _rgb(45, 45, 60), horizon)
        moon = (_XS - 27.0) ** 2 + (_YS - 5.0) ** 2 <= 9.0
        img[moon] = _rgb(250, 245, 190)
    elif name == "desert":
        _sky_ground(img, _rgb(255, 235, 170), _rgb(225, 150, 60), horizon)
        sun = (_XS - 5.0) ** 2 + (_YS - 5.0) ** 2 <= 9.0
        img[sun] = _rgb(255, 120, 20)
    elif name == "city":
        _sky_ground(img, _rgb(200, 205, 215), _rgb(70, 70, 75), horizon)
        for x0, x1, top in ((0, 6, 7), (7, 13, 11), (14, 19, 5), (20, 26, 9), (27, 32, 12)):
            img[top:horizon, x0:x1] = _rgb(105, 105, 120)          # buildings
    else:  # pragma: no cover - tables and drawing out of sync
        raise ValueError(f"no drawing for background {name!r}")


# ------------------------------------------------------------------------ body
def _body_mask(shape: int, cx: float, cy: float, r: float, grow: float = 0.0) -> np.ndarray:
    """Boolean mask of the body; ``grow`` (pixels) dilates it for the outline."""
    u = (_XS - cx) / r
    v = (_YS - cy) / r
    g = grow / r
    name = ATTRIBUTES["shape"][shape]
    if name == "round":
        return u * u + v * v <= (1.0 + g) ** 2
    if name == "square":
        return (np.abs(u) <= 0.86 + g) & (np.abs(v) <= 0.86 + g)
    if name == "triangle":   # apex up, flat base
        top, base = -1.05, 0.9
        half = 1.1 * (v - top) / (base - top)
        return (v >= top - 2 * g) & (v <= base + g) & (np.abs(u) <= half + 1.5 * g)
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= 1.2 + 1.4 * g
    raise ValueError(f"no drawing for shape {name!r}")  # pragma: no cover


def _pattern_mask(pattern: int, body: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    name = ATTRIBUTES["pattern"][pattern]
    dx = np.floor(_XS - (cx - r)).astype(np.int64)
    dy = np.floor(_YS - (cy - r)).astype(np.int64)
    if name == "plain":
        return np.zeros_like(body)
    # Marks are 3-4 px: one latent pixel covers 4x4 image pixels, and 1-2 px
    # stripes and dots were read back from only 83 % of VAE reconstructions.
    if name == "stripes":
        return body & ((dy // 3) % 2 == 1)
    if name == "dots":
        return body & (((dy // 4) + (dx // 4)) % 2 == 1)
    if name == "bicolor":
        return body & (_XS > cx)
    raise ValueError(f"no drawing for pattern {name!r}")  # pragma: no cover


def _box(img: np.ndarray, x: float, y: float, w: int, h: int, color) -> None:
    x0 = int(np.floor(x - w / 2.0 + 0.5))
    y0 = int(np.floor(y - h / 2.0 + 0.5))
    img[max(y0, 0):max(y0 + h, 0), max(x0, 0):max(x0 + w, 0)] = color


# per-shape vertical eye position, in units of r from the body centre
_EYE_V = {"round": -0.15, "square": -0.2, "triangle": 0.3, "diamond": -0.05}


def _eyes(img: np.ndarray, identity: Identity, body: np.ndarray, cx: float, cy: float, r: float) -> None:
    """Eyes on a plain face patch (body colour, no pattern) so every pattern keeps them readable."""
    name = ATTRIBUTES["eyes"][identity.eyes]
    ey = cy + _EYE_V[ATTRIBUTES["shape"][identity.shape]] * r
    face = body & (np.abs(_XS - cx) <= 4.5) & (np.abs(_YS - ey) <= 2.1)
    img[face] = BODY_COLORS[identity.color]
    if name == "two":
        for side in (-1, 1):
            _box(img, cx + side * 2.5, ey, 3, 3, WHITE)
            _box(img, cx + side * 2.5, ey, 1, 1, BLACK)
    elif name == "one":
        _box(img, cx, ey, 5, 4, WHITE)
        _box(img, cx, ey, 2, 2, BLACK)
    elif name == "sleepy":
        for side in (-1, 1):
            _box(img, cx + side * 2.5, ey, 3, 1, BLACK)
    else:  # pragma: no cover
        raise ValueError(f"no drawing for eyes {name!r}")


def _accessory(img: np.ndarray, identity: Identity, cx: float, cy: float, r: float) -> None:
    name = ATTRIBUTES["accessory"][identity.accessory]
    shape = ATTRIBUTES["shape"][identity.shape]
    top = cy - r * (1.05 if shape == "triangle" else 0.86 if shape == "square" else 1.0)
    if name == "none":
        return
    if name == "hat":                  # black top hat: brim + crown
        brim = (np.abs(_XS - cx) <= 5.0) & (_YS >= top - 2.0) & (_YS <= top)
        crown = (np.abs(_XS - cx) <= 3.0) & (_YS >= top - 7.0) & (_YS <= top)
        img[brim | crown] = BLACK
    elif name == "bow":                # white bow tie with a dark knot
        by = top - 1.0
        dx, dy = np.abs(_XS - cx), np.abs(_YS - by)
        img[(dx <= 4.5) & (dy <= 0.6 + 0.6 * dx) & (dy <= 2.6)] = WHITE
        img[(dx <= 1.0) & (dy <= 1.0)] = BLACK
    else:  # pragma: no cover
        raise ValueError(f"no drawing for accessory {name!r}")


# ---------------------------------------------------------------------- public
def draw_with_mask(identity: Identity, context: Context, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One sprite as float32 [32, 32, 3] and the bool [32, 32] mask of the pixels the character covers
    (outline to hat); consumes exactly four draws from ``rng``."""
    jitter = rng.uniform(-1.0, 1.0, size=4)
    cx = POSITION_X[context.position] + 1.5 * jitter[0]
    cy = BODY_Y + 1.0 * jitter[1]
    r = BODY_R * (1.0 + 0.07 * jitter[2])
    horizon = HORIZON + int(np.round(jitter[3]))

    img = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    _background(img, context.background, horizon)
    background = img.copy()
    img[_body_mask(identity.shape, cx, cy, r, grow=1.0)] = OUTLINE
    body = _body_mask(identity.shape, cx, cy, r)
    color = BODY_COLORS[identity.color]
    img[body] = color
    img[_pattern_mask(identity.pattern, body, cx, cy, r)] = SHADE * color
    _eyes(img, identity, body, cx, cy, r)
    _accessory(img, identity, cx, cy, r)
    return img, (img != background).any(axis=-1)
