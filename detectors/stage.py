"""What every stage of the blocked-exit detector shares: its tuning, the working geometry and a frame's features.

The detector (model.py) runs four stages in turn on each frame: the background (background.py: the
clear scenes and the short-term model), the lighting (lighting.py: a new light is not an object), the
evidence (evidence_track.py: seconds standing still, per pixel) and the judgement (judgement.py: the
route's and the camera's state, and the events). Each is a class holding its own state; they share
``Tuning``, one ``Geometry`` (the working size, the ROI) and the ``Features`` of the frame.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import cv2
import numpy as np

WORK_WIDTH = 160
_LOG_OFFSET = 8.0
_CHROMA_DAMP = 30.0

F32 = np.float32
SAMPLE = (slice(1, None, 4), slice(1, None, 4))  # every 4th pixel: where the medians are taken


@dataclass(frozen=True)
class Tuning:
    """Detector constants; the defaults are what the benchmark reports on."""

    work_width: int = WORK_WIDTH
    warmup_frames: int = 5
    learn_s: float = 20.0  # the clear scene is the per-pixel median of frames over this time
    learn_max_frames: int = 24
    learn_keep_frames: int = 8  # learning samples kept to recognise the clear scene coming back
    learn_keep_s: float = 600.0
    ghost_still_s: float = 10.0
    ghost_ratio: float = 3.0
    short_tau_s: float = 8.0
    long_tau_s: float = 120.0
    settle_tau_s: float = 10.0
    settle_s: float = 40.0
    struct_thr: float = 0.09
    int_thr: float = 0.22
    chroma_thr: float = 0.05
    noise_k: float = 4.0
    still_share: float = 0.5  # stationary for this share of min_blocked_s
    occupancy_min_s: float = 8.0
    decay_rate: float = 4.0
    lighting_frac: float = 0.4
    state_match_frac: float = 0.12
    obstructed_sim: float = 0.3
    obstructed_s: float = 15.0
    unobstructed_s: float = 6.0
    max_states: int = 4
    max_gap_s: float = 30.0
    gain_kernel: int = 25
    lighting_jump: float = 0.25
    look_tau_s: float = 30.0  # how fast the look of what stands still is followed
    look_switch_s: float = 5.0  # something else must stand there this long to start its own evidence
    settle_max_s: float = (
        30.0  # a new object settles into the short-term model within this; longer is a person
    )
    before_share: float = 0.05  # a region with evidence this little unlike its look from before is clear
    before_s: float = 4.0  # for this long (two frames at least)
    people: bool = True  # look for a person in each region that settles (HOG, on a crop of the frame)
    people_settle_s: float = 4.0  # a region is looked at once it has stood still this long, and
    people_settle_share: float = 0.25  # this share of min_blocked_s (held needs still_share of it)
    people_recheck_s: float = 20.0  # a person found is looked at again after this
    people_min_weight: float = 0.5  # the HOG detector's score a person needs
    people_max_crop_px: int = 60_000  # a region scaled to a person's size bigger than this is not one


@dataclass
class Features:
    """A frame's features that survive lighting, on the working size."""

    lum: np.ndarray  # log(Y + c)
    struct: np.ndarray  # lum minus its local mean
    cr: np.ndarray
    cb: np.ndarray

    @classmethod
    def of(cls, small: np.ndarray) -> Features:
        """The features of a BGR image already at the working size."""
        f = small.astype(F32)
        b, g, r = f[..., 0], f[..., 1], f[..., 2]
        y = 0.114 * b + 0.587 * g + 0.299 * r
        lum = cv2.log(y + F32(_LOG_OFFSET))
        inv = 1.0 / (r + g + b + F32(_CHROMA_DAMP))
        cr = (r - g) * inv
        cb = (b - g) * inv
        return cls(lum, structure(lum), cr, cb)

    def copy(self) -> Features:
        return Features(self.lum.copy(), self.struct.copy(), self.cr.copy(), self.cb.copy())


@dataclass(frozen=True)
class Geometry:
    """The working size of one frame size and the ROI on it."""

    frame_shape: tuple[int, int]  # (h, w) of the frames
    shape: tuple[int, int]  # working (h, w)
    roi: np.ndarray  # bool, working size
    roi_count: int
    box: tuple[slice, slice]  # the ROI's bounding box, two pixels wider

    @classmethod
    def of(cls, h: int, w: int, roi: list[tuple[float, float]], work_width: int) -> Geometry:
        ww = min(work_width, w)
        wh = max(8, round(h * ww / w))
        m = np.zeros((wh, ww), np.uint8)
        pts = np.array([[x * ww, y * wh] for x, y in roi], np.float32)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
        mask = m.astype(bool)
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            ys, xs = np.array([0, wh - 1]), np.array([0, ww - 1])
        box = (
            slice(max(0, int(ys.min()) - 2), min(wh, int(ys.max()) + 3)),
            slice(max(0, int(xs.min()) - 2), min(ww, int(xs.max()) + 3)),
        )
        return cls((h, w), (wh, ww), mask, max(1, int(mask.sum())), box)

    @property
    def box_shape(self) -> tuple[int, int]:
        return self.box[0].stop - self.box[0].start, self.box[1].stop - self.box[1].start

    def fingerprint(self, roi: list[tuple[float, float]]) -> str:
        """What a saved clear scene must have been learned for: the ROI and the working size."""
        key = json.dumps([roi, self.shape])
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def small(self, frame: np.ndarray) -> np.ndarray:
        """``frame`` at the working size."""
        wh, ww = self.shape
        if frame.shape[:2] == (wh, ww):
            return frame
        return cv2.resize(frame, (ww, wh), interpolation=cv2.INTER_AREA)


def structure(lum: np.ndarray) -> np.ndarray:
    return lum - cv2.blur(lum, (7, 7))


def outside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How far ``x`` lies outside ``[lo, hi]`` (0 inside)."""
    return np.maximum(x - hi, 0) + np.maximum(lo - x, 0)


def edges(lum: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3)
    return np.asarray(cv2.magnitude(gx, gy))


def rate(dt: float, tau_s: float) -> np.float32:
    """The weight of a new frame ``dt`` seconds after the last in an exponential average of time constant ``tau_s``."""
    return F32(1.0 - math.exp(-dt / tau_s)) if dt > 0 else F32(0.0)
