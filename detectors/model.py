"""The blocked-exit detector: per camera, frames in (with their capture time), findings out.

How it decides, on a small copy of the frame (``WORK_WIDTH`` pixels wide):

* Features that survive lighting. Grey is compared as ``log(Y + c)``, so a change of gain is an
  offset, and the per-frame offset (lights dimming, flicker, auto exposure) is taken out by its
  median. Structure is the log image minus its local mean: local contrast, which does not
  change when the light does. Colour is chroma (``(R-G)/S``, ``(B-G)/S``), so that a brown box
  on a grey floor of the same grey level still stands out. Each comparison tolerates a shift of
  one working pixel (camera jitter) by comparing against the neighbourhood's range.
* Two backgrounds (Porikli's dual foreground). The long-term one is the clear scene: learned
  from the median of the first frames (or from the reference image) and afterwards updated only
  where the scene is judged clear. The short-term one follows everything within seconds. A
  pixel in the long-term foreground but not in the short-term one holds something that stays;
  in both, something that moves (a person, perhaps walking in front of an object).
* Evidence per pixel, on frame time: the seconds it has been stationary foreground, and the
  seconds it has differed from the clear scene at all. Passing in front holds the evidence; only
  the clear scene coming back takes it away. The route is blocked when pixels that have differed
  for ``min_blocked_s`` and stayed still for a good part of it cover ``min_object_frac`` of the
  ROI; it is clear after ``min_clear_s`` without such objects.
* Lighting states. A change over most of the picture whose structure still matches the clear
  scene is light, not objects: the detector switches to a stored clear scene for that light, or
  makes one by relighting the clear scene with the change measured around (not on) any objects.
* Obstruction. When the structure of the whole picture stops matching every stored clear scene
  (a covered lens, a camera turned away) for ``obstructed_s``, the camera is obstructed; the
  models and the evidence are frozen until it sees its scene again.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .config import CameraConfig

__all__ = ["CameraConfig", "DetectionEvent", "ExitDetector", "FrameResult", "Tuning"]

WORK_WIDTH = 160
_LOG_OFFSET = 8.0
_CHROMA_DAMP = 30.0

F32 = np.float32
Mask = np.ndarray


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


@dataclass
class DetectionEvent:
    """A change of the camera's state, to be published as its ``event``."""

    type: str  # exit_blocked, exit_cleared, camera_obstructed, camera_obstructed_cleared
    ts_ms: int
    occupancy: float
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # normalised x0, y0, x1, y1


@dataclass
class FrameResult:
    ts_ms: int
    blocked: bool
    occupancy: float
    obstructed: bool
    events: list[DetectionEvent] = field(default_factory=list)
    learning: bool = False
    lighting_change: bool = False

    def line(self) -> dict[str, object]:
        """The replay line of CONTRACT §3 (plus ``events`` when there are some)."""
        out: dict[str, object] = {
            "ts_ms": self.ts_ms,
            "blocked": self.blocked,
            "occupancy": round(self.occupancy, 4),
            "obstructed": self.obstructed,
        }
        if self.events:
            out["events"] = [e.type for e in self.events]
        return out


@dataclass
class _Features:
    lum: np.ndarray  # log(Y + c)
    struct: np.ndarray  # lum minus its local mean
    cr: np.ndarray
    cb: np.ndarray


@dataclass
class _Scene:
    """A clear-scene model for one lighting state."""

    lum: np.ndarray
    cr: np.ndarray
    cb: np.ndarray
    struct: np.ndarray = field(init=False)
    lo: np.ndarray = field(init=False)
    hi: np.ndarray = field(init=False)
    slo: np.ndarray = field(init=False)
    shi: np.ndarray = field(init=False)
    used_ms: int = 0

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self.struct = _structure(self.lum)
        k = np.ones((3, 3), np.uint8)
        self.lo, self.hi = cv2.erode(self.lum, k), cv2.dilate(self.lum, k)
        self.slo, self.shi = cv2.erode(self.struct, k), cv2.dilate(self.struct, k)


@dataclass
class _Diffs:
    struct: np.ndarray
    lum: np.ndarray
    chroma: np.ndarray
    gain: np.ndarray  # the local light (log grey offset) taken out
    cr_shift: np.ndarray
    cb_shift: np.ndarray
    agree: np.ndarray  # pixels that the light alone explains
    alike: np.ndarray  # pixels whose structure and colour match (their grey level may not)


@dataclass
class _Layers:
    """Per pixel, the look of what stands there now and of what stood there before it."""

    look: list[np.ndarray]
    look_ok: np.ndarray
    prev: list[np.ndarray]
    prev_ok: np.ndarray
    prev_age: np.ndarray
    moving: np.ndarray  # seconds in the short-term foreground since the pixel last looked settled
    odd: np.ndarray  # seconds standing still and not looking as before (less the seconds it did)
    arrived: np.ndarray  # the different look came with movement
    was_moving: np.ndarray
    quiet: np.ndarray  # seconds since the pixel last moved
    scene: _Scene | None = None

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> _Layers:
        def z() -> np.ndarray:
            return np.zeros(shape, F32)

        return cls(
            [z(), z(), z()],
            np.zeros(shape, bool),
            [z(), z(), z()],
            np.zeros(shape, bool),
            z(),
            z(),
            z(),
            np.zeros(shape, bool),
            np.zeros(shape, bool),
            np.full(shape, 1e6, F32),
        )

    def set_look(self, look: tuple[np.ndarray, ...], where: np.ndarray) -> None:
        for i in range(3):
            self.look[i] = np.where(where, look[i], self.look[i]).astype(F32)
        self.look_ok |= where


def _structure(lum: np.ndarray) -> np.ndarray:
    return lum - cv2.blur(lum, (7, 7))


def _outside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How far ``x`` lies outside ``[lo, hi]`` (0 inside)."""
    return np.maximum(x - hi, 0) + np.maximum(lo - x, 0)


class ExitDetector:
    """One camera's detector. Feed it every frame in time order with ``process``."""

    def __init__(self, config: CameraConfig, tuning: Tuning | None = None) -> None:
        self.config = config
        self.tuning = tuning or Tuning()
        self._shape: tuple[int, int] | None = None  # working (h, w)
        self._frame_shape: tuple[int, int] | None = None
        self._roi: np.ndarray = np.zeros((1, 1), bool)
        self._roi_count = 1
        self._warm: list[_Features] = []
        self._warm_from: int | None = None
        self._samples: list[_Features] = []  # what was seen while learning, for a while after
        self._samples_until = 0
        self._states: list[_Scene] = []
        self._scene: _Scene | None = None
        self._short: _Features | None = None
        self._still: np.ndarray = np.zeros((1, 1), F32)  # seconds stationary
        self._age: np.ndarray = np.zeros((1, 1), F32)  # seconds differing from the clear scene
        self._layers = _Layers.empty((1, 1))
        self._pending: np.ndarray = np.zeros((1, 1), bool)
        self._box: tuple[slice, slice] = (slice(0, 1), slice(0, 1))  # the ROI's bounding box
        self._last_ts: int | None = None
        self._settle_until = -1
        self.blocked = False
        self.obstructed = False
        self._last_present_ms = 0
        self._obs_since: int | None = None
        self._seen_since: int | None = None
        self._reference: np.ndarray | None = None
        if config.reference is not None:
            ref = cv2.imread(str(config.reference), cv2.IMREAD_COLOR)
            if ref is None:
                raise ValueError(f"reference image {config.reference} cannot be read as an image")
            self._reference = ref
        self.last_masks: dict[str, np.ndarray] = {}
        self.scene_version = 0  # goes up whenever the clear scene is learned, relit or corrected
        self._restore: bytes | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def roi_mask(self) -> np.ndarray:
        return self._roi

    @property
    def learning(self) -> bool:
        """True until the detector has a clear scene (learned, restored or the reference)."""
        return self._scene is None

    def fingerprint(self) -> str | None:
        """What a saved clear scene must have been learned for: the ROI and the working size."""
        if self._shape is None:
            return None
        key = json.dumps([self.config.roi, self._shape])
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def saved_scene(self) -> bytes | None:
        """The learned clear scene (every lighting state) as bytes to keep; ``None`` while learning
        or when a reference image is the clear scene."""
        if self._scene is None or self._reference is not None:
            return None
        buf = io.BytesIO()
        arrays: dict[str, Any] = {"fingerprint": np.array(self.fingerprint())}
        order = [self._scene] + [s for s in self._states if s is not self._scene]
        for i, s in enumerate(order):
            arrays[f"lum{i}"] = s.lum.astype(np.float16)
            arrays[f"cr{i}"] = s.cr.astype(np.float16)
            arrays[f"cb{i}"] = s.cb.astype(np.float16)
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    def restore_scene(self, data: bytes) -> None:
        """Start from a clear scene kept by ``saved_scene`` instead of learning one; it is used on
        the first frame if it was learned for the same ROI and sizes (else learning starts as usual)."""
        if self._scene is None and self._reference is None:
            self._restore = data

    def _restored(self, ts_ms: int) -> list[_Scene]:
        data, self._restore = self._restore, None
        if data is None:
            return []
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if str(z["fingerprint"]) != self.fingerprint():
                    return []
                scenes = []
                i = 0
                while f"lum{i}" in z:
                    arr = [z[f"{k}{i}"].astype(F32) for k in ("lum", "cr", "cb")]
                    if arr[0].shape != self._shape:
                        return []
                    scenes.append(_Scene(arr[0], arr[1], arr[2], used_ms=ts_ms))
                    i += 1
                return scenes
        except (OSError, ValueError, KeyError):
            return []

    def process(self, frame_bgr: np.ndarray, ts_ms: int) -> FrameResult:
        """Judge one frame taken at ``ts_ms`` (epoch ms); frames must come in time order."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError("frame must be a BGR image (H×W×3)")
        feats = self._features(frame_bgr)
        dt = (
            0.0
            if self._last_ts is None
            else max(0.0, min((ts_ms - self._last_ts) / 1000.0, self.tuning.max_gap_s))
        )
        self._last_ts = ts_ms
        if self._scene is None:
            return self._learn(feats, ts_ms)
        return self._judge(feats, ts_ms, dt)

    # -- features -------------------------------------------------------------------------

    def _features(self, frame: np.ndarray) -> _Features:
        h, w = frame.shape[:2]
        if self._frame_shape != (h, w):
            self._setup(h, w)
        assert self._shape is not None
        wh, ww = self._shape
        small = frame if (h, w) == (wh, ww) else cv2.resize(frame, (ww, wh), interpolation=cv2.INTER_AREA)
        return self._features_small(small)

    def _features_small(self, small: np.ndarray) -> _Features:
        f = small.astype(F32)
        b, g, r = f[..., 0], f[..., 1], f[..., 2]
        y = 0.114 * b + 0.587 * g + 0.299 * r
        lum = cv2.log(y + F32(_LOG_OFFSET))
        inv = 1.0 / (r + g + b + F32(_CHROMA_DAMP))
        cr = (r - g) * inv
        cb = (b - g) * inv
        return _Features(lum, _structure(lum), cr, cb)

    def _setup(self, h: int, w: int) -> None:
        if self._frame_shape is not None:
            # a new resolution: start again (the clear scene must be learned at this size)
            self.__init__(self.config, self.tuning)  # type: ignore[misc]
        self._frame_shape = (h, w)
        ww = min(self.tuning.work_width, w)
        wh = max(8, round(h * ww / w))
        self._shape = (wh, ww)
        m = np.zeros((wh, ww), np.uint8)
        pts = np.array([[x * ww, y * wh] for x, y in self.config.roi], np.float32)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
        self._roi = m.astype(bool)
        self._roi_count = max(1, int(self._roi.sum()))
        self._still = np.zeros((wh, ww), F32)
        self._age = np.zeros((wh, ww), F32)
        ys, xs = np.nonzero(self._roi)
        if ys.size == 0:
            ys, xs = np.array([0, wh - 1]), np.array([0, ww - 1])
        self._box = (
            slice(max(0, int(ys.min()) - 2), min(wh, int(ys.max()) + 3)),
            slice(max(0, int(xs.min()) - 2), min(ww, int(xs.max()) + 3)),
        )
        bh, bw = self._box[0].stop - self._box[0].start, self._box[1].stop - self._box[1].start
        self._layers = _Layers.empty((bh, bw))
        self._pending = np.zeros((wh, ww), bool)

    # -- learning the clear scene -------------------------------------------------------------

    def _learn(self, feats: _Features, ts_ms: int) -> FrameResult:
        if self._reference is not None:
            assert self._shape is not None
            wh, ww = self._shape
            ref = cv2.resize(self._reference, (ww, wh), interpolation=cv2.INTER_AREA)
            rf = self._features_small(ref)
            self._start(_Scene(rf.lum, rf.cr, rf.cb, used_ms=ts_ms), feats, ts_ms)
            return self._judge(feats, ts_ms, 0.0)
        t = self.tuning
        kept = self._restored(ts_ms)
        if kept:
            self._start(kept[0], feats, ts_ms)
            self._states = kept
            return self._judge(feats, ts_ms, 0.0)
        if self._warm_from is None:
            self._warm_from = ts_ms
        self._warm.append(feats)
        if len(self._warm) > t.learn_max_frames:
            del self._warm[1::2]  # keep the samples spread over the whole learning time
        if len(self._warm) >= t.warmup_frames and ts_ms - self._warm_from >= t.learn_s * 1000:
            # the light may have changed while learning: each sample is brought to the last one's level
            level = float(np.median(feats.lum[1::4, 1::4]))
            lums = [f.lum + F32(level - float(np.median(f.lum[1::4, 1::4]))) for f in self._warm]
            lum = np.median(np.stack(lums), axis=0).astype(F32)
            cr = np.median(np.stack([f.cr for f in self._warm]), axis=0).astype(F32)
            cb = np.median(np.stack([f.cb for f in self._warm]), axis=0).astype(F32)
            step = max(1, len(self._warm) // t.learn_keep_frames)
            self._samples = self._warm[::step][: t.learn_keep_frames]
            self._samples_until = ts_ms + round(t.learn_keep_s * 1000)
            self._warm = []
            self._warm_from = None
            self._start(_Scene(lum, cr, cb, used_ms=ts_ms), feats, ts_ms)
        return FrameResult(ts_ms, False, 0.0, False, learning=True)

    def _start(self, scene: _Scene, feats: _Features, ts_ms: int) -> None:
        self.scene_version += 1
        self._scene = scene
        self._states = [scene]
        self._short = _Features(feats.lum.copy(), feats.struct.copy(), feats.cr.copy(), feats.cb.copy())

    # -- comparing ------------------------------------------------------------------------

    def _diffs(
        self, feats: _Features, scene: _Scene, exclude: np.ndarray | None, local: bool = True
    ) -> _Diffs:
        """Structure, grey and chroma differences from a scene model, the light taken out.

        The light is taken out twice: a global offset of the log grey level and of chroma
        (medians), then smooth local fields measured where structure and colour agree, away
        from known objects, so that a lamp going off at one end is not an object.
        """
        t = self.tuning
        sample = (slice(1, None, 4), slice(1, None, 4))
        dl = feats.lum - scene.lum
        dcr = feats.cr - scene.cr
        dcb = feats.cb - scene.cb
        d_str = cv2.blur(_outside(feats.struct, scene.slo, scene.shi), (3, 3))
        ocr = F32(np.median(dcr[sample]))
        ocb = F32(np.median(dcb[sample]))
        agree = (d_str < t.struct_thr) & (np.abs(dcr - ocr) + np.abs(dcb - ocb) < t.chroma_thr)
        if exclude is not None:
            agree &= ~exclude
        alike = agree.copy()
        k = (t.gain_kernel, t.gain_kernel)
        gain = np.full_like(dl, F32(np.median(dl[sample])))
        fcr = np.full_like(dl, ocr)
        fcb = np.full_like(dl, ocb)
        for _ in range(2 if local else 0):  # the second pass leaves out what the first could not explain
            w = agree.astype(F32)
            den = cv2.blur(w, k)
            ok = den > 0.1
            inv = 1.0 / np.maximum(den, F32(1e-3))
            gain = np.where(ok, cv2.blur(dl * w, k) * inv, gain).astype(F32)
            fcr = np.where(ok, cv2.blur(dcr * w, k) * inv, fcr).astype(F32)
            fcb = np.where(ok, cv2.blur(dcb * w, k) * inv, fcb).astype(F32)
            agree &= (np.abs(dl - gain) < F32(t.int_thr * 0.6)) & (
                np.abs(dcr - fcr) + np.abs(dcb - fcb) < F32(t.chroma_thr * 0.6)
            )
        d_int = cv2.blur(_outside(feats.lum - gain, scene.lo, scene.hi), (3, 3))
        d_chr = cv2.blur(np.abs(dcr - fcr) + np.abs(dcb - fcb), (3, 3))
        return _Diffs(d_str, d_int, d_chr, gain, fcr, fcb, agree, alike)

    def _foreground(self, diffs: _Diffs) -> np.ndarray:
        t = self.tuning
        d_str, d_int, d_chr = diffs.struct, diffs.lum, diffs.chroma
        sample = (slice(1, None, 4), slice(1, None, 4))
        ts = max(t.struct_thr, t.noise_k * float(np.median(d_str[sample])))
        ti = max(t.int_thr, t.noise_k * float(np.median(d_int[sample])))
        tc = max(t.chroma_thr, t.noise_k * float(np.median(d_chr[sample])))
        fg = ((d_str > ts) | (d_int > ti) | (d_chr > tc)).astype(np.uint8)
        return np.asarray(cv2.medianBlur(fg, 3)).astype(bool)

    def _similarity(self, feats: _Features, scene: _Scene) -> float:
        """Correlation of the whole picture's structure with a clear scene (1 same view, ~0 none)."""
        a = feats.struct
        b = scene.struct
        num = float((a * b).sum())
        den = math.sqrt(float((a * a).sum()) * float((b * b).sum())) + 1e-9
        return num / den

    # -- the per-frame judgement ------------------------------------------------------------

    def _judge(self, feats: _Features, ts_ms: int, dt: float) -> FrameResult:
        t = self.tuning
        scene = self._scene
        short = self._short
        assert scene is not None and short is not None
        events: list[DetectionEvent] = []
        objects = cv2.dilate((self._still > 0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)

        # obstruction: the whole view's structure no longer matches any clear scene
        sim = max(self._similarity(feats, s) for s in self._states)
        if sim < t.obstructed_sim or self.obstructed:
            # nothing can be seen: the route keeps its state, its clear timer waits
            self._last_present_ms = ts_ms
        if sim < t.obstructed_sim:
            self._seen_since = None
            if self._obs_since is None:
                self._obs_since = ts_ms
            if not self.obstructed and ts_ms - self._obs_since >= t.obstructed_s * 1000:
                self.obstructed = True
                events.append(DetectionEvent("camera_obstructed", ts_ms, self._occupancy_value()))
            return FrameResult(ts_ms, self.blocked, self._occupancy_value(), self.obstructed, events)
        self._obs_since = None
        if self.obstructed:
            if self._seen_since is None:
                self._seen_since = ts_ms
            if ts_ms - self._seen_since >= t.unobstructed_s * 1000:
                self.obstructed = False
                self._seen_since = None
                events.append(DetectionEvent("camera_obstructed_cleared", ts_ms, self._occupancy_value()))
            else:
                return FrameResult(ts_ms, self.blocked, self._occupancy_value(), self.obstructed, events)
            # back in view: the short-term model restarts from what is seen now
            self._short = short = _copy(feats)

        diffs = self._diffs(feats, scene, objects)
        fg_long = self._foreground(diffs)
        lighting = False
        level = float(np.median(feats.lum[1::4, 1::4]))
        jump = self._level is not None and abs(level - self._level) > t.lighting_jump
        self._level = level
        changed = float(fg_long.mean())
        if changed > t.lighting_frac or (jump and changed > t.state_match_frac):
            lighting = True
            scene, diffs, fg_long = self._relight(feats, scene, diffs, objects, ts_ms)
            self._short = short = _copy(feats)
        scene.used_ms = ts_ms

        sdiffs = self._diffs(feats, _Scene(short.lum, short.cr, short.cb), None, local=False)
        fg_short = self._foreground(sdiffs)
        if not lighting and float(fg_short.mean()) > t.lighting_frac:
            # a sudden change over most of the picture that the clear scene explains: light
            lighting = True
            self._short = short = _copy(feats)
            fg_short = np.zeros_like(fg_short)

        # evidence, on frame time
        moving = fg_long & fg_short
        still = fg_long & ~fg_short
        decay = F32(t.decay_rate * dt)
        if not lighting:
            gone = np.maximum(self._still - decay, F32(0))
            self._still = np.where(still, self._still + F32(dt), np.where(moving, self._still, gone)).astype(
                F32
            )
            self._age = np.where(fg_long, self._age + F32(dt), np.maximum(self._age - decay, F32(0))).astype(
                F32
            )
            self._follow_layers(feats, diffs, fg_long, still, dt, scene)

        # a clear model contradicted where the picture lacks the model's outline: something that
        # was there while the scene was learned has left; what is seen now is the clear scene
        if not lighting:
            settled = still & (self._still >= F32(t.ghost_still_s))
            if settled.any():
                ghosts = self._ghosts(feats, scene, fg_long, settled, fg_short)
                if ghosts is not None:
                    self._adopt(feats, scene, diffs, ghosts)
                    fg_long &= ~ghosts

        # models: the short-term one follows everything, the clear scene only what is clear
        a_s = F32(1.0 - math.exp(-dt / t.short_tau_s)) if dt > 0 else F32(0.0)
        gain = float(np.median((feats.lum - short.lum)[1::4, 1::4]))
        short.lum += a_s * (feats.lum - F32(gain) - short.lum)
        short.cr += a_s * (feats.cr - short.cr)
        short.cb += a_s * (feats.cb - short.cb)
        tau = t.settle_tau_s if ts_ms < self._settle_until else t.long_tau_s
        a_l = F32(1.0 - math.exp(-dt / tau)) if dt > 0 else F32(0.0)
        clear = ~fg_long & ~fg_short & (self._still <= 0)
        clear = cv2.erode(clear.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if a_l > 0 and clear.any():
            gl = float(np.median((feats.lum - scene.lum)[1::4, 1::4]))
            scene.lum = np.where(
                clear, scene.lum + a_l * (feats.lum - F32(gl) - scene.lum), scene.lum
            ).astype(F32)
            scene.cr = np.where(clear, scene.cr + a_l * (feats.cr - scene.cr), scene.cr).astype(F32)
            scene.cb = np.where(clear, scene.cb + a_l * (feats.cb - scene.cb), scene.cb).astype(F32)
            scene.refresh()

        # the route's state
        held = (
            self._roi
            & (self._age >= F32(self.config.min_blocked_s))
            & (self._still >= F32(t.still_share * self.config.min_blocked_s))
            & ~self._pending
        )
        present = self._roi & (self._still >= F32(t.occupancy_min_s)) & fg_long
        occupancy = float(present.sum()) / self._roi_count
        self._occupancy = occupancy
        self.last_masks = {"long": fg_long, "short": fg_short, "held": held, "present": present}
        if not self.blocked:
            frac = float(held.sum()) / self._roi_count
            if frac >= self.config.min_object_frac:
                self.blocked = True
                self._last_present_ms = ts_ms
                events.append(DetectionEvent("exit_blocked", ts_ms, occupancy, self._boxes(held | present)))
        else:
            if occupancy >= self.config.min_object_frac * 0.5:
                self._last_present_ms = ts_ms
            elif ts_ms - self._last_present_ms >= self.config.min_clear_s * 1000:
                self.blocked = False
                events.append(DetectionEvent("exit_cleared", ts_ms, occupancy))
        return FrameResult(ts_ms, self.blocked, occupancy, self.obstructed, events, lighting_change=lighting)

    _occupancy: float = 0.0
    adopted: int = 0  # regions taken into the clear scene after something left them
    _level: float | None = None

    def _follow_layers(
        self,
        feats: _Features,
        diffs: _Diffs,
        fg_long_all: np.ndarray,
        still_all: np.ndarray,
        dt: float,
        scene: _Scene,
    ) -> None:
        """Evidence belongs to what stands still, not to the place: when something else settles
        where a person paused (or a person settles where an object was), the evidence starts again
        from when it came; when the earlier thing is seen again, its evidence comes back, having
        grown while it was hidden. Only the ROI's bounding box is followed (evidence counts there)."""
        t = self.tuning
        lay = self._layers
        box = self._box
        fdt = F32(dt)
        fg_long = fg_long_all[box]
        still = still_all[box]
        self._pending[box] = False
        if not fg_long.any() and not lay.look_ok.any() and not lay.prev_ok.any():
            lay.quiet += fdt
            lay.was_moving[:] = False
            lay.arrived[:] = False
            lay.odd[:] = 0
            return
        look = (
            feats.lum[box] - diffs.gain[box],
            feats.cr[box] - diffs.cr_shift[box],
            feats.cb[box] - diffs.cb_shift[box],
        )
        age_all = self._age
        age = age_all[box]
        moving = fg_long & ~still
        # the length of the latest run of movement on each pixel
        lay.moving = np.where(moving, np.where(lay.was_moving, lay.moving + fdt, fdt), lay.moving).astype(F32)
        lay.prev_age = np.where(lay.prev_ok, lay.prev_age + fdt, F32(0)).astype(F32)
        if lay.scene is not scene:
            # another light: what is seen now is compared from now on
            lay.scene = scene
            lay.look_ok[:] = False
            lay.prev_ok[:] = False
            lay.set_look(look, still)
        # what first made the pixel differ is remembered too: an object put down and then hidden by
        # a person pausing in front of it gets its own evidence back when the person goes
        first = fg_long & ~lay.look_ok & ~lay.prev_ok & (age <= fdt)
        if first.any():
            for i in range(3):
                lay.prev[i] = np.where(first, look[i], lay.prev[i]).astype(F32)
            lay.prev_age = np.where(first, age, lay.prev_age).astype(F32)
            lay.prev_ok |= first
        new = still & ~lay.look_ok
        if new.any():
            lay.set_look(look, new)
        odd = still & lay.look_ok & self._unlike(look, lay.look)
        odd = np.asarray(cv2.medianBlur(odd.astype(np.uint8), 3)).astype(bool)
        # a different look right after movement: something else came (a drift of the light or
        # the noise, with nothing moving, only makes the look followed)
        lay.quiet = np.where(moving, F32(0), lay.quiet + fdt).astype(F32)
        lay.arrived |= odd & (lay.quiet <= F32(t.look_switch_s))
        lay.odd = np.where(
            odd, lay.odd + fdt, np.where(still, np.maximum(lay.odd - fdt, F32(0)), lay.odd)
        ).astype(F32)
        lay.arrived &= (lay.odd > 0) | ~still
        lay.was_moving = moving
        other = odd & lay.arrived & (lay.odd >= F32(t.look_switch_s))
        if other.any():
            back = other & lay.prev_ok & ~self._unlike(look, lay.prev)
            fresh = other & ~back
            before = age.copy()
            # what was hidden is seen again: its evidence, grown while hidden
            age_all[box] = np.where(back, lay.prev_age, np.where(fresh, lay.moving + lay.odd, age))
            for i in range(3):
                lay.prev[i] = np.where(other, lay.look[i], lay.prev[i]).astype(F32)
            lay.prev_age = np.where(other, before, lay.prev_age).astype(F32)
            lay.prev_ok |= other
            lay.set_look(look, other)
            lay.odd[other] = 0
            lay.arrived &= ~other
        # not counted while being judged: a long movement (something came or went) or a new look
        # that has not stood long enough yet
        self._pending[box] = (
            moving & (lay.moving >= F32(max(t.look_switch_s, 2 * dt))) & (lay.moving <= F32(t.settle_max_s))
        ) | (lay.arrived & (lay.odd > 0))
        follow = still & lay.look_ok & ~lay.arrived
        a = F32(1.0 - math.exp(-dt / t.look_tau_s)) if dt > 0 else F32(0.0)
        for i in range(3):
            lay.look[i] = np.where(follow, lay.look[i] + a * (look[i] - lay.look[i]), lay.look[i]).astype(F32)
        gone = age_all[box] <= 0
        lay.look_ok &= ~gone
        lay.prev_ok &= ~gone

    def _unlike(self, a: tuple[np.ndarray, ...], b: list[np.ndarray]) -> np.ndarray:
        t = self.tuning
        dl = cv2.blur(np.abs(a[0] - b[0]), (3, 3))
        dc = cv2.blur(np.abs(a[1] - b[1]) + np.abs(a[2] - b[2]), (3, 3))
        return np.asarray((dl > F32(t.int_thr)) | (dc > F32(t.chroma_thr)))

    def _occupancy_value(self) -> float:
        return self._occupancy

    def _relight(
        self, feats: _Features, scene: _Scene, diffs: _Diffs, objects: np.ndarray, ts_ms: int
    ) -> tuple[_Scene, _Diffs, np.ndarray]:
        """Most of the picture changed but its structure did not: a new light. Find or make its scene."""
        t = self.tuning
        best: tuple[float, _Scene, _Diffs, np.ndarray] | None = None
        for s in self._states:
            d = diffs if s is scene else self._diffs(feats, s, objects)
            fg = self._foreground(d)
            frac = float(fg.mean())
            if best is None or frac < best[0]:
                best = (frac, s, d, fg)
        assert best is not None
        if best[0] <= t.state_match_frac:
            self._scene = best[1]
            return best[1], best[2], best[3]
        # relight the clear scene with the light measured where the scene still agrees; take the
        # picture itself where it agrees, the relit clear scene elsewhere (people, objects)
        # a lamp's pool of light changes the grey level but keeps structure and colour; an object
        # changes its outline too, so what lies near a changed outline is not taken
        same = diffs.alike & ~cv2.dilate((~diffs.alike).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(
            bool
        )
        lum = np.where(same, feats.lum, scene.lum + diffs.gain).astype(F32)
        cr = np.where(same, feats.cr, scene.cr + diffs.cr_shift).astype(F32)
        cb = np.where(same, feats.cb, scene.cb + diffs.cb_shift).astype(F32)
        new = _Scene(lum, cr, cb, used_ms=ts_ms)
        self._states.append(new)
        self.scene_version += 1
        if len(self._states) > t.max_states:
            self._states.remove(min((s for s in self._states if s is not new), key=lambda s: s.used_ms))
        self._scene = new
        self._settle_until = ts_ms + round(t.settle_s * 1000)
        d = self._diffs(feats, new, objects)
        return new, d, self._foreground(d)

    def _ghosts(
        self,
        feats: _Features,
        scene: _Scene,
        fg_long: np.ndarray,
        settled: np.ndarray,
        moving: np.ndarray,
    ) -> np.ndarray | None:
        """Settled foreground regions whose outline is in the clear model and not in the picture.

        A region is judged whole (its pieces closed up) and on its outline only: an object
        adds its outline to the picture, while something that left takes its outline out of it
        (the inside says nothing: a plain box hides the floor's texture as a ghost would).
        """
        k3 = np.ones((3, 3), np.uint8)
        seen = self._seen_while_learning(feats)
        whole = cv2.morphologyEx(settled.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
        n, labels, stats, _c = cv2.connectedComponentsWithStats(whole, connectivity=8)
        gf = _edges(feats.lum)
        gm = _edges(scene.lum)
        extra_model = np.maximum(gm - gf, F32(0))
        extra_seen = np.maximum(gf - gm, F32(0))
        h, w = settled.shape
        out: np.ndarray | None = None
        for i in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[i])
            if area < 4:
                continue
            y0, y1, x0, x1 = max(0, y - 2), min(h, y + bh + 2), max(0, x - 2), min(w, x + bw + 2)
            comp = (labels[y0:y1, x0:x1] == i).astype(np.uint8)
            inside = comp.astype(bool)
            still_here = ~moving[y0:y1, x0:x1]
            take = np.zeros_like(inside)
            if seen is not None:
                # the clear scene that a person pausing while it was learned had hidden
                take = inside & seen[y0:y1, x0:x1]
                rest = (inside & ~take).astype(np.uint8)
            else:
                rest = comp
            if rest.sum() >= 4:
                outline = (cv2.dilate(rest, k3) - cv2.erode(rest, k3)).astype(bool)
                ring = outline & still_here  # what walks across the outline says nothing
                if ring.sum() < 0.5 * outline.sum():
                    continue
                em = float(extra_model[y0:y1, x0:x1][ring].sum())
                es = float(extra_seen[y0:y1, x0:x1][ring].sum())
                if em > self.tuning.ghost_ratio * es + 0.05 * float(ring.sum()):
                    take = inside
            if take.any():
                if out is None:
                    out = np.zeros_like(settled)
                out[y0:y1, x0:x1] |= cv2.dilate(take.astype(np.uint8), k3).astype(bool) & inside
        return out

    def _seen_while_learning(self, feats: _Features) -> np.ndarray | None:
        """Pixels that look now as they did in one of the learning samples (the light taken out)."""
        if not self._samples:
            return None
        if self._last_ts is not None and self._last_ts > self._samples_until:
            self._samples = []
            return None
        t = self.tuning
        seen = np.zeros(feats.lum.shape, bool)
        for s in self._samples:
            dl = feats.lum - s.lum
            dl -= F32(np.median(dl[1::4, 1::4]))
            dcr = feats.cr - s.cr
            dcb = feats.cb - s.cb
            d_int = cv2.blur(np.abs(dl), (5, 5))
            d_str = cv2.blur(np.abs(feats.struct - s.struct), (5, 5))
            d_chr = cv2.blur(
                np.abs(dcr - F32(np.median(dcr[1::4, 1::4]))) + np.abs(dcb - F32(np.median(dcb[1::4, 1::4]))),
                (5, 5),
            )
            seen |= (d_int < t.int_thr * 0.4) & (d_str < t.struct_thr * 0.4) & (d_chr < t.chroma_thr * 0.5)
        return seen

    def _adopt(self, feats: _Features, scene: _Scene, diffs: _Diffs, where: np.ndarray) -> None:
        """Take what is seen at ``where`` into the clear scene (and into the other lighting states)."""
        offsets = {
            id(s): float(np.median((scene.lum - s.lum)[1::4, 1::4])) for s in self._states if s is not scene
        }
        scene.lum = np.where(where, feats.lum - diffs.gain, scene.lum).astype(F32)
        scene.cr = np.where(where, feats.cr - diffs.cr_shift, scene.cr).astype(F32)
        scene.cb = np.where(where, feats.cb - diffs.cb_shift, scene.cb).astype(F32)
        scene.refresh()
        for s in self._states:
            if s is not scene:
                s.lum = np.where(where, scene.lum - F32(offsets[id(s)]), s.lum).astype(F32)
                s.cr = np.where(where, scene.cr, s.cr).astype(F32)
                s.cb = np.where(where, scene.cb, s.cb).astype(F32)
                s.refresh()
        self._still[where] = 0
        self._age[where] = 0
        self._layers.look_ok[where[self._box]] = False
        self._layers.prev_ok[where[self._box]] = False
        self.adopted += 1
        self.scene_version += 1

    def _boxes(self, mask: np.ndarray) -> list[tuple[float, float, float, float]]:
        n, _labels, stats, _c = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        h, w = mask.shape
        min_px = max(2, int(0.002 * self._roi_count))
        out = []
        for i in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[i])
            if area >= min_px:
                out.append((x / w, y / h, (x + bw) / w, (y + bh) / h))
        return out


def _edges(lum: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3)
    return np.asarray(cv2.magnitude(gx, gy))


def _copy(f: _Features) -> _Features:
    return _Features(f.lum.copy(), f.struct.copy(), f.cr.copy(), f.cb.copy())


def load_frame(path: Path, reduced: bool = True) -> np.ndarray | None:
    """Read a JPEG (at half size when ``reduced``: the detector works smaller anyway)."""
    flag = cv2.IMREAD_REDUCED_COLOR_2 if reduced else cv2.IMREAD_COLOR
    return cv2.imread(str(path), flag)


def decode_frame(data: bytes, reduced: bool = True) -> np.ndarray | None:
    """Decode JPEG (or PNG) bytes; ``None`` when they are not an image."""
    if not data:
        return None
    flag = cv2.IMREAD_REDUCED_COLOR_2 if reduced else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None or img.ndim != 3:
        return None
    return img
