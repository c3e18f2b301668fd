"""Offline procedural generator of industrial anomaly datasets (MVTec and VisA layouts, with pixel masks).

Why: the embedded default must run end to end with no network, so the project draws its own data. Each
category is a renderer (vectorised numpy on a pixel grid) that returns a normal image, the region where defects
may go (the whole image for textures, the object for objects) and a "background" (what a missing piece
reveals). Every image gets its own random pose, scale, colour, lighting and sensor noise, so no two normal
images are alike.

Defects are painted on top of a normal render with a *hard* mask: pixels outside the mask are untouched and
every pixel inside it differs from the normal render by at least :data:`MIN_DEFECT_DELTA` (weak spots are pushed
further), so the written mask is exactly where the image changed. Defects are local (about 1-10 % of the image)
and, for objects, always on the object.

Determinism: each image draws from ``numpy.random.Generator`` seeded by (seed, category, part, index);
PNGs are written without timestamps and JPEGs by Pillow at quality 95, so the same seed gives the same bytes.

Layouts: training categories go to ``<out>/mvtec`` (MVTec AD, with test anomalies used as auxiliary training
data), evaluation categories to ``<out>/visa`` (VisA, ``split_csv/1cls.csv`` plus a per-class
``image_anno.csv`` naming each defect). ``generate_industrial`` builds both in a temporary folder and swaps it
into place.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from anomaly_ov.config import SyntheticParams

DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "missing", "bent", "color", "extra")
#: smallest per-pixel change (max over RGB, in [0, 1]) inside a defect mask.
MIN_DEFECT_DELTA = 0.12
_PARTS = {"train_good": 1, "test_good": 2, "test_anomaly": 3}


@dataclass
class Render:
    """A normal image (float32 H x W x 3 in [0, 1]), where defects may go, and what a missing piece reveals.

    ``normal_parts`` counts the optional normal parts a renderer drew that look like another family's defects (a
    pcb's chip, a round part's bolt holes, the mounted parts of four training families), for analyses of the
    expert's scores (``benchmarks/normal_parts.py``); recording them changes no image.
    """

    image: np.ndarray
    region: np.ndarray
    background: np.ndarray
    normal_parts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Category:
    name: str
    kind: str  # "texture" or "object"
    render: Callable[[np.random.Generator, int], Render]
    defects: tuple[str, ...]
    description: str


# ------------------------------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in [0, 1), float32, read-only."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(axis, axis, indexing="ij")
    y.setflags(write=False)
    x.setflags(write=False)
    return y, x


def _rotate(size: int, angle: float, cy: float = 0.5, cx: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u along the rotated x axis, v across it) centred on (cy, cx)."""
    y, x = _grid(size)
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    return (dx * c + dy * s).astype(np.float32), (-dx * s + dy * c).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _interp_weights(size: int, cells: int) -> np.ndarray:
    """(size, cells + 2) smoothstep interpolation weights from a lattice to pixel centres (read-only)."""
    f = (np.arange(size, dtype=np.float64) + 0.5) / size * cells
    i = f.astype(np.int64)
    t = f - i
    t = t * t * (3 - 2 * t)
    weights = np.zeros((size, cells + 2), np.float32)
    weights[np.arange(size), i] = 1 - t
    weights[np.arange(size), i + 1] = t
    weights.setflags(write=False)
    return weights


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a ``cells`` x ``cells`` random lattice smoothly interpolated to the image.

    Separable interpolation as two small matrix products (much faster than per-pixel gathers).
    """
    lattice = rng.random((cells + 2, cells + 2), dtype=np.float32)
    weights = _interp_weights(size, cells)
    return weights @ lattice @ weights.T


def _fbm(rng: np.random.Generator, size: int, base: int = 3, octaves: int = 3) -> np.ndarray:
    """A few octaves of value noise, roughly in [0, 1]."""
    total = np.zeros((size, size), np.float32)
    weight = 0.0
    for octave in range(octaves):
        w = 0.5**octave
        total += w * _smooth_noise(rng, size, base * 2**octave)
        weight += w
    return total / weight


def _jitter_colour(rng: np.random.Generator, base: tuple[float, float, float], amount: float) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0.02, 0.98)


def _hsv_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    """A random colour from a uniformly drawn hue and a saturation/value range."""
    h, s, v = rng.random(), rng.uniform(*sat), rng.uniform(*val)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


def _shade(albedo: np.ndarray, light: np.ndarray) -> np.ndarray:
    """albedo (H,W,3) or (3,) times light (H,W)."""
    return albedo * light[..., None]


def _lighting(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Global illumination (gradient + vignette + colour temperature) and sensor noise, so no two images match."""
    size = image.shape[0]
    y, x = _grid(size)
    gain = rng.uniform(0.85, 1.1) + rng.uniform(-0.15, 0.15) * (x - 0.5) + rng.uniform(-0.15, 0.15) * (y - 0.5)
    gain = gain - rng.uniform(0.0, 0.3) * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    tint = 1 + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.012)
    return np.clip(image * gain[..., None] * tint + noise, 0.0, 1.0)


def _dark_backing(rng: np.random.Generator, size: int) -> np.ndarray:
    """What shows through a hole in a texture: a dark, slightly noisy backing."""
    level = rng.uniform(0.03, 0.12)
    return np.repeat((level + 0.05 * _smooth_noise(rng, size, 6))[..., None], 3, axis=2)


def _table(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plain work-surface background for objects (light or dark, faint texture)."""
    colour = _hsv_colour(rng, (0.0, 0.25), (0.15, 0.85))
    return _shade(colour, 0.9 + 0.2 * _fbm(rng, size, 4, 2))


#: the kinds of optional mounted parts, in the order ``_mount_parts`` draws their index
MOUNTED_KINDS = ("modules", "nameplates", "sockets")


def _mount_parts(
    rng: np.random.Generator, image: np.ndarray, chance: float = 0.5
) -> tuple[np.ndarray, dict[str, int]]:
    """Optional mounted parts on a normal ``image`` (H x W x 3): with probability ``chance``, one or two of a
    module (a dark body with metal legs on two sides, drawn like the pcb's chip), a riveted nameplate or a round
    socket, at a random place. Returns the image (a copy when parts were drawn) and how many of each kind it got
    (``MOUNTED_KINDS``, for ``Render.normal_parts``).

    Why: real products carry parts that some units have and others lack (a label, a component, a port). They are
    sharp-edged and regular where the defects are blobs and lines, and present on some normal images of a family
    but not on others, so the expert cannot learn "a dark rectangle that most images lack is a defect".
    """
    counts = dict.fromkeys(MOUNTED_KINDS, 0)
    if rng.random() >= chance:
        return image, counts
    size = image.shape[0]
    image = image.copy()
    for _ in range(int(rng.integers(1, 3))):
        angle = rng.uniform(-0.25, 0.25) + int(rng.integers(0, 2)) * np.pi / 2
        u, v = _rotate(size, angle, rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8))
        hw, hh = rng.uniform(0.05, 0.12), rng.uniform(0.04, 0.08)
        body = (np.abs(u) < hw) & (np.abs(v) < hh)
        kind = int(rng.integers(0, 3))
        counts[MOUNTED_KINDS[kind]] += 1
        if kind == 0:  # a module: dark body, a row of metal legs along two sides
            pitch = rng.uniform(0.018, 0.026)
            legs = (np.abs(u) < hw + 0.02) & (np.abs(v) < hh * 0.9) & (np.sin(v / pitch * np.pi) > 0.2)
            image[legs] = _jitter_colour(rng, (0.75, 0.7, 0.55), 0.15)
            image[body] = _jitter_colour(rng, (0.1, 0.1, 0.11), 0.05)
        elif kind == 1:  # a nameplate, light or dark, with a rivet in each corner
            plate = _hsv_colour(rng, (0.0, 0.3), (0.1, 0.9))
            image[body] = plate * (0.92 + 0.08 * _smooth_noise(rng, size, 6)[body][:, None])
            rivet_r = min(hw, hh) * 0.16
            for su in (-1, 1):
                for sv in (-1, 1):
                    rivet = (u - su * hw * 0.8) ** 2 + (v - sv * hh * 0.7) ** 2 < rivet_r**2
                    image[rivet] = _jitter_colour(rng, (0.7, 0.7, 0.68), 0.08)
        else:  # a round socket: a metal rim around a dark opening
            r = np.sqrt(u * u + v * v)
            image[r < hh * 1.15] = _jitter_colour(rng, (0.72, 0.72, 0.7), 0.1)
            image[r < hh * 0.8] = _jitter_colour(rng, (0.06, 0.06, 0.07), 0.03)
    return image, counts


# --------------------------------------------------------------------------------------------- textures
def _render_fabric(rng: np.random.Generator, size: int) -> Render:
    angle = rng.uniform(-0.35, 0.35) + rng.integers(0, 2) * np.pi / 2
    u, v = _rotate(size, angle, rng.random(), rng.random())
    period = rng.uniform(0.035, 0.07)
    fu, fv = u / period, v / period
    iu, iv = np.floor(fu), np.floor(fv)
    pu, pv = np.sin(np.pi * (fu - iu)), np.sin(np.pi * (fv - iv))
    over = ((iu + iv) % 2) == 0
    thread = np.where(over, np.sqrt(pu) * (0.8 + 0.2 * pv), np.sqrt(pv) * (0.8 + 0.2 * pu))
    fibres = 0.9 + 0.2 * _smooth_noise(rng, size, max(8, size // 4))
    colour = _hsv_colour(rng, (0.2, 0.85), (0.3, 0.9))
    image, parts = _mount_parts(rng, _shade(colour, (0.35 + 0.65 * thread) * fibres).astype(np.float32))
    return Render(image, np.ones((size, size), bool), _dark_backing(rng, size), parts)


def _render_wood(rng: np.random.Generator, size: int) -> Render:
    y, x = _grid(size)
    cx, cy = rng.uniform(-1.0, 2.0), rng.choice([-1.2, 2.2]) + rng.uniform(-0.3, 0.3)
    stretch = rng.uniform(0.15, 0.5)
    if rng.random() < 0.5:
        x, y, cx, cy = y, x, cy, cx
    dist = np.sqrt(((x - cx) * stretch) ** 2 + (y - cy) ** 2)
    warp = 0.06 * _fbm(rng, size, 2, 3)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (dist + warp) * rng.uniform(10, 22))
    grain = rings**2 * 0.8 + 0.2 * _smooth_noise(rng, size, max(8, size // 3))
    light = _jitter_colour(rng, (0.78, 0.58, 0.38), 0.08)
    dark = light * rng.uniform(0.45, 0.65)
    image = light * (1 - grain[..., None]) + dark * grain[..., None]
    return Render(image.astype(np.float32), np.ones((size, size), bool), _dark_backing(rng, size))


def _render_metal(rng: np.random.Generator, size: int) -> Render:
    angle = rng.uniform(-0.4, 0.4) + rng.integers(0, 2) * np.pi / 2
    u, v = _rotate(size, angle, rng.random(), rng.random())
    samples: np.ndarray = rng.normal(0.0, 1.0, 4 * size + 8).astype(np.float32)
    samples = np.convolve(samples, np.ones(2, np.float32) / 2, mode="same")
    lines = np.interp(v.ravel() * size + 2 * size + 4, np.arange(samples.size), samples).reshape(size, size)
    sheen = 0.85 + 0.2 * np.cos(2 * np.pi * (u * rng.uniform(0.3, 1.2) + rng.random()))
    grey = rng.uniform(0.5, 0.78)
    light = grey * sheen + 0.045 * lines + 0.04 * (_smooth_noise(rng, size, 5) - 0.5)
    tint = _jitter_colour(rng, (1.0, 1.0, 1.0), 0.06)
    image, parts = _mount_parts(rng, _shade(tint, light))
    return Render(image, np.ones((size, size), bool), _dark_backing(rng, size), parts)


def _render_tiles(rng: np.random.Generator, size: int) -> Render:
    angle = rng.uniform(-0.12, 0.12)
    u, v = _rotate(size, angle, rng.random(), rng.random())
    tile = rng.uniform(0.18, 0.32)
    grout = tile * rng.uniform(0.06, 0.1)
    fu, fv = u / tile, v / tile
    iu, iv = np.floor(fu).astype(np.int32), np.floor(fv).astype(np.int32)
    edge = np.minimum(np.minimum(fu - iu, 1 - (fu - iu)), np.minimum(fv - iv, 1 - (fv - iv))) * tile
    palette_size = 8
    base = _hsv_colour(rng, (0.1, 0.75), (0.4, 0.9))
    palette = np.clip(base + rng.uniform(-0.06, 0.06, (palette_size, palette_size, 3)), 0, 1).astype(np.float32)
    colours = palette[iu % palette_size, iv % palette_size]
    glaze = 0.93 + 0.1 * _fbm(rng, size, 6, 2)
    bevel = np.clip(edge / (grout * 1.5), 0, 1) * 0.1 + 0.9
    grout_colour = _jitter_colour(rng, (0.35, 0.35, 0.33), 0.12)
    image = np.where((edge < grout / 2)[..., None], grout_colour, colours * (glaze * bevel)[..., None])
    image, parts = _mount_parts(rng, image.astype(np.float32))
    return Render(image, np.ones((size, size), bool), _dark_backing(rng, size), parts)


# ----------------------------------------------------------------------------------------------- objects
def _render_screw(rng: np.random.Generator, size: int) -> Render:
    background = _table(rng, size)
    angle = rng.uniform(0, 2 * np.pi)
    length, half_width = rng.uniform(0.45, 0.62), rng.uniform(0.045, 0.065)
    u, v = _rotate(size, angle, 0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.06, 0.06))
    u = u + length / 2 - 0.08
    pitch = rng.uniform(0.025, 0.04)
    thread = np.sin(2 * np.pi * u / pitch + 4 * v / half_width)
    taper = np.clip((length - u) / 0.08, 0, 1)
    shaft = (u > 0) & (u < length) & (np.abs(v) < half_width * (1 + 0.18 * thread) * taper)
    head_r = rng.uniform(0.09, 0.13)
    du = u + head_r * 0.55
    head = du**2 + v**2 < head_r**2
    metal = _jitter_colour(rng, (0.72, 0.7, 0.66), 0.08)
    across = np.clip(1 - (v / half_width) ** 2, 0, 1)
    shaft_light = 0.45 + 0.4 * np.sqrt(across) + 0.12 * thread
    dome = np.sqrt(np.clip(1 - (du**2 + v**2) / head_r**2, 0, 1))
    slot_angle = rng.uniform(0, np.pi)
    slot = np.abs(du * np.sin(slot_angle) - v * np.cos(slot_angle)) < head_r * 0.14
    head_light = (0.5 + 0.45 * dome) * np.where(slot & (dome > 0.35), 0.35, 1.0)
    light = np.where(head, head_light, shaft_light)
    region = shaft | head
    image = np.where(region[..., None], _shade(metal, light), background)
    return Render(image.astype(np.float32), region, background)


def _render_pill(rng: np.random.Generator, size: int) -> Render:
    background = _table(rng, size)
    u, v = _rotate(size, rng.uniform(0, np.pi), 0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.06, 0.06))
    a, b = rng.uniform(0.27, 0.36), rng.uniform(0.13, 0.19)
    # capsule: a rectangle with round ends
    core = np.clip(np.abs(u) - (a - b), 0, None)
    r2 = (core / b) ** 2 + (v / b) ** 2
    region = r2 < 1
    dome = np.sqrt(np.clip(1 - r2, 0, 1))
    white = rng.random() < 0.5
    colour_a = _hsv_colour(rng, (0.0, 0.15), (0.82, 0.95)) if white else _hsv_colour(rng, (0.4, 0.8), (0.6, 0.9))
    colour_b = colour_a if rng.random() < 0.5 else _hsv_colour(rng, (0.3, 0.8), (0.5, 0.9))
    albedo = np.where((u < 0)[..., None], colour_a, colour_b)
    speckle = _smooth_noise(rng, size, max(10, size // 5)) > rng.uniform(0.84, 0.92)
    albedo = np.where((speckle & region)[..., None], albedo * 0.85, albedo)
    light = 0.55 + 0.45 * dome + 0.25 * np.clip(dome - 0.85, 0, None) / 0.15
    image = np.where(region[..., None], _shade(albedo, light), background)
    return Render(np.clip(image, 0, 1).astype(np.float32), region, background)


def _render_pcb(rng: np.random.Generator, size: int) -> Render:
    background = _table(rng, size)
    angle = rng.uniform(-0.15, 0.15)
    u, v = _rotate(size, angle, 0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.04, 0.04))
    half_w, half_h = rng.uniform(0.36, 0.44), rng.uniform(0.3, 0.42)
    region = (np.abs(u) < half_w) & (np.abs(v) < half_h)
    board = _jitter_colour(rng, (0.12, 0.42, 0.2), 0.07)
    image = _shade(board, 0.85 + 0.25 * _fbm(rng, size, 5, 2))
    copper = _jitter_colour(rng, (0.8, 0.62, 0.3), 0.07)
    trace_colour = np.clip(board * 1.45 + 0.03, 0, 1)  # copper under the solder mask: a lighter green
    width = rng.uniform(0.008, 0.014)
    for _ in range(int(rng.integers(3, 7))):
        pos = rng.uniform(-0.85, 0.85)
        start, stop = np.sort(rng.uniform(-1, 1, 2))
        if rng.random() < 0.5:
            trace = (np.abs(u - pos * half_w) < width) & (v > start * half_h) & (v < stop * half_h)
        else:
            trace = (np.abs(v - pos * half_h) < width) & (u > start * half_w) & (u < stop * half_w)
        image[trace] = trace_colour
    for _ in range(int(rng.integers(2, 6))):
        pu, pv = rng.uniform(-0.85, 0.85) * half_w, rng.uniform(-0.85, 0.85) * half_h
        radius = rng.uniform(0.014, 0.022)
        pad = (u - pu) ** 2 + (v - pv) ** 2 < radius**2
        image[pad] = copper * 1.15
        image[(u - pu) ** 2 + (v - pv) ** 2 < (radius * 0.4) ** 2] = 0.08
    chips = int(rng.integers(0, 2))
    for _ in range(chips):
        cu, cv = rng.uniform(-0.5, 0.5) * half_w, rng.uniform(-0.5, 0.5) * half_h
        cw, ch = rng.uniform(0.06, 0.12), rng.uniform(0.05, 0.09)
        pins = (np.abs(u - cu) < cw + 0.02) & (np.abs(v - cv) < ch) & (np.sin((v - cv) / 0.022 * np.pi) > 0.2)
        image[pins] = copper * 0.9
        chip = (np.abs(u - cu) < cw) & (np.abs(v - cv) < ch)
        image[chip] = _jitter_colour(rng, (0.1, 0.1, 0.11), 0.04)
    image = np.where(region[..., None], np.clip(image, 0, 1), background)
    return Render(image.astype(np.float32), region, background, {"chips": chips})


def _render_round_part(rng: np.random.Generator, size: int) -> Render:
    background = _table(rng, size)
    cy, cx = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
    y, x = _grid(size)
    dy, dx = y - cy, x - cx
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    outer, inner = rng.uniform(0.3, 0.42), rng.uniform(0.06, 0.13)
    region = (r < outer) & (r > inner)
    holes = int(rng.integers(0, 7))
    if holes >= 3:
        ring_r, hole_r, phase = (outer + inner) / 2 + 0.02, rng.uniform(0.025, 0.04), rng.uniform(0, 2 * np.pi)
        for k in range(holes):
            a = phase + 2 * np.pi * k / holes
            region &= (x - cx - ring_r * np.cos(a)) ** 2 + (y - cy - ring_r * np.sin(a)) ** 2 > hole_r**2
    plain = rng.random() < 0.6
    metal = _hsv_colour(rng, (0.0, 0.12), (0.6, 0.85)) if plain else _hsv_colour(rng, (0.3, 0.7), (0.5, 0.8))
    turning = 0.9 + 0.1 * np.sin(2 * np.pi * r * rng.uniform(14, 26))
    sheen = 0.8 + 0.2 * np.cos(2 * (theta - rng.uniform(0, np.pi)))
    bevel = np.where((r > outer - 0.025) | (r < inner + 0.02), 0.75, 1.0)
    image = np.where(region[..., None], _shade(metal, turning * sheen * bevel), background)
    return Render(image.astype(np.float32), region, background, {"bolt_holes": holes if holes >= 3 else 0})


# ------------------------------------------------------------------------ families whose normal parts look like defects
# What is a defect on one category is a normal part of another: holes (perforated sheet, button, nut, gear, bottle,
# connector), dark rectangles (IC chip, keypad, mesh openings), dark dots (dice pips, leather pores), specks
# (terrazzo). Trained on these, the expert has to learn what is normal *for this object* instead of "dark = defect".
def _render_perforated(rng: np.random.Generator, size: int) -> Render:
    """Sheet metal with a regular (straight or staggered) grid of round holes showing a dark backing."""
    u, v = _rotate(size, rng.uniform(-0.25, 0.25), rng.random(), rng.random())
    pitch = rng.uniform(0.09, 0.16)
    fv = v / pitch
    row = np.floor(fv)
    fu = u / pitch + (0.5 * (row % 2) if rng.random() < 0.5 else 0.0)
    hole = (fu - np.round(fu)) ** 2 + (fv - row - 0.5) ** 2 < rng.uniform(0.2, 0.34) ** 2
    backing = _dark_backing(rng, size)
    sheet = _shade(_jitter_colour(rng, (1.0, 1.0, 1.0), 0.08), rng.uniform(0.45, 0.8) * (0.9 + 0.15 * _fbm(rng, size)))
    image = np.where(hole[..., None], backing, sheet)
    return Render(image.astype(np.float32), np.ones((size, size), bool), backing)


def _render_terrazzo(rng: np.random.Generator, size: int) -> Render:
    """Polished stone with scattered chips of a few colours, dark and light (specks are normal here)."""
    y, x = _grid(size)
    image = _shade(_hsv_colour(rng, (0.0, 0.3), (0.5, 0.9)), 0.92 + 0.12 * _fbm(rng, size, 5, 2))
    palette = [_hsv_colour(rng, (0.0, 0.7), (0.05, 0.95)) for _ in range(3)]
    for _ in range(int(rng.integers(30, 70))):
        cy, cx, r = rng.random(), rng.random(), rng.uniform(0.008, 0.028)
        chip = ((y - cy) / rng.uniform(0.6, 1.0)) ** 2 + (x - cx) ** 2 < r**2
        image[chip] = palette[int(rng.integers(0, 3))]
    return Render(image.astype(np.float32), np.ones((size, size), bool), _dark_backing(rng, size))


def _render_leather(rng: np.random.Generator, size: int) -> Render:
    """Grained leather: cellular creases and small dark pores."""
    grain = np.abs(_smooth_noise(rng, size, max(6, size // 10)) - 0.5) * 2
    pores = _smooth_noise(rng, size, max(12, size // 3)) > rng.uniform(0.88, 0.94)
    colour = _hsv_colour(rng, (0.3, 0.8), (0.2, 0.75))
    leather = _shade(colour, (0.75 + 0.3 * grain) * np.where(pores, 0.6, 1.0)).astype(np.float32)
    image, parts = _mount_parts(rng, leather)
    return Render(image, np.ones((size, size), bool), _dark_backing(rng, size), parts)


def _render_carpet(rng: np.random.Generator, size: int) -> Render:
    """Tufted carpet: fine, dense fibre noise over a slowly varying pile."""
    fibres = rng.random((size, size), dtype=np.float32)
    pile = 0.8 + 0.3 * _fbm(rng, size, 3, 2)
    image = _shade(_hsv_colour(rng, (0.2, 0.8), (0.3, 0.85)), pile * (0.8 + 0.25 * fibres))
    return Render(image.astype(np.float32), np.ones((size, size), bool), _dark_backing(rng, size))


def _render_bricks(rng: np.random.Generator, size: int) -> Render:
    """A brick wall: staggered rows of bricks of varying shade, mortar joints between them."""
    u, v = _rotate(size, rng.uniform(-0.08, 0.08), rng.random(), rng.random())
    height = rng.uniform(0.1, 0.18)
    width = height * rng.uniform(1.8, 2.6)
    fv = v / height
    row = np.floor(fv)
    fu = u / width + 0.5 * (row % 2)
    col = np.floor(fu)
    joint = rng.uniform(0.06, 0.1)
    mortar = (fv - row < joint) | ((fu - col) * width / height < joint)
    shade = 0.8 + 0.3 * np.sin(row * 12.9898 + col * 78.233) ** 2
    brick = _jitter_colour(rng, (0.62, 0.3, 0.2), 0.1)
    image = np.where(mortar[..., None], _jitter_colour(rng, (0.7, 0.68, 0.62), 0.08),
                     _shade(brick, shade * (0.9 + 0.15 * _fbm(rng, size, 8, 2))))
    return Render(image.astype(np.float32), np.ones((size, size), bool), _dark_backing(rng, size))


def _render_mesh(rng: np.random.Generator, size: int) -> Render:
    """Woven wire mesh: bright wires with square openings that show a dark background."""
    u, v = _rotate(size, rng.uniform(-0.3, 0.3), rng.random(), rng.random())
    pitch = rng.uniform(0.07, 0.13)
    fu, fv = u / pitch, v / pitch
    wire = rng.uniform(0.12, 0.25)
    du, dv = np.abs(fu - np.round(fu)), np.abs(fv - np.round(fv))
    on = (du < wire) | (dv < wire)
    backing = _dark_backing(rng, size)
    light = 0.6 + 0.4 * np.cos(np.pi * np.minimum(du, dv) / (2 * wire)).clip(0, 1)
    image = np.where(on[..., None], _shade(_jitter_colour(rng, (0.75, 0.75, 0.72), 0.1), light), backing)
    return Render(image.astype(np.float32), np.ones((size, size), bool), backing)


def _disc_object(rng: np.random.Generator, size: int, radius: tuple[float, float]):
    """(table, y, x, r, theta, cy, cx, outer) of a roughly centred round object."""
    cy, cx = 0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.06, 0.06)
    y, x = _grid(size)
    r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    return _table(rng, size), y, x, r, np.arctan2(y - cy, x - cx), cy, cx, rng.uniform(*radius)


def _render_button(rng: np.random.Generator, size: int) -> Render:
    """A sewing button: a disc with a raised rim and 2 or 4 holes that show the table."""
    table, y, x, r, _, cy, cx, outer = _disc_object(rng, size, (0.25, 0.38))
    region = r < outer
    count, spread, phase = int(rng.choice([2, 4])), outer * rng.uniform(0.18, 0.3), rng.uniform(0, np.pi)
    hole_r = outer * rng.uniform(0.08, 0.13)
    for k in range(count):
        a = phase + 2 * np.pi * k / count
        region &= (y - cy - spread * np.sin(a)) ** 2 + (x - cx - spread * np.cos(a)) ** 2 > hole_r**2
    colour = _hsv_colour(rng, (0.2, 0.9), (0.3, 0.95))
    light = np.where(r > outer * 0.8, 1.1, 0.85) * (0.9 + 0.1 * _fbm(rng, size, 4, 2))
    image = np.where(region[..., None], _shade(colour, light), table * 0.6)
    return Render(image.astype(np.float32), region, table)


def _render_nut(rng: np.random.Generator, size: int) -> Render:
    """A hex nut seen from above: chamfered hexagon around a threaded hole."""
    table, y, x, r, theta, _, _, outer = _disc_object(rng, size, (0.28, 0.4))
    rot = rng.uniform(0, np.pi / 3)
    sector = np.mod(theta - rot, np.pi / 3) - np.pi / 6
    hex_r = outer * np.cos(np.pi / 6) / np.cos(sector)
    inner = outer * rng.uniform(0.35, 0.5)
    region = (r < hex_r) & (r > inner)
    metal = _jitter_colour(rng, (0.66, 0.65, 0.62), 0.1)
    chamfer = np.where(r > outer * 0.82, 0.75, 1.0) * (0.85 + 0.15 * np.cos(theta - rng.uniform(0, 6.3)))
    thread = np.where(r < inner * 1.12, 0.6 + 0.2 * np.sin(theta * 24), 1.0)
    image = np.where(region[..., None], _shade(metal, chamfer * thread), table * 0.4)
    return Render(image.astype(np.float32), region, table)


def _render_gear(rng: np.random.Generator, size: int) -> Render:
    """A spur gear: a toothed ring with a bore and round lightening holes in its web."""
    table, y, x, r, theta, cy, cx, outer = _disc_object(rng, size, (0.3, 0.4))
    teeth = int(rng.integers(10, 20))
    tooth = (np.cos(teeth * (theta - rng.uniform(0, 1))) > 0).astype(np.float32)
    region = (r < outer * (0.88 + 0.12 * tooth)) & (r > outer * rng.uniform(0.15, 0.25))
    holes = int(rng.integers(0, 6))
    if holes >= 3:
        ring, hole_r, phase = outer * 0.55, outer * rng.uniform(0.1, 0.16), rng.uniform(0, 2 * np.pi)
        for k in range(holes):
            a = phase + 2 * np.pi * k / holes
            region &= (y - cy - ring * np.sin(a)) ** 2 + (x - cx - ring * np.cos(a)) ** 2 > hole_r**2
    metal = _hsv_colour(rng, (0.0, 0.35), (0.45, 0.85))
    light = np.where(r > outer * 0.8, 0.8, 1.0) * (0.85 + 0.15 * np.cos(2 * theta + rng.uniform(0, 3)))
    image = np.where(region[..., None], _shade(metal, light), table)
    return Render(image.astype(np.float32), region, table)


def _render_bottle(rng: np.random.Generator, size: int) -> Render:
    """A bottle seen from above: concentric glass rings around the dark opening."""
    table, _, _, r, theta, _, _, outer = _disc_object(rng, size, (0.3, 0.42))
    region = r < outer
    opening = outer * rng.uniform(0.3, 0.45)
    glass = _hsv_colour(rng, (0.1, 0.7), (0.3, 0.8))
    rings = 0.75 + 0.25 * np.cos(2 * np.pi * r / outer * rng.uniform(2.5, 4.5)) ** 2
    light = np.where(r < opening, 0.12 + 0.1 * r / opening, rings * (0.9 + 0.1 * np.cos(theta)))
    image = np.where(region[..., None], _shade(glass, light), table)
    return Render(image.astype(np.float32), region, table)


def _render_cable(rng: np.random.Generator, size: int) -> Render:
    """A cable's cross-section: a jacket around three insulated cores, each with a copper conductor."""
    table, y, x, r, _, cy, cx, outer = _disc_object(rng, size, (0.32, 0.42))
    region = r < outer
    jacket = _hsv_colour(rng, (0.0, 0.3), (0.1, 0.6))
    image = np.where(region[..., None], _shade(jacket, 0.9 + 0.1 * _fbm(rng, size, 6, 2)), table)
    phase, core_r = rng.uniform(0, 2 * np.pi), outer * rng.uniform(0.33, 0.4)
    copper = _jitter_colour(rng, (0.8, 0.55, 0.3), 0.06)
    for k in range(3):
        a = phase + 2 * np.pi * k / 3
        d = np.sqrt((y - cy - 0.5 * outer * np.sin(a)) ** 2 + (x - cx - 0.5 * outer * np.cos(a)) ** 2)
        image = np.where((d < core_r)[..., None], _hsv_colour(rng, (0.6, 1.0), (0.5, 0.95)), image)
        image = np.where((d < core_r * 0.55)[..., None], _shade(copper, 0.8 + 0.3 * rng.random((size, size))), image)
    return Render(image.astype(np.float32), region, table)


def _rect_object(rng: np.random.Generator, size: int, half: tuple[float, float], tilt: float = 0.2):
    """(table, u, v, half_w, half_h) of a roughly centred, slightly turned rectangular object."""
    u, v = _rotate(size, rng.uniform(-tilt, tilt) + rng.integers(0, 2) * np.pi / 2,
                   0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05))
    return _table(rng, size), u, v, rng.uniform(*half), rng.uniform(half[0] * 0.6, half[1])


def _render_ic_chip(rng: np.random.Generator, size: int) -> Render:
    """An integrated circuit: a black epoxy rectangle with a pin-1 dot and rows of metal legs on two sides."""
    table, u, v, hw, hh = _rect_object(rng, size, (0.2, 0.3))
    body = (np.abs(u) < hw) & (np.abs(v) < hh)
    pitch = rng.uniform(0.045, 0.07)
    legs = (np.abs(u) < hw + 0.07) & (np.abs(u) > hw) & (np.abs(v) < hh * 0.92)
    legs &= np.cos(np.pi * v / pitch * 2) > 0
    epoxy = _jitter_colour(rng, (0.1, 0.1, 0.11), 0.05)
    image = np.where(body[..., None], _shade(epoxy, 0.9 + 0.2 * _fbm(rng, size, 8, 2)), table)
    image = np.where(legs[..., None], _jitter_colour(rng, (0.78, 0.78, 0.76), 0.06), image)
    dot = (u + hw * 0.7) ** 2 + (v + hh * 0.7) ** 2 < (hw * 0.12) ** 2
    image = np.where((dot & body)[..., None], epoxy * 2.2, image)
    region = body | legs
    return Render(image.astype(np.float32), region, table)


def _render_keypad(rng: np.random.Generator, size: int) -> Render:
    """A keypad: a light panel with a grid of dark rectangular keys."""
    table, u, v, hw, hh = _rect_object(rng, size, (0.3, 0.42), 0.1)
    region = (np.abs(u) < hw) & (np.abs(v) < hh)
    cols, rows = int(rng.integers(3, 5)), int(rng.integers(3, 6))
    fu, fv = (u + hw) / (2 * hw) * cols, (v + hh) / (2 * hh) * rows
    gap = rng.uniform(0.15, 0.3)
    key = region & (np.abs(fu - np.floor(fu) - 0.5) < 0.5 - gap) & (np.abs(fv - np.floor(fv) - 0.5) < 0.5 - gap)
    panel = _hsv_colour(rng, (0.0, 0.2), (0.65, 0.92))
    keys = _hsv_colour(rng, (0.0, 0.3), (0.08, 0.3))
    image = np.where(region[..., None], _shade(panel, 0.92 + 0.1 * _fbm(rng, size, 4, 2)), table)
    image = np.where(key[..., None], keys, image)
    return Render(image.astype(np.float32), region, table)


def _render_connector(rng: np.random.Generator, size: int) -> Render:
    """A connector housing: a plastic block with one or two rows of dark rectangular sockets, each with a pin."""
    table, u, v, hw, hh = _rect_object(rng, size, (0.28, 0.4))
    hh = min(hh, hw * 0.6)
    region = (np.abs(u) < hw) & (np.abs(v) < hh)
    count, rows = int(rng.integers(4, 9)), int(rng.integers(1, 3))
    fu, fv = (u + hw) / (2 * hw) * count, (v + hh) / (2 * hh) * rows
    socket = region & (np.abs(fu - np.floor(fu) - 0.5) < 0.3) & (np.abs(fv - np.floor(fv) - 0.5) < 0.3)
    pin = socket & (np.abs(fu - np.floor(fu) - 0.5) < 0.1) & (np.abs(fv - np.floor(fv) - 0.5) < 0.1)
    plastic = _hsv_colour(rng, (0.0, 0.8), (0.5, 0.95))
    image = np.where(region[..., None], _shade(plastic, 0.9 + 0.1 * _fbm(rng, size, 4, 2)), table)
    image = np.where(socket[..., None], plastic * 0.15, image)
    image = np.where(pin[..., None], _jitter_colour(rng, (0.85, 0.7, 0.35), 0.06), image)
    return Render(image.astype(np.float32), region, table)


def _render_dice(rng: np.random.Generator, size: int) -> Render:
    """A die: a rounded square with 1 to 6 dark pips (dark dots are its normal face)."""
    table, u, v, hw, _ = _rect_object(rng, size, (0.22, 0.32), np.pi)
    corner = hw * 0.25
    du, dv = np.clip(np.abs(u) - (hw - corner), 0, None), np.clip(np.abs(v) - (hw - corner), 0, None)
    region = du**2 + dv**2 < corner**2
    face = int(rng.integers(1, 7))
    corners, middle = [(-1, -1), (1, 1)], [(-1, 1), (1, -1)]
    layout = {1: [(0, 0)], 2: corners, 3: [*corners, (0, 0)], 4: corners + middle, 5: [*corners, *middle, (0, 0)],
              6: [*corners, *middle, (-1, 0), (1, 0)]}
    pips = np.zeros_like(region)
    for a, b in layout[face]:
        pips |= (u - a * hw * 0.5) ** 2 + (v - b * hw * 0.5) ** 2 < (hw * 0.15) ** 2
    plain = rng.random() < 0.7
    ivory = _hsv_colour(rng, (0.0, 0.15), (0.8, 0.97)) if plain else _hsv_colour(rng, (0.5, 0.9), (0.5, 0.9))
    image = np.where(region[..., None], _shade(ivory, 0.92 + 0.08 * _fbm(rng, size, 4, 2)), table)
    image = np.where((pips & region)[..., None], _hsv_colour(rng, (0.0, 0.4), (0.05, 0.2)), image)
    return Render(image.astype(np.float32), region, table)


CATEGORIES: dict[str, Category] = {
    "fabric": Category(
        "fabric", "texture", _render_fabric, ("hole", "stain", "color", "scratch", "missing", "extra"), "woven fabric"
    ),
    "wood": Category("wood", "texture", _render_wood, ("scratch", "crack", "hole", "stain", "color", "extra"), "wood"),
    "metal": Category(
        "metal", "texture", _render_metal, ("scratch", "hole", "stain", "bent", "color", "extra"), "brushed metal"
    ),
    "tiles": Category(
        "tiles", "texture", _render_tiles, ("crack", "missing", "stain", "color", "extra", "hole"), "ceramic tiles"
    ),
    "screw": Category("screw", "object", _render_screw, ("scratch", "missing", "bent", "stain", "extra"), "screw"),
    "pill": Category("pill", "object", _render_pill, ("crack", "color", "stain", "missing", "extra", "hole"), "pill"),
    "pcb": Category("pcb", "object", _render_pcb, DEFECT_TYPES, "printed circuit board"),
    "round_part": Category("round_part", "object", _render_round_part, DEFECT_TYPES, "round metal part"),
    "perforated": Category("perforated", "texture", _render_perforated, ("scratch", "bent", "stain", "color", "extra",
                                                                          "crack"), "perforated metal sheet"),
    "terrazzo": Category("terrazzo", "texture", _render_terrazzo, ("crack", "hole", "scratch", "missing", "stain"),
                         "terrazzo stone"),
    "leather": Category("leather", "texture", _render_leather, ("scratch", "hole", "stain", "color", "crack", "extra"),
                        "leather"),
    "carpet": Category("carpet", "texture", _render_carpet, ("hole", "stain", "color", "extra", "missing"), "carpet"),
    "bricks": Category("bricks", "texture", _render_bricks, ("crack", "missing", "stain", "color", "hole"),
                       "brick wall"),
    "mesh": Category("mesh", "texture", _render_mesh, ("bent", "missing", "stain", "color", "extra"), "wire mesh"),
    "button": Category("button", "object", _render_button, ("crack", "missing", "stain", "color", "scratch"), "button"),
    "nut": Category("nut", "object", _render_nut, ("scratch", "missing", "stain", "bent", "color"), "hex nut"),
    "gear": Category("gear", "object", _render_gear, ("missing", "crack", "stain", "bent", "extra"), "gear"),
    "bottle": Category("bottle", "object", _render_bottle, ("crack", "missing", "stain", "extra", "color"), "bottle"),
    "cable": Category("cable", "object", _render_cable, ("missing", "color", "stain", "extra", "scratch"), "cable"),
    "ic_chip": Category("ic_chip", "object", _render_ic_chip, ("scratch", "missing", "bent", "color", "extra"),
                        "integrated circuit"),
    "keypad": Category("keypad", "object", _render_keypad, ("scratch", "stain", "missing", "color", "hole"), "keypad"),
    "connector": Category("connector", "object", _render_connector, ("missing", "bent", "stain", "color", "scratch"),
                          "connector"),
    "dice": Category("dice", "object", _render_dice, ("hole", "scratch", "stain", "missing", "color"), "die"),
}


# ------------------------------------------------------------------------------------------------ defects
def _pick_point(
    rng: np.random.Generator, region: np.ndarray, margin_px: int, edge: bool = False
) -> tuple[float, float]:
    """A random (y, x) in [0,1) inside ``region`` (away from its border, or on it when ``edge``)."""
    from scipy import ndimage

    size = region.shape[0]
    inner = ndimage.binary_erosion(region, iterations=max(1, margin_px), border_value=1) if margin_px else region
    if edge:
        inner = region & ~ndimage.binary_erosion(region, iterations=max(1, margin_px // 2 + 1), border_value=0)
    candidates = np.flatnonzero(inner)
    if candidates.size == 0:
        candidates = np.flatnonzero(region)
    index = int(candidates[rng.integers(0, candidates.size)])
    return (index // size + 0.5) / size, (index % size + 0.5) / size


def _blob(rng: np.random.Generator, size: int, centre: tuple[float, float], area: float) -> np.ndarray:
    """Irregular blob of about ``area`` (fraction of the image) around ``centre``."""
    radius = np.sqrt(area / np.pi)
    u, v = _rotate(size, rng.uniform(0, np.pi), *centre)
    aspect = rng.uniform(0.6, 1.0)
    u, v = u * np.sqrt(aspect), v / np.sqrt(aspect)
    theta = np.arctan2(v, u)
    wobble = np.ones_like(theta)
    for k in range(2, 6):
        wobble += rng.uniform(0.0, 0.35 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.sqrt(u * u + v * v) < radius * wobble


def _polyline(size: int, points: np.ndarray, half_width_px: float) -> np.ndarray:
    """Pixels within ``half_width_px`` of the polyline through ``points`` ((n, 2) y, x in [0, 1))."""
    y, x = _grid(size)
    py, px = y * size, x * size
    pts = points * size
    lo = np.floor(pts.min(0) - half_width_px - 1).astype(int).clip(0, size)
    hi = np.ceil(pts.max(0) + half_width_px + 2).astype(int).clip(0, size)
    sy, sx = slice(lo[0], hi[0]), slice(lo[1], hi[1])
    qy, qx = py[sy, sx], px[sy, sx]
    best = np.full(qy.shape, np.inf, np.float32)
    for (ay, ax), (by, bx) in zip(pts[:-1], pts[1:], strict=True):
        vy, vx = by - ay, bx - ax
        t = np.clip(((qy - ay) * vy + (qx - ax) * vx) / max(vy * vy + vx * vx, 1e-9), 0, 1)
        best = np.minimum(best, (qy - ay - t * vy) ** 2 + (qx - ax - t * vx) ** 2)
    mask = np.zeros((size, size), bool)
    mask[sy, sx] = best <= half_width_px**2
    return mask


def _scratch(rng, render: Render, size: int):
    start = np.array(_pick_point(rng, render.region, size // 16))
    angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.45)
    end = start + length * np.array([np.sin(angle), np.cos(angle)])
    bend = (start + end) / 2 + rng.uniform(-0.08, 0.08, 2)
    t = np.linspace(0, 1, 12)[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
    mask = _polyline(size, points, max(1.0, size * rng.uniform(0.01, 0.016)))
    image = render.image
    bright = rng.random() < 0.5
    painted = image * 0.15 + 0.82 if bright else image * 0.25
    return painted, mask


def _crack(rng, render: Render, size: int):
    point = np.array(_pick_point(rng, render.region, size // 16))
    angle = rng.uniform(0, 2 * np.pi)
    points = [point.copy()]
    for _ in range(int(rng.integers(12, 20))):
        angle += rng.uniform(-0.7, 0.7)
        point = point + 0.025 * np.array([np.sin(angle), np.cos(angle)])
        points.append(point.copy())
    mask = _polyline(size, np.array(points), max(1.0, size * rng.uniform(0.01, 0.015)))
    branch_from = points[len(points) // 2]
    branch_angle = angle + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
    branch = [branch_from + k * 0.025 * np.array([np.sin(branch_angle), np.cos(branch_angle)]) for k in range(5)]
    mask |= _polyline(size, np.array(branch), max(0.8, size * 0.007))
    return render.image * 0.15 + 0.02, mask


def _hole(rng, render: Render, size: int):
    centre = _pick_point(rng, render.region, size // 12)
    radius = np.sqrt(rng.uniform(0.008, 0.03) / np.pi)
    y, x = _grid(size)
    d = np.sqrt((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / radius
    mask = d < 1
    depth = 0.04 + 0.3 * np.clip(d, 0, 1) ** 3
    painted = np.broadcast_to((render.background * 0.5 + depth[..., None] * 0.5), render.image.shape)
    return np.ascontiguousarray(painted), mask


#: oil, rust, grime, dried liquid: what contamination looks like (dark or brownish, rarely vivid).
_DIRT = ((0.08, 0.06, 0.05), (0.55, 0.25, 0.08), (0.3, 0.27, 0.2), (0.62, 0.55, 0.32))


def _stain(rng, render: Render, size: int):
    centre = _pick_point(rng, render.region, size // 12)
    mask = _blob(rng, size, centre, rng.uniform(0.015, 0.06))
    colour = _jitter_colour(rng, _DIRT[int(rng.integers(0, len(_DIRT)))], 0.05)
    alpha = rng.uniform(0.6, 0.85)
    mottling = 0.8 + 0.4 * _smooth_noise(rng, size, 12)
    stained = render.image * (1 - alpha) + colour * alpha * mottling[..., None]
    return stained, mask


def _missing(rng, render: Render, size: int):
    centre = _pick_point(rng, render.region, size // 10, edge=not render.region.all())
    mask = _blob(rng, size, centre, rng.uniform(0.02, 0.06))
    if render.region.all():  # texture: the backing shows through
        return render.background, mask
    # object: a broken-off piece leaves a shadowed, rough fracture where the part used to be
    rough = 0.3 + 0.25 * _smooth_noise(rng, size, max(8, size // 6))
    return render.background * rough[..., None], mask


def _bent(rng, render: Render, size: int):
    from scipy import ndimage

    centre = _pick_point(rng, render.region, size // 12)
    mask = _blob(rng, size, centre, rng.uniform(0.03, 0.08))
    y, x = _grid(size)
    sigma = np.sqrt(mask.mean()) * 0.6 + 1e-3
    bump = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * sigma**2))
    angle = rng.uniform(0, 2 * np.pi)
    shift = rng.uniform(0.04, 0.08) * size * bump
    sy, sx = y * size - 0.5 - shift * np.sin(angle), x * size - 0.5 - shift * np.cos(angle)
    warped = np.stack(
        [ndimage.map_coordinates(render.image[..., c], [sy, sx], order=1, mode="reflect") for c in range(3)], -1
    )
    side = np.sign((y - centre[0]) * np.cos(angle) - (x - centre[1]) * np.sin(angle))
    crease = 1 - 0.45 * bump * (side > 0)
    return warped * crease[..., None], mask


def _color(rng, render: Render, size: int):
    centre = _pick_point(rng, render.region, size // 12)
    mask = _blob(rng, size, centre, rng.uniform(0.02, 0.07))
    vivid = _hsv_colour(rng, (0.7, 1.0), (0.7, 1.0))
    lum = render.image.mean(-1, keepdims=True)
    return 0.25 * render.image + 0.75 * np.clip(lum * 1.5, 0.2, 1.0) * vivid, mask


def _extra(rng, render: Render, size: int):
    centre = _pick_point(rng, render.region, size // 12)
    mask = _blob(rng, size, centre, rng.uniform(0.012, 0.05))
    y, x = _grid(size)
    radius = np.sqrt(max(mask.mean(), 1e-4) / np.pi)
    dome = np.sqrt(np.clip(1 - ((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (radius * 1.3) ** 2, 0, 1))
    colour = _hsv_colour(rng, (0.0, 0.9), (0.2, 0.95))
    texture = 0.9 + 0.2 * _smooth_noise(rng, size, 16)
    return _shade(colour, (0.6 + 0.5 * dome) * texture), mask


DEFECT_PAINTERS: dict[str, Callable[[np.random.Generator, Render, int], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "missing": _missing,
    "bent": _bent,
    "color": _color,
    "extra": _extra,
}


def apply_defect(rng: np.random.Generator, render: Render, defect: str) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``defect`` on ``render.image``; return (image, mask) with the image changed exactly where mask is."""
    if defect not in DEFECT_PAINTERS:
        raise ValueError(f"unknown defect type {defect!r}; known: {list(DEFECT_PAINTERS)}")
    size = render.image.shape[0]
    min_pixels = max(4, int(0.004 * size * size))
    for _ in range(25):
        painted, mask = DEFECT_PAINTERS[defect](rng, render, size)
        mask = mask & render.region
        if mask.sum() >= min_pixels:
            break
    else:
        raise RuntimeError(f"could not place a {defect!r} defect of {min_pixels}+ pixels on the object")
    painted = np.clip(painted, 0.0, 1.0)
    base = render.image
    weak = mask & (np.abs(painted - base).max(-1) < MIN_DEFECT_DELTA)
    if weak.any():
        pixels = base[weak]
        painted = painted.copy()
        painted[weak] = np.where(pixels.mean(-1, keepdims=True) > 0.5, pixels - 0.3, pixels + 0.3)
    return np.where(mask[..., None], painted, base).astype(np.float32), mask


# ------------------------------------------------------------------------------------------------ samples
def image_rng(seed: int, category: str, part: str, index: int) -> np.random.Generator:
    """The generator of one image: a function of (seed, category, part, index) only."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, zlib.crc32(category.encode()), _PARTS[part], index]
    return np.random.default_rng(np.random.SeedSequence(words))


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_sample(
    category: str, size: int, seed: int, part: str, index: int, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(normal uint8 image, output uint8 image, uint8 0/255 mask or None) of one dataset image.

    The normal image is what the same draw looks like without the defect (identical to the output for normal
    images); tests compare the two to check that the mask is exactly where the image changed.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown synthetic category {category!r}; known: {sorted(CATEGORIES)}")
    rng = image_rng(seed, category, part, index)
    render = CATEGORIES[category].render(rng, size)
    render.image = _lighting(rng, np.clip(render.image, 0, 1).astype(np.float32))
    render.background = np.clip(render.background, 0, 1).astype(np.float32)
    normal = to_uint8(render.image)
    if defect is None:
        return normal, normal, None
    image, mask = apply_defect(rng, render, defect)
    out = to_uint8(image)
    mask = mask & np.any(out != normal, axis=-1)  # quantisation cannot erase a change of 0.12, but be exact
    return normal, out, (mask.astype(np.uint8) * 255)


# ------------------------------------------------------------------------------------------------- writing
def _png_bytes(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG without timestamps; level 1 because noisy renders barely compress and encoding dominated the run."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def _jpeg_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def defects_for(params: SyntheticParams, category: str) -> tuple[str, ...]:
    """Defect types drawn for ``category``: the params override when given, else the category's defaults."""
    override = dict(getattr(params, "defect_types", None) or {})
    defects = tuple(override.get(category) or CATEGORIES[category].defects)
    unknown = [d for d in defects if d not in DEFECT_PAINTERS]
    if unknown:
        raise ValueError(f"data.synthetic.defect_types.{category}: unknown defect(s) {unknown}; known: {DEFECT_TYPES}")
    return defects


def _anomaly_plan(params: SyntheticParams, category: str, count: int | None = None) -> list[str]:
    """Defect type of each anomalous image of ``category`` (``count`` images, default test_anomaly_per_category)."""
    defects = defects_for(params, category)
    count = params.test_anomaly_per_category if count is None else count
    return [defects[i % len(defects)] for i in range(count)]


def _write_mvtec(params: SyntheticParams, root: Path, category: str, seed: int) -> dict[str, int]:
    size, counts = params.image_size, {"good": 0}
    cdir = root / category
    # training categories may draw more images than the evaluation ones: stage 1's auxiliary data
    normals = params.training_normals_per_category or params.train_normal_per_category
    parts = (("train", "train_good", normals), ("test", "test_good", params.test_normal_per_category))
    for split, part, count in parts:
        for i in range(count):
            image = make_sample(category, size, seed, part, i)[1]
            _write(cdir / split / "good" / f"{i:03d}.png", _png_bytes(image))
    counts["good"] = normals + params.test_normal_per_category
    for i, defect in enumerate(_anomaly_plan(params, category, params.training_anomalies_per_category)):
        n = counts.get(defect, 0)
        _, image, mask = make_sample(category, size, seed, "test_anomaly", i, defect)
        assert mask is not None  # an anomalous sample always has its mask
        _write(cdir / "test" / defect / f"{n:03d}.png", _png_bytes(image))
        _write(cdir / "ground_truth" / defect / f"{n:03d}_mask.png", _png_bytes(mask, 9))
        counts[defect] = n + 1
    return counts


def _write_visa(params: SyntheticParams, root: Path, category: str, seed: int, split_rows: list[list[str]]) -> dict:
    size, counts = params.image_size, {"good": 0}
    images = f"{category}/Data/Images"
    anno: list[list[str]] = []
    index = 0
    for split, part, count in (
        ("train", "train_good", params.train_normal_per_category),
        ("test", "test_good", params.test_normal_per_category),
    ):
        for i in range(count):
            name = f"{images}/Normal/{index:04d}.JPG"
            _write(root / name, _jpeg_bytes(make_sample(category, size, seed, part, i)[1]))
            split_rows.append([category, split, "normal", name, ""])
            anno.append([name, "normal", ""])
            index += 1
    counts["good"] = index
    for i, defect in enumerate(_anomaly_plan(params, category)):
        _, image, mask = make_sample(category, size, seed, "test_anomaly", i, defect)
        assert mask is not None  # an anomalous sample always has its mask
        name, mask_name = f"{images}/Anomaly/{i:03d}.JPG", f"{category}/Data/Masks/Anomaly/{i:03d}.png"
        _write(root / name, _jpeg_bytes(image))
        _write(root / mask_name, _png_bytes(mask, 9))
        split_rows.append([category, "test", "anomaly", name, mask_name])
        anno.append([name, defect, mask_name])
        counts[defect] = counts.get(defect, 0) + 1
    _write(root / category / "image_anno.csv", _csv_bytes(["image", "label", "mask"], anno))
    return counts


def visa_sample(image: str, train_normal_per_category: int) -> tuple[str, int]:
    """``(part, index)`` that :func:`make_sample` drew an image of the VisA layout from (the inverse of
    ``_write_visa``'s names): ``Normal/NNNN`` counts the train normals, then the test normals; ``Anomaly/NNN`` the
    anomalies."""
    path = PurePosixPath(image)
    if path.parent.parent.name != "Images" or path.parent.name not in ("Normal", "Anomaly") or not path.stem.isdigit():
        raise ValueError(f"{image}: not an image of the synthetic VisA layout (.../Data/Images/Normal|Anomaly/N.JPG)")
    index = int(path.stem)
    if path.parent.name == "Anomaly":
        return "test_anomaly", index
    if index < train_normal_per_category:
        return "train_good", index
    return "test_good", index - train_normal_per_category


def _csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """Keep BLAS on one thread while generating: the noise uses many tiny matrix products, and a multi-threaded
    BLAS on a busy 2-core machine made each one 300x slower (28 ms instead of 0.09 ms)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an optional speed-up: scikit-learn brings it along
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def generate_industrial(params: SyntheticParams, out_dir: Path, seed: int) -> dict[str, Any]:
    """Write the synthetic dataset under ``out_dir`` (``mvtec/`` and ``visa/``), replacing it atomically.

    Returns ``{"images", "seconds", "images_per_s", "per_category": {cat: {defect: n}}, "out_dir"}``.
    """
    from anomaly_ov.io import atomic_dir

    out_dir = Path(out_dir)
    overlap = sorted(set(params.train_categories) & set(params.eval_categories))
    if overlap:
        raise ValueError(f"data.synthetic: categories {overlap} are both train and eval; zero-shot needs them apart")
    unknown = sorted(set(params.train_categories + params.eval_categories) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"data.synthetic: unknown categories {unknown}; known: {sorted(CATEGORIES)}")
    for category in params.train_categories + params.eval_categories:
        defects_for(params, category)  # fail before writing anything
    started = time.perf_counter()
    per_category: dict[str, dict[str, int]] = {}
    with _single_threaded_blas(), atomic_dir(out_dir) as tmp:
        for category in params.train_categories:
            per_category[category] = _write_mvtec(params, tmp / "mvtec", category, seed)
        if params.eval_categories:
            split_rows: list[list[str]] = []
            for category in params.eval_categories:
                per_category[category] = _write_visa(params, tmp / "visa", category, seed, split_rows)
            header = ["object", "split", "label", "image", "mask"]
            _write(tmp / "visa" / "split_csv" / "1cls.csv", _csv_bytes(header, split_rows))
        images = sum(sum(c.values()) for c in per_category.values())
        record = {"seed": seed, "params": params.model_dump(mode="json"), "images": images}
        record["per_category"] = per_category
        _write(tmp / "generator.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    seconds = time.perf_counter() - started
    return {
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / max(seconds, 1e-9), 1),
        "per_category": per_category,
        "out_dir": str(out_dir),
    }
