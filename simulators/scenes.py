"""Synthetic corridor scenes with ground truth, for the blocked-exit detector.

A scene is a camera looking down a corridor towards an exit: a tiled floor in perspective,
walls and a ceiling, people walking through and pausing, obstacles (e-bikes, boxes, bags)
placed and removed, lights switched off and on, dusk, flicker, sensor noise with auto
exposure, small camera jitter and, optionally, a hand or cloth over the lens. Everything is
drawn from one seed, so a scene is reproducible.

Ground truth follows CONTRACT §3: the route is ``blocked`` from ``placed + min_blocked_s`` until
the obstacle is removed, for obstacles that stay at least ``min_blocked_s``; the camera is
``obstructed`` while the lens is covered.

Two cases of issue 16 have generators of their own: ``generate_removal_scene`` (an object that stays on the
route for minutes and is then taken away, the floor bare to the end: the route must clear and never be raised
again) and ``generate_standing_scene`` (a real person, cut out of real footage with a mask, standing on the
route for 3 × ``min_blocked_s``: a person is occupancy, never ``blocked``). The person crops are an input
(``simulators/footage.py`` cuts them from ``vtest.avi`` at run time), so nothing of the video is in the repository.

Seeds: tune only on ``TUNING_SEEDS``; ``HELD_OUT_SEEDS`` (and ``HELD_OUT_REMOVAL_SEEDS``,
``HELD_OUT_STANDING_SEEDS`` for the two cases) are for the benchmark and are never looked at while choosing
detector parameters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .footage import PersonCrop

TUNING_SEEDS: tuple[int, ...] = tuple(range(0, 200))
HELD_OUT_SEEDS: tuple[int, ...] = tuple(range(1000, 1020))
HELD_OUT_REMOVAL_SEEDS: tuple[int, ...] = tuple(range(2000, 2010))
HELD_OUT_STANDING_SEEDS: tuple[int, ...] = tuple(range(3000, 3010))

WIDTH, HEIGHT = 640, 360
HORIZON_Y = 130.0
CENTRE_X = 320.0
NEAR_SPAN = 230.0  # pixels from horizon to the floor point 2 m away (the bottom row)
PIX_PER_M = 115.0  # at scale 1 (2 m from the camera)
HALF_WIDTH_M = 2.2  # corridor half width
FAR_M = 10.0  # the end wall with the exit door

DEFAULT_ROI: list[list[float]] = [[0.41, 0.52], [0.59, 0.52], [0.93, 0.99], [0.07, 0.99]]
EPOCH_MS = 1_790_000_000_000


def _scale(depth_m: float) -> float:
    return 2.0 / depth_m


def floor_point(depth_m: float, x_m: float) -> tuple[float, float]:
    """Image position of a floor point ``depth_m`` ahead and ``x_m`` to the side."""
    p = _scale(depth_m)
    return CENTRE_X + x_m * PIX_PER_M * p, HORIZON_Y + NEAR_SPAN * p


@dataclass
class LightEvent:
    kind: str  # "off" (lights off for a while), "flicker", "dusk"
    start_s: float
    end_s: float


@dataclass
class Obstacle:
    kind: str  # "ebike", "box", "bag"
    start_s: float
    end_s: float
    depth_m: float
    x_m: float
    colour: tuple[int, int, int]
    size: float  # metres (box edge, bag width, bike length)
    height: float


@dataclass
class Walker:
    start_s: float
    speed: float  # m/s, positive walks away from the camera
    x_m: float
    colour: tuple[int, int, int]
    height_m: float
    pause_at: float | None = None
    pause_s: float = 0.0


@dataclass
class StandingPerson:
    """A real person (a crop and its mask) who walks in from the side, stands still on the floor from ``stand_s``
    to ``leave_s``, and walks out to the other side."""

    crop: PersonCrop = field(repr=False)
    stand_s: float
    leave_s: float
    depth_m: float
    x_m: float
    height_m: float
    from_x_m: float  # where they come from (a side of the corridor); they leave to the other side
    speed: float = 1.1  # m/s, walking in and out

    def x_at(self, t: float) -> float | None:
        """Their lateral position at scene time ``t``; ``None`` while not in view."""
        walk = abs(self.x_m - self.from_x_m) / self.speed
        if t < self.stand_s - walk or t > self.leave_s + walk:
            return None
        if t < self.stand_s:
            return self.x_m + (self.from_x_m - self.x_m) * (self.stand_s - t) / walk
        if t <= self.leave_s:
            return self.x_m
        return self.x_m - (self.from_x_m - self.x_m) * (t - self.leave_s) / walk


@dataclass
class Cover:
    start_s: float
    end_s: float
    colour: tuple[int, int, int]


@dataclass
class Scene:
    seed: int
    duration_s: float
    fps_interval_s: float
    min_blocked_s: float
    start_ms: int
    jpeg_quality: int
    roi: list[list[float]]
    lights: list[LightEvent] = field(default_factory=list)
    obstacles: list[Obstacle] = field(default_factory=list)
    walkers: list[Walker] = field(default_factory=list)
    covers: list[Cover] = field(default_factory=list)
    people: list[StandingPerson] = field(default_factory=list)
    min_clear_s: float | None = None  # in the camera's config when set (CONTRACT §3's default is 30 s)
    albedo: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 3), np.float32), repr=False)
    noise_sigma: float = 2.0

    @property
    def camera_id(self) -> str:
        return f"cam-sim-{self.seed}"

    def timestamps(self) -> list[int]:
        n = int(self.duration_s // self.fps_interval_s) + 1
        return [self.start_ms + round(i * self.fps_interval_s * 1000) for i in range(n)]

    def camera_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"camera_id": self.camera_id, "roi": self.roi, "min_blocked_s": self.min_blocked_s}
        if self.min_clear_s is not None:
            config["min_clear_s"] = self.min_clear_s
        return config

    def truth(self) -> dict[str, Any]:
        """Ground truth intervals in epoch ms: blocked, obstructed, and what happened."""
        blocked = [
            [
                self.start_ms + round((o.start_s + self.min_blocked_s) * 1000),
                self.start_ms + round(o.end_s * 1000),
            ]
            for o in self.obstacles
            if o.end_s - o.start_s >= self.min_blocked_s
        ]
        short = [
            [self.start_ms + round(o.start_s * 1000), self.start_ms + round(o.end_s * 1000)]
            for o in self.obstacles
            if o.end_s - o.start_s < self.min_blocked_s
        ]
        obstructed = [
            [self.start_ms + round(c.start_s * 1000), self.start_ms + round(c.end_s * 1000)]
            for c in self.covers
        ]
        return {
            "seed": self.seed,
            "camera_id": self.camera_id,
            "min_blocked_s": self.min_blocked_s,
            "blocked": sorted(blocked),
            "short_obstacles": sorted(short),
            "obstructed": obstructed,
            "obstacles": [
                {
                    "kind": o.kind,
                    "start_s": o.start_s,
                    "end_s": o.end_s,
                    "colour": list(o.colour),
                    "roi_fraction": round(roi_fraction(o, self.roi), 4),
                }
                for o in self.obstacles
            ],
            "lights": [{"kind": e.kind, "start_s": e.start_s, "end_s": e.end_s} for e in self.lights],
            "walkers": len(self.walkers),
            "standing": [
                [self.start_ms + round(p.stand_s * 1000), self.start_ms + round(p.leave_s * 1000)]
                for p in self.people
            ],
        }

    # -- rendering -------------------------------------------------------------------------

    def illumination(self, t: float) -> np.ndarray:
        """Per-pixel, per-channel light at scene time ``t`` (about 1.0 in a lit corridor)."""
        return _illumination(self, t)

    def render(self, t: float) -> np.ndarray:
        """The camera's BGR frame at scene time ``t`` (uint8, 360×640)."""
        return _render(self, t)

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        for ts in self.timestamps():
            yield ts, self.render((ts - self.start_ms) / 1000.0)

    def jpeg_frames(self) -> Iterator[tuple[int, bytes]]:
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        for ts, img in self.frames():
            ok, buf = cv2.imencode(".jpg", img, params)
            if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
                raise RuntimeError("JPEG encoding failed")
            yield ts, buf.tobytes()


# -- the static corridor ---------------------------------------------------------------------


def _corridor_albedo(rng: np.random.Generator) -> np.ndarray:
    h, w = HEIGHT, WIDTH
    img = np.zeros((h, w, 3), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    wall = np.array(rng.uniform([150, 170, 185], [185, 200, 215]), np.float32)
    ceiling = np.array([215, 215, 210], np.float32)
    floor_grey = float(rng.uniform(105, 140))
    floor_tint = rng.uniform(-6, 6, 3).astype(np.float32)
    img[:] = wall
    img[ys < HORIZON_Y - (xs - CENTRE_X) * 0] = wall
    far_y = HORIZON_Y + NEAR_SPAN * _scale(FAR_M)
    far_half = HALF_WIDTH_M * PIX_PER_M * _scale(FAR_M)
    ceil_y = HORIZON_Y - NEAR_SPAN * _scale(FAR_M) * 0.9
    # ceiling: above the lines from the far wall's top corners to the image corners
    ceil_mask = (
        ys < ceil_y + (np.abs(xs - CENTRE_X) - far_half) * (ceil_y / max(CENTRE_X - far_half, 1.0)) * -1
    )
    img[ceil_mask] = ceiling
    # floor: depth per row, lateral metres per column
    with np.errstate(divide="ignore", invalid="ignore"):
        p = (ys - HORIZON_Y) / NEAR_SPAN
        depth = np.where(p > 0, 2.0 / np.maximum(p, 1e-6), 1e9)
        x_m = (xs - CENTRE_X) / (PIX_PER_M * np.maximum(p, 1e-6))
    floor = (ys >= far_y) & (np.abs(x_m) <= HALF_WIDTH_M)
    tile = 0.6
    ti = np.floor(depth / tile).astype(np.int64)
    tj = np.floor((x_m + 10) / tile).astype(np.int64)
    tile_var = rng.normal(0, 6, (64, 64)).astype(np.float32)
    base = floor_grey + tile_var[ti % 64, tj % 64]
    speck = cv2.GaussianBlur(rng.normal(0, 9, (h, w)).astype(np.float32), (0, 0), 0.8)
    fd = np.abs(depth / tile - np.round(depth / tile)) * tile
    fx = np.abs((x_m + 10) / tile - np.round((x_m + 10) / tile)) * tile
    grout = (fd < 0.02) | (fx < 0.02)
    fv = base + speck - grout * 35.0
    for c in range(3):
        img[..., c] = np.where(floor, fv + floor_tint[c], img[..., c])
    # skirting lines and doors on the side walls
    for d in (3.0, 5.5, 8.0):
        for side in (-1, 1):
            x0, y0 = floor_point(d, side * HALF_WIDTH_M)
            x1, _ = floor_point(d + 1.0, side * HALF_WIDTH_M)
            top = HORIZON_Y - (y0 - HORIZON_Y) * 0.9
            pts = np.array(
                [
                    [x0, y0],
                    [x1, floor_point(d + 1.0, 0)[1]],
                    [x1, HORIZON_Y - (floor_point(d + 1.0, 0)[1] - HORIZON_Y) * 0.9],
                    [x0, top],
                ],
                np.int32,
            )
            door = tuple(float(v) for v in rng.uniform(70, 140, 3))
            cv2.fillConvexPoly(img, pts, door)
            cv2.polylines(img, [pts], True, (50, 50, 50), 2)
    # the end wall with the exit door and its green sign
    fx0, fx1 = CENTRE_X - far_half, CENTRE_X + far_half
    cv2.rectangle(
        img, (int(fx0), int(ceil_y)), (int(fx1), int(far_y)), tuple(float(v) for v in wall * 0.9), -1
    )
    dw = far_half * 0.5
    cv2.rectangle(
        img, (int(CENTRE_X - dw), int(far_y - 40)), (int(CENTRE_X + dw), int(far_y)), (90, 110, 120), -1
    )
    cv2.rectangle(
        img, (int(CENTRE_X - 14), int(far_y - 52)), (int(CENTRE_X + 14), int(far_y - 44)), (60, 200, 40), -1
    )
    return np.clip(img, 0, 255)


# -- the timeline ----------------------------------------------------------------------------

_COLOURS = [
    (40, 40, 200),
    (200, 60, 40),
    (40, 160, 40),
    (30, 30, 30),
    (220, 220, 220),
    (0, 140, 255),
    (160, 40, 160),
    (20, 80, 120),
    (200, 200, 60),
    (90, 90, 90),
]
_BROWN_FLOORLIKE = (80, 120, 160)  # BGR with about the floor's grey level


def generate_scene(
    seed: int,
    duration_s: float = 300.0,
    fps_interval_s: float = 2.0,
    *,
    min_blocked_s: float = 60.0,
    lighting: bool = True,
    crowd: bool = True,
    obstacles: int | None = None,
    short_obstacles: int | None = None,
    cover: bool = False,
    roi: list[list[float]] | None = None,
) -> Scene:
    """A reproducible corridor scene.

    ``obstacles`` obstacles stay long enough to block the route (default: one per ~4 minutes);
    ``short_obstacles`` are put down and taken away before ``min_blocked_s``. ``lighting`` adds
    lights off/on, dusk and flicker; ``crowd`` a busy period; ``cover`` a covered lens.
    """
    rng = np.random.default_rng(seed)
    scene = Scene(
        seed=seed,
        duration_s=duration_s,
        fps_interval_s=fps_interval_s,
        min_blocked_s=min_blocked_s,
        start_ms=EPOCH_MS + seed * 86_400_000,
        jpeg_quality=int(rng.integers(55, 91)),
        roi=roi or DEFAULT_ROI,
        noise_sigma=float(rng.uniform(1.5, 3.5)),
    )
    scene.albedo = _corridor_albedo(rng)
    warmup = 20.0
    if obstacles is None:
        obstacles = max(1, int(duration_s // 240))
    if short_obstacles is None:
        short_obstacles = 1 if duration_s >= 240 else 0

    # obstacles: non-overlapping slots after the warm-up
    plan = ["long"] * obstacles + ["short"] * short_obstacles
    rng.shuffle(plan)
    t = warmup + float(rng.uniform(5, 30))
    for kind in plan:
        if kind == "long":
            stay = float(rng.uniform(min_blocked_s + 50, min_blocked_s + 110))
        else:
            stay = float(rng.uniform(10, min_blocked_s * 0.6))
        if t + stay > duration_s - 5:
            stay = duration_s - 5 - t
            if kind == "long" and stay < min_blocked_s + 46:
                break
            if stay < 5:
                break
        scene.obstacles.append(_random_obstacle(rng, t, t + stay, scene.roi))
        t = t + stay + float(rng.uniform(45, 80))

    # lighting: pick events in free places
    if lighting:
        kinds = ["off", "flicker", "dusk"]
        rng.shuffle(kinds)
        n = 2 if duration_s < 400 else 3
        span = (duration_s - warmup) / n
        for i, k in enumerate(kinds[:n]):
            s0 = warmup + i * span + float(rng.uniform(0, span * 0.3))
            if k == "off":
                s1 = s0 + float(rng.uniform(30, min(120, span * 0.7)))
            elif k == "flicker":
                s1 = s0 + float(rng.uniform(15, 40))
            else:
                s1 = s0 + float(rng.uniform(span * 0.5, span * 0.9))
            scene.lights.append(LightEvent(k, s0, min(s1, duration_s)))

    # people: a steady trickle, and a busy period
    rate = 1 / 25.0
    busy_start = float(rng.uniform(warmup, max(warmup + 1, duration_s - 90))) if crowd else -1.0
    tw = float(rng.uniform(0, 10))
    while tw < duration_s:
        scene.walkers.append(_random_walker(rng, tw))
        busy = crowd and busy_start <= tw <= busy_start + 80
        tw += float(rng.exponential(1 / (rate * (6 if busy else 1))))
    if cover:
        c0 = float(rng.uniform(duration_s * 0.45, duration_s * 0.6))
        r, g, b = (int(v) for v in rng.uniform(20, 110, 3))
        scene.covers.append(Cover(c0, c0 + float(rng.uniform(40, 80)), (r, g, b)))
    return scene


def generate_hard_scene(seed: int, duration_s: float = 300.0, fps_interval_s: float = 5.0) -> Scene:
    """A scene built to be hard: obstacles in the floor's own grey, people pausing on the route
    while the detector learns the clear scene, and someone pausing near every obstacle."""
    scene = generate_scene(seed, duration_s, fps_interval_s)
    rng = np.random.default_rng(seed + 7_919)
    floor = scene.albedo[roi_mask(scene.roi) > 0]
    grey = np.median(floor, axis=0)
    for o in scene.obstacles:
        if o.kind != "ebike" or rng.random() < 0.5:
            shade = grey * float(rng.uniform(0.8, 1.1)) + rng.uniform(-4, 4, 3)
            b, g, r = (int(np.clip(v, 0, 255)) for v in shade)
            o.colour = (b, g, r)
    for _ in range(int(rng.integers(1, 3))):
        t0 = float(rng.uniform(0.0, 6.0))
        colour = _COLOURS[int(rng.integers(len(_COLOURS)))]
        scene.walkers.append(
            Walker(
                t0,
                float(rng.uniform(0.9, 1.4)),
                float(rng.uniform(-1.0, 1.0)),
                colour,
                float(rng.uniform(1.5, 1.9)),
                pause_at=float(rng.uniform(2.6, 6.0)),
                pause_s=float(rng.uniform(15.0, 45.0)),
            )
        )
    scene.walkers.sort(key=lambda w: w.start_s)
    return scene


def generate_removal_scene(
    seed: int,
    fps_interval_s: float = 2.0,
    *,
    min_blocked_s: float = 60.0,
    min_clear_s: float = 10.0,
    lighting: bool = False,
) -> Scene:
    """An object left on the route for two to three and a half minutes, then taken away by someone who stops by it,
    and the floor bare to the end (at least ``2 × min_blocked_s + 60`` s): the route must be raised once, clear
    after the removal and never be raised again. People pass as in every scene; those who would pause do so only
    while the object is there (after the removal, a pause would be something on the floor). The camera clears after
    ``min_clear_s`` (10 s by default, as on the platform of issue 16, where the route cleared 12 s after the removal
    and was raised again on the bare floor 2 s later)."""
    rng = np.random.default_rng(seed + 15_485_863)
    placed = 20.0 + float(rng.uniform(5.0, 25.0))
    stay = float(rng.uniform(max(120.0, min_blocked_s + 60.0), max(210.0, min_blocked_s + 90.0)))
    removed = placed + stay
    duration = math.ceil(removed + 2 * min_blocked_s + 60.0 + float(rng.uniform(0.0, 30.0)))
    scene = generate_scene(
        seed, duration, fps_interval_s, min_blocked_s=min_blocked_s, lighting=lighting, crowd=True,
        obstacles=0, short_obstacles=0,
    )
    scene.min_clear_s = min_clear_s
    o = _random_obstacle(rng, placed, removed, scene.roi)
    scene.obstacles.append(o)
    # the floor stays bare after the removal: people pass, nobody stops (a pause is not something left there)
    for w in scene.walkers:
        if w.pause_at is not None and pause_ends(w) >= removed - 5.0:
            w.pause_at, w.pause_s = None, 0.0
    # the owner walks up to it, stands there a few seconds and leaves with it
    speed = float(rng.uniform(0.9, 1.3))
    wait = float(rng.uniform(4.0, 10.0))
    reach = (o.depth_m - 1.6) / speed
    colour = _COLOURS[int(rng.integers(len(_COLOURS)))]
    scene.walkers.append(
        Walker(removed - reach - wait * 0.5, speed, o.x_m + float(rng.uniform(-0.4, 0.4)), colour,
               float(rng.uniform(1.55, 1.85)), pause_at=o.depth_m - 0.2, pause_s=wait)
    )
    scene.walkers.sort(key=lambda w: w.start_s)
    return scene


def generate_standing_scene(
    seed: int,
    crops: list[PersonCrop],
    fps_interval_s: float = 2.0,
    *,
    min_blocked_s: float = 60.0,
    lighting: bool = False,
) -> Scene:
    """A real person (one of ``crops``, pasted through its mask, feet on the floor, scaled to the depth) walks onto
    the route, stands there for 3 × ``min_blocked_s`` and walks away; people pass as in every scene, pausing for
    at most half of ``min_blocked_s`` (drawn people are not what this case is about). Nothing is left behind: the
    route must never be ``blocked``."""
    if not crops:
        raise ValueError("generate_standing_scene needs at least one person crop (simulators/footage.py)")
    rng = np.random.default_rng(seed + 104_729)
    stand = 20.0 + float(rng.uniform(10.0, 40.0))
    leave = stand + 3.0 * min_blocked_s
    duration = math.ceil(leave + float(rng.uniform(60.0, 90.0)))
    scene = generate_scene(
        seed, duration, fps_interval_s, min_blocked_s=min_blocked_s, lighting=lighting, crowd=True,
        obstacles=0, short_obstacles=0,
    )
    # the drawn passers-by pause for less than min_blocked_s: the one who stays is the real person
    for w in scene.walkers:
        w.pause_s = min(w.pause_s, 0.5 * min_blocked_s)
    crop = crops[int(rng.integers(len(crops)))]
    side = 1.0 if rng.random() < 0.5 else -1.0
    for _ in range(50):
        person = StandingPerson(
            crop, stand, leave, float(rng.uniform(3.0, 6.0)), float(rng.uniform(-0.8, 0.8)),
            float(rng.uniform(1.6, 1.85)), side * (HALF_WIDTH_M + 0.3), float(rng.uniform(0.9, 1.3)),
        )
        if person_roi_fraction(person, scene.roi) >= 0.02:
            break
    scene.people.append(person)
    return scene


def roi_mask(roi: list[list[float]]) -> np.ndarray:
    """The ROI polygon's pixels (uint8 0/255) in a 360×640 frame."""
    m = np.zeros((HEIGHT, WIDTH), np.uint8)
    pts = np.array([[x * WIDTH, y * HEIGHT] for x, y in roi], np.int32)
    cv2.fillPoly(m, [pts], 255)
    return m


def roi_fraction(o: Obstacle, roi: list[list[float]]) -> float:
    """How much of the ROI the obstacle covers (0..1)."""
    r = roi_mask(roi) > 0
    return float(((obstacle_mask(o) > 0) & r).sum() / max(1, r.sum()))


def _random_obstacle(rng: np.random.Generator, t0: float, t1: float, roi: list[list[float]]) -> Obstacle:
    # big enough to count (CONTRACT §3 default min_object_frac 0.01, with margin)
    for _ in range(50):
        o = _one_obstacle(rng, t0, t1)
        if roi_fraction(o, roi) >= 0.02:
            return o
    return o


def _one_obstacle(rng: np.random.Generator, t0: float, t1: float) -> Obstacle:
    kind = str(rng.choice(["ebike", "ebike", "box", "box", "bag"]))
    colour = _COLOURS[int(rng.integers(len(_COLOURS)))]
    if kind == "box" and rng.random() < 0.5:
        colour = _BROWN_FLOORLIKE
    if kind == "ebike":
        size, height = float(rng.uniform(1.4, 1.8)), 1.0
    elif kind == "box":
        size = float(rng.uniform(0.35, 0.8))
        height = float(rng.uniform(0.3, 0.7))
    else:
        size, height = float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.25, 0.45))
    return Obstacle(
        kind, t0, t1, float(rng.uniform(3.0, 6.5)), float(rng.uniform(-1.2, 1.2)), colour, size, height
    )


def _random_walker(rng: np.random.Generator, t0: float) -> Walker:
    speed = float(rng.uniform(0.9, 1.6)) * (1 if rng.random() < 0.5 else -1)
    pause_at = None
    pause_s = 0.0
    if rng.random() < 0.25:
        pause_at = float(rng.uniform(3.0, 8.0))
        pause_s = float(rng.uniform(5, 40))
    colour = _COLOURS[int(rng.integers(len(_COLOURS)))]
    return Walker(
        t0, speed, float(rng.uniform(-1.5, 1.5)), colour, float(rng.uniform(1.5, 1.9)), pause_at, pause_s
    )


# -- rendering -------------------------------------------------------------------------------

_GRID = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)


def _gauss(cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    ys, xs = _GRID
    return np.exp(-(((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2) / 2).astype(np.float32)


_LAMPS_CACHE: dict[str, np.ndarray] = {}


def _light_maps() -> dict[str, np.ndarray]:
    if not _LAMPS_CACHE:
        on = np.full((HEIGHT, WIDTH), 0.55, np.float32)
        for d in (2.5, 4.5, 7.0):
            x, y = floor_point(d, 0.0)
            s = PIX_PER_M * _scale(d)
            on += 0.45 * _gauss(x, y, s * 1.6, s * 0.9)
        emergency = 0.10 + 0.35 * _gauss(CENTRE_X, HORIZON_Y + NEAR_SPAN * _scale(FAR_M), 90, 60)
        window = np.clip(1.0 - _GRID[1] / WIDTH, 0, 1) ** 1.5
        _LAMPS_CACHE["on"] = on
        _LAMPS_CACHE["off"] = emergency.astype(np.float32)
        _LAMPS_CACHE["window"] = window.astype(np.float32)
    return _LAMPS_CACHE


def _illumination(scene: Scene, t: float) -> np.ndarray:
    maps = _light_maps()
    lamps = 1.0
    window = 0.0
    flick = 1.0
    tint = np.array([1.0, 1.0, 1.0], np.float32)
    for e in scene.lights:
        if e.kind == "off" and e.start_s <= t < e.end_s:
            lamps = 0.0
        elif e.kind == "flicker" and e.start_s <= t < e.end_s:
            r = np.random.default_rng(int(t * 1000) + scene.seed)
            flick = float(r.uniform(0.7, 1.15))
        elif e.kind == "dusk" and t >= e.start_s:
            f = min(1.0, (t - e.start_s) / max(e.end_s - e.start_s, 1.0))
            # daylight through a window fades, the lamps are on a dimmer going down then up
            window = 0.6 * (1 - f)
            lamps = min(lamps, 0.55 + 0.45 * abs(1 - 2 * f))
            tint = np.array([1.0 - 0.1 * f, 1.0, 1.0 + 0.08 * f], np.float32)
    light = lamps * maps["on"] + (1 - lamps) * maps["off"] + window * maps["window"]
    if lamps == 0.0:
        tint = np.array([0.95, 1.05, 0.95], np.float32)
    return (light[..., None] * tint * flick).astype(np.float32)


def _draw_walker(img: np.ndarray, w: Walker, t: float) -> None:
    dt = t - w.start_s
    if dt < 0:
        return
    depth = _walker_depth(w, t)
    if depth < 1.2 or depth > FAR_M:
        return
    paused = w.pause_at is not None and abs(depth - w.pause_at) < 1e-6
    p = _scale(depth)
    sway = 0.03 * math.sin(t * 1.7) if paused else 0.0
    x, y = floor_point(depth, w.x_m + sway)
    h = w.height_m * PIX_PER_M * p
    bw = 0.45 * PIX_PER_M * p
    legs = (int(x - bw * 0.35), int(y - h * 0.48), int(x + bw * 0.35), int(y))
    cv2.rectangle(img, legs[:2], legs[2:], (40, 40, 50), -1)
    step = 0 if paused else int(dt * 2) % 2
    if step:
        cv2.line(
            img, (int(x), int(y - h * 0.45)), (int(x + bw * 0.3), int(y)), (40, 40, 50), max(1, int(bw * 0.3))
        )
    cv2.ellipse(
        img,
        (int(x), int(y - h * 0.66)),
        (max(1, int(bw / 2)), max(1, int(h * 0.2))),
        0,
        0,
        360,
        tuple(float(c) for c in w.colour),
        -1,
    )
    cv2.circle(img, (int(x), int(y - h * 0.92)), max(1, int(h * 0.075)), (120, 160, 205), -1)


def _person_patch(sp: StandingPerson) -> tuple[np.ndarray, np.ndarray]:
    """The crop and its mask as alpha (0..1, edges softened), scaled to the person's height at their depth."""
    h = max(4, round(sp.height_m * PIX_PER_M * _scale(sp.depth_m)))
    ch, cw = sp.crop.mask.shape[:2]
    w = max(2, round(cw * h / ch))
    interp = cv2.INTER_AREA if h < ch else cv2.INTER_LINEAR
    image = cv2.resize(sp.crop.image, (w, h), interpolation=interp).astype(np.float32)
    alpha = cv2.resize(sp.crop.mask, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    return image, cv2.GaussianBlur(alpha, (0, 0), 0.7)


def _draw_person(img: np.ndarray, sp: StandingPerson, t: float) -> None:
    x_m = sp.x_at(t)
    if x_m is None:
        return
    image, alpha = _person_patch(sp)
    fx, fy = floor_point(sp.depth_m, x_m)
    h, w = alpha.shape
    x0, y0 = round(fx - w / 2), round(fy - h)
    # clip to the frame
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(WIDTH, x0 + w), min(HEIGHT, y0 + h)
    if ix0 >= ix1 or iy0 >= iy1:
        return
    a = alpha[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0, None]
    patch = image[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    region = img[iy0:iy1, ix0:ix1]
    region[:] = region * (1 - a) + patch * a


def person_mask(sp: StandingPerson) -> np.ndarray:
    """The person's pixels (uint8 0/255) in a 360×640 frame while they stand."""
    m = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    blank = PersonCrop(np.full_like(sp.crop.image, 255), sp.crop.mask, sp.crop.frame)
    _draw_person(m, StandingPerson(blank, 0.0, 1.0, sp.depth_m, sp.x_m, sp.height_m, sp.from_x_m, sp.speed), 0.5)
    return (m[..., 0] > 127).astype(np.uint8) * 255


def person_roi_fraction(sp: StandingPerson, roi: list[list[float]]) -> float:
    """How much of the ROI the standing person covers (0..1)."""
    r = roi_mask(roi) > 0
    return float(((person_mask(sp) > 0) & r).sum() / max(1, r.sum()))


def _obstacle_shape(img: np.ndarray, o: Obstacle, shadow: np.ndarray | None) -> None:
    p = _scale(o.depth_m)
    x, y = floor_point(o.depth_m, o.x_m)
    s = PIX_PER_M * p
    col = tuple(float(c) for c in o.colour)
    if shadow is not None:
        cv2.ellipse(
            shadow, (int(x), int(y)), (int(o.size * s * 0.6), max(2, int(s * 0.12))), 0, 0, 360, 0.55, -1
        )
        return
    if o.kind == "ebike":
        r = int(0.3 * s)
        half = o.size * s / 2
        for dx in (-half + r, half - r):
            cv2.circle(img, (int(x + dx), int(y - r)), r, (25, 25, 25), max(2, int(0.08 * s)))
            cv2.circle(img, (int(x + dx), int(y - r)), max(1, int(r * 0.25)), (140, 140, 140), -1)
        body = np.array(
            [
                [x - half + r, y - r],
                [x - 0.1 * s, y - 0.7 * s],
                [x + half - r, y - 0.8 * s],
                [x + half - r * 1.2, y - r],
                [x, y - r * 1.2],
            ],
            np.int32,
        )
        cv2.fillPoly(img, [body], col)
        cv2.rectangle(
            img,
            (int(x - 0.25 * s), int(y - 0.85 * s)),
            (int(x + 0.05 * s), int(y - 0.75 * s)),
            (20, 20, 20),
            -1,
        )
        cv2.line(
            img,
            (int(x + half - r), int(y - r)),
            (int(x + half - r * 0.8), int(y - o.height * s)),
            (60, 60, 60),
            max(2, int(0.05 * s)),
        )
        cv2.rectangle(
            img,
            (int(x + half - r * 1.3), int(y - o.height * s - 0.15 * s)),
            (int(x + half - r * 0.3), int(y - o.height * s)),
            (30, 30, 30),
            -1,
        )
    elif o.kind == "box":
        wpx, hpx = o.size * s, o.height * s
        top = 0.25 * wpx
        cv2.rectangle(img, (int(x - wpx / 2), int(y - hpx)), (int(x + wpx / 2), int(y)), col, -1)
        lid = np.array(
            [
                [x - wpx / 2, y - hpx],
                [x + wpx / 2, y - hpx],
                [x + wpx / 2 - top * 0.4, y - hpx - top],
                [x - wpx / 2 + top * 0.4, y - hpx - top],
            ],
            np.int32,
        )
        cv2.fillConvexPoly(img, lid, tuple(min(255.0, c * 1.15) for c in col))
        cv2.line(
            img,
            (int(x - wpx / 2), int(y - hpx * 0.5)),
            (int(x + wpx / 2), int(y - hpx * 0.5)),
            tuple(c * 0.8 for c in col),
            max(1, int(0.03 * s)),
        )
    else:
        cv2.ellipse(
            img,
            (int(x), int(y - o.height * s / 2)),
            (int(o.size * s / 2), int(o.height * s / 2)),
            0,
            0,
            360,
            col,
            -1,
        )
        cv2.ellipse(
            img,
            (int(x), int(y - o.height * s)),
            (int(o.size * s / 5), int(o.height * s / 5)),
            0,
            180,
            360,
            tuple(c * 0.6 for c in col),
            max(1, int(0.04 * s)),
        )


def obstacle_mask(o: Obstacle) -> np.ndarray:
    """The obstacle's pixels (uint8 0/255) in a 360×640 frame."""
    m = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    _obstacle_shape(m, Obstacle(o.kind, 0, 0, o.depth_m, o.x_m, (255, 255, 255), o.size, o.height), None)
    return (m[..., 0] > 0).astype(np.uint8) * 255


_NOISE: list[np.ndarray] = []


def _noise_bank() -> list[np.ndarray]:
    if not _NOISE:
        r = np.random.default_rng(12345)
        _NOISE.extend(r.standard_normal((HEIGHT, WIDTH, 3), dtype=np.float32) for _ in range(12))
    return _NOISE


def _render(scene: Scene, t: float) -> np.ndarray:
    img = scene.albedo.copy()
    shadow = np.ones((HEIGHT, WIDTH), np.float32)
    present = [o for o in scene.obstacles if o.start_s <= t < o.end_s]
    for o in present:
        _obstacle_shape(img, o, shadow)
    img *= np.asarray(cv2.GaussianBlur(shadow, (0, 0), 4))[..., None]
    drawables: list[tuple[float, Any]] = [(o.depth_m, o) for o in present]
    for w in scene.walkers:
        if w.start_s <= t:
            drawables.append((0.0, w))
    drawables.extend((sp.depth_m, sp) for sp in scene.people)
    # far things first; walkers drawn over obstacles when nearer: approximate by depth order
    for _depth, d in sorted(drawables, key=lambda item: -_depth_of(item[1], t)):
        if isinstance(d, Obstacle):
            _obstacle_shape(img, d, None)
        elif isinstance(d, StandingPerson):
            _draw_person(img, d, t)
        else:
            _draw_walker(img, d, t)
    light = _illumination(scene, t)
    scene_lin = img * light
    mean = float(scene_lin.mean())
    exposure = float(np.clip(120.0 / max(mean, 1.0), 0.6, 3.0) ** 0.8)
    rng = np.random.default_rng(scene.seed * 1_000_003 + int(t * 1000))
    bank = _noise_bank()
    noise = bank[int(rng.integers(len(bank)))]
    out = scene_lin * exposure + noise * np.float32(scene.noise_sigma * (0.6 + 0.6 * exposure))
    for c in scene.covers:
        if c.start_s <= t < c.end_s:
            hand = np.empty_like(out)
            hand[:] = np.array(c.colour, np.float32)
            hand *= (0.6 + 0.5 * _gauss(WIDTH * 0.4, HEIGHT * 0.6, 300, 220))[..., None]
            out = hand + noise * np.float32(3.0)
    dx, dy = rng.normal(0, 0.6, 2)
    m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    out = cv2.warpAffine(out, m, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REFLECT)
    return np.clip(out, 0, 255).astype(np.uint8)


def _depth_of(d: Any, t: float) -> float:
    if isinstance(d, (Obstacle, StandingPerson)):
        return d.depth_m
    return _walker_depth(d, t)


def pause_ends(w: Walker) -> float:
    """When a walker's pause ends (scene time); only for walkers that pause."""
    assert w.pause_at is not None
    start = 1.6 if w.speed > 0 else FAR_M - 0.3
    return w.start_s + abs(w.pause_at - start) / abs(w.speed) + w.pause_s


def _walker_depth(w: Walker, t: float) -> float:
    """Where a walker is at scene time t (metres from the camera): walking at its speed, pausing once."""
    start = 1.6 if w.speed > 0 else FAR_M - 0.3
    travel = abs(w.speed) * (t - w.start_s)
    if w.pause_at is not None:
        dist_to_pause = abs(w.pause_at - start)
        if travel > dist_to_pause:
            travel = max(dist_to_pause, travel - abs(w.speed) * w.pause_s)
    return start + math.copysign(travel, w.speed)


def write_scene(scene: Scene, out_dir: Path) -> Path:
    """Write ``frames/<epoch_ms>.jpg``, ``truth.json`` and ``camera.json`` under ``out_dir``."""
    frames = out_dir / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    for ts, data in scene.jpeg_frames():
        (frames / f"{ts}.jpg").write_bytes(data)
    (out_dir / "truth.json").write_text(json.dumps(scene.truth(), indent=1))
    (out_dir / "camera.json").write_text(json.dumps(scene.camera_config()))
    return out_dir
