"""The detector's evidence stage: per pixel, on frame time, the seconds something has stood still and differed from the clear scene.

A pixel in the long-term foreground but not in the short-term one holds something that stays; in
both, something that moves (a person, perhaps walking in front of an object). Passing in front holds
the evidence; only the clear scene coming back takes it away. Evidence belongs to what stands still,
not to the place: the look of what stands there is followed (``Layers``), so that something else
settling where a person paused starts its evidence again, and an object seen again gets its own back.
(Not to be confused with evidence.py, the evidence images sent with an event.)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .background import Background, Diffs, Scene
from .stage import F32, Features, Geometry, Tuning, rate

_CLOSE = np.ones((7, 7), np.uint8)
_NEAR = np.ones((5, 5), np.uint8)
_DRIFT_LUM = F32(0.02)  # a clear scene this close to the look kept from before is the same
_DRIFT_CHR = F32(0.01)


@dataclass
class Layers:
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
    scene: Scene | None = None

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Layers:
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


class Evidence:
    """Seconds stationary (``still``) and seconds differing (``age``) per pixel, and what is not yet counted."""

    def __init__(self, tuning: Tuning, geometry: Geometry) -> None:
        self.tuning = tuning
        self.geometry = geometry
        wh, ww = geometry.shape
        self.still: np.ndarray = np.zeros((wh, ww), F32)  # seconds stationary
        self.age: np.ndarray = np.zeros((wh, ww), F32)  # seconds differing from the clear scene
        self._layers = Layers.empty(geometry.box_shape)
        self._pending: np.ndarray = np.zeros((wh, ww), bool)
        # the clear scene's look where there is evidence, kept from before it started: when something
        # leaves, the clear scene there is the one before it came (not what a model learned meanwhile)
        self._before: tuple[np.ndarray, np.ndarray, np.ndarray] = (
            np.zeros((wh, ww), F32), np.zeros((wh, ww), F32), np.zeros((wh, ww), F32))
        self.kept: np.ndarray = np.zeros((wh, ww), bool)  # where a look from before is kept
        self._alike: np.ndarray = np.zeros((wh, ww), F32)  # seconds a kept region has looked as before
        self._kept_scene: Scene | None = None

    def objects(self) -> np.ndarray:
        """Where something has stood (a little wider): left out when the light is measured."""
        return cv2.dilate((self.still > 0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)

    def add(
        self,
        feats: Features,
        diffs: Diffs,
        scene: Scene,
        fg_long: np.ndarray,
        still: np.ndarray,
        moving: np.ndarray,
        dt: float,
    ) -> None:
        """One frame's evidence: ``dt`` seconds more where something stands still or differs, less
        (at ``decay_rate``) where the clear scene is back."""
        decay = F32(self.tuning.decay_rate * dt)
        gone = np.maximum(self.still - decay, F32(0))
        self.still = np.where(still, self.still + F32(dt), np.where(moving, self.still, gone)).astype(F32)
        self.age = np.where(fg_long, self.age + F32(dt), np.maximum(self.age - decay, F32(0))).astype(F32)
        self._follow_layers(feats, diffs, fg_long, still, dt, scene)

    def remember_before(self, scene: Scene, fg_long: np.ndarray) -> None:
        """Keep the clear scene's look where something differs or has evidence and none is kept yet (the
        regions closed up, so that the plain inside of an object is kept with its outline); drop it where
        nothing is left. Only the ROI's bounding box (evidence counts there)."""
        box = self.geometry.box
        if scene is not self._kept_scene:
            # another light: from now on the looks before are that light's clear scene
            self._kept_scene = scene
            self.kept[:] = False
        busy = fg_long[box] | (self.age[box] > 0) | (self.still[box] > 0)
        if busy.any():
            busy = cv2.morphologyEx(busy.astype(np.uint8), cv2.MORPH_CLOSE, _CLOSE).astype(bool)
            new = busy & ~self.kept[box]
            if new.any():
                for kept_look, look in zip(self._before, (scene.lum, scene.cr, scene.cb), strict=True):
                    kept_look[box] = np.where(new, look[box], kept_look[box])
        self.kept[box] = busy

    def back_to_before(
        self, background: Background, feats: Features, scene: Scene, fg_long: np.ndarray, exclude: np.ndarray,
        dt: float,
    ) -> np.ndarray | None:
        """The regions with evidence that have looked again as they did before it started for ``before_s`` (on
        two frames at least: something faint may vanish in the noise on one): clear again, whatever the models
        learned while something stood there. ``None`` when there is none."""
        box = self.geometry.box
        kept = self.kept[box]
        evidence = self.age[box] > 0
        if not (kept & evidence).any():
            self._alike[box] = 0
            return None
        b_lum, b_cr, b_cb = (b[box] for b in self._before)
        s_lum, s_cr, s_cb = scene.lum[box], scene.cr[box], scene.cb[box]
        drift = kept & ((np.abs(s_lum - b_lum) > _DRIFT_LUM) | (np.abs(s_cr - b_cr) + np.abs(s_cb - b_cb) > _DRIFT_CHR))
        if drift.any():
            # the clear scene changed there meanwhile (a new light made, a ghost taken in): compare with before
            whole = self.kept
            unlike = background.unlike(
                feats,
                np.where(whole, self._before[0], scene.lum).astype(F32),
                np.where(whole, self._before[1], scene.cr).astype(F32),
                np.where(whole, self._before[2], scene.cb).astype(F32),
                exclude,
            )[box]
        else:
            unlike = fg_long[box]
        n, labels = cv2.connectedComponents(kept.astype(np.uint8), connectivity=8)
        flat = labels.ravel()
        size = np.bincount(flat, minlength=n).astype(F32)
        differ = np.bincount(flat, weights=unlike.ravel().astype(F32), minlength=n)
        held = np.bincount(flat, weights=evidence.ravel().astype(F32), minlength=n)
        alike = (differ <= F32(self.tuning.before_share) * size) & (held > 0)
        alike[0] = False
        now = alike[labels]
        was = self._alike[box]
        # seconds looking as before: counted from the second frame that does
        self._alike[box] = np.where(now, np.where(was > 0, was + F32(dt), F32(1e-3)), F32(0))
        back = now & (self._alike[box] >= F32(self.tuning.before_s))
        if not back.any():
            return None
        out = np.zeros_like(self.kept)
        out[box] = back
        self._alike[out] = 0
        return out

    def before(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The looks kept from before evidence started (valid where ``kept``)."""
        return self._before

    def forget(self, where: np.ndarray) -> None:
        """No evidence at ``where`` (taken into the clear scene)."""
        box = self.geometry.box
        self.still[where] = 0
        self.age[where] = 0
        self._layers.look_ok[where[box]] = False
        self._layers.prev_ok[where[box]] = False

    def held(self, min_blocked_s: float, fg_long: np.ndarray) -> np.ndarray:
        """ROI pixels that have differed for ``min_blocked_s``, stood still for a good part of it, are not
        being judged and lie on or next to a pixel of ``fg_long`` (the caller passes what stands still now:
        evidence fading on bare floor, or crossed by people as it fades, raises nothing)."""
        t = self.tuning
        held = (
            self.geometry.roi
            & (self.age >= F32(min_blocked_s))
            & (self.still >= F32(t.still_share * min_blocked_s))
            & ~self._pending
        )
        if held.any():
            held &= cv2.dilate(fg_long.astype(np.uint8), _NEAR).astype(bool)
        return held

    def present(self, fg_long: np.ndarray) -> np.ndarray:
        """ROI pixels where something differs and has stood still for ``occupancy_min_s``."""
        return self.geometry.roi & (self.still >= F32(self.tuning.occupancy_min_s)) & fg_long

    def _follow_layers(
        self,
        feats: Features,
        diffs: Diffs,
        fg_long_all: np.ndarray,
        still_all: np.ndarray,
        dt: float,
        scene: Scene,
    ) -> None:
        """Evidence belongs to what stands still, not to the place: when something else settles
        where a person paused (or a person settles where an object was), the evidence starts again
        from when it came; when the earlier thing is seen again, its evidence comes back, having
        grown while it was hidden. Only the ROI's bounding box is followed (evidence counts there)."""
        t = self.tuning
        lay = self._layers
        box = self.geometry.box
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
        age_all = self.age
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
        a = rate(dt, t.look_tau_s)
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
