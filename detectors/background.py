"""The detector's background stage: the clear scenes (one per light) learned, compared with and corrected, and the short-term model.

Two backgrounds (Porikli's dual foreground). The long-term one is the clear scene: learned from the
median of the first frames (or from the reference image, or restored from a saved one) and afterwards
updated only where the scene is judged clear. The short-term one follows everything within seconds.
A clear scene that is contradicted where the picture lacks the scene's outline held something that
has since left (a ghost): what is seen there now is taken into the clear scene.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .stage import F32, SAMPLE, Features, Geometry, Tuning, edges, outside, rate, structure


@dataclass
class Scene:
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
        self.struct = structure(self.lum)
        k = np.ones((3, 3), np.uint8)
        self.lo, self.hi = cv2.erode(self.lum, k), cv2.dilate(self.lum, k)
        self.slo, self.shi = cv2.erode(self.struct, k), cv2.dilate(self.struct, k)


@dataclass
class Diffs:
    """A frame's differences from a scene model, the light taken out."""

    struct: np.ndarray
    lum: np.ndarray
    chroma: np.ndarray
    gain: np.ndarray  # the local light (log grey offset) taken out
    cr_shift: np.ndarray
    cb_shift: np.ndarray
    agree: np.ndarray  # pixels that the light alone explains
    alike: np.ndarray  # pixels whose structure and colour match (their grey level may not)


class Background:
    """The clear scenes of every lighting state (``scene`` the current one) and the short-term model."""

    def __init__(self, tuning: Tuning, geometry: Geometry) -> None:
        self.tuning = tuning
        self.geometry = geometry
        self._warm: list[Features] = []
        self._warm_from: int | None = None
        self._samples: list[Features] = []  # what was seen while learning, for a while after
        self._samples_until = 0
        self.states: list[Scene] = []
        self.scene: Scene | None = None
        self.short: Features | None = None
        self.settle_until = -1  # the clear scene follows faster until then (after a new light)
        self.version = 0  # goes up whenever the clear scene is learned, relit or corrected

    # -- learning, saving, restoring -------------------------------------------------------------

    def start(self, scene: Scene, feats: Features) -> None:
        self.version += 1
        self.scene = scene
        self.states = [scene]
        self.short = feats.copy()

    def start_from_reference(self, reference_bgr: np.ndarray, feats: Features, ts_ms: int) -> None:
        """The reference image is the clear scene."""
        wh, ww = self.geometry.shape
        ref = cv2.resize(reference_bgr, (ww, wh), interpolation=cv2.INTER_AREA)
        rf = Features.of(ref)
        self.start(Scene(rf.lum, rf.cr, rf.cb, used_ms=ts_ms), feats)

    def learn(self, feats: Features, ts_ms: int) -> None:
        """One more learning frame; the clear scene is there once enough time and frames were seen."""
        t = self.tuning
        if self._warm_from is None:
            self._warm_from = ts_ms
        self._warm.append(feats)
        if len(self._warm) > t.learn_max_frames:
            del self._warm[1::2]  # keep the samples spread over the whole learning time
        if len(self._warm) >= t.warmup_frames and ts_ms - self._warm_from >= t.learn_s * 1000:
            # the light may have changed while learning: each sample is brought to the last one's level
            level = float(np.median(feats.lum[SAMPLE]))
            lums = [f.lum + F32(level - float(np.median(f.lum[SAMPLE]))) for f in self._warm]
            lum = np.median(np.stack(lums), axis=0).astype(F32)
            cr = np.median(np.stack([f.cr for f in self._warm]), axis=0).astype(F32)
            cb = np.median(np.stack([f.cb for f in self._warm]), axis=0).astype(F32)
            step = max(1, len(self._warm) // t.learn_keep_frames)
            self._samples = self._warm[::step][: t.learn_keep_frames]
            self._samples_until = ts_ms + round(t.learn_keep_s * 1000)
            self._warm = []
            self._warm_from = None
            self.start(Scene(lum, cr, cb, used_ms=ts_ms), feats)

    def saved(self, fingerprint: str) -> bytes:
        """Every lighting state's clear scene (the current one first) as bytes to keep."""
        assert self.scene is not None
        buf = io.BytesIO()
        arrays: dict[str, Any] = {"fingerprint": np.array(fingerprint)}
        order = [self.scene] + [s for s in self.states if s is not self.scene]
        for i, s in enumerate(order):
            arrays[f"lum{i}"] = s.lum.astype(np.float16)
            arrays[f"cr{i}"] = s.cr.astype(np.float16)
            arrays[f"cb{i}"] = s.cb.astype(np.float16)
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    def restore(self, data: bytes, fingerprint: str, feats: Features, ts_ms: int) -> bool:
        """Start from clear scenes kept by ``saved`` if they were learned for ``fingerprint``."""
        kept = self._restored(data, fingerprint, ts_ms)
        if not kept:
            return False
        self.start(kept[0], feats)
        self.states = kept
        return True

    def _restored(self, data: bytes, fingerprint: str, ts_ms: int) -> list[Scene]:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if str(z["fingerprint"]) != fingerprint:
                    return []
                scenes = []
                i = 0
                while f"lum{i}" in z:
                    arr = [z[f"{k}{i}"].astype(F32) for k in ("lum", "cr", "cb")]
                    if arr[0].shape != self.geometry.shape:
                        return []
                    scenes.append(Scene(arr[0], arr[1], arr[2], used_ms=ts_ms))
                    i += 1
                return scenes
        except (OSError, ValueError, KeyError):
            return []

    # -- comparing ------------------------------------------------------------------------

    def diffs(self, feats: Features, scene: Scene, exclude: np.ndarray | None, local: bool = True) -> Diffs:
        """Structure, grey and chroma differences from a scene model, the light taken out.

        The light is taken out twice: a global offset of the log grey level and of chroma
        (medians), then smooth local fields measured where structure and colour agree, away
        from known objects, so that a lamp going off at one end is not an object.
        """
        t = self.tuning
        sample = SAMPLE
        dl = feats.lum - scene.lum
        dcr = feats.cr - scene.cr
        dcb = feats.cb - scene.cb
        d_str = cv2.blur(outside(feats.struct, scene.slo, scene.shi), (3, 3))
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
        d_int = cv2.blur(outside(feats.lum - gain, scene.lo, scene.hi), (3, 3))
        d_chr = cv2.blur(np.abs(dcr - fcr) + np.abs(dcb - fcb), (3, 3))
        return Diffs(d_str, d_int, d_chr, gain, fcr, fcb, agree, alike)

    def foreground(self, diffs: Diffs) -> np.ndarray:
        t = self.tuning
        d_str, d_int, d_chr = diffs.struct, diffs.lum, diffs.chroma
        sample = SAMPLE
        ts = max(t.struct_thr, t.noise_k * float(np.median(d_str[sample])))
        ti = max(t.int_thr, t.noise_k * float(np.median(d_int[sample])))
        tc = max(t.chroma_thr, t.noise_k * float(np.median(d_chr[sample])))
        fg = ((d_str > ts) | (d_int > ti) | (d_chr > tc)).astype(np.uint8)
        return np.asarray(cv2.medianBlur(fg, 3)).astype(bool)

    def short_foreground(self, feats: Features) -> np.ndarray:
        """The foreground against the short-term model: what moves."""
        short = self.short
        assert short is not None
        sdiffs = self.diffs(feats, Scene(short.lum, short.cr, short.cb), None, local=False)
        return self.foreground(sdiffs)

    def unlike(self, feats: Features, lum: np.ndarray, cr: np.ndarray, cb: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        """The foreground of the frame against another clear look (a region's look before something came)."""
        return self.foreground(self.diffs(feats, Scene(lum, cr, cb), exclude))

    def put_back(self, scene: Scene, where: np.ndarray, look: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """The clear scene at ``where`` is ``look`` again (what it was before something stood there)."""
        scene.lum = np.where(where, look[0], scene.lum).astype(F32)
        scene.cr = np.where(where, look[1], scene.cr).astype(F32)
        scene.cb = np.where(where, look[2], scene.cb).astype(F32)
        scene.refresh()
        self.version += 1

    def similarity(self, feats: Features) -> float:
        """Correlation of the whole picture's structure with the best clear scene (1 same view, ~0 none)."""
        return max(_similarity(feats, s) for s in self.states)

    # -- ghosts ---------------------------------------------------------------------------

    def ghosts(
        self, feats: Features, scene: Scene, settled: np.ndarray, moving: np.ndarray, ts_ms: int
    ) -> np.ndarray | None:
        """Settled foreground regions whose outline is in the clear model and not in the picture.

        A region is judged whole (its pieces closed up) and on its outline only: an object
        adds its outline to the picture, while something that left takes its outline out of it
        (the inside says nothing: a plain box hides the floor's texture as a ghost would).
        """
        k3 = np.ones((3, 3), np.uint8)
        seen = self._seen_while_learning(feats, ts_ms)
        whole = cv2.morphologyEx(settled.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
        n, labels, stats, _c = cv2.connectedComponentsWithStats(whole, connectivity=8)
        gf = edges(feats.lum)
        gm = edges(scene.lum)
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

    def _seen_while_learning(self, feats: Features, ts_ms: int) -> np.ndarray | None:
        """Pixels that look now as they did in one of the learning samples (the light taken out)."""
        if not self._samples:
            return None
        if ts_ms > self._samples_until:
            self._samples = []
            return None
        t = self.tuning
        seen = np.zeros(feats.lum.shape, bool)
        for s in self._samples:
            dl = feats.lum - s.lum
            dl -= F32(np.median(dl[SAMPLE]))
            dcr = feats.cr - s.cr
            dcb = feats.cb - s.cb
            d_int = cv2.blur(np.abs(dl), (5, 5))
            d_str = cv2.blur(np.abs(feats.struct - s.struct), (5, 5))
            d_chr = cv2.blur(
                np.abs(dcr - F32(np.median(dcr[SAMPLE]))) + np.abs(dcb - F32(np.median(dcb[SAMPLE]))),
                (5, 5),
            )
            seen |= (d_int < t.int_thr * 0.4) & (d_str < t.struct_thr * 0.4) & (d_chr < t.chroma_thr * 0.5)
        return seen

    def adopt(self, feats: Features, scene: Scene, diffs: Diffs, where: np.ndarray) -> None:
        """Take what is seen at ``where`` into the clear scene (and into the other lighting states)."""
        offsets = {
            id(s): float(np.median((scene.lum - s.lum)[SAMPLE])) for s in self.states if s is not scene
        }
        scene.lum = np.where(where, feats.lum - diffs.gain, scene.lum).astype(F32)
        scene.cr = np.where(where, feats.cr - diffs.cr_shift, scene.cr).astype(F32)
        scene.cb = np.where(where, feats.cb - diffs.cb_shift, scene.cb).astype(F32)
        scene.refresh()
        for s in self.states:
            if s is not scene:
                s.lum = np.where(where, scene.lum - F32(offsets[id(s)]), s.lum).astype(F32)
                s.cr = np.where(where, scene.cr, s.cr).astype(F32)
                s.cb = np.where(where, scene.cb, s.cb).astype(F32)
                s.refresh()
        self.version += 1

    # -- following ------------------------------------------------------------------------

    def follow(
        self,
        feats: Features,
        scene: Scene,
        fg_long: np.ndarray,
        fg_short: np.ndarray,
        still_s: np.ndarray,
        dt: float,
        ts_ms: int,
        kept: np.ndarray | None = None,
    ) -> None:
        """The short-term model follows everything, the clear scene only what is clear (nothing there,
        nothing moving, no evidence, not inside a region whose look from before is ``kept``)."""
        t = self.tuning
        short = self.short
        assert short is not None
        a_s = rate(dt, t.short_tau_s)
        gain = float(np.median((feats.lum - short.lum)[SAMPLE]))
        short.lum += a_s * (feats.lum - F32(gain) - short.lum)
        short.cr += a_s * (feats.cr - short.cr)
        short.cb += a_s * (feats.cb - short.cb)
        tau = t.settle_tau_s if ts_ms < self.settle_until else t.long_tau_s
        a_l = rate(dt, tau)
        clear = ~fg_long & ~fg_short & (still_s <= 0)
        if kept is not None:
            clear &= ~kept
        clear = cv2.erode(clear.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if a_l > 0 and clear.any():
            gl = float(np.median((feats.lum - scene.lum)[SAMPLE]))
            scene.lum = np.where(
                clear, scene.lum + a_l * (feats.lum - F32(gl) - scene.lum), scene.lum
            ).astype(F32)
            scene.cr = np.where(clear, scene.cr + a_l * (feats.cr - scene.cr), scene.cr).astype(F32)
            scene.cb = np.where(clear, scene.cb + a_l * (feats.cb - scene.cb), scene.cb).astype(F32)
            scene.refresh()


def _similarity(feats: Features, scene: Scene) -> float:
    a = feats.struct
    b = scene.struct
    num = float((a * b).sum())
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum())) + 1e-9
    return num / den
