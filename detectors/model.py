"""The blocked-exit detector: per camera, frames in (with their capture time), findings out.

``ExitDetector`` is the facade; the work is done by its stages, one module each, in this order on
every frame: background.py (the clear scenes, the short-term model, ghosts), lighting.py (a new
light is not an object), evidence_track.py (seconds still, per pixel) and judgement.py (the route's
and the camera's state, the events); stage.py holds what they share (``Tuning``, ``Geometry``,
``Features``).

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

from pathlib import Path

import cv2
import numpy as np

from gridhub.images import FRAME_MAX_PIXELS, REFERENCE_MAX_PIXELS, ImageRefused, check_image

from .background import Background
from .config import CameraConfig
from .evidence_track import Evidence
from .judgement import DetectionEvent, FrameResult, Judgement, View
from .lighting import Lighting
from .people import People
from .stage import WORK_WIDTH, Features, Geometry, Tuning

__all__ = ["WORK_WIDTH", "CameraConfig", "DetectionEvent", "ExitDetector", "FrameResult", "Tuning", "decode_frame",
           "frame_problem"]

MAX_REFERENCE_BYTES = 64 * 1024 * 1024


class ExitDetector:
    """One camera's detector. Feed it every frame in time order with ``process``."""

    def __init__(self, config: CameraConfig, tuning: Tuning | None = None) -> None:
        self.config = config
        self.tuning = tuning or Tuning()
        self._reference = self._read_reference()
        self._geometry: Geometry | None = None  # set by the first frame
        self._background: Background | None = None
        self._evidence: Evidence | None = None
        self._people: People | None = None
        self._lighting = Lighting(self.tuning)
        self._judgement = Judgement(config, self.tuning)
        self._last_ts: int | None = None
        self._restore: bytes | None = None
        self.last_masks: dict[str, np.ndarray] = {}
        self.adopted = 0  # regions taken into the clear scene after something left them
        self.returned = 0  # frames on which regions with evidence looked again as before it started

    def _read_reference(self) -> np.ndarray | None:
        if self.config.reference is None:
            return None
        path = Path(self.config.reference)
        try:
            if path.stat().st_size > MAX_REFERENCE_BYTES:
                raise ValueError(f"reference image {path} is over {MAX_REFERENCE_BYTES // (1024 * 1024)} MiB")
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"reference image {path} cannot be read: {exc.strerror or exc}") from None
        try:  # its size from the header, before anything is decoded
            check_image(data, REFERENCE_MAX_PIXELS)
        except ImageRefused as exc:
            raise ValueError(f"reference image {path}: {exc}") from None
        ref = _imdecode(data, cv2.IMREAD_COLOR)
        if ref is None:
            raise ValueError(f"reference image {path} cannot be read as an image")
        return ref

    # -- public ---------------------------------------------------------------------------

    @property
    def blocked(self) -> bool:
        return self._judgement.blocked

    @property
    def obstructed(self) -> bool:
        return self._judgement.obstructed

    @property
    def roi_mask(self) -> np.ndarray:
        return self._geometry.roi if self._geometry is not None else np.zeros((1, 1), bool)

    @property
    def people_crops(self) -> int:
        """How many crops of the frames were looked at for people (settled regions, and people again)."""
        return self._people.crops if self._people is not None else 0

    @property
    def learning(self) -> bool:
        """True until the detector has a clear scene (learned, restored or the reference)."""
        return self._background is None or self._background.scene is None

    @property
    def scene_version(self) -> int:
        """Goes up whenever the clear scene is learned, relit or corrected."""
        return self._background.version if self._background is not None else 0

    def fingerprint(self) -> str | None:
        """What a saved clear scene must have been learned for: the ROI and the working size."""
        if self._geometry is None:
            return None
        return self._geometry.fingerprint(self.config.roi)

    def saved_scene(self) -> bytes | None:
        """The learned clear scene (every lighting state) as bytes to keep; ``None`` while learning
        or when a reference image is the clear scene."""
        fingerprint = self.fingerprint()
        if self.learning or self._reference is not None or fingerprint is None:
            return None
        assert self._background is not None
        return self._background.saved(fingerprint)

    def restore_scene(self, data: bytes) -> None:
        """Start from a clear scene kept by ``saved_scene`` instead of learning one; it is used on
        the first frame if it was learned for the same ROI and sizes (else learning starts as usual)."""
        if self.learning and self._reference is None:
            self._restore = data

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
        if self.learning:
            return self._learn(frame_bgr, feats, ts_ms)
        return self._judge(frame_bgr, feats, ts_ms, dt)

    # -- the stages -----------------------------------------------------------------------

    def _features(self, frame: np.ndarray) -> Features:
        h, w = frame.shape[:2]
        if self._geometry is None or self._geometry.frame_shape != (h, w):
            self._setup(h, w)
        assert self._geometry is not None
        return Features.of(self._geometry.small(frame))

    def _setup(self, h: int, w: int) -> None:
        if self._geometry is not None:
            # a new resolution: start again (the clear scene must be learned at this size); as before
            # the stages were split, the last occupancy, the light's level and ``adopted`` carry over
            occupancy = self._judgement.occupancy
            self._reference = self._read_reference()
            self._judgement = Judgement(self.config, self.tuning)
            self._judgement.occupancy = occupancy
            self._last_ts = None
            self._restore = None
            self.last_masks = {}
        self._geometry = geometry = Geometry.of(h, w, self.config.roi, self.tuning.work_width)
        self._background = Background(self.tuning, geometry)
        self._evidence = Evidence(self.tuning, geometry)
        self._people = People(self.tuning, geometry)

    def _learn(self, frame: np.ndarray, feats: Features, ts_ms: int) -> FrameResult:
        bg = self._background
        assert bg is not None
        if self._reference is not None:
            bg.start_from_reference(self._reference, feats, ts_ms)
            return self._judge(frame, feats, ts_ms, 0.0)
        data, self._restore = self._restore, None
        fingerprint = self.fingerprint()
        if data is not None and fingerprint is not None and bg.restore(data, fingerprint, feats, ts_ms):
            return self._judge(frame, feats, ts_ms, 0.0)
        bg.learn(feats, ts_ms)
        return FrameResult(ts_ms, False, 0.0, False, learning=True)

    def _judge(self, frame: np.ndarray, feats: Features, ts_ms: int, dt: float) -> FrameResult:
        t = self.tuning
        bg, ev, judgement, people = self._background, self._evidence, self._judgement, self._people
        assert bg is not None and ev is not None and people is not None and self._geometry is not None
        scene = bg.scene
        assert scene is not None and bg.short is not None
        events: list[DetectionEvent] = []
        objects = ev.objects()

        view = judgement.view(bg.similarity(feats), ts_ms, events)
        if view is View.HIDDEN:
            return judgement.result(ts_ms, events)
        if view is View.BACK:
            # back in view: the short-term model restarts from what is seen now
            bg.short = feats.copy()

        # the clear scene, or another light's
        diffs = bg.diffs(feats, scene, objects)
        fg_long = bg.foreground(diffs)
        lighting = False
        if self._lighting.changed(feats, fg_long):
            lighting = True
            scene, diffs, fg_long = self._lighting.relight(bg, feats, scene, diffs, objects, ts_ms)
            bg.short = feats.copy()
        scene.used_ms = ts_ms
        fg_short = bg.short_foreground(feats)
        if not lighting and self._lighting.sudden(fg_short):
            lighting = True
            bg.short = feats.copy()
            fg_short = np.zeros_like(fg_short)

        # a region that looks again as it did before something came is clear, whatever the models
        # learned meanwhile: no evidence there, and the clear scene is the one from before
        if not lighting:
            ev.remember_before(scene, fg_long)
            back = ev.back_to_before(bg, feats, scene, fg_long, objects, dt)
            if back is not None:
                before = ev.before()
                if (back & ((scene.lum != before[0]) | (scene.cr != before[1]) | (scene.cb != before[2]))).any():
                    bg.put_back(scene, back, before)
                ev.forget(back)
                fg_long &= ~back
                self.returned += 1

        # evidence, on frame time
        moving = fg_long & fg_short
        still = fg_long & ~fg_short
        if not lighting:
            ev.add(feats, diffs, scene, fg_long, still, moving, dt)

        # a clear model contradicted where the picture lacks the model's outline: something that
        # was there while the scene was learned has left; what is seen now is the clear scene
        if not lighting:
            settled = still & (ev.still >= np.float32(t.ghost_still_s))
            if settled.any():
                ghosts = bg.ghosts(feats, scene, settled, fg_short, ts_ms)
                if ghosts is not None:
                    bg.adopt(feats, scene, diffs, ghosts)
                    ev.forget(ghosts)
                    self.adopted += 1
                    fg_long &= ~ghosts

        bg.follow(feats, scene, fg_long, fg_short, ev.still, dt, ts_ms, ev.kept)

        # people standing on the route are occupancy, never obstacles
        if not lighting:
            min_px = max(4, round(self.config.min_object_frac * self._geometry.roi_count))
            settle_s = max(t.people_settle_s, t.people_settle_share * self.config.min_blocked_s)
            people.update(frame, fg_long, still, ev.still, (ev.age > 0) | (ev.still > 0), min_px, settle_s, ts_ms)

        # the route's state
        # held evidence must stand still now (or lie next to what does): people crossing the place an object
        # left differ from the clear scene there while its evidence fades, but they move
        held = ev.held(self.config.min_blocked_s, still) & ~people.mask
        # a person found standing is occupancy from then on, even before occupancy_min_s
        present = ev.present(fg_long) | (people.mask & fg_long & self._geometry.roi)
        self.last_masks = {
            "long": fg_long, "short": fg_short, "held": held, "present": present, "people": people.mask.copy()
        }
        judgement.route(held, present, self._geometry.roi_count, ts_ms, events, people.mask)
        return judgement.result(ts_ms, events, lighting)


def load_frame(path: Path, reduced: bool = True) -> np.ndarray | None:
    """Read a JPEG (at half size when ``reduced``: the detector works smaller anyway)."""
    flag = cv2.IMREAD_REDUCED_COLOR_2 if reduced else cv2.IMREAD_COLOR
    return cv2.imread(str(path), flag)


def frame_problem(data: bytes) -> str | None:
    """Why these bytes are not a frame the detector takes, judged from the header alone (no pixel decoded): not a
    JPEG or PNG, or over ``FRAME_MAX_PIXELS``. ``None``: decode it."""
    if not data:
        return "an empty frame"
    try:
        check_image(data, FRAME_MAX_PIXELS)
    except ImageRefused as exc:
        return str(exc)
    return None


def _imdecode(data: bytes, flag: int) -> np.ndarray | None:
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error:  # OpenCV's own pixel cap (gridhub/images.py), or a header it cannot take
        return None
    return img if img is not None and img.ndim == 3 else None


def decode_frame(data: bytes, reduced: bool = True) -> np.ndarray | None:
    """Decode JPEG (or PNG) bytes; ``None`` when they are not an image or ``frame_problem`` refuses them (its
    size over ``FRAME_MAX_PIXELS``, read from the header before decoding)."""
    if frame_problem(data) is not None:
        return None
    return _imdecode(data, cv2.IMREAD_REDUCED_COLOR_2 if reduced else cv2.IMREAD_COLOR)
