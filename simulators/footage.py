"""Real footage for the detector's tests and benchmark, read from where the system keeps it, never from the repository.

``vtest.avi`` is PETS 2009 (S2.L1, view 1) as shipped with OpenCV's samples; Debian's ``opencv-doc`` package
installs it in its examples' data folder (``scripts/install-test-data.sh`` installs the package). It is 795
frames of 768×576 at 10 frames/s: pedestrians on a campus road and lawn, people in view from the first frame.

Three things are taken from it, at run time, into memory or a temporary folder:

* its frames (``read_video``), each stamped at its place in the clip (100 ms apart);
* its clear scene (``clear_scene``): the per-pixel median over the whole clip, in which every person, who
  moves somewhere in 80 s, has vanished; a camera's ``reference`` image in a replay case;
* real person crops with their masks (``person_crops``): people cut out of frames where they stand apart from
  anyone else, for the generated scenes (``simulators/scenes.py``) that need a real person standing on a route.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

VTEST = "vtest.avi"
VTEST_FPS = 10.0
# where Debian's opencv-doc puts OpenCV's sample data (also tried: the upstream samples' install folder)
VTEST_PLACES: tuple[Path, ...] = (
    Path("/usr/share/doc/opencv-doc/examples/data"),
    Path("/usr/share/opencv4/samples/data"),
    Path("/usr/local/share/opencv4/samples/data"),
)
INSTALL_HINT = "run `make test` (it runs scripts/install-test-data.sh) or, as root, scripts/install-test-data.sh"
MAX_FRAMES = 2_000  # vtest has 795; anything much longer is not the clip these cases were written for

# The negative replay case on vtest (tests/test_detector_real.py, bench/detector.py): the road on the right, where
# people walk across and a man in black stands for about 9 s (53.5-63 s), judged with a ``min_blocked_s`` shorter
# than his stay, so that a detector taking a person for an object raises; the clip's clear scene is the reference.
VTEST_ROAD_ROI: list[list[float]] = [[0.55, 0.40], [0.97, 0.36], [0.97, 0.80], [0.55, 0.62]]
VTEST_MIN_BLOCKED_S = 5.0
VTEST_STANDING_S = (54.0, 66.0)  # he stands on the road through this window (with room for occupancy's delay)


class FootageMissing(FileNotFoundError):
    """The real clip is not on this machine; the message says how to install it."""


def find_vtest(cache_dir: Path, places: Iterable[Path] = VTEST_PLACES) -> Path:
    """The path of ``vtest.avi``: where the system keeps it, or a copy decompressed into ``cache_dir`` when the
    system keeps it gzip-compressed (as Debian does with some documentation files)."""
    looked: list[str] = []
    for place in places:
        plain = place / VTEST
        packed = place / (VTEST + ".gz")
        looked += [str(plain), str(packed)]
        if plain.is_file():
            return plain
        if packed.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            out = cache_dir / VTEST
            if not out.is_file():
                part = cache_dir / (VTEST + ".part")
                with gzip.open(packed, "rb") as src, part.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                part.replace(out)
            return out
    raise FootageMissing(
        f"{VTEST} (PETS 2009 pedestrians, from Debian's opencv-doc package) is not installed: looked at "
        f"{', '.join(looked)}; {INSTALL_HINT}"
    )


def read_video(path: Path, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """Every frame of a video file (BGR), at most ``max_frames`` of them."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FootageMissing(f"{path} cannot be opened as a video by OpenCV; {INSTALL_HINT}")
    frames: list[np.ndarray] = []
    try:
        while len(frames) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise FootageMissing(f"{path} has no frames OpenCV can read; {INSTALL_HINT}")
    return frames


def clear_scene(frames: list[np.ndarray], step: int = 3, band: int = 32) -> np.ndarray:
    """The scene without its people: the per-pixel median of every ``step``-th frame (everyone moves in the clip),
    taken ``band`` rows at a time so that no stack of whole frames is made."""
    picked = frames[::step]
    out = np.empty_like(picked[0])
    for y in range(0, out.shape[0], band):
        out[y:y + band] = np.median(np.stack([f[y:y + band] for f in picked]), axis=0).astype(np.uint8)
    return out


@dataclass(frozen=True)
class PersonCrop:
    """A real person cut out of a frame: the pixels of their bounding box and a mask of the person in it
    (uint8, 255 on the person). ``frame`` is where in the clip it was cut."""

    image: np.ndarray
    mask: np.ndarray
    frame: int

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


def person_crops(
    frames: list[np.ndarray],
    clear: np.ndarray,
    *,
    every: int = 15,
    min_height: int = 60,
    max_height: int = 160,
    limit: int = 40,
) -> list[PersonCrop]:
    """People standing apart in the clip, each with its mask: what differs from the clear scene, in blobs shaped
    like one upright person (2.3 to 4.5 times taller than wide, fairly filled, one narrow head, away from the edges
    and from other blobs, and as tall as the others whose feet are at that height in the picture: a taller blob is
    two people one behind the other), from every ``every``-th frame, at most ``limit`` of them."""
    found: list[PersonCrop] = []
    feet: list[tuple[int, int]] = []  # (feet row, height) of each
    ref = clear.astype(np.int16)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    for i in range(0, len(frames), every):
        frame = frames[i]
        diff = np.abs(frame.astype(np.int16) - ref).max(axis=2)
        fg = (diff > 35).astype(np.uint8) * 255
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel, iterations=2)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        h, w = fg.shape
        for k in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[k])
            if not (min_height <= bh <= max_height and 2.3 <= bh / max(bw, 1) <= 4.5):
                continue
            if area < 0.4 * bw * bh or x < 4 or y < 4 or x + bw > w - 4 or y + bh > h - 4:
                continue
            pad = 6
            y0, y1, x0, x1 = y - pad, y + bh + pad, x - pad, x + bw + pad
            if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
                continue
            around = labels[y0:y1, x0:x1]
            if np.any((around != 0) & (around != k)):
                continue  # someone else is too close: not one person alone
            # the blob, less the background its closing took in (between the legs, under an arm)
            blob = labels[y:y + bh, x:x + bw] == k
            mask = cv2.medianBlur((blob & (diff[y:y + bh, x:x + bw] > 25)).astype(np.uint8) * 255, 3)
            head = mask[: max(1, bh // 6)] > 0
            if head.any(axis=0).sum() > 0.65 * bw:
                continue  # one head is narrower than the body: a wide top is two people side by side
            found.append(PersonCrop(frame[y:y + bh, x:x + bw].copy(), mask, i))
            feet.append((y + bh, bh))
    if len(found) < 3:
        return found[:limit]
    # a person's height grows with how low their feet are in the picture (perspective): fit it, keep who fits
    # (fitted twice: the second time without the blobs far off the first line)
    rows = np.array(feet, np.float64)
    keep = np.ones(len(rows), bool)
    for low, high in ((0.8, 1.2), (0.85, 1.1)):
        slope, offset = np.polyfit(rows[keep, 0], rows[keep, 1], 1)
        ratio = rows[:, 1] / (slope * rows[:, 0] + offset)
        keep = (ratio >= low) & (ratio <= high)
    return [c for c, ok in zip(found, keep, strict=True) if ok][:limit]
