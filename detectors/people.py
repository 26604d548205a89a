"""The detector's people stage: a region that has just settled on the route is looked at once for a person.

A person standing or sitting on the route is occupancy, never an obstacle. The per-pixel stages cannot
tell a person who stands still from an object, so each region that settles (stood still for
``people_settle_share`` of ``min_blocked_s``, at least ``people_settle_s``) is looked at once, with OpenCV's own HOG people detector
(``cv2.HOGDescriptor.getDefaultPeopleDetector``, shipped with OpenCV: nothing downloaded), on a crop of
the frame as it came (not the small working copy) scaled so that the region is about as tall as the
detector's window wants. A whole frame costs about 120 ms; one crop a millisecond or two, and only
settled regions are looked at. What the detector finds marks the foreground inside the person's box as
a person: counted in the occupancy, never held. A person's mark is looked at again every
``people_recheck_s`` (someone may leave something where they stood), and is dropped with the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .stage import Geometry, Tuning

_CLOSE = np.ones((5, 5), np.uint8)
_WINDOW_W, _WINDOW_H = 64, 128  # the default people detector's window
_PERSON_IN_WINDOW = (0.2, 0.06, 0.8, 0.94)  # where the person stands inside a detection's window
_CROP_H = 140  # a region is scaled to this height (frame pixels): people from 0.7 of it upward are found
_MARGIN = np.ones((5, 5), np.uint8)  # a person's mark reaches two working pixels past their foreground


@dataclass
class Person:
    """A person found standing: their box on the working copy and when to look again."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 on the working size
    look_again_ms: int
    misses: int = 0  # looked at again and not found
    found: bool = True  # False: a region where no one was found on the first look, looked at once more
    pixels: np.ndarray | None = None  # the foreground taken for the person (working size)


class People:
    """The regions that settled and were looked at, and the people found in them."""

    def __init__(self, tuning: Tuning, geometry: Geometry) -> None:
        self.tuning = tuning
        self.geometry = geometry
        self.mask = np.zeros(geometry.shape, bool)  # foreground taken for people (working size)
        self.looked = np.zeros(geometry.shape, bool)  # settled pixels whose region was looked at
        self.people: list[Person] = []
        self.crops = 0  # crops looked at, for the benchmark and the tests
        self._hog: cv2.HOGDescriptor | None = None

    def update(
        self, frame: np.ndarray, fg_long: np.ndarray, still: np.ndarray, still_s: np.ndarray, evidence: np.ndarray,
        min_px: int, settle_s: float, ts_ms: int,
    ) -> None:
        """Look for people in the regions that have just settled, look again at those due, and forget
        what has no evidence left. ``still``: standing still on this frame; ``still_s``: the seconds it
        has; ``evidence``: where anything is still counted; ``min_px``: a region with fewer settled ROI
        pixels could not block the route alone and is not looked at; ``settle_s``: the seconds standing
        still that make a region settled. One crop per frame at most: the biggest region first, the others
        on the next frames."""
        t = self.tuning
        if not t.people:
            return
        self.looked &= evidence
        if not evidence.any():
            if self.people:
                self.people = []
                self._remask()
            return
        # a person's mark stays while anything is counted in their box (a part of it cleared, a ghost taken
        # in as they walk off, does not take it away)
        kept = [p for p in self.people if evidence[p.box[1] : p.box[3], p.box[0] : p.box[2]].any()]
        if len(kept) != len(self.people):
            self.people = kept
            self._remask()
        box = self.geometry.box
        settled = np.zeros_like(still)
        settled[box] = still[box] & (still_s[box] >= np.float32(settle_s)) & self.geometry.roi[box]
        new = settled & ~self.looked
        looked = False
        if int(new.sum()) >= min_px:
            looked = self._look_at_new(frame, fg_long, settled, new, min_px, ts_ms)
        due = [p for p in self.people if ts_ms >= p.look_again_ms]
        if due and not looked:
            self._look_again(frame, fg_long, still, due[0], ts_ms)

    def _regions(self, fg_long: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        whole = cv2.morphologyEx(fg_long.astype(np.uint8), cv2.MORPH_CLOSE, _CLOSE)
        n, labels, stats, _c = cv2.connectedComponentsWithStats(whole, connectivity=8)
        return n, labels, stats

    def _look_at_new(
        self, frame: np.ndarray, fg_long: np.ndarray, settled: np.ndarray, new: np.ndarray, min_px: int, ts_ms: int
    ) -> bool:
        """Look at the biggest region that has just settled; True if a crop was looked at."""
        _n, labels, stats = self._regions(fg_long | settled)
        counts = np.bincount(labels[new], minlength=len(stats))
        counts[0] = 0
        for i in np.argsort(-counts):
            if counts[i] < min_px:
                return False
            region = labels == i
            here = region & settled
            seen_before = int((here & self.looked).sum())
            # once per region: all its settled pixels count as looked at; a region that grew a little (or
            # a person's, found already) is not looked at again
            self.looked |= here
            if seen_before >= 0.5 * int(here.sum()) or int((here & self.mask).sum()) > 0:
                continue
            x, y, w, h, _area = (int(v) for v in stats[i])
            if not self._look(frame, fg_long, region, (x, y, x + w, y + h), ts_ms):
                # one more look a little later: a person turning or half hidden is missed now and then
                later = ts_ms + round(self.tuning.people_recheck_s * 500)
                self.people.append(Person((x, y, x + w, y + h), later, 1, found=False))
            return True
        return False

    def _look_again(
        self, frame: np.ndarray, fg_long: np.ndarray, still: np.ndarray, due: Person, ts_ms: int
    ) -> None:
        """A person found is looked at again; not found twice running, their mark goes (their evidence stays:
        anything left where they stood has its own from when it came, evidence_track.py's layers)."""
        self.people.remove(due)
        x0, y0, x1, y1 = due.box
        region = np.zeros_like(fg_long)
        region[y0:y1, x0:x1] = True
        found = self._look(frame, fg_long, region & fg_long, due.box, ts_ms)
        if found:
            if due.pixels is not None:  # the mark grows, never shrinks, while they are found
                found[0].pixels = due.pixels | found[0].pixels if found[0].pixels is not None else due.pixels
                self._remask()
            return
        if due.misses == 0:
            # the detector misses a person now and then (turning, walking off): once does not take the mark away
            later = ts_ms + round(self.tuning.people_recheck_s * 1000)
            self.people.append(Person(due.box, later, 1, due.found, due.pixels))
            return
        if not due.found:
            return  # no one there, twice
        # not found twice running: what stands still in the mark now is no longer taken for the person (they may
        # have left it there); the rest of the mark, someone walking off over the place they stood, stays until
        # its evidence is gone or stands still (looked at again every people_recheck_s)
        if due.pixels is not None:
            moving = due.pixels & ~_grown(still & due.pixels)
            if moving.sum() >= 0.2 * due.pixels.sum():
                later = ts_ms + round(self.tuning.people_recheck_s * 1000)
                self.people.append(Person(due.box, later, 1, True, moving))
        self._remask()
        self.looked[y0:y1, x0:x1] = False  # what stands there now is looked at afresh once it has settled

    def _look(
        self, frame: np.ndarray, fg_long: np.ndarray, region: np.ndarray, box: tuple[int, int, int, int], ts_ms: int
    ) -> list[Person]:
        """Look for people in ``box``; the people found (marked)."""
        here = fg_long | region
        found = []
        for b in self._find(frame, box) or []:
            if _stands_in(here, b):
                x0, y0, x1, y1 = b
                pixels = np.zeros_like(here)
                pixels[y0:y1, x0:x1] = here[y0:y1, x0:x1]
                found.append(Person(b, ts_ms + round(self.tuning.people_recheck_s * 1000), pixels=pixels))
        self.people.extend(found)
        if found:
            self._remask()
        return found

    def _remask(self) -> None:
        self.mask[:] = False
        for p in self.people:
            if p.found and p.pixels is not None:
                self.mask |= p.pixels

    def _find(self, frame: np.ndarray, box: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]] | None:
        """People standing in the region ``box`` (working size): their boxes on the working size; ``None`` when
        the region is not looked at (too small, or far bigger than a person)."""
        fh, fw = frame.shape[:2]
        wh, ww = self.geometry.shape
        sx, sy = fw / ww, fh / wh
        x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
        w, h = x1 - x0, y1 - y0
        if h < 2 or w < 2:
            return None
        # a margin as the detector's window has around a person; the crop's width at least the window's
        px, py = 0.3 * w + 0.2 * h, 0.1 * h + 2 * sy
        cx0, cy0 = max(0, int(x0 - px)), max(0, int(y0 - py))
        cx1, cy1 = min(fw, int(x1 + px + 1)), min(fh, int(y1 + py + 1))
        scale = _CROP_H / h
        if (cx1 - cx0) * scale < _WINDOW_W + 8 or (cy1 - cy0) * scale < _WINDOW_H + 8:
            scale = max((_WINDOW_W + 8) / max(1, cx1 - cx0), (_WINDOW_H + 8) / max(1, cy1 - cy0))
        if (cx1 - cx0) * scale * (cy1 - cy0) * scale > self.tuning.people_max_crop_px:
            return None  # far bigger than a person: not one
        crop = cv2.resize(frame[cy0:cy1, cx0:cx1], None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        self.crops += 1
        rects, weights = self._detector().detectMultiScale(crop, winStride=(4, 4), padding=(16, 16), scale=1.1)
        out = []
        a, b, c, d = _PERSON_IN_WINDOW
        for (rx, ry, rw, rh), wt in zip(rects, np.ravel(weights), strict=False):
            if float(wt) < self.tuning.people_min_weight:
                continue
            # the person's box, back on the working size
            px0 = (cx0 + (rx + a * rw) / scale) / sx
            py0 = (cy0 + (ry + b * rh) / scale) / sy
            px1 = (cx0 + (rx + c * rw) / scale) / sx
            py1 = (cy0 + (ry + d * rh) / scale) / sy
            if py1 - py0 < 0.5 * (box[3] - box[1]):
                continue  # a small part of what settled: not a person standing there
            out.append((max(0, int(px0)), max(0, int(py0)), min(ww, int(np.ceil(px1))), min(wh, int(np.ceil(py1)))))
        return out

    def _detector(self) -> cv2.HOGDescriptor:
        if self._hog is None:
            hog = cv2.HOGDescriptor()
            hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32))
            self._hog = hog
        return self._hog


def _grown(mask: np.ndarray) -> np.ndarray:
    """``mask`` with a margin: the slivers at a person's edges (a shadow, an arm, the outline the working copy
    blurs) belong to them, not to an object."""
    return np.asarray(cv2.dilate(mask.astype(np.uint8), _MARGIN)).astype(bool)


def _stands_in(fg: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """A person's box that the foreground fills from head to feet (a detection on a low object, or on a
    patch of floor next to it, leaves its top or its bottom empty)."""
    x0, y0, x1, y1 = box
    inside = fg[y0:y1, x0:x1]
    if inside.shape[0] < 3 or inside.shape[1] < 1:
        return False
    third = max(1, inside.shape[0] // 3)
    return bool(inside[:third].mean() >= 0.3 and inside[-third:].mean() >= 0.3 and inside.mean() >= 0.4)
