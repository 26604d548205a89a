"""The detector's judgement stage: the route's state (blocked, clear) and the camera's (obstructed), and the events of their changes.

The route is blocked when held pixels (evidence.py's ``held``) cover ``min_object_frac`` of the ROI;
it is clear after ``min_clear_s`` without such objects. When the structure of the whole picture stops
matching every stored clear scene (a covered lens, a camera turned away) for ``obstructed_s``, the
camera is obstructed; the route keeps its state meanwhile, until the camera sees its scene again for
``unobstructed_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import cv2
import numpy as np

from .config import CameraConfig
from .stage import Tuning


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


class View(Enum):
    """What the camera sees of its scene on this frame."""

    HIDDEN = "hidden"  # obstructed, or not yet seen again for long enough: nothing more is judged
    BACK = "back"  # seen again after being obstructed: the short-term model restarts
    SEEN = "seen"


class Judgement:
    """The camera's state and the events of its changes."""

    def __init__(self, config: CameraConfig, tuning: Tuning) -> None:
        self.config = config
        self.tuning = tuning
        self.blocked = False
        self.obstructed = False
        self.occupancy = 0.0  # of the last frame judged in full
        self._last_present_ms = 0
        self._obs_since: int | None = None
        self._seen_since: int | None = None

    def result(self, ts_ms: int, events: list[DetectionEvent], lighting: bool = False) -> FrameResult:
        return FrameResult(ts_ms, self.blocked, self.occupancy, self.obstructed, events, lighting_change=lighting)

    def view(self, similarity: float, ts_ms: int, events: list[DetectionEvent]) -> View:
        """Obstruction: the whole view's structure no longer matches any clear scene."""
        t = self.tuning
        if similarity < t.obstructed_sim or self.obstructed:
            # nothing can be seen: the route keeps its state, its clear timer waits
            self._last_present_ms = ts_ms
        if similarity < t.obstructed_sim:
            self._seen_since = None
            if self._obs_since is None:
                self._obs_since = ts_ms
            if not self.obstructed and ts_ms - self._obs_since >= t.obstructed_s * 1000:
                self.obstructed = True
                events.append(DetectionEvent("camera_obstructed", ts_ms, self.occupancy))
            return View.HIDDEN
        self._obs_since = None
        if not self.obstructed:
            return View.SEEN
        if self._seen_since is None:
            self._seen_since = ts_ms
        if ts_ms - self._seen_since >= t.unobstructed_s * 1000:
            self.obstructed = False
            self._seen_since = None
            events.append(DetectionEvent("camera_obstructed_cleared", ts_ms, self.occupancy))
            return View.BACK
        return View.HIDDEN

    def route(
        self,
        held: np.ndarray,
        present: np.ndarray,
        roi_count: int,
        ts_ms: int,
        events: list[DetectionEvent],
        people: np.ndarray | None = None,
    ) -> None:
        """The route's state from what is held and what is present on it (``people``: present, never boxed as
        objects)."""
        occupancy = float(present.sum()) / roi_count
        self.occupancy = occupancy
        if not self.blocked:
            frac = float(held.sum()) / roi_count
            if frac >= self.config.min_object_frac:
                self.blocked = True
                self._last_present_ms = ts_ms
                objects = held | (present & ~people) if people is not None else held | present
                events.append(DetectionEvent("exit_blocked", ts_ms, occupancy, _boxes(objects, roi_count)))
        elif occupancy >= self.config.min_object_frac * 0.5:
            self._last_present_ms = ts_ms
        elif ts_ms - self._last_present_ms >= self.config.min_clear_s * 1000:
            self.blocked = False
            events.append(DetectionEvent("exit_cleared", ts_ms, occupancy))


def _boxes(mask: np.ndarray, roi_count: int) -> list[tuple[float, float, float, float]]:
    n, _labels, stats, _c = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    h, w = mask.shape
    min_px = max(2, int(0.002 * roi_count))
    out = []
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if area >= min_px:
            out.append((x / w, y / h, (x + bw) / w, (y + bh) / h))
    return out
