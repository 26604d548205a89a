"""The detector's lighting stage: a change over most of the picture whose structure still matches is a new light, not objects.

The detector then switches to a stored clear scene for that light, or makes one by relighting the
clear scene with the change measured around (not on) any objects; at most ``max_states`` are kept,
the least recently used going first.
"""

from __future__ import annotations

import cv2
import numpy as np

from .background import Background, Diffs, Scene
from .stage import F32, SAMPLE, Features, Tuning


class Lighting:
    """Tells a new light from objects by the frame's grey level and by how much of it changed."""

    def __init__(self, tuning: Tuning) -> None:
        self.tuning = tuning
        self._level: float | None = None  # the median log grey level of the last frame judged

    def changed(self, feats: Features, fg_long: np.ndarray) -> bool:
        """True when the foreground against the clear scene is the light: most of the picture, or a
        good part of it with a jump of the grey level."""
        t = self.tuning
        level = float(np.median(feats.lum[SAMPLE]))
        jump = self._level is not None and abs(level - self._level) > t.lighting_jump
        self._level = level
        changed = float(fg_long.mean())
        return changed > t.lighting_frac or (jump and changed > t.state_match_frac)

    def sudden(self, fg_short: np.ndarray) -> bool:
        """A sudden change over most of the picture that the clear scene explains: light."""
        return float(fg_short.mean()) > self.tuning.lighting_frac

    def relight(
        self,
        background: Background,
        feats: Features,
        scene: Scene,
        diffs: Diffs,
        objects: np.ndarray,
        ts_ms: int,
    ) -> tuple[Scene, Diffs, np.ndarray]:
        """Most of the picture changed but its structure did not: a new light. Find or make its scene."""
        t = self.tuning
        bg = background
        best: tuple[float, Scene, Diffs, np.ndarray] | None = None
        for s in bg.states:
            d = diffs if s is scene else bg.diffs(feats, s, objects)
            fg = bg.foreground(d)
            frac = float(fg.mean())
            if best is None or frac < best[0]:
                best = (frac, s, d, fg)
        assert best is not None
        if best[0] <= t.state_match_frac:
            bg.scene = best[1]
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
        new = Scene(lum, cr, cb, used_ms=ts_ms)
        bg.states.append(new)
        bg.version += 1
        if len(bg.states) > t.max_states:
            bg.states.remove(min((s for s in bg.states if s is not new), key=lambda s: s.used_ms))
        bg.scene = new
        bg.settle_until = ts_ms + round(t.settle_s * 1000)
        d = bg.diffs(feats, new, objects)
        return new, d, bg.foreground(d)
