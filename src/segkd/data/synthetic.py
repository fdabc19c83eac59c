"""Procedural street scenes in the CamVid label space: the dataset of the default study.

They look as they do because of what the study needs from them:

* CamVid's 11 classes in CamVid-like shares: road, buildings and sky fill most pixels; poles, signs,
  fences, pedestrians and cyclists are thin or small and rare, a pixel or two wide in the distance.
  That is where a bigger teacher beats the student, so where distillation can show anything.
* Colours that do not give the class away: grey road, grey overcast sky and grey facades; white lane
  markings, signs and cars; green trees and grass verges (both Tree, as in CamVid). Texture, shadows,
  haze, per-street lighting (sunny, overcast, dusk) and sensor noise vary them further: a model needs
  shape and context, as on CamVid, not a colour lookup. Occlusion too: parked cars hide the kerb,
  trees hide facades.
* Sequences that behave like CamVid's videos. A sequence is one street (its own layout, density,
  geometry and lighting) seen by a camera driving forward a few metres a frame: neighbouring frames
  are near-duplicates, distant ones show other stretches of the street. So a random frame split
  leaks, as on CamVid, which is what the sequence-blocked folds and their guard frames are for.
* Determinism: every frame is a pure function of (seed, sequence, frame), in whatever order or
  process it is rendered (and, with the same numpy and Pillow, on any machine).

The content is data: WEATHER (lighting), KERBSIDE and TRAFFIC (the objects along a street: class,
shape, spacing, placement, sizes, colours, motion) and BLOCK (the buildings), below. A generic renderer
walks it: a pinhole camera over a flat ground plane; sky, ground and facades per pixel with numpy at
the requested size; objects far to near with PIL on a canvas twice that size, box-filtered down
(labels take the nearest sample); then the camera: contrast, exposure, tint, vignetting, noise. The
tables are drawn from the random streams in their order: reordering rows or attributes changes every
scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from segkd.classes import CLASS_NAMES, IGNORE_INDEX

# Bump when the generator's output changes, so prepared synthetic data is rebuilt.
GENERATOR_VERSION = 1

SKY, BUILDING, POLE, ROAD, SIDEWALK, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(len(CLASS_NAMES))
VOID = IGNORE_INDEX
SUPERSAMPLE = 2
NEAR = 1.0  # metres: closer objects are not drawn
FAR = 140.0  # metres: farther objects are not drawn (sub-pixel anyway)
MIN_PIXELS = 2.5  # objects smaller than this on the supersampled canvas are not drawn
FACADE_FAR = 600.0  # metres: facades are drawn up to here (beyond, haze has swallowed them)


def sequence_name(index: int) -> str:
    return f"synth{index:02d}"


# ============================================================================================ the data
FACADE_COLOURS = [(150, 70, 55), (170, 95, 70), (190, 170, 140), (205, 195, 175), (120, 115, 110),
                  (160, 160, 155), (95, 90, 88), (215, 210, 200), (140, 110, 80), (175, 140, 110),
                  (110, 60, 50), (200, 185, 150)]
CAR_COLOURS = [(200, 200, 205), (30, 30, 35), (150, 20, 25), (20, 40, 110), (120, 125, 130), (235, 235, 235),
               (60, 80, 60), (170, 150, 110), (90, 20, 40), (60, 60, 70), (200, 160, 30)]
CLOTHES = [(30, 30, 40), (200, 200, 200), (120, 30, 30), (40, 60, 120), (90, 80, 60), (60, 90, 60),
           (170, 120, 60), (20, 20, 20), (150, 150, 160), (190, 60, 120), (70, 70, 75)]
SKIN = [(230, 190, 160), (190, 140, 100), (130, 90, 60), (90, 60, 40), (240, 205, 180)]
HAIR = [(20, 15, 10), (80, 50, 30), (160, 130, 80), (120, 120, 120)]
SIGN_COLOURS = [(200, 30, 30), (30, 60, 170), (235, 235, 235), (230, 190, 20), (20, 120, 60), (240, 120, 20)]
POLE_COLOURS = [(110, 110, 110), (60, 70, 60), (35, 35, 35), (150, 150, 140)]
TREE_COLOURS = [(60, 100, 40), (45, 80, 35), (90, 120, 50), (110, 100, 40), (70, 90, 60)]
FENCE_COLOURS = [(40, 60, 40), (30, 30, 30), (120, 120, 120), (200, 200, 195), (120, 85, 50)]
BOX_COLOURS = [(40, 50, 40), (150, 30, 30), (80, 80, 85), (170, 150, 110)]  # bins, crates, hoardings


@dataclass(frozen=True)
class Weather:
    name: str
    share: float  # of the streets
    gain: tuple  # exposure range
    tint: tuple  # colour balance, times a random ±6 % per channel and street
    contrast: float  # times a random ±10 % per street
    sky: tuple  # zenith (plus a random ±15 per channel and street) and horizon colours
    fog_dist: float  # metres in which haze takes 63 % of a colour
    sun: tuple | None  # length range of building shadows, metres per metre of height; None: no sun
    cloud_white: float  # cloud brightness
    diffuse: float  # facade brightness out of the sun


WEATHER = [
    Weather("sunny", 0.45, (0.95, 1.15), (1.0, 1.0, 1.0), 1.1, ((70, 120, 200), (190, 210, 235)), 250.0,
            sun=(0.3, 1.2), cloud_white=235.0, diffuse=1.0),
    Weather("overcast", 0.35, (0.8, 1.0), (0.97, 1.0, 1.03), 0.75, ((150, 155, 160), (200, 202, 205)), 140.0,
            sun=None, cloud_white=211.5, diffuse=0.85),
    Weather("dusk", 0.2, (0.55, 0.75), (1.12, 0.95, 0.82), 0.9, ((90, 90, 130), (235, 160, 110)), 180.0,
            sun=None, cloud_white=211.5, diffuse=0.85),
]


# Attribute specs: (lo, hi) or (lo, hi, shape) uniform; [options] one of them; a function (rng, drawn, n)
# such as chance(p), when(...) or walking(...) its value; anything else a constant.
def _draw(spec, rng: np.random.Generator, drawn: dict | None = None, n: int | None = None):
    """One value of `spec`, or an array of `n`."""
    if isinstance(spec, tuple):
        return rng.uniform(spec[0], spec[1], spec[2] if len(spec) > 2 else n)
    if isinstance(spec, list):
        i = rng.integers(len(spec), size=n)
        return spec[int(i)] if n is None else np.asarray(spec, np.float32)[i]
    return spec(rng, drawn, n) if callable(spec) else spec


def _draw_all(specs: dict, rng: np.random.Generator, drawn: dict, n: int | None = None) -> dict:
    for name, spec in specs.items():
        drawn[name] = _draw(spec, rng, drawn, n)
    return drawn


def chance(p: float):
    return lambda rng, drawn, n: rng.random(n) < p


def when(flag: str, then, otherwise):
    """`then` where the attribute `flag`, drawn before, is true, else `otherwise`."""
    return lambda rng, drawn, n: _draw(then if drawn[flag] else otherwise, rng, drawn, n)


def walking(speed: tuple, moving: float):
    """Metres per frame, either way along the street; the others (1 - moving) stand still."""
    return lambda rng, drawn, n: rng.uniform(*speed) * rng.choice([-1, 1]) * (rng.random() < moving)


# Positions across the street, metres from its centre line (before the side's sign).
def kerb(d: float):
    """`d` metres from the kerb onto the pavement (negative: onto the road)."""
    return lambda street, rng: street.kerb + d


def back(d: float, setback: bool = False):
    """`d` metres from the back of the pavement; `setback`: a random part of the way into deep front gardens."""
    return lambda s, rng: s.back + d + (s.setback * rng.random() if setback and s.setback > 1 else 0)


def between(a, b):
    return lambda street, rng: rng.uniform(a(street, rng), b(street, rng))


def one_of(p: float, a, b):
    """`a` with chance `p`, else `b`."""
    return lambda street, rng: a(street, rng) if rng.random() < p else b(street, rng)


# Placement rules: the objects at a spot `z` along the street, as dicts of position (x, z) and speed (v).
def kerbside(across, occupied: float = 1.0, pairs: float = 0.0, jitter: float = 0.0):
    """Static, at `across` on the pavement of `side`. A spot is taken with chance `occupied`, by two
    objects with chance `pairs`, each moved by up to ± `jitter` metres along the street."""
    def place(street: Street, rng, side: float, z: float):
        if occupied < 1 and not rng.random() < occupied:
            return
        for _ in range(1 + int(rng.random() < pairs) if pairs else 1):
            x = side * across(street, rng)
            yield {"x": x, "z": z + rng.uniform(-jitter, jitter) if jitter else z, "side": side}
    return place


def lanes(oncoming: float, oncoming_speed: tuple, ahead_speed: tuple, clear: float):
    """With chance `oncoming`, a car coming towards the camera in the other lane at `oncoming_speed`
    metres per frame; else one in the camera's lane driving ahead of it at `ahead_speed` times its
    speed, if it starts more than `clear` metres ahead."""
    def place(street: Street, rng, side, z: float):
        if rng.random() < oncoming:
            yield {"x": -street.lane_x, "z": z, "v": -rng.uniform(*oncoming_speed)}
        elif z > clear:
            yield {"x": street.lane_x, "z": z, "v": street.speed * rng.uniform(*ahead_speed)}
    return place


def cycle_lane(across, speed: tuple):
    """At `across` on a random side of the road, riding with that side's traffic at `speed` metres per frame."""
    def place(street: Street, rng, side, z: float):
        side = float(rng.choice([-1, 1]))
        yield {"x": side * across(street, rng), "z": z,
               "v": rng.uniform(*speed) * (1 if side == street.drive_side else -1)}
    return place


@dataclass(frozen=True)
class Kind:
    name: str
    label: int  # the class of its pixels (a pole's sign and traffic light are SignSymbol)
    shape: str  # drawn by _SHAPES[shape]
    spacing: tuple  # range of a street's mean spacing between two, metres,
    density: str | None  # divided by the street's "greenery" or "busy" factor
    where: Callable  # placement rule
    attrs: dict  # drawn per object in this order; h is its height (for culling)


CAR_ATTRS = dict(big=chance(0.07), suv=chance(0.3),  # big: buses and lorries
                 length=when("big", (8, 12), (3.8, 4.9)), width=when("big", (2.1, 2.4), (1.65, 1.9)),
                 h=when("big", (2.8, 3.4), when("suv", (1.7, 2.0), (1.35, 1.6))), colour=CAR_COLOURS, shade=(0.8, 1.1))

# What stands on the pavements (and the parking strips, 2 m wide along the kerbs): placed along one
# side, then along the other.
KERBSIDE = [
    Kind("pole", POLE, "pole", (14, 35), None, kerbside(kerb(0.35)),
         dict(sign=chance(0.55), h=(4.0, 8.5), w=(0.1, 0.22), colour=POLE_COLOURS, arm=chance(0.4),
              sign_shape=["disc", "square", "triangle"], sign_h=(2.0, 3.2), sign_size=(0.5, 1.0),
              sign_colour=SIGN_COLOURS, light=when("sign", False, chance(0.3)))),
    Kind("tree", TREE, "tree", (6, 20), "greenery", kerbside(back(-0.6, setback=True)),
         dict(trunk=(1.5, 3.0), crown=(1.5, 3.5), colour=TREE_COLOURS, lobes=(-1, 1, (5, 3)),
              h=lambda rng, o, n: o["trunk"] + 2 * o["crown"])),
    Kind("fence", FENCE, "fence", (25, 60), None, kerbside(one_of(0.3, kerb(0.15), back(-0.1))),
         dict(length=(4, 20), h=(0.9, 1.6), gap=(0.12, 1.0), panel=chance(0.25), bar=(0.03, 0.08),
              colour=FENCE_COLOURS)),
    Kind("parked car", CAR, "car", (8, 20), "busy", kerbside(kerb(-1.0), occupied=0.4), CAR_ATTRS),
    Kind("pedestrian", PEDESTRIAN, "pedestrian", (5, 15), "busy",
         kerbside(between(kerb(0.5), back(-0.3)), pairs=0.25, jitter=1.0),
         dict(child=chance(0.12), h=when("child", (1.0, 1.3), (1.55, 1.95)), v=walking((0.2, 0.5), moving=0.7),
              shirt=CLOTHES, pants=CLOTHES, skin=SKIN, hair=HAIR, bag=chance(0.3), phase=(0, 6.3),
              width=(0.4, 0.55))),
    Kind("clutter", VOID, "box", (15, 40), None, kerbside(between(kerb(0.5), back(0.0))),
         dict(w=(0.4, 1.2), h=(0.5, 1.4), colour=BOX_COLOURS)),
]
# What moves on the road, between the parking strips: two driving lanes, the camera in one of them.
TRAFFIC = [
    Kind("car", CAR, "car", (25, 60), "busy", lanes(0.5, (1.0, 4.0), (1.0, 1.2), clear=15.0), CAR_ATTRS),
    Kind("bicyclist", BICYCLIST, "bicyclist", (15, 40), None, cycle_lane(kerb(-2.3), (0.5, 1.5)),
         dict(frame_colour=CAR_COLOURS, clothes=CLOTHES, skin=SKIN, phase=(0, 6.3), h=1.7)),
]

# The facade of a building (its length and height come first: Street._blocks).
BLOCK = dict(colour=FACADE_COLOURS, brightness=(0.8, 1.15), win_dz=(2.0, 4.0), win_w=(0.3, 0.6),
             floor=(2.8, 3.6), win_h=(0.35, 0.6), win_dark=(20, 80), glass=chance(0.12),
             sign=chance(0.6), sign_z=(0.1, 0.6), sign_len=(2.0, 8.0), sign_y=(2.6, 4.0), sign_h=(0.6, 1.4),
             sign_colour=SIGN_COLOURS)


# ============================================================================================ texture
def _noise_tile(rng: np.random.Generator, smooth: float, size: int = 128) -> np.ndarray:
    """A periodic, smooth, unit-variance noise tile (Gaussian-filtered white noise)."""
    f = np.fft.fftfreq(size)
    filt = np.exp(-2 * (np.pi * smooth) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    tile = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * filt))
    return ((tile - tile.mean()) / tile.std()).astype(np.float32)


def _sample(tile: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of `tile` at texel coordinates (x, y)."""
    s = tile.shape[0]  # a power of two: wrap with a bit mask
    flat = tile.ravel()
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    x0, y0 = x0.astype(np.int64) & (s - 1), y0.astype(np.int64) & (s - 1)
    x1, y1 = (x0 + 1) & (s - 1), ((y0 + 1) & (s - 1)) * s
    y0 = y0 * s
    top = flat.take(y0 + x0) * (1 - fx) + flat.take(y0 + x1) * fx
    bottom = flat.take(y1 + x0) * (1 - fx) + flat.take(y1 + x1) * fx
    return top * (1 - fy) + bottom * fy


def _fbm(tile: np.ndarray, x: np.ndarray, y: np.ndarray, octaves: int) -> np.ndarray:
    out, amp, scale = 0.0, 1.0, 1.0
    for o in range(octaves):
        out = out + amp * _sample(tile, x * scale + 37.0 * o, y * scale + 11.0 * o)
        amp, scale = amp * 0.5, scale * 2.0
    return out


# ============================================================================================= street
class Street:
    """One sequence: a random street and a camera driving along it.

    The street is built lazily in 100 m chunks, each from its own seed, so any frame of any sequence
    can be rendered without the others and longer sequences only extend the street.
    """

    CHUNK = 100.0

    def __init__(self, seed: int, sequence: int):
        self.seed, self.sequence = seed, sequence
        rng = np.random.default_rng([seed, sequence, 1009])
        self.tiles = [_noise_tile(rng, smooth=s) for s in (1.0, 3.0, 6.0)]
        # lighting (a gain is drawn for every weather, one kept)
        i = int(rng.choice(len(WEATHER), p=[w.share for w in WEATHER]))
        w = self.weather = WEATHER[i]
        self.gain = [rng.uniform(*x.gain) for x in WEATHER][i]
        self.tint = np.array(w.tint, dtype=np.float32) * rng.uniform(0.94, 1.06, 3).astype(np.float32)
        self.contrast = w.contrast * rng.uniform(0.9, 1.1)
        self.sun_side = float(rng.choice([-1.0, 1.0]))
        self.sun_len = rng.uniform(*w.sun) if w.sun else 0.0
        self.sky_top = np.array(w.sky[0], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        self.sky_bottom = np.array(w.sky[1], np.float32)
        self.clouds = rng.uniform(0.2, 0.9)
        self.noise_sigma = rng.uniform(2.0, 7.0)
        # geometry, metres across from the centre line: road (to the kerb), pavement (to its back), setback
        self.road_w = rng.uniform(7.5, 11.0)
        self.walk_w = rng.uniform(2.5, 5.5)
        self.setback = rng.uniform(0.0, 4.0) * (rng.random() < 0.6)
        self.verge_is_grass = [rng.random() < 0.5, rng.random() < 0.5]  # per side (-1, +1)
        self.kerb, self.back = self.road_w / 2, self.road_w / 2 + self.walk_w
        self.facade_x = self.back + self.setback
        self.asphalt = rng.uniform(55, 110)
        facade = np.array(FACADE_COLOURS[rng.integers(len(FACADE_COLOURS))], np.float32)
        self.paving = np.array(facade * 0.3 + rng.uniform(100, 150), np.float32)
        self.centre_line = rng.random() < 0.7
        self.line_colour = np.array((235, 235, 225) if rng.random() < 0.75 else (230, 200, 60), np.float32)
        # camera: drives in its lane
        self.drive_side = float(rng.choice([-1.0, 1.0]))
        self.lane_x = self.drive_side * (self.road_w / 2 - 2.0) / 2
        self.cam_h = rng.uniform(1.25, 1.7)
        self.speed = rng.uniform(1.5, 4.0)  # metres per frame
        self.focal = rng.uniform(0.6, 0.85)  # focal length as a fraction of image width
        self.horizon = rng.uniform(0.44, 0.55)  # horizon row as a fraction of image height
        self.phase = rng.uniform(0, 2 * np.pi, 4)
        self.hood = rng.random() < 0.35
        self.hood_h = rng.uniform(0.06, 0.12)
        self.hood_colour = tuple(int(c * 0.5) for c in _draw(CAR_COLOURS, rng))
        # how dense each kind of object is along this street (mean spacing, metres)
        density = {"greenery": rng.uniform(0.3, 1.0), "busy": rng.uniform(0.4, 1.3)}
        self.spacing = {k.name: rng.uniform(*k.spacing) / density.get(k.density, 1.0) for k in KERBSIDE + TRAFFIC}
        self.spacing["crossing"] = rng.uniform(100, 300)
        self._chunks: dict[tuple[str, int], dict] = {}
        self._joined: dict[tuple[str, int, int], dict] = {}

    # ------------------------------------------------------------------ layout
    def _chunk(self, part: str, c: int) -> dict:
        """Chunk `c` of the buildings ("blocks") or of the objects ("objects"), each from its own seed."""
        if (part, c) not in self._chunks:
            z0, z1 = c * self.CHUNK, (c + 1) * self.CHUNK
            if part == "blocks":
                rng = np.random.default_rng([self.seed, self.sequence, 5000 + c])
                chunk = {"front": [self._blocks(rng, z0, z1, gaps=True) for _ in range(2)],
                         "back": [self._blocks(rng, z0, z1, gaps=False) for _ in range(2)],
                         "crossings": rng.uniform(z0, z1, int(rng.random() < self.CHUNK / self.spacing["crossing"]))}
            else:
                chunk = {"objects": self._objects(np.random.default_rng([self.seed, self.sequence, 9000 + c]), z0, z1)}
            self._chunks[part, c] = chunk
        return self._chunks[part, c]

    def _street(self, cam_z: float, t: int) -> dict:
        """Blocks and objects of the chunks that can be seen from `cam_z` at frame `t`.

        Facades are drawn up to FACADE_FAR ahead; objects up to FAR, but oncoming cars (up to 4 m per
        frame) come from further ahead and cars ahead of the camera may have started behind it.
        """
        spans = {"blocks": (cam_z, cam_z + FACADE_FAR),
                 "objects": (max(0.0, cam_z - 20 - 0.25 * self.speed * t), cam_z + FAR + 4.0 * t)}
        out = {}
        for part, (lo, hi) in spans.items():
            span = (part, int(lo // self.CHUNK), int(hi // self.CHUNK))
            if span not in self._joined:
                chunks = [self._chunk(part, c) for c in range(span[1], span[2] + 1)]
                self._joined = {k: v for k, v in self._joined.items() if k[0] != part}  # keep one per part
                self._joined[span] = self._join(part, chunks)
            out.update(self._joined[span])
        return out

    @staticmethod
    def _join(part: str, chunks: list[dict]) -> dict:
        if part == "blocks":
            cat = lambda row, i: {k: np.concatenate([ch[row][i][k] for ch in chunks]) for k in chunks[0][row][i]}
            return {"front": [cat("front", i) for i in range(2)], "back": [cat("back", i) for i in range(2)],
                    "crossings": np.concatenate([ch["crossings"] for ch in chunks])}
        objects = [o for ch in chunks for o in ch["objects"]]
        # position, speed, extent along the street and height of every object, for vectorised culling
        table = np.array([(o["x"], o["z"], o["v"], o["length"], o["h"]) for o in objects],
                         dtype=np.float64).reshape(-1, 5)
        return {"objects": objects, "table": table}

    @staticmethod
    def _blocks(rng, z0: float, z1: float, gaps: bool) -> dict:
        """One row of buildings along one side; the front row has gaps, the back row is taller."""
        starts, z = [], z0
        while z < z1:
            starts.append(z)
            z += rng.uniform(8.0, 30.0)
        n = len(starts)
        starts = np.array(starts + [z1])
        height = rng.uniform(5.0, 22.0, n) * (rng.uniform(0.6, 1.4))
        if gaps:
            height[rng.random(n) < 0.15] = 0.0
        else:
            height += 6.0
        blocks = _draw_all(BLOCK, rng, {"start": starts[:-1], "end": starts[1:], "height": height}, n)
        blocks["colour"] = blocks["colour"] * blocks.pop("brightness")[:, None].astype(np.float32)
        return blocks

    def _objects(self, rng, z0: float, z1: float) -> list[dict]:
        """The objects of KERBSIDE and TRAFFIC between z0 and z1 (x across, z along the street, metres)."""
        objs: list[dict] = []
        for side, kinds in ((-1.0, KERBSIDE), (1.0, KERBSIDE), (None, TRAFFIC)):
            for kind in kinds:
                for z in self._along(rng, self.spacing[kind.name], z0, z1):
                    for spot in kind.where(self, rng, side, z):
                        o = {"shape": kind.shape, "label": kind.label, "v": 0.0, "length": 0.0, **spot}
                        objs.append(_draw_all(kind.attrs, rng, o))
        return objs

    @staticmethod
    def _along(rng, spacing: float, z0: float, z1: float) -> Iterator[float]:
        z = z0 + rng.uniform(0, spacing)
        while z < z1:
            yield z
            z += rng.uniform(0.5, 1.5) * spacing

    # ------------------------------------------------------------------ rendering
    def render(self, t: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame `t` as (uint8 image (H, W, 3), uint8 label (H, W))."""
        H, W = height * SUPERSAMPLE, width * SUPERSAMPLE
        cam = _Camera(  # at the drawing resolution
            x=self.lane_x + 0.15 * np.sin(0.21 * t + self.phase[0]),
            z=self.speed * t, h=self.cam_h + 0.03 * np.sin(1.7 * t + self.phase[1]),
            f=self.focal * W, cx=W / 2 + 0.03 * self.focal * W * np.sin(0.13 * t + self.phase[2]),
            hz=H * self.horizon + 0.01 * H * np.sin(1.1 * t + self.phase[3]),
            fog=tuple(float(c) for c in self.sky_bottom * 0.7 + self.sky_top * 0.3),
            fog_dist=self.weather.fog_dist)
        rng = np.random.default_rng([self.seed, self.sequence, t, 2003])
        street = self._street(cam.z, t)
        # per-pixel layers at the output resolution (smooth surfaces gain nothing from supersampling)
        image, label = self._background(cam.scaled(1 / SUPERSAMPLE), street, height, width)
        image = np.clip(image, 0, 255).astype(np.uint8).repeat(SUPERSAMPLE, 0).repeat(SUPERSAMPLE, 1)
        img = Image.fromarray(image)
        lab = Image.fromarray(label.repeat(SUPERSAMPLE, 0).repeat(SUPERSAMPLE, 1))
        canvas = _Canvas(img, lab, cam)
        x, z0, speed, length, size = street["table"].T
        z = z0 + speed * t
        depth = z - cam.z
        near, far = np.maximum(depth, NEAR), np.maximum(depth + length + 3.0, NEAR)
        u_near = cam.cx + cam.f * (x - cam.x) / near
        u_far = cam.cx + cam.f * (x - cam.x) / far
        margin = 1.5 * cam.f / near + 2
        visible = ((depth > -length - 3.0) & (depth < FAR) & (cam.f * size / far >= MIN_PIXELS)
                   & (np.minimum(u_near, u_far) < W + margin) & (np.maximum(u_near, u_far) > -margin))
        order = np.flatnonzero(visible)
        for i in order[np.argsort(-depth[order], kind="stable")]:  # far to near
            o = street["objects"][i]
            _SHAPES[o["shape"]](canvas, o, float(z[i]), t)
        if self.hood:
            self._draw_hood(canvas, H, W)
        # box-filter down (anti-aliasing), then the camera: contrast, exposure, tint, vignetting, noise
        big = np.asarray(img, dtype=np.float32)
        image = sum(big[i::SUPERSAMPLE, j::SUPERSAMPLE] for i in range(SUPERSAMPLE) for j in range(SUPERSAMPLE))
        image *= np.float32(1 / SUPERSAMPLE ** 2)
        label = np.asarray(lab)[SUPERSAMPLE // 2::SUPERSAMPLE, SUPERSAMPLE // 2::SUPERSAMPLE]
        mean = image.mean()
        flicker = 1 + 0.04 * np.sin(0.5 * t + self.phase[0])
        image = ((image - mean) * self.contrast + mean) * (self.gain * flicker * self.tint)
        yy = (np.arange(height, dtype=np.float32)[:, None] / height - 0.5)
        xx = (np.arange(width, dtype=np.float32)[None, :] / width - 0.5)
        image *= (1 - 0.35 * (xx ** 2 + yy ** 2))[..., None]
        image += rng.normal(0.0, self.noise_sigma, image.shape).astype(np.float32)
        return np.clip(image + 0.5, 0, 255).astype(np.uint8), np.ascontiguousarray(label)

    def _background(self, cam: "_Camera", street: dict, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
        """Sky, ground and facades, per pixel: float image (H, W, 3) and label (H, W)."""
        v = np.arange(H, dtype=np.float32)[:, None] + 0.5
        u = np.arange(W, dtype=np.float32)[None, :] + 0.5
        dx = (u - cam.cx) / cam.f  # ray slope across, per column
        coarse = self.tiles[2]
        g0 = int(np.clip(np.ceil(cam.hz), 0, H))  # first ground row
        image = np.empty((H, W, 3), np.float32)
        label = np.empty((H, W), np.uint8)
        # sky: gradient + clouds
        vs = v[:g0]
        s = np.clip((cam.hz - vs) / max(cam.hz, 1.0), 0, 1)
        sky = self.sky_bottom + (self.sky_top - self.sky_bottom) * (s[..., None] ** 0.7)
        cloud = _fbm(coarse, u * 0.05 + cam.z * 0.02, vs * 0.12 / (s + 0.15), 2)
        cloud = np.clip(cloud * 0.5 + self.clouds - 0.5, 0, 1)[..., None]
        image[:g0] = sky * (1 - cloud) + np.float32(self.weather.cloud_white) * cloud
        label[:g0] = SKY
        image[g0:], label[g0:] = self._ground(cam, street, v[g0:], dx)
        # facades: the front row, then the back row where the front row has gaps
        covered = np.zeros((H, W), bool)
        for row, behind in (("front", 0.0), ("back", 14.0)):
            self._facade(image, label, covered, cam, street[row][0], street[row][1], behind, v, dx)
        return image, label

    def _ground(self, cam: "_Camera", street: dict, v: np.ndarray, dx: np.ndarray):
        """The ground plane seen by pixel rows `v` (all below the horizon)."""
        Z = cam.f * cam.h / np.maximum(v - cam.hz, 0.25)
        X = cam.x + dx * Z
        Z = np.broadcast_to(Z, X.shape)
        zw = Z + cam.z
        ax = np.abs(X)
        fine, _, coarse = self.tiles
        half, walk_out = self.kerb, self.back
        tex = _fbm(fine, X * 6.0, zw * 6.0, 2) / (1.0 + Z / 25.0)  # fades with distance (it would alias)
        blotch = _sample(coarse, X * 0.6, zw * 0.6)
        shade = 1 + 0.12 * tex + 0.08 * blotch
        ground = np.empty(X.shape + (3,), np.float32)
        ground[:] = (shade * np.float32(self.asphalt))[..., None]
        label = np.full(X.shape, ROAD, np.uint8)
        marks = np.abs(ax - (half - 0.35)) < 0.07
        if self.centre_line:
            marks |= (ax < 0.07) & ((zw % 9.0) < 3.5)
        for zc in street["crossings"]:
            marks |= (ax < half - 0.5) & (zw > zc) & (zw < zc + 3.5) & ((X % 1.1) < 0.55)
        ground[marks] = self.line_colour * (0.85 + 0.1 * tex[marks, None])
        walk = ax > half
        slab = (((X % 0.7) < 0.05) | ((zw % 0.7) < 0.05)) & (Z < 25)
        ground[walk] = self.paving * (shade[walk] * np.where(slab[walk], 0.8, 1.0))[:, None]
        ground[walk & (ax < half + 0.18)] = self.paving * 1.15 + 10  # kerb stones
        label[walk] = SIDEWALK
        for i, side in enumerate((-1, 1)):
            if self.verge_is_grass[i]:
                verge = (ax > walk_out) & (X * side > 0)
                ground[verge] = np.array((70, 105, 45), np.float32) * (1 + 2 * (shade[verge] - 1))[:, None]
                label[verge] = TREE
        beyond = ax > self.facade_x  # seen through gaps between buildings: unlabelled ground
        ground[beyond] = np.array((95, 90, 80), np.float32) * (1 + 0.2 * blotch[beyond, None])
        label[beyond] = VOID
        if self.sun_len > 0:  # shadows of the buildings on the sun side
            shadow_x = self.facade_x - self.sun_len * self._heights(street["front"][int(self.sun_side > 0)], zw)
            ground[X * self.sun_side > shadow_x] *= 0.55
        return cam.haze(ground, Z), label

    @staticmethod
    def _block_index(blocks: dict, zw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.clip(np.searchsorted(blocks["start"], zw, side="right") - 1, 0, len(blocks["start"]) - 1)
        inside = (zw >= blocks["start"][idx]) & (zw < blocks["end"][idx])
        return idx, inside

    def _heights(self, blocks: dict, zw: np.ndarray) -> np.ndarray:
        idx, inside = self._block_index(blocks, zw)
        return np.where(inside, blocks["height"][idx], 0.0)

    def _facade(self, image, label, covered, cam, left: dict, right: dict, behind: float, v, dx) -> None:
        """One row of facades (planes parallel to the street, both sides), where nothing nearer is."""
        blocks = {k: np.concatenate([left[k], right[k]]) for k in left}
        side = np.where(dx[0] < 0, -1.0, 1.0)  # each column looks at the left or the right facade
        rel = side * (self.facade_x + behind) - cam.x
        with np.errstate(divide="ignore", invalid="ignore"):
            Zc = np.where(dx[0] * rel > 0, rel / dx[0], np.inf)  # depth where each column meets its plane
        ok = np.isfinite(Zc) & (Zc > 0.5)
        Zc = np.where(ok, np.minimum(Zc, FACADE_FAR), 1.0)  # columns aimed at the vanishing point: far away
        zc = Zc + cam.z
        il, inl = self._block_index(left, zc)
        ir, inr = self._block_index(right, zc)
        idx = np.where(side < 0, il, ir + len(left["start"]))
        height = np.where(ok & np.where(side < 0, inl, inr), blocks["height"][idx], 0.0)
        top = cam.hz - cam.f * (height - cam.h) / Zc
        bottom = cam.hz + cam.f * cam.h / Zc
        mask = (v >= top) & (v < bottom) & (height > 0) & ~covered
        if not mask.any():
            return
        covered |= mask
        rows, cols = np.nonzero(mask)
        b = idx[cols]
        Z = Zc[cols]
        Y = cam.h - (v[rows, 0] - cam.hz) * Z / cam.f  # height on the facade, metres
        zl = zc[cols] - blocks["start"][b]  # position along the block, metres
        fine, mid, _ = self.tiles
        grain = 0.12 * _sample(fine, zl * 8, Y * 8) / (1.0 + Z / 30.0) + 0.08 * _sample(mid, zl * 0.5 + b * 13, Y * 0.5)
        colour = blocks["colour"][b] * (1 + grain)[:, None]
        floor, dz = blocks["floor"][b], blocks["win_dz"][b]
        wz = (zl % dz) / dz
        wy = (Y % floor) / floor
        window = (np.abs(wz - 0.5) < blocks["win_w"][b] / 2) & (wy > 0.3) & (wy < 0.3 + blocks["win_h"][b])
        window &= (Y > floor) & (Y < blocks["height"][b] - 0.8)
        shop = (Y < floor * 0.8) & (Y > 0.3) & (np.abs(wz - 0.5) < 0.42)
        pane = window | shop | blocks["glass"][b]
        refl = np.clip(0.5 + 0.5 * np.sin(zl * 0.7 + Y * 0.3), 0, 1)
        win_colour = blocks["win_dark"][b][:, None] + refl[:, None] * np.array((40, 50, 70), np.float32)
        colour = np.where(pane[:, None], win_colour, colour)
        colour[Y > blocks["height"][b] - 0.4] *= 0.7  # cornice
        cls = np.full(len(rows), BUILDING, np.uint8)
        s0 = blocks["sign_z"][b] * (blocks["end"][b] - blocks["start"][b])
        sign = blocks["sign"][b] & (zl > s0) & (zl < s0 + blocks["sign_len"][b])
        sign &= (Y > blocks["sign_y"][b]) & (Y < blocks["sign_y"][b] + blocks["sign_h"][b])
        letters = np.sin(zl[sign] * 9.0) * np.sin(Y[sign] * 11.0) > 0.3
        colour[sign] = blocks["sign_colour"][b[sign]] * np.where(letters, 0.4, 1.0)[:, None]
        cls[sign] = SIGN
        if self.sun_len > 0:  # the facade on the sun's side is in its own shadow
            lit = np.where(side[cols] == self.sun_side, 0.6, 1.0).astype(np.float32)[:, None]
        else:
            lit = np.float32(self.weather.diffuse)
        image[rows, cols] = cam.haze(colour * lit, Z)
        label[rows, cols] = cls

    def _draw_hood(self, canvas: "_Canvas", H: int, W: int) -> None:
        top = H * (1 - self.hood_h)
        pts = [(0, H), (0, top + H * 0.04), (W * 0.3, top + H * 0.005), (W * 0.7, top + H * 0.005),
               (W, top + H * 0.04), (W, H)]
        canvas.di.polygon(pts, fill=self.hood_colour)
        canvas.dl.polygon(pts, fill=VOID)
        canvas.di.line([(W * 0.3, top + H * 0.02), (W * 0.7, top + H * 0.02)],
                       fill=tuple(min(255, c + 60) for c in self.hood_colour), width=max(1, H // 80))


@dataclass(frozen=True)
class _Camera:
    x: float
    z: float
    h: float
    f: float
    cx: float
    hz: float
    fog: tuple[float, float, float]
    fog_dist: float

    def scaled(self, k: float) -> "_Camera":
        """The same camera for an image `k` times as large."""
        return replace(self, f=self.f * k, cx=self.cx * k, hz=self.hz * k)

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        depth = max(z - self.z, NEAR)
        return self.cx + self.f * (x - self.x) / depth, self.hz + self.f * (self.h - y) / depth

    def haze(self, colour: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Atmospheric perspective per pixel: colour (..., 3) fades to the fog colour with depth (...)."""
        a = np.exp(-depth.astype(np.float32) / np.float32(self.fog_dist))[..., None]
        return colour * a + np.asarray(self.fog, np.float32) * (1 - a)

    def haze_rgb(self, colour, depth: float) -> tuple[int, int, int]:
        a = math.exp(-depth / self.fog_dist)
        return tuple(min(255, max(0, int(c * a + f * (1 - a)))) for c, f in zip(colour, self.fog))


class _Canvas:
    """Draws world-space shapes on the image and the label at once."""

    def __init__(self, img: Image.Image, lab: Image.Image, cam: _Camera):
        self.di, self.dl, self.cam = ImageDraw.Draw(img), ImageDraw.Draw(lab), cam

    def pixels(self, size_m: float, depth: float) -> float:
        """On-screen size of `size_m` metres at `depth` (decides how much detail is worth drawing)."""
        return self.cam.f * size_m / max(depth, NEAR)

    def polygon(self, points, colour, cls, depth) -> None:
        """`cls` None: on the image only (a shadow)."""
        pts = [self.cam.project(*p) for p in points]
        self.di.polygon(pts, fill=self.cam.haze_rgb(colour, depth))
        if cls is not None:
            self.dl.polygon(pts, fill=cls)

    def rect(self, x0, x1, y0, y1, z, colour, cls, depth) -> None:
        """An upright rectangle facing the camera."""
        self.polygon([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)], colour, cls, depth)

    def line(self, points, width_m: float, colour, cls, depth) -> None:
        pts = [self.cam.project(*p) for p in points]
        w = max(1, int(round(self.cam.f * width_m / max(depth, NEAR))))
        self.di.line(pts, fill=self.cam.haze_rgb(colour, depth), width=w, joint="curve")
        self.dl.line(pts, fill=cls, width=w, joint="curve")

    def ellipse(self, centre, rx_m: float, ry_m: float, colour, cls, depth) -> None:
        u, v = self.cam.project(*centre)
        d = max(depth, NEAR)
        rx, ry = max(0.5, self.cam.f * rx_m / d), max(0.5, self.cam.f * ry_m / d)
        box = [u - rx, v - ry, u + rx, v + ry]
        self.di.ellipse(box, fill=self.cam.haze_rgb(colour, depth))
        self.dl.ellipse(box, fill=cls)


# ============================================================================================= shapes
# One function per shape named in KERBSIDE and TRAFFIC (see _SHAPES): draws object `o`, which stands at
# `z` metres along the street at frame `t`.
def _shade(colour, k: float) -> tuple:
    return tuple(c * k for c in colour)


def _draw_pole(c: _Canvas, o: dict, z: float, t: int) -> None:
    if (depth := z - c.cam.z) < NEAR:
        return
    x, h, cls = o["x"], o["h"], o["label"]
    c.line([(x, 0, z), (x, h, z)], o["w"], o["colour"], cls, depth)
    if o["arm"]:
        tip = x - o["side"] * 1.5
        c.line([(x, h, z), (tip, h + 0.2, z)], o["w"] * 0.6, o["colour"], cls, depth)
        c.ellipse((tip, h + 0.05, z), 0.3, 0.1, (220, 220, 200), cls, depth)
    if o["sign"]:
        s, y = o["sign_size"], o["sign_h"]
        xs = x - o["side"] * 0.05
        if o["sign_shape"] == "disc":
            c.ellipse((xs, y, z - 0.05), s / 2, s / 2, o["sign_colour"], SIGN, depth)
            c.ellipse((xs, y, z - 0.06), s / 3, s / 3, (235, 235, 235), SIGN, depth)
        elif o["sign_shape"] == "square":
            c.rect(xs - s / 2, xs + s / 2, y - s / 2, y + s / 2, z, o["sign_colour"], SIGN, depth)
        else:
            c.polygon([(xs - s / 2, y - s / 2, z), (xs + s / 2, y - s / 2, z), (xs, y + s / 2, z)],
                      (235, 235, 235), SIGN, depth)
            c.polygon([(xs - s / 3, y - s / 3, z), (xs + s / 3, y - s / 3, z), (xs, y + s / 3, z)],
                      o["sign_colour"], SIGN, depth)
    if o["light"]:  # a traffic light
        y = min(h - 0.3, 3.2)
        c.rect(x - 0.18, x + 0.18, y - 0.5, y + 0.5, z, (25, 25, 25), SIGN, depth)
        lamp = [(200, 30, 30), (230, 160, 20), (40, 200, 80)][(t // 7 + int(z)) % 3]
        c.ellipse((x, y + 0.3 - 0.3 * ((t // 7 + int(z)) % 3), z - 0.01), 0.1, 0.1, lamp, SIGN, depth)


def _draw_tree(c: _Canvas, o: dict, z: float, t: int) -> None:
    if (depth := z - c.cam.z) < NEAR:
        return
    x, trunk, r, cls = o["x"], o["trunk"], o["crown"], o["label"]
    c.line([(x, 0, z), (x, trunk + r * 0.5, z)], 0.25, (70, 55, 40), cls, depth)
    lobes = o["lobes"] if c.pixels(r, depth) > 10 else o["lobes"][:2]
    for i, (a, b, k) in enumerate(lobes):
        cx, cy = x + a * r * 0.6, trunk + r + b * r * 0.4
        colour = _shade(o["colour"], 0.75 + 0.25 * k + 0.1 * i / 5)
        c.ellipse((cx, cy, z), r * (0.55 + 0.15 * k), r * (0.5 + 0.1 * b), colour, cls, depth)


def _draw_fence(c: _Canvas, o: dict, z: float, t: int) -> None:
    cam = c.cam
    z0, z1 = max(z, cam.z + NEAR), z + o["length"]
    if z1 <= z0:
        return
    x, h, gap, cls = o["x"], o["h"], o["gap"], o["label"]
    near = z0 - cam.z
    # beyond the depth where bars come closer than 3 px on screen, draw the fence as one mesh panel
    mesh_depth = math.sqrt(cam.f * max(abs(x - cam.x), 0.1) * gap / 3.0)
    z_mesh = z0 if o["panel"] else min(max(cam.z + mesh_depth, z0), z1)
    if z_mesh < z1:
        c.polygon([(x, 0, z_mesh), (x, h, z_mesh), (x, h, z1), (x, 0, z1)], _shade(o["colour"], 0.9), cls,
                  (z_mesh + z1) / 2 - cam.z)
    if not o["panel"]:
        first = z + gap * math.ceil((z0 - z) / gap)
        for zz in np.arange(first, z_mesh, gap)[::-1]:
            c.line([(x, 0, zz), (x, h, zz)], o["bar"], _shade(o["colour"], 0.8), cls, zz - cam.z)
    for y in (h * 0.95, h * 0.5):
        c.line([(x, y, z1), (x, y, z0)], o["bar"] * 1.2, o["colour"], cls, near)


def _draw_car(c: _Canvas, o: dict, z: float, t: int) -> None:
    L, Wd, Hc, cls = o["length"], o["width"], o["h"], o["label"]
    x0, x1 = o["x"] - Wd / 2, o["x"] + Wd / 2
    cam = c.cam
    z0, z1 = max(z, cam.z + NEAR), z + L
    if z1 <= z0 + 0.1:
        return
    near, depth = z0 - cam.z, max(z0 + L / 2 - cam.z, NEAR)
    body, glass = _shade(o["colour"], o["shade"]), (35, 45, 55)
    side_x = x0 if cam.x < x0 else (x1 if cam.x > x1 else None)
    detail = c.pixels(Hc, near) > 14
    if detail:  # shadow on the ground
        c.polygon([(x0 - 0.15, 0, z0), (x1 + 0.15, 0, z0), (x1 + 0.15, 0, z1 + 0.2), (x0 - 0.15, 0, z1 + 0.2)],
                  (25, 25, 28), None, depth)
    lower = Hc if o["big"] else Hc * 0.55
    if side_x is not None:
        c.polygon([(side_x, 0.15, z0), (side_x, lower, z0), (side_x, lower, z1), (side_x, 0.15, z1)],
                  _shade(body, 0.8), cls, depth)
        for wz in (z + L * 0.17, z + L * 0.83):
            if wz > cam.z + NEAR and detail:
                c.ellipse((side_x, 0.33, wz), 0.33 * min(1.0, abs(side_x - cam.x) / 3), 0.33,
                          (20, 20, 20), cls, wz - cam.z)
        if o["big"] and detail:
            for wz in np.arange(z + 1.0, z1 - 1.0, 1.5):
                if wz > cam.z + NEAR:
                    c.polygon([(side_x, Hc * 0.55, wz), (side_x, Hc * 0.85, wz), (side_x, Hc * 0.85, wz + 1.1),
                               (side_x, Hc * 0.55, wz + 1.1)], glass, cls, wz - cam.z)
    if cam.h > lower:
        c.polygon([(x0, lower, z0), (x1, lower, z0), (x1, lower, z1), (x0, lower, z1)], _shade(body, 1.1), cls,
                  depth)
    if not o["big"]:  # cabin
        ca, cb = max(z + L * 0.25, cam.z + NEAR), z + L * 0.78
        xi0, xi1 = x0 + 0.12, x1 - 0.12
        if cb > ca:
            cd = max(ca - cam.z, NEAR)
            if side_x is not None:
                sx = xi0 if side_x == x0 else xi1
                c.polygon([(sx, lower, ca), (sx, Hc, ca + 0.3), (sx, Hc, cb - 0.2), (sx, lower, cb)],
                          glass, cls, cd)
                if detail:
                    c.line([(sx, lower, (ca + cb) / 2), (sx, Hc, (ca + cb) / 2)], 0.08, body, cls, cd)
            if cam.h > Hc:
                c.polygon([(xi0, Hc, ca + 0.3), (xi1, Hc, ca + 0.3), (xi1, Hc, cb - 0.2), (xi0, Hc, cb - 0.2)],
                          body, cls, cd)
            c.polygon([(xi0, lower, ca), (xi1, lower, ca), (xi1 - 0.05, Hc, ca + 0.3), (xi0 + 0.05, Hc, ca + 0.3)],
                      glass, cls, cd)
    # end face (rear of a car ahead, front of an oncoming one)
    if z >= cam.z + NEAR:
        c.rect(x0, x1, 0.15, lower, z, body, cls, near)
        if not detail:
            return
        c.rect(x0, x0 + 0.3, 0.0, 0.3, z, (20, 20, 20), cls, near)  # tyres
        c.rect(x1 - 0.3, x1, 0.0, 0.3, z, (20, 20, 20), cls, near)
        light = (200, 30, 30) if o["v"] >= 0 else (240, 240, 220)
        for lx in (x0 + 0.1, x1 - 0.35):
            c.rect(lx, lx + 0.25, lower * 0.7, lower * 0.85, z, light, cls, near)
        c.rect(o["x"] - 0.25, o["x"] + 0.25, 0.3, 0.42, z, (230, 230, 220), cls, near)  # number plate


def _draw_pedestrian(c: _Canvas, o: dict, z: float, t: int) -> None:
    if (depth := z - c.cam.z) < NEAR:
        return
    x, cls = o["x"], o["label"]
    h, w = o["h"], o["width"] * o["h"] / 1.75
    swing = 0.07 * np.sin(o["phase"] + 1.3 * t) if o["v"] else 0.0  # legs seen from the front or back
    hip, shoulder = h * 0.5, h * 0.82
    if c.pixels(h, depth) < 18:  # a few pixels tall: legs, body, head
        c.polygon([(x - w * 0.35, hip, z), (x + w * 0.35, hip, z), (x + w * 0.3 + swing, 0, z),
                   (x - w * 0.3 - swing, 0, z)], o["pants"], cls, depth)
        c.polygon([(x - w / 2, shoulder, z), (x + w / 2, shoulder, z), (x + w * 0.45, hip, z),
                   (x - w * 0.45, hip, z)], o["shirt"], cls, depth)
        c.ellipse((x, h * 0.92, z), h * 0.065, h * 0.08, o["hair"], cls, depth)
        return
    for s in (-1, 1):
        c.line([(x + s * w * 0.18, hip, z), (x + s * (w * 0.15 + swing), 0.05, z)], w * 0.28, o["pants"],
               cls, depth)
        c.line([(x + s * w * 0.45, shoulder, z), (x + s * (w * 0.5 - swing * 0.6), hip * 0.95, z)], w * 0.18,
               o["shirt"], cls, depth)
    c.polygon([(x - w / 2, shoulder, z), (x + w / 2, shoulder, z), (x + w * 0.4, hip, z), (x - w * 0.4, hip, z)],
              o["shirt"], cls, depth)
    c.ellipse((x, h * 0.92, z), h * 0.06, h * 0.075, o["skin"], cls, depth)
    c.ellipse((x, h * 0.955, z + 0.02), h * 0.062, h * 0.045, o["hair"], cls, depth)
    if o["bag"]:
        c.rect(x + w * 0.5, x + w * 0.8, hip, hip + 0.3, z, _shade(o["pants"], 0.7), cls, depth)


def _draw_bicyclist(c: _Canvas, o: dict, z: float, t: int) -> None:
    if (depth := z - c.cam.z) < NEAR:
        return
    x, r, frame, cls = o["x"], 0.34, o["frame_colour"], o["label"]
    zb, zf = z, z + 1.05 * np.sign(o["v"])
    if c.pixels(o["h"], depth) < 18:  # a few pixels tall: bike, rider, head
        c.line([(x, r, zb), (x, r, zf)], 0.25, (30, 30, 30), cls, depth)
        c.line([(x, 0.5, z), (x, 1.5, z + 0.5 * np.sign(o["v"]))], 0.35, o["clothes"], cls, depth)
        c.ellipse((x, 1.68, z + 0.55 * np.sign(o["v"])), 0.12, 0.14, o["skin"], cls, depth)
        return
    theta = np.linspace(0, 2 * np.pi, 13)
    for zc in (zb, zf):
        ring = [(x, r + r * np.sin(a), zc + r * np.cos(a)) for a in theta]
        if min(p[2] for p in ring) > c.cam.z + NEAR:
            c.line(ring, 0.05, (25, 25, 25), cls, zc - c.cam.z)
    pedal = (x, 0.3, z + 0.45 * np.sign(o["v"]))
    seat = (x, 0.95, z + 0.3 * np.sign(o["v"]))
    bar = (x, 1.0, zf - 0.1 * np.sign(o["v"]))
    c.line([(x, r, zb), pedal, seat, bar, (x, r, zf)], 0.05, frame, cls, depth)
    shoulder = (x, 1.5, z + 0.6 * np.sign(o["v"]))
    knee = 0.12 * np.sin(o["phase"] + 2.0 * t)
    c.line([seat, (x + 0.12, 0.65 + knee, pedal[2]), pedal], 0.12, (40, 40, 60), cls, depth)
    c.line([(x, 0.98, seat[2]), shoulder], 0.32, o["clothes"], cls, depth)
    c.line([shoulder, bar], 0.09, o["clothes"], cls, depth)
    c.ellipse((x, 1.68, shoulder[2]), 0.11, 0.13, o["skin"], cls, depth)
    c.ellipse((x, 1.74, shoulder[2]), 0.12, 0.08, (200, 200, 40) if o["phase"] > 3 else (30, 30, 30), cls, depth)


def _draw_box(c: _Canvas, o: dict, z: float, t: int) -> None:
    if (depth := z - c.cam.z) < NEAR:
        return
    x, w = o["x"], o["w"]
    c.rect(x - w / 2, x + w / 2, 0, o["h"], z, o["colour"], o["label"], depth)


_SHAPES = {"pole": _draw_pole, "tree": _draw_tree, "fence": _draw_fence, "car": _draw_car,
           "pedestrian": _draw_pedestrian, "bicyclist": _draw_bicyclist, "box": _draw_box}
