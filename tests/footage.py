"""Real footage for the detector's tests: ``vtest.avi`` (PETS 2009, from Debian's opencv-doc), found where the system
keeps it and read once per test session. A test that needs it FAILS, naming the fix, when it is missing: the footage
is part of the suite (``make test`` installs it through ``scripts/install-test-data.sh``), not an optional extra.

Nothing from the video is kept in the repository: frames, the clear scene and the person crops live in memory and
in the test's temporary folder.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridhub.simulators.footage import (
    VTEST_FPS,
    FootageMissing,
    PersonCrop,
    clear_scene,
    find_vtest,
    person_crops,
    read_video,
)

# vtest's frames are stamped from here on, 100 ms apart (its 10 frames/s)
VTEST_START_MS = 1_790_000_000_000


@dataclass(frozen=True)
class Clip:
    """A clip read into memory: its frames, the time of each, and its clear scene (the median without people)."""

    path: Path
    frames: list[np.ndarray]
    clear: np.ndarray

    def ts_ms(self, i: int) -> int:
        return VTEST_START_MS + round(i * 1000 / VTEST_FPS)

    def write_frames(self, folder: Path, quality: int = 90) -> int:
        """``folder/<epoch_ms>.jpg`` for every frame (CONTRACT §3's replay input); the count."""
        folder.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(self.frames):
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok, "OpenCV could not encode a frame of the clip"
            (folder / f"{self.ts_ms(i)}.jpg").write_bytes(buf.tobytes())
        return len(self.frames)

    def write_clear(self, path: Path) -> Path:
        """The clear scene as a JPEG, a camera's ``reference`` image."""
        ok, buf = cv2.imencode(".jpg", self.clear, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok, "OpenCV could not encode the clear scene"
        path.write_bytes(buf.tobytes())
        return path


def vtest_path(cache_dir: Path) -> Path:
    """Where ``vtest.avi`` is (decompressed into ``cache_dir`` if the system keeps it compressed); fails the test,
    never skips it, when the footage is not installed."""
    try:
        return find_vtest(cache_dir)
    except FootageMissing as exc:
        pytest.fail(f"real footage missing: {exc}", pytrace=False)


@functools.cache
def _vtest(cache_dir: Path) -> Clip:
    path = vtest_path(cache_dir)
    frames = read_video(path)
    return Clip(path, frames, clear_scene(frames))


def vtest(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """The vtest clip, read once per session (its cache in the session's temporary folder)."""
    return _vtest(tmp_path_factory.getbasetemp() / "footage")


def vtest_person_crops(tmp_path_factory: pytest.TempPathFactory) -> list[PersonCrop]:
    """Real people cut out of vtest with their masks, for the generated scenes that need a person standing."""
    clip = vtest(tmp_path_factory)
    crops = person_crops(clip.frames, clip.clear)
    assert len(crops) >= 10, f"only {len(crops)} person crops cut out of {clip.path}: is it the PETS 2009 clip?"
    return crops
